"""``MetaInit``: the Lightning front door of the engine: meta-learn a LightningModule's initialisation theta_0.

The callback only routes Trainer hooks to a :class:`~lightning_meta.engine.MetaLearner`: it finds where tasks start
and end (the :class:`~lightning_meta.tasks.schedule.TaskSchedule`), gives each task a fresh inner optimizer and LR
schedule, reports every optimizer step, and ends each task with the loss at its last weights. What a task's
trajectory means is the rule's business (:class:`~lightning_meta.engine.LeapRule`,
:class:`~lightning_meta.engine.ReptileRule`, your own :class:`~lightning_meta.engine.TrajectoryRule`); meta-batches,
diverged tasks, the reduce over DDP processes and the meta-optimizer are the engine's.

Examples:
    >>> import lightning as L
    >>> from lightning_meta import MetaInit
    >>> from lightning_meta.engine import ReptileRule
    >>> callback = MetaInit(ReptileRule(), inner_steps=5, meta_batch_size=2, meta_lr=0.5)
    >>> trainer = L.Trainer(callbacks=[callback], max_steps=20, logger=False, enable_checkpointing=False)

    A rule of your own is one small class (see :class:`~lightning_meta.engine.TrajectoryRule`, whose example rule
    goes into ``MetaInit`` the same way).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from lightning_meta.callbacks import sharded
from lightning_meta.callbacks.diverged import with_resume_hint
from lightning_meta.callbacks.task_batched import TaskBatchedTraining
from lightning_meta.engine import (
    MetaLearner,
    MetaTrainingDiverged,
    RunawayGuard,
    ShardedMetaLearner,
    TaskBatchedLearner,
    TrajectoryRule,
)
from lightning_meta.engine.learner import Buffers, select_parameters
from lightning_meta.engine.meta_state import optimizer_class
from lightning_meta.tasks.datamodule import task_datamodule
from lightning_meta.tasks.schedule import Parallel, TaskSchedule
from lightning_meta.tasks.stream import batch_tasks
from lightning_meta.utils import ParamFilter, log_meta_progress, muted_logging, training_loss

FINAL_CHECKPOINT = "final.ckpt"
"""File name of the checkpoint written at the end of fit, in the directory of the Trainer's ``ModelCheckpoint``."""


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


