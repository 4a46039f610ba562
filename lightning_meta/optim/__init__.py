"""Learned optimizers: a coordinate-wise LSTM, its ``torch.optim`` facade and its unrolled meta-training."""

from lightning_meta.optim.anchored import SGDAnchoredLSTM
from lightning_meta.optim.learned import LearnedOptimizer
from lightning_meta.optim.lstm import CoordinatewiseLSTM, preprocess
from lightning_meta.optim.training import LearnedOptimizerTraining
from lightning_meta.optim.unroll import UnrollState, unroll, unroll_steps

__all__ = [
    "CoordinatewiseLSTM",
    "LearnedOptimizer",
    "LearnedOptimizerTraining",
    "SGDAnchoredLSTM",
    "UnrollState",
    "preprocess",
    "unroll",
    "unroll_steps",
]
