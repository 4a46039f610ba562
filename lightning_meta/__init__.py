"""lightning-meta: meta-learning for PyTorch Lightning (Leap, Reptile and friends as callbacks, MAML as a mixin)."""

from lightning_meta.callbacks import AtariEvaluation, HeldOutEarlyStopping, Leap, MetaEvaluation, MetaInit, Reptile
from lightning_meta.engine import MetaLearner
from lightning_meta.mixins import MAMLMixin

__version__ = "0.1.0"
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
