"""Leap (Flennerhag et al., ICLR 2019): learn the init that shortens the path of training on the loss surface.

A task's training is the path of points gamma_i = (theta_i, f(theta_i)), i = 0..K. With
dtheta_i = theta_{i+1} - theta_i, df_i = f(theta_{i+1}) - f(theta_i), l_i = sqrt(|dtheta_i|^2 + df_i^2) (one norm
over all meta-learned tensors) and g_i the gradient of step i's batch at theta_i, the task's meta-gradient is

    p = 1 (length):  - sum_i (dtheta_i + df_i g_i) / l_i
    p = 2 (energy):  - 2 sum_i (dtheta_i + df_i g_i)

``loss=False`` drops df_i from the numerator and from l_i; ``stabilizer=True`` uses -|df_i| in place of df_i.
Unlike the reference code, the last step theta_{K-1} -> theta_K is included (one extra no-grad forward pass per
task). Memory: the previous point theta_i, its gradient g_i and the task's accumulator, whatever K is; no tensor
leaves the device inside the inner loop.

Examples:
    >>> import lightning as L
    >>> from lightning_meta import Leap
    >>> leap = Leap(inner_steps=100, meta_batch_size=20, meta_lr=0.1)
    >>> trainer = L.Trainer(callbacks=[leap], max_steps=100 * 20 * 10, logger=False, enable_checkpointing=False)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from lightning_meta.callbacks.meta_init import MetaInit
from lightning_meta.utils import muted_logging, training_loss


@contextmanager
def _side_effect_free(pl_module: L.LightningModule) -> Iterator[None]:
    """Run ``training_step`` again without logging and without touching buffers (BatchNorm statistics)."""
    buffers = [(b, b.detach().clone()) for b in pl_module.buffers()]
    try:
        with muted_logging(pl_module):
            yield
    finally:
        for buffer, saved in buffers:
            buffer.copy_(saved)


class Leap(MetaInit):
    """Meta-learn theta_0 with Leap's gradient-path rule; add it to any Trainer with automatic optimisation.

    Args:
        p: 1 minimises the length of the training path, 2 its energy.
        loss: include the loss dimension f(theta) in the path (else parameters only).
        stabilizer: replace df_i by -|df_i|, which keeps the meta-gradient from pulling towards loss increases.
        norm: the reference code's name for the choice of ``p``: ``True`` is ``p=1``, ``False`` is ``p=2``;
            leave it ``None`` and set ``p``.
        **kwargs: the :class:`~lightning_meta.callbacks.MetaInit` arguments (``inner_steps``, ``meta_batch_size``,
            ``meta_lr``, ``meta_optimizer``, ``include``, ``buffers``, ...).
    """

    def __init__(
        self,
        p: Literal[1, 2] = 1,
        loss: bool = True,
        stabilizer: bool = True,
        norm: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
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
        # flat buffers with one view per meta-parameter, so the per-step arithmetic runs as single kernels
        self._previous = torch.empty(0)  # theta_i, spent as the step -dtheta_i inside _add_segment
        self._previous_grad = torch.empty(0)  # g_i (only with loss=True)
        self._accumulator = torch.empty(0)  # sum of the task's increments
        self._views: dict[str, list[Tensor]] = {}
        self._previous_loss: Tensor | None = None
        self._step_loss: Tensor | None = None
        self._path_length: Tensor | None = None

    def _allocate(self) -> None:
        """The rule's buffers on theta_0's device: three (two with loss=False) copies of the meta-parameters."""
        if self._accumulator.numel() and self._accumulator.device == self.init[0].device:
            return
        sizes = [p.numel() for p in self.init]
        for name in ("_previous", "_previous_grad", "_accumulator"):
            size = sum(sizes) if name != "_previous_grad" or self.loss else 0
            flat = torch.zeros(size, dtype=self.init[0].dtype, device=self.init[0].device)
            setattr(self, name, flat)
            self._views[name] = [v.view_as(p) for v, p in zip(flat.split(sizes), self.init)] if flat.numel() else []

    def on_task_start(self, live: list[Tensor]) -> None:
        self._allocate()
        self._accumulator.zero_()
        self._previous_loss = None
        self._path_length = torch.zeros((), device=live[0].device)

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        """Sum the (already 1/accumulate-scaled) losses of the micro-batches of one optimizer step."""
        loss = loss.detach().float()
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None:  # fp16 AMP scaled the loss before this hook
            loss = loss / scaler._scale
        self._step_loss = loss if self._step_loss is None else self._step_loss + loss

    def on_inner_step(self, trainer: L.Trainer, live: list[Tensor], grads: list[Tensor]) -> None:
        loss, self._step_loss = self._step_loss, None
        assert loss is not None, "on_before_backward did not run before the optimizer step"
        loss = self.global_loss(trainer, loss)
        if self._previous_loss is not None:
            self._add_segment(live, loss)
        torch._foreach_copy_(self._views["_previous"], live)
        if self.loss:
            torch._foreach_copy_(self._views["_previous_grad"], grads)
        self._previous_loss = loss

    def _add_segment(self, point: list[Tensor], point_loss: Tensor) -> None:
        """Add the increment of the segment from the previous point to ``point``.

        Works in place: ``_previous`` becomes -dtheta and is spent; the caller overwrites it next.
        """
        assert self._previous_loss is not None and self._path_length is not None
        torch._foreach_sub_(self._views["_previous"], point)
        negative_step = self._previous
        squared = negative_step.dot(negative_step)
        if self.loss:
            d_loss = point_loss - self._previous_loss
            if self.stabilizer:
                d_loss = -d_loss.abs()
            squared = squared + d_loss.square()
        length = squared.sqrt()
        self._path_length += length
        if self.p == 1:
            scale = 1.0 / length.clamp_min(torch.finfo(length.dtype).tiny)
        else:
            scale = torch.tensor(2.0, device=length.device)
        self._accumulator.addcmul_(negative_step, -scale)
        if self.loss:
            self._accumulator.addcmul_(self._previous_grad, d_loss * scale)

    def task_meta_gradient(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> list[Tensor]:
        """Add the final segment theta_{K-1} -> theta_K (loss at theta_K on the last batch) and negate."""
        final_loss = torch.zeros((), device=self.init[0].device)
        if self.loss:
            with trainer.precision_plugin.train_step_context(), _side_effect_free(pl_module):
                final_loss = training_loss(pl_module.training_step(batch, batch_idx)).detach().float()
            final_loss = self.global_loss(trainer, final_loss)
        self._add_segment(self._live, final_loss)
        pl_module.log("leap/path_length", self._path_length, on_step=True, on_epoch=False)  # type: ignore[arg-type]
        self._accumulator.neg_()
        return self._views["_accumulator"]

    def rule_state(self) -> dict[str, Any]:
        return {
            "previous": self._previous.clone(),
            "previous_grad": self._previous_grad.clone(),
            "accumulator": self._accumulator.clone(),
            "previous_loss": self._previous_loss,
            "path_length": self._path_length,
        }

    def load_rule_state(self, state: dict[str, Any]) -> None:
        self._allocate()
        self._previous.copy_(state["previous"])
        self._previous_grad.copy_(state["previous_grad"])
        self._accumulator.copy_(state["accumulator"])
        device = self.init[0].device
        self._previous_loss = None if state["previous_loss"] is None else state["previous_loss"].to(device)
        self._path_length = None if state["path_length"] is None else state["path_length"].to(device)
