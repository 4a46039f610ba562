"""``TrainerTaskLoop``: one fit's task loop on Lightning's automatic optimisation, which
:class:`~lightning_meta.MetaInit` routes the Trainer's hooks to.

It reads where tasks start and end from the data module's :class:`~lightning_meta.data.schedule.TaskSchedule`;
at each task start it loads theta_0 (:meth:`~lightning_meta.engine.MetaLearner.start_task`), clears the inner
optimizer's state, rewinds its LR schedulers and tells a :class:`~lightning_meta.protocols.TaskAware` module which
task starts; it reports every optimizer step to the learner and ends each task with the loss at its last weights
(``training_step`` run again on the task's last batch, logging nothing, buffers untouched). Its counters go into
the callback's checkpoint state.

Examples:
    >>> import lightning as L
    >>> from lightning_meta import Leap
    >>> from lightning_meta.data import TaskDataModule
    >>> tasks = TaskDataModule("glyphs", inner_steps=5, meta_batch_size=2, max_meta_steps=3)
    >>> trainer = L.Trainer(callbacks=[Leap()], logger=False)  # Leap's hooks drive a TrainerTaskLoop during fit
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from copy import deepcopy
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor

from lightning_meta.data.datamodule import StreamDataModule, TaskDataModule
from lightning_meta.engine import MetaLearner, MetaTrainingDiverged
from lightning_meta.lightning_private import muted_logging
from lightning_meta.protocols import TaskAware, implements
from lightning_meta.trainer.diverged import with_resume_hint
from lightning_meta.trainer.task_batched import TaskBatchedTraining
from lightning_meta.utils import log_meta_progress, training_loss


@contextmanager
def side_effect_free(pl_module: L.LightningModule, buffers: Iterable[Tensor]) -> Iterator[None]:
    """Run ``training_step`` again without logging and without touching ``buffers`` (BatchNorm statistics)."""
    saved = [(b, b.detach().clone()) for b in buffers]
    try:
        with muted_logging(pl_module):
            yield
    finally:
        for buffer, value in saved:
            buffer.copy_(value)


class TrainerTaskLoop:
    """The task loop of one fit (see the module docstring).

    Args:
        trainer: the running Trainer, its optimizers and LR schedulers configured (their state now is each task's
            fresh start).
        learner: the engine's learner bound to the Trainer's module.
        datamodule: the task stream, which owns the schedule.
        batched: with the data module's ``task_batch``: the Trainer's loop over that many tasks at once.
        owner: the callback's name, for messages.
    """

    def __init__(
        self,
        trainer: L.Trainer,
        learner: MetaLearner,
        datamodule: StreamDataModule,
        batched: TaskBatchedTraining | None,
        owner: str,
    ) -> None:
        self.learner, self.datamodule, self.batched, self.owner = learner, datamodule, batched, owner
        self.fresh_optimizers = [
            [{k: deepcopy(v) for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
            for optimizer in trainer.optimizers
        ]
        self.fresh_schedulers = [deepcopy(config.scheduler.state_dict()) for config in trainer.lr_scheduler_configs]
        self.active_task = -1  # position in the task stream of the task being trained
        self.meta_step_at = 0  # the global step at which theta_0 last took a meta-step
        self.suspended: list[Tensor] | None = None  # weights of a task cut short by the end of fit
        self._step_loss: Tensor | None = None
        self._stepped = False

    @torch.no_grad()
    def start_task_if_new(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """At the first step of a task: theta_0 in, fresh inner optimizer and schedulers, the module told."""
        task = self.datamodule.schedule.task(trainer.global_step)
        if task == self.active_task:
            return
        self.learner.start_task()
        for optimizer, groups in zip(trainer.optimizers, self.fresh_optimizers):
            optimizer.state.clear()
            for group, fresh in zip(optimizer.param_groups, groups):
                group.update(deepcopy(fresh))
        for config, fresh_state in zip(trainer.lr_scheduler_configs, self.fresh_schedulers):
            config.scheduler.load_state_dict(deepcopy(fresh_state))
        self.active_task, self.suspended = task, None
        datamodule = self.datamodule  # a TaskDataModule training one task at a time names it
        if (
            isinstance(datamodule, TaskDataModule)
            and self.batched is None
            and implements(pl_module, TaskAware, self.owner)
        ):
            pl_module.start_task(datamodule.task_info(task))  # type: ignore[attr-defined]
        log_meta_progress(pl_module, task, self.learner.meta_steps)  # once per task: a log call is not free

    def add_loss(self, trainer: L.Trainer, loss: Tensor) -> None:
        """Sum the (already 1/accumulate-scaled) losses of the micro-batches of one optimizer step."""
        if not self.learner.rule.needs_loss or self.batched is not None:  # tasks trained together: their own losses
            return
        loss = loss.detach()
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and scaler.is_enabled():  # fp16 AMP scaled the loss before this hook
            loss = loss / scaler.get_scale()  # a host sync per step, under fp16 AMP only (bf16 and fp32 have none)
        self._step_loss = loss if self._step_loss is None else self._step_loss + loss

    def step(self) -> None:
        """Before the inner optimizer steps: report the step (its gradients, its loss) to the learner."""
        self._stepped = True
        loss, self._step_loss = self._step_loss, None
        self.learner.update(self.batched.losses if self.batched is not None else loss)

    def end_task_if_done(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        """After an optimizer step that ends a task: end it in the learner (a meta-step when the meta-batch is full)
        and log the rule's, the guard's and the meta-batch's figures."""
        if not self._stepped:  # a micro-batch inside a gradient-accumulation window
            return
        self._stepped = False
        schedule = self.datamodule.schedule
        if not schedule.ends_task(trainer.global_step):
            return
        learner = self.learner
        final_loss = None
        if learner.rule.needs_final_loss:  # f(theta_K) on the task's last batch
            buffers = learner.live_buffers.values()
            with torch.no_grad(), trainer.precision_plugin.train_step_context(), side_effect_free(pl_module, buffers):
                if self.batched is not None:
                    final_loss = self.batched.task_losses(batch, batch_idx)
                else:
                    final_loss = training_loss(pl_module.training_step(batch, batch_idx))
        ended = schedule.tasks(trainer.global_step - 1)  # the step that just ran
        try:
            meta_step = learner.end_task(final_loss, task=ended if self.batched is not None else ended[0])
        except MetaTrainingDiverged as error:
            learner.load_init()  # the module holds the last good theta_0
            saved_by = self.meta_step_at - 1 if error.theta_0_suspect else None  # before theta_0's last meta-step
            raise with_resume_hint(error, trainer, saved_by) from None
        for key, value in learner.rule.metrics().items():  # the mean over tasks trained together
            pl_module.log(f"{learner.rule.name}/{key}", value.mean(), on_step=True, on_epoch=False)
        guard = learner.state.guard
        for key, ratio in (guard.metrics() if guard is not None else {}).items():  # the largest over tasks together
            pl_module.log(f"guard/{key}", ratio, on_step=True, on_epoch=False)
        if meta_step is not None:
            kept, tasks = meta_step
            if kept:
                self.meta_step_at = trainer.global_step
            pl_module.log("meta/tasks_dropped", float(tasks - kept), on_step=True, on_epoch=False)

    @torch.no_grad()
    def suspend(self) -> None:
        """At the end of fit: keep the running task's weights (a resumed run continues it), theta_0 into the module."""
        self.suspended = [p.detach().clone() for p in self.learner.live]
        self.learner.load_init()

    def state_dict(self) -> dict[str, Any]:
        """The learner's meta-state, the running task's weights and buffers, and the loop's counters."""
        state = self.learner.state_dict()
        return {
            **state,
            "task_params": self.suspended or [p.detach().clone() for p in self.learner.live],
            "task_buffers": {n: b.detach().clone() for n, b in self.learner.live_buffers.items()},
            "tasks_per_step": self.datamodule.schedule.tasks_per_step,
            "counters": {**state["counters"], "active_task": self.active_task, "meta_step_at": self.meta_step_at},
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back :meth:`state_dict`; resumed with another ``task_batch`` at a meta-step boundary, only the
        meta-state (no task is running, and its shapes differ)."""
        regrouped = state.get("tasks_per_step", self.datamodule.schedule.tasks_per_step) != (
            self.datamodule.schedule.tasks_per_step
        )
        try:
            self.learner.load_state_dict(state, trajectory=not regrouped)
        except ValueError as error:
            raise MisconfigurationException(f"{self.owner}: {error}") from None
        if not regrouped:
            torch._foreach_copy_(self.learner.live, state["task_params"])
            buffers = self.learner.live_buffers
            for name, buffer in state["task_buffers"].items():
                buffers[name].copy_(buffer)
        self.active_task = state["counters"]["active_task"]
        self.meta_step_at = state["counters"].get("meta_step_at", 0)
