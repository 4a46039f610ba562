"""Learning-curve metrics (torchmetrics) and the length of a training path, Leap's objective.

Examples:
    >>> import torch
    >>> from lightning_meta.metrics import LearningCurveAUC
    >>> auc = LearningCurveAUC()
    >>> auc.update(torch.tensor([[1.0, 0.5, 0.0], [1.0, 1.0, 1.0]]))
    >>> auc.compute()
    tensor(0.7500)
"""

from __future__ import annotations

from collections.abc import Iterable

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


def path_length(step_sizes: Tensor, losses: Tensor) -> Tensor:
    """Length of training paths in the joint (theta, loss) space, the quantity Leap's ``p=1`` rule shortens.

    The path of a task is the points (theta_i, f(theta_i)), i = 0..K; its length is
    ``sum_i sqrt(|theta_{i+1} - theta_i|^2 + (f(theta_{i+1}) - f(theta_i))^2)``. ``step_sizes`` is ``[..., K]``, the
    norms ``|theta_{i+1} - theta_i|`` (one norm over all the tensors of theta), ``losses`` is ``[..., K + 1]``, the
    losses f(theta_i) (each step's on its own batch, as Leap's rule reads them). The stabilizer of Leap's rule
    changes the sign of a loss difference, not its square: the length is the same with or without it.

    Examples:
        Two steps: theta moves by (3, 4) while the loss stays at 2, then stays put while the loss drops by 1:

        >>> path_length(torch.tensor([5.0, 0.0]), torch.tensor([2.0, 2.0, 1.0]))
        tensor(6.)
    """
    if losses.shape[-1] != step_sizes.shape[-1] + 1:
        raise ValueError(f"path_length needs one loss more than steps, got {losses.shape[-1]} losses for "
                         f"{step_sizes.shape[-1]} steps")
    return torch.hypot(step_sizes, losses.diff(dim=-1)).sum(-1)


class TrainingPath:
    """Measures a training path while it is walked: call :meth:`step` after every optimizer step with that step's
    loss f(theta_i) (computed before the step) and :meth:`length` with f(theta_K) at the end.

    It keeps one copy of ``parameters`` (theta_i) and one number per step, whatever their size; parameters that do not
    move add nothing.

    Examples:
        >>> theta = torch.zeros(2)
        >>> path = TrainingPath([theta])
        >>> theta += torch.tensor([3.0, 4.0]); path.step(torch.tensor(2.0))
        >>> path.step(torch.tensor(2.0))  # a step that moved nothing
        >>> path.length(final_loss=torch.tensor(1.0))
        tensor(6.)
    """

    def __init__(self, parameters: Iterable[Tensor]) -> None:
        self.parameters = list(parameters)
        self.previous = [p.detach().clone() for p in self.parameters]
        self.step_sizes: list[Tensor] = []
        self.losses: list[Tensor] = []

    @torch.no_grad()
    def step(self, loss: Tensor) -> None:
        """One step done: theta moved from the previous point to the parameters' values now; ``loss`` = f(theta_i)."""
        moved = torch._foreach_sub([p.detach() for p in self.parameters], self.previous)
        self.step_sizes.append(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(moved))))
        torch._foreach_copy_(self.previous, [p.detach() for p in self.parameters])
        self.losses.append(loss.detach().reshape(()))

    def length(self, final_loss: Tensor) -> Tensor:
        """The path's length with f(theta_K) = ``final_loss`` (0 when no step was taken)."""
        if not self.step_sizes:
            return torch.tensor(0.0)
        losses = torch.stack([*self.losses, final_loss.detach().reshape(()).to(self.losses[0])])
        return path_length(torch.stack(self.step_sizes), losses.to(self.step_sizes[0]))
