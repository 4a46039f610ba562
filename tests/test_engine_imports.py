"""The plain-PyTorch door needs only PyTorch: importing the engine loads neither Lightning nor matplotlib nor
torchvision (checked in a fresh interpreter), and the package's public names still import from its root."""

import subprocess
import sys

HEAVY = ("lightning", "matplotlib", "torchvision", "torchmetrics")


def test_the_engine_imports_without_lightning_matplotlib_or_torchvision():
    code = f"import sys, lightning_meta.engine; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_the_root_names_import_on_first_use():
    import lightning_meta
    from lightning_meta import Leap, MAMLMixin, MetaLearner

    assert Leap.__module__ == "lightning_meta.callbacks.leap" and MetaLearner.__module__ == "lightning_meta.engine.learner"
    assert MAMLMixin.__name__ == "MAMLMixin" and set(lightning_meta.__all__) <= set(dir(lightning_meta))
