"""The import paths of the modules that moved into their rooms (release 0.2), kept working for one release: importing
an old path gives the module at its new one and a :class:`MovedWarning` naming it.

``lightning_meta.tasks`` was split into :mod:`lightning_meta.data` (the data modules of any family, streams, the
schedule, the task API) and :mod:`lightning_meta.families` (task families and the data modules of one family); its
names are found in whichever holds them.

Examples:
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     from lightning_meta.tasks.schedule import TaskSchedule
    >>> TaskSchedule.__module__
    'lightning_meta.data.schedule'
    >>> print(caught[0].message)
    lightning_meta.tasks.schedule moved to lightning_meta.data.schedule; the old path goes in the next release
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Sequence
from typing import Any

DATA = ("datamodule", "stream", "schedule", "episodes", "family")
FAMILIES = (
    "alphabets", "atari", "dataset_tasks", "documents", "few_shot_tasks", "glyphs", "omniglot", "quadratics",
    "seeded_tasks", "vision", "document_data", "atari_data", "rollouts",
)  # fmt: skip
MODELS = (
    "actor_critic", "byte_lstm", "classifier", "dataset_classifier", "dynamic_evaluation", "dynamical_lm",
    "maml_classifier",
)  # fmt: skip

MOVED: dict[str, str] = {
    "lightning_meta.recipes": "lightning_meta.models",
    **{f"lightning_meta.tasks.{name}": f"lightning_meta.data.{name}" for name in DATA},
    **{f"lightning_meta.tasks.{name}": f"lightning_meta.families.{name}" for name in FAMILIES},
    **{f"lightning_meta.recipes.{name}": f"lightning_meta.models.{name}" for name in MODELS},
    **{f"lightning_meta.{name}": f"lightning_meta.tooling.{name}" for name in ("sweep", "file_locks")},
    **{
        f"lightning_meta.callbacks.{name}": f"lightning_meta.trainer.{name}"
        for name in ("held_out", "task_batched", "diverged", "early_stopping", "sharded")
    },
    **{
        f"lightning_meta.{name}": f"lightning_meta.trainer.{name}"
        for name in ("checkpoint_io", "resume_checks", "run_folders", "stop_signals")
    },
}
"""Old module path -> new module path."""

SPLIT = {"lightning_meta.tasks": ("lightning_meta.data", "lightning_meta.families")}
"""Old packages whose names now live in several: the first that has a name gives it."""


class MovedWarning(FutureWarning):
    """An import path that moved; shown by default (a ``FutureWarning``), so that scripts see it too."""


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} moved to {new}; the old path goes in the next release", MovedWarning, stacklevel=3)


class _SplitPackage(types.ModuleType):
    """An old package whose names are looked up, with a warning, in the packages it was split into."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__path__: list[str] = []  # a package: its old submodules are found by :class:`MovedFinder`

    def __getattr__(self, attribute: str) -> Any:
        for home in SPLIT[self.__name__]:
            value = getattr(importlib.import_module(home), attribute, None)
            if value is not None:
                _warn(f"{self.__name__}.{attribute}", f"{home}.{attribute}")
                setattr(self, attribute, value)  # one warning per name
                return value
        raise AttributeError(f"module {self.__name__!r} has no attribute {attribute!r}")


class MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old paths of :data:`MOVED` and :data:`SPLIT` (installed by ``import lightning_meta``)."""

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname in MOVED or fullname in SPLIT:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=fullname in SPLIT)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        if spec.name in SPLIT:
            return _SplitPackage(spec.name)
        _warn(spec.name, MOVED[spec.name])
        module = importlib.import_module(MOVED[spec.name])
        self._specs[spec.name] = module.__spec__  # the import system sets the old path's spec on the module
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the module is the one at the new path, already imported; its own spec is put back."""
        original = self._specs.pop(module.__spec__.name if module.__spec__ else "", None)
        if original is not None:
            module.__spec__ = original


def install() -> None:
    """Put :class:`MovedFinder` first on ``sys.meta_path`` (once): an old path is always the new module, even where
    an editable install made before the move still maps the old folders."""
    if not any(isinstance(finder, MovedFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedFinder())
