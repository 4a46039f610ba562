"""lightning-meta: meta-learning for PyTorch Lightning (Leap, Reptile and friends as callbacks, MAML as a mixin).

The names below are imported when first used, so that ``import lightning_meta.engine`` (the plain-PyTorch door)
loads neither Lightning nor matplotlib nor torchvision.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lightning_meta import moved

if TYPE_CHECKING:
    from lightning_meta.callbacks import AtariEvaluation, HeldOutEarlyStopping, Leap, MetaEvaluation, MetaInit, Reptile
    from lightning_meta.engine import MetaLearner
    from lightning_meta.mixins import MAMLMixin

__version__ = "0.1.0"

_HOMES = {
    "AtariEvaluation": "lightning_meta.callbacks",
    "HeldOutEarlyStopping": "lightning_meta.callbacks",
    "Leap": "lightning_meta.callbacks",
    "MetaEvaluation": "lightning_meta.callbacks",
    "MetaInit": "lightning_meta.callbacks",
    "Reptile": "lightning_meta.callbacks",
    "MetaLearner": "lightning_meta.engine",
    "MAMLMixin": "lightning_meta.mixins",
}
__all__ = [
    "AtariEvaluation",
    "HeldOutEarlyStopping",
    "Leap",
    "MAMLMixin",
    "MetaEvaluation",
    "MetaInit",
    "MetaLearner",
    "Reptile",
    "__version__",
]


moved.install()  # the import paths of release 0.1 keep working for one release, with a warning


def __getattr__(name: str) -> Any:
    """``lightning_meta.Leap`` and the other names of ``__all__``, imported on first use."""
    if name not in _HOMES:
        raise AttributeError(f"module 'lightning_meta' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
