"""Trajectory meta-learners as Lightning callbacks."""

from lightning_meta.callbacks.atari_evaluation import AtariEvaluation
from lightning_meta.callbacks.early_stopping import HeldOutEarlyStopping
from lightning_meta.callbacks.leap import Leap
from lightning_meta.callbacks.meta_evaluation import MetaEvaluation
from lightning_meta.callbacks.meta_init import MetaInit
from lightning_meta.callbacks.reptile import Reptile

__all__ = ["AtariEvaluation", "HeldOutEarlyStopping", "Leap", "MetaEvaluation", "MetaInit", "Reptile"]
