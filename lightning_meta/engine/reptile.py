"""Reptile's rule (Nichol et al., 2018): move theta_0 towards where training on each task ends.

theta_0 <- theta_0 + meta_lr * mean over tasks of (theta_K - theta_0), expressed as the meta-gradient
theta_0 - theta_K for the meta-optimizer (plain SGD with ``lr=meta_lr`` gives exactly the rule above).

Examples:
    >>> import torch
    >>> rule = ReptileRule()
    >>> theta_0 = [torch.tensor([1.0, 2.0])]
    >>> rule.start(theta_0, theta_0)
    >>> rule.end([torch.tensor([0.5, 3.0])], None)
    [tensor([ 0.5000, -1.0000])]
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from lightning_meta.engine.rule import TrajectoryRule


class ReptileRule(TrajectoryRule):
    """theta_0 - theta_K: no work inside the task, one subtraction at its end."""

    name = "reptile"
    shardable = True  # element-wise: on sharded parameters, each process subtracts its shards (no collective)

    def start(self, theta_0: Sequence[Tensor], live: Sequence[Tensor]) -> None:
        self._theta_0 = theta_0  # theta_0 does not change while a task trains

    def end(self, live: Sequence[Tensor], final_loss: Tensor | None) -> list[Tensor]:
        return [start.detach() - end for start, end in zip(self._theta_0, live)]
