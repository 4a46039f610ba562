"""``TaskDataModule``: streams ``inner_steps`` optimizer steps of one task, then the next task; it owns the run's
:class:`~lightning_meta.data.schedule.TaskSchedule`.

Examples:
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> from lightning_meta.data import TaskDataModule
    >>> from lightning_meta.families import DatasetTasks
    >>> family = DatasetTasks([torch.randn(10, 3), torch.randn(10, 3), torch.randn(10, 3)], test=[2])
    >>> data = TaskDataModule(family, inner_steps=2, batch_size=4, tasks_per_epoch=3)
    >>> [tuple(batch.shape) for batch in data.train_dataloader()]   # what the data set collates to: a tensor
    [(4, 3), (4, 3), (4, 3), (4, 3), (4, 3), (4, 3)]
    >>> [data.task_info(position).task.name for position in range(3)]   # the task of each position of the stream
    ['task-0', 'task-1', 'task-1']

    Two tasks trained together: the same batches, stacked on a leading task dimension.

    >>> data = TaskDataModule(family, inner_steps=2, batch_size=4, task_batch=2, tasks_per_epoch=2)
    >>> [tuple(batch.shape) for batch in data.train_dataloader()]
    [(2, 4, 3), (2, 4, 3)]
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Literal

import lightning as L
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from lightning_meta.data.family import Split, Task, TaskFamily, TaskInfo, dataset_length
from lightning_meta.data.schedule import TaskSchedule
from lightning_meta.data.stream import TaskBatchSampler, TaskCollate, TaskStreamDataset, stream_task_index
from lightning_meta.lightning_private import set_step_limit, uses_distributed_sampler
from lightning_meta.protocols import StepsPerBatch, TrainsTasksApart, implements
from lightning_meta.validation import PARALLEL, Parallel, check_choice, check_range


def family_by_name(name: str, root: str | None, download: bool = True) -> TaskFamily:
    """The built-in families by name: ``"glyphs"`` and ``"omniglot"`` (downloaded into ``root`` if missing and
    ``download``)."""
    from lightning_meta.families.glyphs import GlyphAlphabets
    from lightning_meta.families.omniglot import Omniglot

    if name == "glyphs":
        return GlyphAlphabets(root=root)
    if name == "omniglot":
        if root is None:
            raise ValueError("family='omniglot' needs root= (the folder that holds or will receive omniglot-py)")
        return Omniglot(root=root, download=download)
    raise ValueError(f"unknown task family {name!r}: use 'glyphs', 'omniglot' or a TaskFamily instance")


def task_datamodule(trainer: L.Trainer) -> StreamDataModule | None:
    """The Trainer's data module when it streams tasks (a :class:`StreamDataModule`; Lightning sets
    ``trainer.datamodule`` during fit and test without declaring the attribute)."""
    datamodule = getattr(trainer, "datamodule", None)
    return datamodule if isinstance(datamodule, StreamDataModule) else None


def random_affine() -> Callable[[Tensor], Tensor]:
    """The Leap authors' Omniglot augmentation, as in their code: ``RandomAffine((0, 360), (0.2, 0.2), (0.8, 1.2))``
    (any rotation, translation up to 20 % of the side, scale 0.8 to 1.2).

    Examples:
        >>> augment = random_affine()
        >>> augment.degrees, augment.translate, augment.scale
        ([0.0, 360.0], (0.2, 0.2), (0.8, 1.2))
    """
    return v2.RandomAffine(degrees=(0, 360), translate=(0.2, 0.2), scale=(0.8, 1.2))


class StreamDataModule(L.LightningDataModule):
    """A stream of tasks for meta-learning, and the one home of its
    :class:`~lightning_meta.data.schedule.TaskSchedule` (:attr:`schedule`): which task each process trains at each
    optimizer step, built from these sizes and the Trainer's processes. Meta-learning callbacks, the sampler, the
    progress bar and held-out evaluation read it; a resumed run continues it (its origin is in the checkpoint, with
    this data module's ``state_dict``). :class:`TaskDataModule` streams data sets; other streams (environments,
    documents) subclass this too.

    Args:
        inner_steps: optimizer steps per task.
        meta_batch_size: tasks per meta-step, over all processes (default: ``task_batch``, else 1).
        task_batch: tasks trained together in one optimizer step (task-batched training; ``None``: one at a time).
            Only streams that can stack tasks' batches take it (``stacks_tasks``).
        parallel: how DDP processes share a meta-batch: ``"tasks"`` (each process trains its own tasks of it;
            ``meta_batch_size`` a multiple of the processes) or ``"data"`` (all train the same task on shards of each
            batch, ordinary DDP). ``None``: ``"tasks"`` under a meta-learning callback
            (:class:`~lightning_meta.protocols.TrainsTasksApart`), else ``"data"``.
        max_meta_steps: stop ``fit`` after this many meta-steps (a meta-step: ``meta_batch_size`` tasks of
            ``inner_steps`` steps), whatever the processes, ``task_batch`` and gradient accumulation: the Trainer's
            ``max_steps`` follows. ``None``: the Trainer's own limits. A ``max_steps`` of the Trainer that disagrees
            is an error.

    Attributes:
        stacks_tasks: whether this stream can serve T tasks' batches stacked (:class:`TaskDataModule` can).

    Examples:
        >>> from lightning_meta.data import StreamDataModule
        >>> stream = StreamDataModule(inner_steps=10, meta_batch_size=4, max_meta_steps=30)
        >>> stream.schedule.task(25), stream.schedule.parallel, stream.optimizer_steps(30)   # no Trainer: one process
        (2, 'data', 1200)
    """

    stacks_tasks = False

    def __init__(
        self,
        inner_steps: int,
        meta_batch_size: int | None = None,
        task_batch: int | None = None,
        parallel: Parallel | None = None,
        max_meta_steps: int | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_range(name, 1, inner_steps=inner_steps, meta_batch_size=meta_batch_size, task_batch=task_batch)
        check_range(name, 0, max_meta_steps=max_meta_steps)
        if parallel is not None:
            check_choice(name, "parallel", parallel, PARALLEL)
        if task_batch is not None and not self.stacks_tasks:
            raise ValueError(f"{name} serves one task at a time: it takes no task_batch")
        if max_meta_steps is not None:  # the meta-steps end the run: Lightning's "max_epochs was not set" is moot
            warnings.filterwarnings("ignore", "`max_epochs` was not set", PossibleUserWarning)
        self.inner_steps = inner_steps
        self.meta_batch_size = meta_batch_size
        self.task_batch = task_batch
        self.parallel = parallel
        self.max_meta_steps = max_meta_steps
        self._origin = (0, 0)  # (local step, stream task) where the schedule last changed: a run resumed differently
        self._trainer_max_steps: int | None = None  # the Trainer's own max_steps, before max_meta_steps set it

    @property
    def schedule(self) -> TaskSchedule:
        """The run's task schedule (see the class docstring); one process, data-parallel, without a Trainer."""
        world_size, rank = self._processes()
        return TaskSchedule(
            self.inner_steps,
            self.meta_batch_size or self.task_batch or 1,
            world_size,
            rank,
            self.parallel or self._default_parallel(),
            origin_step=self._origin[0],
            origin_task=self._origin[1],
            task_batch=self.task_batch,
        )

    def _processes(self) -> tuple[int, int]:
        """``(world_size, global_rank)`` of the Trainer (``(1, 0)`` without one)."""
        trainer = self.trainer
        return (1, 0) if trainer is None else (trainer.world_size, trainer.global_rank)

    def _default_parallel(self) -> Parallel:
        callbacks = getattr(self.trainer, "callbacks", [])  # Lightning sets it without declaring it
        apart = any(implements(c, TrainsTasksApart, type(self).__name__) for c in callbacks)
        return "tasks" if apart else "data"

    def optimizer_steps(self, meta_steps: int) -> int:
        """This process's optimizer steps after which ``meta_steps`` meta-steps are done."""
        return self.schedule.steps_for(meta_steps)

    def state_dict(self) -> dict[str, Any]:
        """The schedule and the step it was saved at: a run resumed on other processes or with another
        ``task_batch`` continues the stream where this one stopped."""
        trainer = self.trainer
        return {"schedule": asdict(self.schedule), "step": 0 if trainer is None else trainer.global_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = TaskSchedule(**state_dict["schedule"])
        try:
            resumed = self.schedule.resumed_from(saved, state_dict["step"])
        except ValueError as error:
            raise MisconfigurationException(f"{type(self).__name__}: {error}") from None
        self._origin = (resumed.origin_step, resumed.origin_task)

    def _start_stream(self) -> None:
        """What every stream's ``train_dataloader`` does first, once the Trainer has restored a checkpoint: refuse
        Lightning's distributed sampler, and end the run after ``max_meta_steps``."""
        trainer = self.trainer
        if trainer is None:
            return
        if uses_distributed_sampler(trainer):
            raise MisconfigurationException(
                f"{type(self).__name__} splits its stream between the processes itself: pass "
                "Trainer(use_distributed_sampler=False) (--trainer.use_distributed_sampler=false)."
            )
        if self.max_meta_steps is None:
            return
        steps = self.optimizer_steps(self.max_meta_steps)
        if self._trainer_max_steps is None:
            self._trainer_max_steps = trainer.max_steps
        if self._trainer_max_steps not in (-1, steps):
            raise MisconfigurationException(
                f"Trainer(max_steps={self._trainer_max_steps}) disagrees with {type(self).__name__}(max_meta_steps="
                f"{self.max_meta_steps}), which is {steps} optimizer steps of this process here: leave max_steps "
                "unset, or count steps yourself with max_meta_steps=None (--data.max_meta_steps=null)."
            )
        set_step_limit(trainer, steps)

    def _accumulation(self) -> int:
        trainer = self.trainer
        return 1 if trainer is None else trainer.accumulate_grad_batches

    def _consumed_batches(self) -> int:
        """Batches the run has consumed. A module that takes several optimizer steps per batch (e.g. truncated
        back-propagation) says how many (:class:`~lightning_meta.protocols.StepsPerBatch`)."""
        trainer = self.trainer
        if trainer is None:
            return 0
        module = trainer.lightning_module
        steps_per_batch = 1
        if implements(module, StepsPerBatch, "the task stream"):
            steps_per_batch = module.optimizer_steps_per_batch
        return trainer.global_step // steps_per_batch * self._accumulation()


class TaskDataModule(StreamDataModule):
    """Streams the meta-training tasks of a :class:`~lightning_meta.data.TaskFamily`, one task at a time.

    Each task lasts ``inner_steps`` optimizer steps (``inner_steps x accumulate_grad_batches`` batches); the task
    order and the samples are a pure function of ``seed`` and the position in the stream, so runs are reproducible,
    DataLoader workers change nothing and a resumed run continues at the exact batch it stopped at. A batch is what
    the task's samples collate to (``collate_fn``), passed to ``training_step`` unchanged: ``x, y = batch`` for
    ``(input, target)`` samples, a tensor, a dict, ...; with ``task_batch=T`` the same batches of T tasks, stacked on
    a leading task dimension. Which task a step trains: :meth:`current_task`.

    Args:
        family: the task family, or the name of a built-in one: ``"glyphs"`` (the default,
            :class:`~lightning_meta.families.GlyphAlphabets`, embedded) or ``"omniglot"``
            (:class:`~lightning_meta.families.Omniglot`, which needs ``root``).
        root: data folder of a family given by name (``None``: the family's default).
        download: download the data of a family given by name when it is missing from ``root`` (Omniglot; needs
            internet, else the error says within seconds which files to fetch and where they go).
        inner_steps, meta_batch_size, task_batch, parallel, max_meta_steps: the task schedule
            (:class:`StreamDataModule`); ``task_batch`` divides each process's tasks per meta-step.
        batch_size: samples per batch (of each task).
        tasks_per_epoch: tasks in one Lightning epoch (default: ``meta_batch_size``, else 10; epochs only matter
            for epoch-level hooks and logging); a multiple of ``task_batch``.
        augment: apply the Leap authors' random affine augmentation (:func:`random_affine`) to training images.
        collate_fn: how a task's samples become a batch (default: PyTorch's ``default_collate``); also used for
            held-out tasks.
        num_workers: DataLoader worker processes.
        seed: seed of the task order, the batches and the augmentation.
    """

    stacks_tasks = True

    def __init__(
        self,
        family: TaskFamily | Literal["glyphs", "omniglot"] = "glyphs",
        root: str | None = None,
        download: bool = True,
        inner_steps: int = 100,
        meta_batch_size: int | None = None,
        task_batch: int | None = None,
        parallel: Parallel | None = None,
        max_meta_steps: int | None = None,
        batch_size: int = 20,
        tasks_per_epoch: int | None = None,
        augment: bool = False,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(inner_steps, meta_batch_size, task_batch, parallel, max_meta_steps)
        tasks_per_epoch = tasks_per_epoch or self.default_tasks_per_epoch(meta_batch_size or task_batch)
        check_range("TaskDataModule", 1, batch_size=batch_size, tasks_per_epoch=tasks_per_epoch)
        self.family = family_by_name(family, root, download) if isinstance(family, str) else family
        self.batch_size = batch_size
        self.tasks_per_epoch = tasks_per_epoch
        self.augment = augment
        self.collate_fn = collate_fn
        self.num_workers = num_workers
        self.seed = seed
        self._train_tasks: list[Task] | None = None  # a finite pool, listed once
        self._num_train: int | None = None
        self._drawn: dict[int, Task] = {}  # tasks of a pool without end, drawn on demand (the latest few kept)

    @staticmethod
    def default_tasks_per_epoch(meta_batch_size: int | None) -> int:
        """One meta-batch (10 tasks without one)."""
        return meta_batch_size or 10

    def prepare_data(self) -> None:
        self.family.prepare_data()

    def setup(self, stage: str) -> None:
        if self._train_tasks is not None or self._num_train is not None:
            return
        self._num_train = self.family.num_tasks("train")
        if self._num_train is not None:
            self._train_tasks = self.family.tasks("train")
            if not self._train_tasks:
                raise ValueError(f"{type(self.family).__name__} has no meta-training tasks")

    def train_task(self, index: int) -> Task:
        """The meta-training task at ``index`` of the family's training split."""
        self.setup("fit")
        if self._train_tasks is not None:
            return self._train_tasks[index]
        if index not in self._drawn:
            if len(self._drawn) >= 64:
                self._drawn.pop(next(iter(self._drawn)))
            self._drawn[index] = self.family.task_at("train", index)
        return self._drawn[index]

    def task_info(self, position: int) -> TaskInfo:
        """The meta-training task at a position of the stream (the same on every process, in every resumed run)."""
        self.setup("fit")
        index = stream_task_index(position, self._num_train, self.seed)
        return TaskInfo(self.train_task(index), "train", index, position)

    def current_task(self) -> TaskInfo:
        """The task the Trainer's current optimizer step trains on this process (the first of ``task_batch``)."""
        if self.trainer is None:
            raise RuntimeError("current_task() reads the Trainer's step: the data module is not in a fit")
        return self.task_info(self.schedule.task(self.trainer.global_step))

    def train_transform(self) -> Callable[[Any], Any] | None:
        """The augmentation of meta-training samples: :func:`random_affine` with ``augment``, else none."""
        return random_affine() if self.augment else None

    def tasks(self, split: Split) -> list[Task]:
        """The family's tasks of a split (meta-evaluation callbacks use ``"val"`` and ``"test"``)."""
        return self.family.tasks(split)

    def batch_sampler(self) -> TaskBatchSampler:
        """The sampler of the training stream; ``task_index(n)`` says which task the n-th task of the stream is."""
        self.setup("fit")
        schedule, accumulation = self.schedule, self._accumulation()
        if schedule.parallel == "data" and self.batch_size % schedule.world_size:
            raise MisconfigurationException(
                f"data-parallel training shards each batch over the processes: batch_size={self.batch_size} is not a "
                f"multiple of world_size={schedule.world_size}"
            )

        def locate(batch: int) -> tuple[list[int], int]:
            step, micro = divmod(batch, accumulation)
            return schedule.tasks(step), (step - schedule.origin_step) % schedule.inner_steps * accumulation + micro

        return TaskBatchSampler(
            lambda index: dataset_length(self.train_task(index).train),
            self._num_train,
            batch_size=self.batch_size,
            batches_per_task=self.inner_steps * accumulation,
            tasks_per_epoch=self.tasks_per_epoch,
            seed=self.seed,
            position=self._consumed_batches,
            locate=locate,
            shard=(schedule.rank, schedule.world_size) if schedule.parallel == "data" else (0, 1),
            tasks_per_batch=schedule.tasks_per_step,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        self._start_stream()
        return DataLoader(
            TaskStreamDataset(self.train_task, self.train_transform()),
            batch_sampler=self.batch_sampler(),
            collate_fn=TaskCollate(self.collate_fn, stacked=self.schedule.task_batch is not None),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def task_batches(self, position: int) -> DataLoader:
        """The ``inner_steps`` batches of the stream's task at ``position``, exactly those the Trainer trains it on
        (one process, no gradient accumulation): the data of a Fabric or plain PyTorch loop.

        Examples:
            >>> import torch
            >>> from lightning_meta.families import SeededTasks
            >>> data = TaskDataModule(SeededTasks(lambda seed: torch.randn(10, 2)), inner_steps=3, batch_size=4)
            >>> [tuple(batch.shape) for batch in data.task_batches(position=7)]
            [(4, 2), (4, 2), (4, 2)]
        """
        self.setup("fit")
        sampler = TaskBatchSampler(
            lambda index: dataset_length(self.train_task(index).train),
            self._num_train,
            self.batch_size,
            self.inner_steps,
            tasks_per_epoch=1,
            seed=self.seed,
            locate=lambda batch: ([position], batch),
        )
        dataset = TaskStreamDataset(self.train_task, self.train_transform())
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=TaskCollate(self.collate_fn))
