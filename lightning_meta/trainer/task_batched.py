"""``TaskBatchedTraining``: the Trainer's loop training T tasks at once, for :class:`~lightning_meta.MetaInit`.

With the data module's ``task_batch=T`` each batch holds T tasks' batches stacked on a leading task dimension
(:class:`~lightning_meta.data.stream.TaskCollate`) and each optimizer step trains all T, through Lightning's own
automatic optimisation:

- the module's ``training_step`` runs for all T tasks at once, under ``torch.func.vmap`` with the module's tensors
  replaced by each task's (:meth:`~lightning_meta.engine.TaskBatchedLearner.map`); it sees one task's batch, of the
  structure it has when tasks train one at a time (a tensor, a tuple, a dict);
  what it logs with ``self.log`` is averaged over the T tasks and logged once;
- the strategy's ``training_step`` returns the sum of the T losses, so Lightning's backward gives each task its own
  gradient in the stacked tensors, which the inner optimizer (its parameters swapped for the stacked ones) steps:
  one optimizer over stacked tensors is T optimizers with shared hyper-parameters (SGD, Adam, AdamW);
- the module's own parameters hold theta_0 throughout; the T tasks' weights, buffers, optimizer state and
  trajectories are in the checkpoint (the callback's state and Lightning's optimizer state).

:meth:`TaskBatchedTraining.check` refuses, before any step, what this cannot do the way one task at a time does it;
a ``training_step`` that vmap cannot follow fails at the first step with a message naming the fix.

Examples:
    >>> import lightning as L
    >>> from lightning_meta import Leap
    >>> from lightning_meta.data import TaskDataModule
    >>> tasks = TaskDataModule("glyphs", inner_steps=100, meta_batch_size=20, task_batch=20, max_meta_steps=1000)
    >>> trainer = L.Trainer(callbacks=[Leap(meta_lr=0.1)], logger=False)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor

from lightning_meta.data.datamodule import StreamDataModule
from lightning_meta.engine.batched import ELEMENTWISE_OPTIMIZERS, TaskBatchedLearner
from lightning_meta.lightning_private import muted_logging, strategy_training_step
from lightning_meta.utils import training_loss


class _Logged:
    """What ``self.log`` / ``self.log_dict`` received while ``training_step`` ran under vmap."""

    def __init__(self) -> None:
        self.tensors: dict[str, Tensor] = {}  # per task inside vmap; stacked over tasks outside
        self.options: dict[str, dict[str, Any]] = {}
        self.constants: dict[str, tuple[Any, dict[str, Any]]] = {}

    def log(self, name: str, value: Any, **options: Any) -> None:
        if isinstance(value, Tensor):
            self.tensors[name], self.options[name] = value, options
        else:
            self.constants[name] = (value, options)

    def log_dict(self, dictionary: dict[str, Any], **options: Any) -> None:
        for name, value in dictionary.items():
            self.log(name, value, **options)


class TaskBatchedTraining:
    """Trains T tasks per optimizer step inside ``fit`` (see the module docstring); made and driven by
    :class:`~lightning_meta.MetaInit`.

    Args:
        trainer: the running Trainer.
        learner: the engine's learner of the stacked tasks.
    """

    def __init__(self, trainer: L.Trainer, learner: TaskBatchedLearner) -> None:
        self.trainer = trainer
        self.learner = learner
        self.losses: Tensor | None = None  # each task's loss at the last step, (T,)

    @staticmethod
    def check_setup(trainer: L.Trainer, task_batch: int, name: str) -> None:
        """What the Trainer says at ``setup``: refuse what tasks trained together would do differently."""
        datamodule = getattr(trainer, "datamodule", None)
        refusals = {
            "accumulates gradients": trainer.accumulate_grad_batches > 1,
            "clips gradients by their norm (which would be over all T tasks together)": bool(trainer.gradient_clip_val)
            and trainer.gradient_clip_algorithm != "value",
            "scales the loss for fp16 mixed precision (one overflowing task would skip the step of all T)": getattr(
                trainer.precision_plugin, "scaler", None
            )
            is not None,
            f"streams {type(datamodule).__name__}, which serves one task per batch": isinstance(
                datamodule, StreamDataModule
            )
            and not datamodule.stacks_tasks,
        }
        for what, refused in refusals.items():
            if refused:
                raise MisconfigurationException(
                    f"{name}(task_batch={task_batch}) trains {task_batch} tasks per optimizer step, but the Trainer "
                    f"{what}. Remove that, or train one task at a time (leave task_batch unset)."
                )

    def check_optimizers(self, name: str) -> None:
        """What ``configure_optimizers`` made: optimizers that act element by element, no plateau schedulers."""
        for optimizer in self.trainer.optimizers:
            if type(optimizer) not in ELEMENTWISE_OPTIMIZERS:
                supported = ", ".join(cls.__name__ for cls in ELEMENTWISE_OPTIMIZERS)
                raise MisconfigurationException(
                    f"{name}: tasks trained together share one inner optimizer over stacked tensors, which is one "
                    f"optimizer per task only for {supported}; configure_optimizers returned "
                    f"{type(optimizer).__name__}. Use one of those, or train one task at a time (task_batch unset)."
                )
        for config in self.trainer.lr_scheduler_configs:
            if config.reduce_on_plateau:
                raise MisconfigurationException(
                    f"{name}: {type(config.scheduler).__name__} would change the learning rate of all tasks trained "
                    "together from one monitored value; use a scheduler that steps by count, or task_batch unset."
                )

    @contextmanager
    def installed(self) -> Iterator[None]:
        """While open: the inner optimizers step the stacked tensors, and the strategy's training step trains all T
        tasks (:func:`~lightning_meta.lightning_private.strategy_training_step`: Lightning has no public hook
        that replaces the step's loss computation)."""
        stacked = {id(p): live for p, live in zip(self.learner.module_parameters, self.learner.live)}
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                group["params"] = [stacked.get(id(p), p) for p in group["params"]]
        with strategy_training_step(self.trainer.strategy, self.training_step):
            yield

    def training_step(self, batch: Any, batch_idx: int, *args: Any, **kwargs: Any) -> Tensor:
        """Lightning's training step for T tasks: the sum of their losses (each task's gradient is its own)."""
        with self.trainer.precision_plugin.train_step_context():
            self.losses = self.task_losses(batch, batch_idx, log=True)
        return self.losses.sum()

    def task_losses(self, batch: Any, batch_idx: int, log: bool = False) -> Tensor:
        """Each task's loss, ``(T,)``: the module's ``training_step`` on each task's slice of ``batch``; with ``log``,
        what it logs is logged once, averaged over the tasks."""
        pl_module = self.trainer.lightning_module
        logged = _Logged()

        def one_task(task_batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
            with muted_logging(pl_module, into=logged):
                loss = training_loss(pl_module.training_step(task_batch, batch_idx))
            return loss, logged.tensors

        try:
            losses, logged.tensors = self.learner.map(one_task, batch)
        except Exception as error:
            raise RuntimeError(
                f"task-batched training runs {type(pl_module).__name__}.training_step for {self.learner.tasks} tasks "
                f"at once under torch.func.vmap, and it failed there: {error}\nIt must be a function of one task's "
                "batch that vmap can follow: no .item(), .tolist() or Python `if` on tensor values, no torchmetrics "
                "objects; it receives one task's slice of the batch. Fix training_step, or train one "
                "task at a time (leave task_batch unset)."
            ) from error
        if log:
            for name, values in logged.tensors.items():
                mean = values.mean(0) if values.is_floating_point() else values.float().mean(0)
                pl_module.log(name, mean, **logged.options[name])
            for name, (value, options) in logged.constants.items():
                pl_module.log(name, value, **options)
        return losses
