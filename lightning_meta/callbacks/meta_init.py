"""``MetaInit``: the Lightning front door of the engine: meta-learn a LightningModule's initialisation theta_0.

The callback routes Trainer hooks: it builds the engine's :class:`~lightning_meta.engine.MetaLearner` from its
rule and :class:`~lightning_meta.engine.MetaOptions` when fit starts, and hands each step to a
:class:`~lightning_meta.trainer.task_loop.TrainerTaskLoop`, which reads where tasks start and end from the data
module's schedule. What a task's trajectory means is the rule's business (:class:`~lightning_meta.engine.LeapRule`,
:class:`~lightning_meta.engine.ReptileRule`, your own :class:`~lightning_meta.engine.TrajectoryRule`).

Examples:
    >>> import lightning as L
    >>> from lightning_meta import MetaInit
    >>> from lightning_meta.engine import ReptileRule
    >>> from lightning_meta.data import TaskDataModule
    >>> tasks = TaskDataModule("glyphs", inner_steps=5, meta_batch_size=2, max_meta_steps=10)   # the schedule
    >>> trainer = L.Trainer(callbacks=[MetaInit(ReptileRule(), meta_lr=0.5)], logger=False, enable_checkpointing=False)
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from lightning_meta.callbacks.progress import use_meta_progress_bar
from lightning_meta.data.datamodule import StreamDataModule
from lightning_meta.data.schedule import TaskSchedule
from lightning_meta.engine import MetaLearner, MetaOptions, ShardedMetaLearner, TaskBatchedLearner, TrajectoryRule
from lightning_meta.trainer import sharded
from lightning_meta.trainer.checkpoint_io import use_atomic_checkpoints
from lightning_meta.trainer.fit_checks import check_meta_fit
from lightning_meta.trainer.task_batched import TaskBatchedTraining
from lightning_meta.trainer.task_loop import TrainerTaskLoop

FINAL_CHECKPOINT = "final.ckpt"
"""File name of the checkpoint written at the end of fit, in the directory of the Trainer's ``ModelCheckpoint``."""

MOVED_TO_DATA = ("inner_steps", "meta_batch_size", "task_batch", "parallel", "max_meta_steps")
"""Arguments that belong to the task schedule, which the data module owns."""


