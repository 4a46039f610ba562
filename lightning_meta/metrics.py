"""Learning-curve metrics (torchmetrics).

Examples:
    >>> import torch
    >>> from lightning_meta.metrics import LearningCurveAUC
    >>> auc = LearningCurveAUC()
    >>> auc.update(torch.tensor([[1.0, 0.5, 0.0], [1.0, 1.0, 1.0]]))
    >>> auc.compute()
    tensor(0.7500)
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


def curve_auc(curves: Tensor) -> Tensor:
    """Area under each curve by the trapezoid rule over unit steps, divided by the number of steps.

    ``curves`` is ``[..., T]`` with one value per step; a constant curve ``c`` has AUC ``c``. With ``T == 1`` the
    AUC is the single value.
    """
    steps = curves.shape[-1] - 1
    if steps == 0:
        return curves[..., 0]
    return torch.trapezoid(curves, dim=-1) / steps


class LearningCurveAUC(Metric):
    """Mean normalised area under learning curves (the Leap paper's measure of how fast training converges).

    ``update`` takes ``[num_curves, T]`` (or one ``[T]`` curve); ``compute`` returns the mean AUC over all curves
    seen, gathered across processes.
    """

    full_state_update = False

    total: Tensor
    count: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, curves: Tensor) -> None:
        curves = torch.atleast_2d(curves.detach()).double()
        self.total += curve_auc(curves).sum()
        self.count += curves.shape[0]

    def compute(self) -> Tensor:
        return (self.total / self.count).float()
