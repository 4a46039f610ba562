"""Trajectory meta-learners as Lightning callbacks, and what a run shows: held-out evaluation, progress, checkpoints,
summary; and the checkpoint saved when a run is asked to stop."""

from lightning_meta.callbacks.atari_evaluation import AtariEvaluation
from lightning_meta.callbacks.checkpoint import MetaCheckpoint
from lightning_meta.callbacks.leap import Leap
from lightning_meta.callbacks.meta_evaluation import MetaEvaluation
from lightning_meta.callbacks.meta_init import MetaInit
from lightning_meta.callbacks.progress import MetaProgressBar
from lightning_meta.callbacks.reptile import Reptile
from lightning_meta.callbacks.signal_checkpoint import CheckpointOnSignal
from lightning_meta.callbacks.summary import RunSummary
from lightning_meta.trainer.early_stopping import HeldOutEarlyStopping

__all__ = [
    "AtariEvaluation",
    "CheckpointOnSignal",
    "HeldOutEarlyStopping",
    "Leap",
    "MetaCheckpoint",
    "MetaEvaluation",
    "MetaInit",
    "MetaProgressBar",
    "Reptile",
    "RunSummary",
]
