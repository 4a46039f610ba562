"""``MetaInit``: the Lightning front door of the engine: meta-learn a LightningModule's initialisation theta_0.

The callback only routes Trainer hooks to a :class:`~lightning_meta.engine.MetaLearner`: it reads where tasks start
and end from the data module's :class:`~lightning_meta.tasks.schedule.TaskSchedule` (the data module owns it: inner
steps, meta-batch, tasks trained together, how DDP processes share tasks, the meta-steps to run), gives each task a
fresh inner optimizer and LR schedule, reports every optimizer step, and ends each task with the loss at its last
weights. What a task's
trajectory means is the rule's business (:class:`~lightning_meta.engine.LeapRule`,
:class:`~lightning_meta.engine.ReptileRule`, your own :class:`~lightning_meta.engine.TrajectoryRule`); meta-batches,
diverged tasks, the reduce over DDP processes and the meta-optimizer are the engine's.

Examples:
    >>> import lightning as L
    >>> from lightning_meta import MetaInit
    >>> from lightning_meta.engine import ReptileRule
    >>> from lightning_meta.tasks import TaskDataModule
    >>> tasks = TaskDataModule("glyphs", inner_steps=5, meta_batch_size=2, max_meta_steps=10)   # the schedule
    >>> trainer = L.Trainer(callbacks=[MetaInit(ReptileRule(), meta_lr=0.5)], logger=False, enable_checkpointing=False)

    A rule of your own is one small class (see :class:`~lightning_meta.engine.TrajectoryRule`, whose example rule
    goes into ``MetaInit`` the same way).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, SingleDeviceStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from lightning_meta.callbacks import sharded
from lightning_meta.callbacks.diverged import with_resume_hint
from lightning_meta.callbacks.progress import use_meta_progress_bar
from lightning_meta.callbacks.task_batched import TaskBatchedTraining
from lightning_meta.checkpoint_io import use_atomic_checkpoints
from lightning_meta.engine import (
    MetaLearner,
    MetaTrainingDiverged,
    RunawayGuard,
    ShardedMetaLearner,
    TaskBatchedLearner,
    TrajectoryRule,
)
from lightning_meta.engine.learner import Buffers, select_parameters
from lightning_meta.engine.meta_state import check_meta_lr, optimizer_class
from lightning_meta.protocols import TaskAware, implements
from lightning_meta.tasks.datamodule import StreamDataModule, TaskDataModule, task_datamodule
from lightning_meta.tasks.schedule import TaskSchedule
from lightning_meta.utils import ParamFilter, log_meta_progress, muted_logging, training_loss
from lightning_meta.validation import check_choice

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


SUPPORTED_STRATEGIES: tuple[type[Strategy], ...] = (SingleDeviceStrategy, DDPStrategy, ModelParallelStrategy)
"""The strategies the meta-learning callbacks run under, by exact class (``"ddp"``, ``"ddp_spawn"``,
``"ddp_notebook"`` are :class:`DDPStrategy`; DeepSpeed's strategy subclasses it but shards the model its own way;
``ModelParallelStrategy`` with a module sharded by FSDP2's ``fully_shard``:
:mod:`~lightning_meta.callbacks.sharded`)."""

MOVED_TO_DATA = ("inner_steps", "meta_batch_size", "task_batch", "parallel", "max_meta_steps")
"""Arguments that belong to the task schedule, which the data module owns."""


class MetaInit(L.Callback):
    """Meta-learn theta_0 of a LightningModule's parameters with a trajectory ``rule``, inside an ordinary ``fit``.

    The data module (a :class:`~lightning_meta.tasks.StreamDataModule` such as
    :class:`~lightning_meta.tasks.TaskDataModule`) owns the task schedule: task ``t`` of this process covers its
    optimizer steps ``[t * inner_steps, (t + 1) * inner_steps)`` (gradient accumulation counts one optimizer step per
    window), ``meta_batch_size`` tasks make a meta-step, and ``max_meta_steps`` ends the run. At each task start
    theta_0 is loaded into the meta-learned parameters, buffers are reset (see ``buffers``), the inner optimizer's
    state is cleared and its LR schedulers rewound, so the task trains exactly as a fresh run from theta_0 would; a
    :class:`~lightning_meta.protocols.TaskAware` module is told which task starts. After each meta-batch theta_0
    takes a meta-step. When fit ends the module holds theta_0 and, with checkpointing on, ``final.ckpt`` holds it on
    disk. Batches reach ``training_step`` unchanged. Under DDP each process trains its own tasks (the stream's
    ``parallel="tasks"``, the default with this callback) with no gradient synchronisation inside tasks, and the
    meta-gradients are summed over processes once per meta-step; or, with ``parallel="data"``, all processes train
    the same task on shards of each batch. Either way theta_0 is identical on every process.

    Args:
        rule: turns each task's trajectory into a meta-gradient.
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
        final_checkpoint: when fit ends, write ``final.ckpt`` (theta_0 as the weights, the whole meta-state) into
            the directory of the Trainer's ``ModelCheckpoint``, whatever its interval; nothing when checkpointing is
            off.
        guard: the checks against runaway meta-training (:class:`~lightning_meta.engine.RunawayGuard`; ``True``: its
            defaults; ``False``: none). When it stops meta-training, fit raises
            :class:`~lightning_meta.engine.MetaTrainingDiverged` naming the likely cause and the checkpoint to resume
            from (:mod:`~lightning_meta.callbacks.diverged`), and the module holds the last good theta_0.

    With the data module's ``task_batch=T`` each optimizer step trains T tasks at once, vectorised over tasks
    (:mod:`~lightning_meta.callbacks.task_batched`).
    """

    trains_tasks_apart = True  # TrainsTasksApart: under DDP a stream left to choose spreads tasks over processes

    def __init__(
        self,
        rule: TrajectoryRule,
        meta_lr: float = 0.1,
        meta_optimizer: str | type[Optimizer] = "SGD",
        meta_optimizer_kwargs: dict[str, Any] | None = None,
        include: str | ParamFilter | None = None,
        buffers: Buffers = "reset",
        save_init_as_weights: bool = True,
        final_checkpoint: bool = True,
        guard: RunawayGuard | bool = True,
        **moved: Any,
    ) -> None:
        schedule = [name for name in moved if name in MOVED_TO_DATA]
        if schedule:
            sizes = ", ".join(f"{name}={moved[name]!r}" for name in schedule)
            raise TypeError(
                f"{type(self).__name__}({sizes}): the task schedule belongs to the data module, which owns it: pass "
                f"them to TaskDataModule(...) (--data.{schedule[0]}=... on the command line)."
            )
        if moved:
            raise TypeError(f"{type(self).__name__} got unexpected arguments {sorted(moved)}")
        check_choice(type(self).__name__, "buffers", buffers, ("reset", "keep"))
        optimizer_class(meta_optimizer)  # a wrong name fails here, not at the start of fit
        check_meta_lr(meta_lr)  # as does a meta_lr torch.optim would refuse
        self.rule = rule
        self.meta_lr = meta_lr
        self.meta_optimizer = meta_optimizer
        self.meta_optimizer_kwargs = dict(meta_optimizer_kwargs or {})
        self.include = include
        self.buffers: Buffers = buffers
        self.save_init_as_weights = save_init_as_weights
        self.final_checkpoint = final_checkpoint
        self.guard = guard
        self.learner: MetaLearner | None = None  # built in on_fit_start, where the module has its device
        self._batched: TaskBatchedTraining | None = None  # with task_batch: the Trainer's loop over T tasks at once
        self._datamodule: StreamDataModule | None = None  # the task stream, which owns the schedule
        self.names: list[str] = []  # the meta-learned parameters, chosen in setup
        self.active_task = -1  # position in the task stream of the task being trained
        self._meta_step_at = 0  # the global step at which theta_0 last took a meta-step
        self._fresh_optimizer: list[list[dict[str, Any]]] = []
        self._fresh_schedulers: list[dict[str, Any]] = []
        self._step_loss: Tensor | None = None
        self._stepped = False
        self._resumed: dict[str, Any] = {}  # the checkpoint's state, applied once the learner exists
        self._suspended: list[Tensor] | None = None  # weights of a task cut short by the end of fit

    # ----------------------------------------------------------------- what the rest of the library reads
    @property
    def schedule(self) -> TaskSchedule:
        """Where tasks start and end on this process: the data module's schedule (read, never written)."""
        if self._datamodule is None:
            raise RuntimeError(f"{type(self).__name__}: the task schedule is read in setup(); fit has not started")
        return self._datamodule.schedule

    @property
    def theta_0(self) -> list[torch.nn.Parameter]:
        """The meta-learned init, one tensor per name in :attr:`names`."""
        return self._learner().theta_0

    @property
    def meta_steps(self) -> int:
        """Meta-steps taken (0 before fit)."""
        return self.learner.meta_steps if self.learner is not None else 0

    def resumable_now(self, trainer: L.Trainer) -> bool:
        """Whether a checkpoint saved at this step resumes exactly: always, except for a task-parallel run on several
        processes inside a meta-batch (its other processes' partial tasks are not in the checkpoint)."""
        schedule = self.schedule
        return not schedule.task_parallel or schedule.at_meta_step_boundary(trainer.global_step)

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
        if type(trainer.strategy) not in SUPPORTED_STRATEGIES:
            raise MisconfigurationException(
                f"{name} supports a single device, DDP (strategy='ddp', 'ddp_spawn' or 'ddp_notebook') and "
                f"ModelParallelStrategy (a module sharded with FSDP2), not {type(trainer.strategy).__name__}."
            )
        datamodule = task_datamodule(trainer)
        if datamodule is None:
            raise MisconfigurationException(
                f"{name} trains a stream of tasks: fit with a task data module, e.g. "
                "trainer.fit(model, datamodule=TaskDataModule(family, inner_steps=..., meta_batch_size=...)) with a "
                "family of your data sets (DatasetTasks, FewShotTasks, SeededTasks)."
            )
        try:
            self.names = [n for n, _ in select_parameters(pl_module, self.include)]
        except ValueError as error:
            raise MisconfigurationException(f"{name}: {error}") from None
        self._datamodule = datamodule
        use_atomic_checkpoints(trainer)  # final.ckpt and the checkpoints a diverged run names: whole or not at all
        schedule = datamodule.schedule
        sharded.check_setup(trainer, name, schedule)
        if schedule.task_batch is not None:
            if schedule.parallel == "data" and schedule.world_size > 1:
                raise MisconfigurationException(
                    f"{name}: tasks trained together (task_batch={schedule.task_batch}) are each process's own: use "
                    "parallel='tasks' under DDP, or leave task_batch unset."
                )
            TaskBatchedTraining.check_setup(trainer, schedule.task_batch, name)
        use_meta_progress_bar(trainer, pl_module, stage)  # in place of Lightning's default bar, one per epoch

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
            parallel=schedule.parallel,
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
        if self._resumed:
            self._apply(self._resumed, trainer)
            self._resumed = {}

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._resumed:  # strategies that restore checkpoints after on_fit_start (ModelParallelStrategy)
            self._apply(self._resumed, trainer)
            self._resumed = {}
        if self.schedule.task_parallel:
            # Each process trains its own task: DDP must not average gradients inside tasks. (With this flag off,
            # DDP also stops broadcasting rank 0's buffers at each forward, so each task keeps its own statistics.)
            trainer.strategy.model.require_backward_grad_sync = False  # type: ignore[union-attr]

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._batched is not None:
            self._batched.uninstall()
            self._batched = None

    # ----------------------------------------------------------------- the loop
    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        task = self.schedule.task(trainer.global_step)
        if task != self.active_task:
            self._start_task(trainer, pl_module, task)
            # once per task: a log call costs about as much as Leap's whole per-step update
            log_meta_progress(pl_module, task, self.meta_steps)

    @torch.no_grad()
    def _start_task(self, trainer: L.Trainer, pl_module: L.LightningModule, task: int) -> None:
        self._learner().start_task()
        for optimizer, groups in zip(trainer.optimizers, self._fresh_optimizer):
            optimizer.state.clear()
            for group, fresh in zip(optimizer.param_groups, groups):
                group.update(deepcopy(fresh))
        for config, fresh_state in zip(trainer.lr_scheduler_configs, self._fresh_schedulers):
            config.scheduler.load_state_dict(deepcopy(fresh_state))
        self.active_task = task
        self._suspended = None
        datamodule = self._datamodule
        describes = isinstance(datamodule, TaskDataModule) and self._batched is None  # one task, known by the stream
        if describes and implements(pl_module, TaskAware, type(self).__name__):
            pl_module.start_task(datamodule.task_info(task))  # type: ignore[union-attr]

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
        from ``final.ckpt`` with more meta-steps continues that task.
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
        """The meta-state (theta_0, meta-optimizer, partial meta-batch, the rule's trajectory), the running task's
        weights and buffers, and the counters; :meth:`load_state_dict` takes exactly this back."""
        if self.learner is None:
            return {}
        state = self.learner.state_dict()
        state = {
            **state,
            "task_params": self._suspended or [p.detach().clone() for p in self.learner.live],
            "task_buffers": {n: b.detach().clone() for n, b in self.learner.live_buffers.items()},
            "tasks_per_step": self.schedule.tasks_per_step,
            "counters": {**state["counters"], "active_task": self.active_task, "meta_step_at": self._meta_step_at},
        }
        return sharded.gather_shards(state) if isinstance(self.learner, ShardedMetaLearner) else state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep a checkpoint's state (:meth:`state_dict`) for ``on_fit_start``, where the learner is built on the
        module's device. (Where the task stream continues is the data module's to restore.)"""
        self._resumed = dict(state_dict)

    @torch.no_grad()
    def _apply(self, state: dict[str, Any], trainer: L.Trainer) -> None:
        learner = self._learner()
        state = sharded.own_shards(trainer, state)  # a sharded learner's state holds every process's shards
        # resumed with another task_batch, at a meta-step boundary: no task is running, and its shapes differ
        regrouped = state.get("tasks_per_step", self.schedule.tasks_per_step) != self.schedule.tasks_per_step
        try:
            learner.load_state_dict(state, trajectory=not regrouped)
        except ValueError as error:
            raise MisconfigurationException(f"{type(self).__name__}: {error}") from None
        if not regrouped:
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
