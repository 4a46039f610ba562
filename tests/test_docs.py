"""Documentation checks: every public class and function has a runnable example (the doctests run with the suite)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect

import pytest

PACKAGES = [
    "lightning_meta",
    "lightning_meta.callbacks",
    "lightning_meta.engine",
    "lightning_meta.mixins",
    "lightning_meta.optim",
    "lightning_meta.models",
    "lightning_meta.data",
    "lightning_meta.families",
]


def example_lines(obj: object) -> list[str]:
    """The doctest lines (``>>>`` and ``...``) of an object's docstring and of its module's docstring."""
    module = inspect.getmodule(obj)
    text = (inspect.getdoc(obj) or "") + "\n" + (module.__doc__ or "" if module else "")
    return [line.strip() for line in text.splitlines() if line.strip().startswith((">>>", "..."))]


def public_api() -> list[tuple[str, str, object]]:
    found = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                found.append((package, name, obj))
    return found


@pytest.mark.parametrize(("package", "name", "obj"), public_api(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_public_class_and_function_has_a_runnable_example(package, name, obj):
    if dataclasses.is_dataclass(obj):  # plain records (results, batches, settings): their fields are the docs
        assert obj.__doc__ and len(obj.__doc__) > 40, f"{package}.{name} needs a docstring that explains its fields"
        return
    assert any(name in line for line in example_lines(obj)), (
        f"{package}.{name} has no example: add a '>>>' example that uses it to its docstring or its module's"
    )
