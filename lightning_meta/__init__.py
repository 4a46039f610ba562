"""lightning-meta: meta-learning for PyTorch Lightning (Leap, Reptile and friends as callbacks)."""

from lightning_meta.callbacks import Leap, MetaEvaluation, MetaInit, Reptile

__version__ = "0.1.0"
__all__ = ["Leap", "MetaEvaluation", "MetaInit", "Reptile", "__version__"]