class MetaInit(L.Callback):
    """Meta-learn theta_0 of a LightningModule's parameters with a trajectory ``rule``, inside an ordinary ``fit``.

    The data module (a :class:`~lightning_meta.data.StreamDataModule`) owns the task schedule: task ``t`` covers
    optimizer steps ``[t * inner_steps, (t + 1) * inner_steps)``, ``meta_batch_size`` tasks make a meta-step and
    ``max_meta_steps`` ends the run. Each task trains exactly as a fresh run from theta_0 would; batches reach
    ``training_step`` unchanged. When fit ends the module holds theta_0 and ``final.ckpt`` holds it on disk. Under
    DDP each process trains its own tasks without gradient synchronisation inside them (the stream's
    ``parallel="tasks"``) or all train one task on shards of each batch (``"data"``); with ``task_batch=T`` each
    optimizer step trains T tasks at once (:mod:`~lightning_meta.trainer.task_batched`); under
    ``ModelParallelStrategy`` theta_0 is sharded as the module is (:mod:`~lightning_meta.trainer.sharded`).

    Args:
        rule: turns each task's trajectory into a meta-gradient.
        save_init_as_weights: checkpoints store theta_0 as the model's ``state_dict`` (``load_from_checkpoint``
            returns the meta-learned init; the running task's weights are in the callback's state).
        final_checkpoint: when fit ends, write ``final.ckpt`` (theta_0 as the weights, the whole meta-state) into
            the directory of the Trainer's ``ModelCheckpoint``, whatever its interval.
        **options: how theta_0 is meta-learned: ``meta_lr``, ``meta_optimizer``, ``meta_optimizer_kwargs``,
            ``include``, ``buffers``, ``guard`` (:class:`~lightning_meta.engine.MetaOptions`).
    """

    trains_tasks_apart = True  # TrainsTasksApart: under DDP a stream left to choose spreads tasks over processes

    def __init__(
        self, rule: TrajectoryRule, save_init_as_weights: bool = True, final_checkpoint: bool = True, **options: Any
    ) -> None:
        schedule = [name for name in options if name in MOVED_TO_DATA]
        if schedule:
            raise TypeError(
                f"{type(self).__name__}({schedule[0]}={options[schedule[0]]!r}): the task schedule belongs to the data "
                f"module: pass it to TaskDataModule(...) (--data.{schedule[0]}=... on the command line)."
            )
        self.options = MetaOptions(**options)  # checks them: one line that names the argument
        self.rule, self.save_init_as_weights, self.final_checkpoint = rule, save_init_as_weights, final_checkpoint
        self.learner: MetaLearner | None = None  # built in on_fit_start, where the module has its device
        self.loop: TrainerTaskLoop | None = None
        self.names: list[str] = []  # the meta-learned parameters, chosen in setup
        self._datamodule: StreamDataModule | None = None
        self._resumed: dict[str, Any] = {}  # a checkpoint's state, applied once the learner exists
        self._fit_scope = ExitStack()  # undone when fit ends: the task-batched training step
        self._batch_scope = ExitStack()  # undone when a batch ends: DDP's gradient sync turned off

    def __getattr__(self, name: str) -> Any:
        """The options read as the callback's own attributes, as before they had a class (``leap.meta_lr``)."""
        options = self.__dict__.get("options")
        if options is not None and name in MetaOptions.__dataclass_fields__:
            return getattr(options, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def schedule(self) -> TaskSchedule:
        """Where tasks start and end on this process: the data module's schedule (read, never written)."""
        if self._datamodule is None:
            raise RuntimeError(f"{type(self).__name__}: the task schedule is read in setup(); fit has not started")
        return self._datamodule.schedule

    @property
    def theta_0(self) -> list[torch.nn.Parameter]:
        """The meta-learned init, one tensor per name in :attr:`names`."""
        return self._loop().learner.theta_0

    @property
    def meta_steps(self) -> int:
        """Meta-steps taken (0 before fit)."""
        return self.learner.meta_steps if self.learner is not None else 0

    def resumable_now(self, trainer: L.Trainer) -> bool:
        """Whether a checkpoint saved now resumes exactly: not inside a meta-batch of a task-parallel run on several
        processes (its other processes' partial tasks are not in the checkpoint)."""
        return not self.schedule.task_parallel or self.schedule.at_meta_step_boundary(trainer.global_step)

    def init_state_dict(self, pl_module: L.LightningModule) -> dict[str, Tensor]:
        """The module's ``state_dict`` with theta_0 and the buffers a task starts with in place of the live ones."""
        return self._loop().learner.init_state_dict()

    def _loop(self) -> TrainerTaskLoop:
        if self.loop is None:
            raise RuntimeError(f"{type(self).__name__}: the meta-learner is built when fit starts")
        return self.loop

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._datamodule, self.names = check_meta_fit(trainer, pl_module, self.options.include, type(self).__name__)
            use_atomic_checkpoints(trainer)  # final.ckpt and the checkpoints a diverged run names: whole or not at all
            use_meta_progress_bar(trainer, pl_module, stage)  # in place of Lightning's default bar

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        schedule, name = self.schedule, type(self).__name__
        arguments: dict[str, Any] = dict(
            **self.options.learner_arguments(),
            meta_batch_size=schedule.tasks_per_process,
            parallel=schedule.parallel,
            all_reduce=(lambda t: trainer.strategy.reduce(t, reduce_op="sum")) if schedule.world_size > 1 else None,
        )
        batched = None
        if schedule.task_batch is None:
            self.learner = sharded.meta_learner(trainer, pl_module, self.rule, name, **arguments)
        else:
            try:
                self.learner = TaskBatchedLearner(pl_module, self.rule, schedule.task_batch, **arguments)
            except ValueError as error:
                raise MisconfigurationException(f"{name}: {error}") from None
            batched = TaskBatchedTraining(trainer, self.learner)
            batched.check_optimizers(name)
            self._fit_scope.enter_context(batched.installed())
        self.loop = TrainerTaskLoop(trainer, self.learner, self._datamodule, batched, name)  # type: ignore[arg-type]
        self._restore(trainer)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore(trainer)  # strategies that restore checkpoints after on_fit_start (ModelParallelStrategy)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._batch_scope.close()
        self._fit_scope.close()

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.schedule.task_parallel:  # each process trains its own task: DDP must not average gradients in it
            self._batch_scope.enter_context(trainer.strategy.model.no_sync())  # type: ignore[union-attr, operator]
        self._loop().start_task_if_new(trainer, pl_module)

    @override
    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        self._loop().add_loss(trainer, loss)

    @override
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Optimizer) -> None:
        self._loop().step()

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._loop().end_task_if_done(trainer, pl_module, batch, batch_idx)
        self._batch_scope.close()

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Leave theta_0, the product of meta-training, in the module and in ``final.ckpt``; the weights of a task
        cut short stay in the callback's state, so that a run resumed with more meta-steps continues it."""
        self._loop().suspend()
        directory = getattr(trainer.checkpoint_callback, "dirpath", None)
        if self.final_checkpoint and directory is not None:
            path = Path(directory) / FINAL_CHECKPOINT
            trainer.save_checkpoint(path, weights_only=False)  # the whole meta-state: a run resumes from it
            rank_zero_info(f"{type(self).__name__}: theta_0 written to {path}")

    @override
    def state_dict(self) -> dict[str, Any]:
        """The meta-state (theta_0, meta-optimizer, partial meta-batch, the rule's trajectory), the running task's
        weights and buffers, and the counters; :meth:`load_state_dict` takes exactly this back."""
        if self.loop is None:
            return {}
        state = self.loop.state_dict()
        return sharded.gather_shards(state) if isinstance(self.learner, ShardedMetaLearner) else state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep :meth:`state_dict`'s state until the learner is built on the module's device. (Where the task stream
        continues is the data module's to restore.)"""
        self._resumed = dict(state_dict)

    def _restore(self, trainer: L.Trainer) -> None:
        if self._resumed:
            self._loop().load_state_dict(sharded.own_shards(trainer, self._resumed))
            self._resumed = {}

    @override
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.save_init_as_weights and self.learner is not None:
            sharded_learner = isinstance(self.learner, ShardedMetaLearner)
            init = sharded.init_weights(trainer, self.learner) if sharded_learner else self.learner.init_state_dict()
            weights = checkpoint["state_dict"]
            weights.update((n, t) for n, t in init.items() if n in weights)