class MetaInit(L.Callback):
    """Meta-learn theta_0 of a LightningModule's parameters with a trajectory ``rule``, inside an ordinary ``fit``.

    Task ``t`` covers optimizer steps ``[t * inner_steps, (t + 1) * inner_steps)`` (gradient accumulation counts
    one optimizer step per window). At each task start theta_0 is loaded into the meta-learned parameters, buffers
    are reset (see ``buffers``), the inner optimizer's state is cleared and its LR schedulers rewound, so the task
    trains exactly as a fresh run from theta_0 would. After ``meta_batch_size`` tasks theta_0 takes a meta-step.
    When fit ends the module holds theta_0 and, with checkpointing on, ``final.ckpt`` holds it on disk.

    Args:
        rule: turns each task's trajectory into a meta-gradient.
        inner_steps: optimizer steps per task, for data without a :class:`~lightning_meta.tasks.StreamDataModule`;
            ``None`` reads it from the data module, which owns the task schedule. Both given and different is an
            error at ``setup``.
        meta_batch_size: tasks averaged into one meta-step, over all processes; ``None`` reads it from the data
            module (``task_batch``, else 1, when it has none either). Both given and different is an error at
            ``setup``.
        meta_lr: learning rate of the meta-optimizer.
        meta_optimizer: a ``torch.optim`` class or its name (``"SGD"``, ``"Adam"``, ``"pkg.module.Class"``).
        meta_optimizer_kwargs: further keyword arguments of the meta-optimizer (e.g. ``{"momentum": 0.9}``).
        include: which trainable parameters are meta-learned: a regular expression searched in the parameter
            name, or a predicate ``(name, parameter) -> bool``; ``None`` selects all. The others (e.g. per-task
            heads) train freely inside each task and are left alone at task starts.
        buffers: ``"reset"``: buffers (BatchNorm statistics) return to their value at the start of meta-training at
            every task start; ``"keep"``: they carry over from the last task that finished without diverging.
        save_init_as_weights: checkpoints store theta_0 as the model's ``state_dict`` (so ``load_from_checkpoint``
            returns the meta-learned init); the live weights of the running task go into the callback's state and
            are restored on resume. Applies to full checkpoints (not ``save_weights_only``).
        parallel: under DDP, ``"tasks"`` (task-parallel): each process trains its own tasks of the meta-batch
            (``meta_batch_size`` must be a multiple of the number of processes) with no gradient synchronisation
            inside tasks, and the meta-gradients are summed over processes once per meta-step; ``"data"``
            (data-parallel): all processes train the same task on shards of each batch (ordinary DDP) and compute
            the same meta-step. Either way theta_0 is identical on every process. Needs
            ``Trainer(use_distributed_sampler=False)`` with a :class:`~lightning_meta.tasks.TaskDataModule`, which
            then streams each process its tasks or shards. Under ``ModelParallelStrategy`` (a module that shards
            itself with FSDP2's ``fully_shard``), ``"data"`` (:mod:`~lightning_meta.callbacks.sharded`).
        final_checkpoint: when fit ends, write ``final.ckpt`` (theta_0 as the weights, the whole meta-state) into
            the directory of the Trainer's ``ModelCheckpoint``, whatever its interval; nothing when checkpointing is
            off.
        task_batch: train this many tasks at once in each optimizer step, vectorised over tasks
            (:mod:`~lightning_meta.callbacks.task_batched`); ``None`` reads it from the data module (one task at a
            time when it has none either). Both given and different is an error at ``setup``. A divisor of each
            process's tasks per meta-step; ``max_steps`` then counts steps of T tasks each (divide the one-at-a-time
            ``max_steps`` by T, as by the processes under task-parallel DDP).
        guard: the checks against runaway meta-training (:class:`~lightning_meta.engine.RunawayGuard`; ``True``: its
            defaults; ``False``: none). When it stops meta-training, fit raises
            :class:`~lightning_meta.engine.MetaTrainingDiverged` naming the likely cause and the checkpoint to resume
            from (:mod:`~lightning_meta.callbacks.diverged`), and the module holds the last good theta_0.
    """

    def __init__(
        self,
        rule: TrajectoryRule,
        inner_steps: int | None = None,
        meta_batch_size: int | None = None,
        meta_lr: float = 0.1,
        meta_optimizer: str | type[Optimizer] = "SGD",
        meta_optimizer_kwargs: dict[str, Any] | None = None,
        include: str | ParamFilter | None = None,
        buffers: Buffers = "reset",
        save_init_as_weights: bool = True,
        parallel: Parallel = "tasks",
        final_checkpoint: bool = True,
        task_batch: int | None = None,
        guard: RunawayGuard | bool = True,
    ) -> None:
        sizes = {"inner_steps": inner_steps, "meta_batch_size": meta_batch_size, "task_batch": task_batch}
        for name, value in sizes.items():
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if buffers not in ("reset", "keep"):
            raise ValueError(f"buffers must be 'reset' or 'keep', got {buffers!r}")
        if parallel not in ("tasks", "data"):
            raise ValueError(f"parallel must be 'tasks' or 'data', got {parallel!r}")
        optimizer_class(meta_optimizer)  # a wrong name fails here, not at the start of fit
        self.rule = rule
        self.inner_steps = inner_steps
        self.meta_batch_size = meta_batch_size
        self.meta_lr = meta_lr
        self.meta_optimizer = meta_optimizer
        self.meta_optimizer_kwargs = dict(meta_optimizer_kwargs or {})
        self.include = include
        self.buffers: Buffers = buffers
        self.save_init_as_weights = save_init_as_weights
        self.parallel: Parallel = parallel
        self.final_checkpoint = final_checkpoint
        self.task_batch = task_batch
        self.guard = guard
        self.learner: MetaLearner | None = None  # built in on_fit_start, where the module has its device
        self._batched: TaskBatchedTraining | None = None  # with task_batch: the Trainer's loop over T tasks at once
        self.names: list[str] = []  # the meta-learned parameters, chosen in setup
        self.active_task = -1  # position in the task stream of the task being trained
        self._meta_step_at = 0  # the global step at which theta_0 last took a meta-step
        self._schedule: TaskSchedule | None = None  # used only without a StreamDataModule (else the data module's)
        self._trainer: L.Trainer | None = None
        self._fresh_optimizer: list[list[dict[str, Any]]] = []
        self._fresh_schedulers: list[dict[str, Any]] = []
        self._step_loss: Tensor | None = None
        self._stepped = False
        self._resumed: dict[str, Any] | None = None  # the checkpoint's state, applied once the learner exists
        self._regrouped = False  # resumed with another task_batch (at a meta-step boundary)
        self._suspended: list[Tensor] | None = None  # weights of a task cut short by the end of fit

    # ----------------------------------------------------------------- what the rest of the library reads
    @property
    def schedule(self) -> TaskSchedule:
        """Where tasks start and end on this process: the data module's when it streams tasks (its one home)."""
        datamodule = task_datamodule(self._trainer) if self._trainer is not None else None
        schedule = datamodule.schedule if datamodule is not None else self._schedule
        if schedule is None:
            raise RuntimeError(f"{type(self).__name__}: the task schedule is made in setup(); fit has not started")
        return schedule

    @property
    def theta_0(self) -> list[torch.nn.Parameter]:
        """The meta-learned init, one tensor per name in :attr:`names`."""
        return self._learner().theta_0

    @property
    def meta_steps(self) -> int:
        """Meta-steps taken (0 before fit)."""
        return self.learner.meta_steps if self.learner is not None else 0

    def _learner(self) -> MetaLearner:
        if self.learner is None:
            raise RuntimeError(f"{type(self).__name__}: the meta-learner is built when fit starts")
        return self.learner

    def init_state_dict(self, pl_module: L.LightningModule) -> dict[str, Tensor]:
        """The module's ``state_dict`` with theta_0 and the buffers a task starts with in place of the live ones."""
        return self._learner().init_state_dict()

    # ----------------------------------------------------------------- set-up
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        name = type(self).__name__
        if not pl_module.automatic_optimization:
            raise MisconfigurationException(
                f"{name} hooks Lightning's automatic optimisation; {type(pl_module).__name__} uses manual "
                "optimisation. Set `self.automatic_optimization = True` or use the MAML mixin instead."
            )
        if not isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy, ModelParallelStrategy)):
            raise MisconfigurationException(
                f"{name} supports a single device, DDP (strategy='ddp' or 'ddp_spawn') and ModelParallelStrategy "
                f"(FSDP2), not {type(trainer.strategy).__name__}."
            )
        try:
            self.names = [n for n, _ in select_parameters(pl_module, self.include)]
            schedule = self._make_schedule(trainer)
        except ValueError as error:
            raise MisconfigurationException(f"{name}: {error}") from None
        sharded.check_setup(trainer, name, schedule)
        if schedule.task_batch is not None:
            if schedule.parallel == "data" and schedule.world_size > 1:
                raise MisconfigurationException(
                    f"{name}: tasks trained together (task_batch={schedule.task_batch}) are each process's own: use "
                    "parallel='tasks' under DDP, or leave task_batch unset."
                )
            TaskBatchedTraining.check_setup(trainer, schedule.task_batch, name)
        self._trainer = trainer
        datamodule = task_datamodule(trainer)
        if datamodule is not None:
            datamodule.schedule = schedule
        else:
            self._schedule = schedule

    def _make_schedule(self, trainer: L.Trainer) -> TaskSchedule:
        """The schedule from the data module's sizes, or this callback's where the data module leaves them open."""
        datamodule = task_datamodule(trainer)
        sizes: dict[str, int | None] = {}
        for size in ("inner_steps", "meta_batch_size", "task_batch"):
            mine, theirs = getattr(self, size), getattr(datamodule, size, None)
            if mine is not None and theirs is not None and mine != theirs:
                raise ValueError(
                    f"{size}={mine} disagrees with {type(datamodule).__name__}({size}={theirs}): tasks would be cut or "
                    "grouped at the wrong steps. Set it on the data module only."
                )
            sizes[size] = theirs if theirs is not None else mine
        if sizes["inner_steps"] is None:
            raise ValueError("needs to know where tasks end: pass `inner_steps=` or train with a TaskDataModule.")
        return TaskSchedule(
            sizes["inner_steps"],
            sizes["meta_batch_size"] or sizes["task_batch"] or 1,
            trainer.world_size,
            trainer.global_rank,
            self.parallel,
            task_batch=sizes["task_batch"],
        )

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        schedule = self.schedule
        several = schedule.world_size > 1
        arguments: dict[str, Any] = dict(
            meta_batch_size=schedule.tasks_per_process,
            meta_lr=self.meta_lr,
            meta_optimizer=self.meta_optimizer,
            meta_optimizer_kwargs=self.meta_optimizer_kwargs,
            include=self.include,
            buffers=self.buffers,
            parallel=self.parallel,
            all_reduce=(lambda tensor: trainer.strategy.reduce(tensor, reduce_op="sum")) if several else None,
            guard=self.guard,
        )
        if schedule.task_batch is None:
            self.learner = sharded.meta_learner(trainer, pl_module, self.rule, type(self).__name__, **arguments)
        else:
            try:
                learner = TaskBatchedLearner(pl_module, self.rule, schedule.task_batch, **arguments)
            except ValueError as error:
                raise MisconfigurationException(f"{type(self).__name__}: {error}") from None
            self.learner, self._batched = learner, TaskBatchedTraining(trainer, learner)
            self._batched.check_optimizers(type(self).__name__)
            self._batched.install()
        self._fresh_optimizer = [
            [{k: deepcopy(v) for k, v in g.items() if k != "params"} for g in o.param_groups]
            for o in trainer.optimizers
        ]
        self._fresh_schedulers = [deepcopy(config.scheduler.state_dict()) for config in trainer.lr_scheduler_configs]
        self._suspended = None
        if self._resumed is not None:
            self._apply(self._resumed, pl_module)
            self._resumed = None

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._resumed is not None:  # strategies that restore checkpoints after on_fit_start (ModelParallelStrategy)
            self._apply(self._resumed, pl_module)
            self._resumed = None
        if self.schedule.task_parallel:
            # Each process trains its own task: DDP must not average gradients inside tasks. (With this flag off,
            # DDP also stops broadcasting rank 0's buffers at each forward, so each task keeps its own statistics.)
            trainer.strategy.model.require_backward_grad_sync = False  # type: ignore[union-attr]

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._batched is not None:
            self._batched.uninstall()
            self._batched = None
        datamodule = task_datamodule(trainer)
        if datamodule is not None and stage == "fit":
            datamodule.schedule = None  # the data module may be reused without this callback

    # ----------------------------------------------------------------- the loop
    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        tasks = self.schedule.tasks(trainer.global_step)
        found = batch_tasks(batch)
        if found is not None and found != tasks:
            raise RuntimeError(
                f"The batch holds task(s) {found} of the stream but optimizer step {trainer.global_step} with "
                f"inner_steps={self.schedule.inner_steps} and task_batch={self.schedule.task_batch} trains {tasks}: "
                "the data and the callback disagree on where tasks end or how many train together (check inner_steps, "
                "task_batch and accumulate_grad_batches)."
            )
        task = tasks[0]
        if task != self.active_task:
            self._start_task(trainer, task)
            # once per task: a log call costs about as much as Leap's whole per-step update
            log_meta_progress(pl_module, task, self.meta_steps)

    @torch.no_grad()
    def _start_task(self, trainer: L.Trainer, task: int) -> None:
        self._learner().start_task()
        for optimizer, groups in zip(trainer.optimizers, self._fresh_optimizer):
            optimizer.state.clear()
            for group, fresh in zip(optimizer.param_groups, groups):
                group.update(deepcopy(fresh))
        for config, fresh_state in zip(trainer.lr_scheduler_configs, self._fresh_schedulers):
            config.scheduler.load_state_dict(deepcopy(fresh_state))
        self.active_task = task
        self._suspended = None

    @override
    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        """Sum the (already 1/accumulate-scaled) losses of the micro-batches of one optimizer step."""
        if not self.rule.needs_loss or self._batched is not None:  # tasks trained together: their own losses
            return
        loss = loss.detach()
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and scaler.is_enabled():  # fp16 AMP scaled the loss before this hook
            loss = loss / scaler.get_scale()  # a host sync per step, under fp16 AMP only (bf16 and fp32 have none)
        self._step_loss = loss if self._step_loss is None else self._step_loss + loss

    @override
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Optimizer) -> None:
        self._stepped = True
        loss, self._step_loss = self._step_loss, None
        if self._batched is not None:
            loss = self._batched.losses
        self._learner().update(loss)

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._stepped:  # a micro-batch inside a gradient-accumulation window
            return
        self._stepped = False
        if self.schedule.ends_task(trainer.global_step):
            self._end_task(trainer, pl_module, batch, batch_idx)

    def _end_task(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        learner = self._learner()
        final_loss = None
        if self.rule.needs_final_loss:  # f(theta_K) on the task's last batch
            buffers = learner.live_buffers.values()
            with torch.no_grad(), trainer.precision_plugin.train_step_context(), side_effect_free(pl_module, buffers):
                if self._batched is not None:
                    final_loss = self._batched.task_losses(batch, batch_idx)
                else:
                    final_loss = training_loss(pl_module.training_step(batch, batch_idx))
        ended = self.schedule.tasks(trainer.global_step - 1)  # the step that just ran
        try:
            meta_step = learner.end_task(final_loss, task=ended if self._batched is not None else ended[0])
        except MetaTrainingDiverged as error:
            learner.load_init()  # the module holds the last good theta_0
            saved_by = self._meta_step_at - 1 if error.theta_0_suspect else None  # before theta_0's last meta-step
            raise with_resume_hint(error, trainer, saved_by) from None
        for key, value in self.rule.metrics().items():  # the mean over tasks trained together
            pl_module.log(f"{self.rule.name}/{key}", value.mean(), on_step=True, on_epoch=False)
        guard = learner.state.guard
        for key, ratio in (guard.metrics() if guard is not None else {}).items():  # the largest over tasks together
            pl_module.log(f"guard/{key}", ratio, on_step=True, on_epoch=False)
        if meta_step is not None:
            kept, tasks = meta_step
            if kept:
                self._meta_step_at = trainer.global_step
            pl_module.log("meta/tasks_dropped", float(tasks - kept), on_step=True, on_epoch=False)

    @override
    @torch.no_grad()
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Leave theta_0 and its buffers, the product of meta-training, in the module and in ``final.ckpt``.

        The weights of a task cut short by the end of fit are kept in the callback's state, so that a run resumed
        from ``final.ckpt`` with a larger ``max_steps`` continues that task.
        """
        learner = self._learner()
        self._suspended = [p.detach().clone() for p in learner.live]
        learner.load_init()
        checkpoint = trainer.checkpoint_callback
        directory = getattr(checkpoint, "dirpath", None)
        if self.final_checkpoint and directory is not None:
            path = Path(directory) / FINAL_CHECKPOINT
            trainer.save_checkpoint(path, weights_only=False)  # the whole meta-state: a run resumes from it
            rank_zero_info(f"{type(self).__name__}: theta_0 written to {path}")

    # ----------------------------------------------------------------- checkpoints
    @override
    def state_dict(self) -> dict[str, Any]:
        if self.learner is None:
            return {}
        state = self.learner.state_dict()
        state = {
            **state,
            "task_params": self._suspended or [p.detach().clone() for p in self.learner.live],
            "task_buffers": {n: b.detach().clone() for n, b in self.learner.live_buffers.items()},
            "schedule": asdict(self.schedule),  # plain types: checkpoints load with weights_only=True
            "counters": {**state["counters"], "active_task": self.active_task, "meta_step_at": self._meta_step_at},
        }
        return sharded.gather_shards(state) if isinstance(self.learner, ShardedMetaLearner) else state

    @override
    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Continue the task stream where the saved run stopped (on any number of processes, see
        :meth:`~lightning_meta.tasks.schedule.TaskSchedule.resumed_from`); the meta-state follows in
        ``on_fit_start``, once the module is on its device."""
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if not state:
            return
        name = type(self).__name__
        state = sharded.own_shards(trainer, state)
        if state["names"] != self.names:
            raise MisconfigurationException(
                f"{name}: the checkpoint meta-learns {len(state['names'])} tensors that differ from the "
                f"{len(self.names)} selected now (include={self.include!r}); resume with the same model and include "
                "filter."
            )
        schedule = self.schedule
        # checkpoints of version 0.1.0 have no schedule: they come from one process
        single = TaskSchedule(schedule.inner_steps, schedule.meta_batch_size)
        saved = TaskSchedule(**(state.get("schedule") or asdict(single)))
        try:
            resumed = schedule.resumed_from(saved, state["counters"]["tasks_in_batch"], checkpoint["global_step"])
        except ValueError as error:
            raise MisconfigurationException(f"{name}: {error}") from None
        self._regrouped = saved.tasks_per_step != schedule.tasks_per_step
        datamodule = task_datamodule(trainer)
        if datamodule is not None:
            datamodule.schedule = resumed
        else:
            self._schedule = resumed
        self._resumed = state

    @torch.no_grad()
    def _apply(self, state: dict[str, Any], pl_module: L.LightningModule) -> None:
        learner = self._learner()
        # resumed with another task_batch, at a meta-step boundary: no task is running, and its shapes differ
        learner.load_state_dict(state, trajectory=not self._regrouped)
        if not self._regrouped:
            torch._foreach_copy_(learner.live, state["task_params"])
            buffers = learner.live_buffers
            for name, buffer in state["task_buffers"].items():
                buffers[name].copy_(buffer)
        self.active_task = state["counters"]["active_task"]
        self._meta_step_at = state["counters"].get("meta_step_at", 0)

    @override
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.save_init_as_weights and self.learner is not None:
            weights = checkpoint["state_dict"]
            if isinstance(self.learner, ShardedMetaLearner):
                init = sharded.init_weights(trainer, self.learner)
            else:
                init = self.learner.init_state_dict()
            weights.update((n, t) for n, t in init.items() if n in weights)
