"""``HeldOutTraining``: the one loop that trains a copy of a LightningModule on held-out tasks.

:class:`~lightning_meta.MetaEvaluation` (image tasks) and :class:`~lightning_meta.AtariEvaluation` (games) both
train from given weights the way a fresh ``fit`` of the module would: its ``training_step``, the optimizer of its
``configure_optimizers`` (or of ``configure_inner_optimizer``, see
:class:`~lightning_meta.protocols.InnerOptimizer`) with its per-step LR schedulers, gradients enabled even under
Lightning's ``inference_mode``. The module itself, its logging and the global RNG streams are left untouched.

Examples:
    >>> import torch
    >>> import lightning as L
    >>> class Line(L.LightningModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.w = torch.nn.Parameter(torch.zeros(1))
    ...     def training_step(self, batch, batch_idx):
    ...         return (self.w - batch).pow(2).sum()
    ...     def configure_optimizers(self):
    ...         return torch.optim.SGD(self.parameters(), lr=0.25)
    >>> module = Line()
    >>> with HeldOutTraining(module, torch.device("cpu")) as run:
    ...     run.start(module.state_dict(), seed=0)
    ...     losses = [float(run.step(torch.tensor([2.0]), i)) for i in range(3)]
    >>> losses, module.w.item()  # w: 0 -> 1 -> 1.5; the module itself did not move
    ([4.0, 1.0, 0.25], 0.0)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torch.optim import Optimizer

from lightning_meta.data.family import TaskInfo
from lightning_meta.lightning_private import muted_logging
from lightning_meta.protocols import InnerOptimizer, TaskAware, implements
from lightning_meta.utils import training_loss


def one_optimizer(config: Any) -> tuple[Optimizer, list[Any]]:
    """The optimizer and per-step LR schedulers of what ``configure_optimizers`` returned (Lightning's documented
    forms, with one optimizer). Schedulers with the default ``"epoch"`` interval do not apply inside one task."""
    if isinstance(config, (list, tuple)) and len(config) == 1:
        return one_optimizer(config[0])
    if isinstance(config, (list, tuple)) and len(config) == 2 and isinstance(config[0], (list, tuple)):
        optimizers, schedulers = config
    elif isinstance(config, dict) and "optimizer" in config:
        optimizers, schedulers = [config["optimizer"]], [config.get("lr_scheduler")]
    else:
        optimizers, schedulers = [config], []
    if len(optimizers) != 1 or not isinstance(optimizers[0], Optimizer):
        raise MisconfigurationException(
            f"held-out tasks train with one optimizer; configure_optimizers returned {config!r:.200}"
        )
    per_step = [s["scheduler"] for s in schedulers if isinstance(s, dict) and s.get("interval", "epoch") == "step"]
    return optimizers[0], per_step


class HeldOutTraining:
    """A context in which a copy of ``pl_module`` on ``device`` trains held-out tasks, one after the other.

    Inside it, :meth:`start` begins a task from given weights with a fresh optimizer, :meth:`step` takes one
    training step (and calls ``progress``, e.g. to advance a bar of
    :func:`~lightning_meta.callbacks.progress.held_out_progress`); ``model`` is the copy. On exit the RNG streams are
    back where they were.
    """

    def __init__(
        self, pl_module: L.LightningModule, device: torch.device, progress: Callable[[], None] | None = None
    ) -> None:
        self.pl_module = pl_module
        self.device = device
        self.progress = progress
        self._stack = ExitStack()

    def __enter__(self) -> HeldOutTraining:
        stack = self._stack
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []))
        self.model = copy.deepcopy(self.pl_module).to(self.device)
        stack.enter_context(muted_logging(self.model))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def start(self, state: dict[str, Tensor], seed: int, task: TaskInfo | None = None) -> None:
        """A new task: seed the RNG, load ``state``, tell a :class:`~lightning_meta.protocols.TaskAware` model which
        ``task`` starts (e.g. to draw its head) and make a fresh optimizer."""
        torch.manual_seed(seed)
        self.model.load_state_dict(state)
        if task is not None and implements(self.model, TaskAware, "held-out training"):
            self.model.start_task(task)
        self.model.train()
        if implements(self.model, InnerOptimizer, "held-out training"):
            self.optimizer, self.schedulers = one_optimizer(self.model.configure_inner_optimizer())
        else:
            self.optimizer, self.schedulers = one_optimizer(self.model.configure_optimizers())

    @torch.no_grad()
    def loss(self, batch: Any, index: int) -> Tensor:
        """The training loss on ``batch`` at the current weights, with no step; buffers (BatchNorm's running
        statistics) are left as they were."""
        buffers = [buffer.clone() for buffer in self.model.buffers()]
        loss = training_loss(self.model.training_step(batch, index)).detach()
        for buffer, saved in zip(self.model.buffers(), buffers):
            buffer.copy_(saved)
        return loss

    def step(self, batch: Any, index: int) -> Tensor:
        """One optimizer step on ``batch``; returns the step's loss (detached)."""
        loss = training_loss(self.model.training_step(batch, index))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        for scheduler in self.schedulers:
            scheduler.step()
        if self.progress is not None:
            self.progress()
        return loss.detach()
