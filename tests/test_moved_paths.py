"""The import paths of release 0.1 keep working for one release: the same module or class as at the new path, and
a warning naming the new path (in a fresh interpreter, where nothing is imported yet)."""

import json
import subprocess
import sys

from lightning_meta.moved import MOVED

PROBE = r"""
import importlib, json, sys, warnings
warnings.simplefilter("always")
import lightning_meta.moved as moved
found = {}
for old, new in moved.MOVED.items():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    found[old] = [module is importlib.import_module(new), module.__spec__.name, [str(w.message) for w in caught],
                  [w.category.__name__ for w in caught]]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from lightning_meta.tasks import GlyphAlphabets, TaskDataModule
from lightning_meta.data import TaskDataModule as new_data_module
from lightning_meta.families import GlyphAlphabets as new_family
found["split"] = [TaskDataModule is new_data_module and GlyphAlphabets is new_family, [str(w.message) for w in caught]]
print(json.dumps(found))
"""


def test_every_old_path_is_the_new_module_with_a_warning_naming_it():
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    found = json.loads(result.stdout.splitlines()[-1])
    for old, new in MOVED.items():
        same, spec_name, messages, categories = found[old]
        assert same, f"{old} is not the module {new}"
        assert spec_name == new, f"{new}'s spec was left naming {spec_name}"
        assert f"{old} moved to {new}; the old path goes in the next release" in messages, (old, messages)
        assert "MovedWarning" in categories
    same, messages = found["split"]
    assert same
    assert messages == [
        "lightning_meta.tasks.GlyphAlphabets moved to lightning_meta.families.GlyphAlphabets; the old path goes in the "
        "next release",
        "lightning_meta.tasks.TaskDataModule moved to lightning_meta.data.TaskDataModule; the old path goes in the "
        "next release",
    ]


def test_a_name_the_old_package_never_had_is_an_attribute_error():
    probe = "import lightning_meta.tasks as t\ntry:\n    t.NoSuchName\nexcept AttributeError as e:\n    print(e)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "module 'lightning_meta.tasks' has no attribute 'NoSuchName'"
