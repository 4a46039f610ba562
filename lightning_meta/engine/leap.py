"""Leap's rule (Flennerhag et al., ICLR 2019): the init that shortens the path of training on the loss surface.

A task's training is the path of points gamma_i = (theta_i, f(theta_i)), i = 0..K. With
dtheta_i = theta_{i+1} - theta_i, df_i = f(theta_{i+1}) - f(theta_i), l_i = sqrt(|dtheta_i|^2 + df_i^2) (one norm
over all meta-learned tensors) and g_i the gradient of step i's batch at theta_i, the task's meta-gradient is

    p = 1 (length):  - sum_i (dtheta_i + df_i g_i) / l_i
    p = 2 (energy):  - 2 sum_i (dtheta_i + df_i g_i)

``loss=False`` drops df_i from the numerator and from l_i; ``stabilizer=True`` uses -|df_i| in place of df_i.

Two departures from the reference code, both deliberate: the last step theta_{K-1} -> theta_K is included (the
reference drops it), and ``p=2`` carries the factor 2 of the true derivative of the energy sum_i l_i^2, which the
reference's ``norm=False`` leaves out: our ``p=2`` meta-gradient is twice theirs, so halve ``meta_lr`` to replay a
run of the reference code.

theta is one vector here, as in the paper: the rule keeps theta_i, g_i and the running sum in flat buffers (one
view per tensor), so each step's arithmetic is a handful of kernels whatever the number of tensors. Memory: those
three copies of the meta-learned parameters (two with ``loss=False``), whatever K is. Nothing leaves the device
inside the task. Losses are used in the parameters' precision.

On sharded parameters (:mod:`~lightning_meta.engine.sharded`) the buffers hold this process's shards only. l_i needs
the whole vector: each segment sums the partial ``|dtheta_i|^2`` and ``df_i`` (from each process's share of the
loss) over the processes in one collective, so ``p=1`` or the loss term costs one collective per inner step. ``p=2``
without the loss term needs no global figure inside the task: its segments' partial squares wait for one collective
at the task end, which only gives the path length (a metric).

Examples:
    One task of two plain gradient steps on f(theta) = |theta|^2 / 2 (the gradient is theta itself):

    >>> import torch
    >>> rule = LeapRule(p=2, loss=False)
    >>> theta = [torch.tensor([1.0, 2.0])]
    >>> rule.start(theta, theta)
    >>> for _ in range(2):
    ...     rule.step(theta, [theta[0].clone()], None)
    ...     theta = [theta[0] - 0.5 * theta[0]]
    >>> rule.end(theta, None)  # -2 (theta_2 - theta_0) = -2 ([0.25, 0.5] - [1, 2])
    [tensor([1.5000, 3.0000])]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_meta.engine.rule import TrajectoryRule


class LeapRule(TrajectoryRule):
    """Leap's meta-gradient of one task's trajectory (see the module docstring for the formula).

    Args:
        p: 1 minimises the length of the training path, 2 its energy.
        loss: include the loss dimension f(theta) in the path (else parameters only).
        stabilizer: replace df_i by -|df_i|, which keeps the meta-gradient from pulling towards loss increases.
        norm: the reference code's name for the choice of ``p``: ``True`` is ``p=1``, ``False`` is ``p=2`` (with the
            factor 2 the reference leaves out); leave it ``None`` and set ``p``.
    """

    name = "leap"
    shardable = True

    def __init__(
        self, p: Literal[1, 2] = 1, loss: bool = True, stabilizer: bool = True, norm: bool | None = None
    ) -> None:
        if p not in (1, 2):
            raise ValueError(f"p must be 1 (path length) or 2 (path energy), got {p!r}")
        if norm is not None:
            implied: Literal[1, 2] = 1 if norm else 2
            if p not in (1, implied):
                raise ValueError(f"norm={norm} contradicts p={p}: norm=True is p=1, norm=False is p=2; pass one")
            p = implied
        self.p = p
        self.loss = loss
        self.stabilizer = stabilizer
        self.needs_loss = self.needs_final_loss = loss
        self._previous = torch.empty(0)  # theta_i, spent as the step -dtheta_i inside _add_segment
        self._previous_grad = torch.empty(0)  # g_i (empty with loss=False)
        self._sum = torch.empty(0)  # sum_i (dtheta_i + df_i g_i) / l_i (times 2 for p = 2)
        self._views: dict[str, list[Tensor]] = {}
        self._previous_loss: Tensor | None = None
        self._path_length: Tensor | None = None
        self._steps = 0
        self._pending_squares: list[Tensor] = []  # sharded, p=2 without loss: each segment's partial |dtheta_i|^2

    def _allocate(self, theta_0: Sequence[Tensor], live: Sequence[Tensor]) -> None:
        """Flat buffers of shape ``(*tasks, N)`` on the parameters' device, reused while the shapes stay."""
        tasks = live[0].shape[: live[0].dim() - theta_0[0].dim()]
        sizes = [p.numel() for p in theta_0]
        shape = (*tasks, sum(sizes))
        if self._sum.shape == shape and self._sum.device == live[0].device and self._sum.dtype == live[0].dtype:
            return
        for name in ("_previous", "_previous_grad", "_sum"):
            flat = live[0].new_zeros(shape if name != "_previous_grad" or self.loss else (0,))
            setattr(self, name, flat)
            self._views[name] = (
                [v.view(*tasks, *p.shape) for v, p in zip(flat.split(sizes, dim=-1), theta_0)] if flat.numel() else []
            )

    def start(self, theta_0: Sequence[Tensor], live: Sequence[Tensor]) -> None:
        self._allocate(theta_0, live)
        self._sum.zero_()
        self._previous_loss = None
        self._path_length = self._sum.new_zeros(self._sum.shape[:-1])
        self._steps = 0
        self._pending_squares = []

    def step(self, live: Sequence[Tensor], grads: Sequence[Tensor], loss: Tensor | None) -> None:
        if self._steps:
            self._add_segment(live, loss)
        torch._foreach_copy_(self._views["_previous"], list(live))
        if self.loss:
            torch._foreach_copy_(self._views["_previous_grad"], list(grads))
        self._previous_loss = loss
        self._steps += 1

    def _add_segment(self, point: Sequence[Tensor], point_loss: Tensor | None) -> None:
        """Add segment i, from the previous point theta_i to ``point`` = theta_{i+1}, to the running sum."""
        assert self._path_length is not None
        torch._foreach_sub_(self._views["_previous"], list(point))
        negative_step = self._previous  # -dtheta_i
        squared = torch.linalg.vecdot(negative_step, negative_step)
        d_loss = None
        if self.loss:
            assert point_loss is not None and self._previous_loss is not None, "LeapRule(loss=True) needs losses"
            d_loss = point_loss - self._previous_loss
        if self.shards is not None and self.p == 2 and not self.loss:  # nothing global is needed before the end
            self._pending_squares.append(squared * self.shards.weight)
        else:
            if self.shards is not None:  # one collective: the whole |dtheta_i|^2 and df_i from the partial sums
                squared, d_loss = self.shards.total(squared * self.shards.weight, d_loss)
            if d_loss is not None:
                if self.stabilizer:
                    d_loss = -d_loss.abs()
                squared = squared + d_loss.square()
            length = squared.sqrt()
            self._path_length += length
        scale = 2.0 if self.p == 2 else 1.0  # a Python number: no host-to-device copy
        if self.p == 1:
            inverse = 1.0 / length.clamp_min(torch.finfo(length.dtype).tiny)
            negative_step.mul_(inverse.unsqueeze(-1))
            if d_loss is not None:
                d_loss = d_loss * inverse
        self._sum.sub_(negative_step, alpha=scale)
        if d_loss is not None:
            self._sum.addcmul_(self._previous_grad, d_loss.unsqueeze(-1), value=scale)

    def end(self, live: Sequence[Tensor], final_loss: Tensor | None) -> list[Tensor]:
        """Add the final segment theta_{K-1} -> theta_K and negate: the meta-gradient, as views of one buffer."""
        if self._steps:
            self._add_segment(live, final_loss)
        if self._pending_squares:  # sharded, p=2 without loss: the path length in one collective
            assert self.shards is not None and self._path_length is not None
            (squares,) = self.shards.total(torch.stack(self._pending_squares))
            assert squares is not None
            self._path_length += squares.sqrt().sum(0)
            self._pending_squares = []
        self._sum.neg_()
        return self._views["_sum"]

    def metrics(self) -> dict[str, Tensor]:
        """``path_length``: the length sum_i l_i of the task's path (per task when tasks are stacked)."""
        return {} if self._path_length is None else {"path_length": self._path_length}

    def state_dict(self) -> dict[str, Any]:
        return {
            "previous": self._previous.clone(),
            "previous_grad": self._previous_grad.clone(),
            "accumulator": self._sum.clone(),
            "previous_loss": self._previous_loss,
            "path_length": self._path_length,
            "steps": self._steps,
            "pending_squares": [square.clone() for square in self._pending_squares],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._previous.copy_(state["previous"])
        self._previous_grad.copy_(state["previous_grad"])
        self._sum.copy_(state["accumulator"])
        device = self._sum.device
        self._previous_loss = None if state["previous_loss"] is None else state["previous_loss"].to(device)
        if state["path_length"] is not None:
            self._path_length = state["path_length"].to(device)
        # checkpoints of version 0.1 have no step count; only whether the task has taken a step matters
        self._steps = state.get("steps", int(state["previous_loss"] is not None))
        self._pending_squares = [square.to(device) for square in state.get("pending_squares", [])]
