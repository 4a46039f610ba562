"""``TaskDataModule``: streams ``inner_steps`` optimizer steps of one task, then the next task.

Examples:
    >>> from lightning_meta.tasks import TaskDataModule
    >>> from lightning_meta.tasks.family import ImageTensorDataset, Task, TaskFamily
    >>> import torch
    >>> class Toy(TaskFamily):
    ...     def tasks(self, split):
    ...         data = ImageTensorDataset(torch.zeros(8, 1, 4, 4, dtype=torch.uint8), torch.arange(8) % 2)
    ...         return [Task(f"{split}-{i}", data, data, 2) for i in range(3)]
    >>> data = TaskDataModule(Toy(), inner_steps=2, batch_size=4, tasks_per_epoch=3)
    >>> data.setup("fit")
    >>> [(batch.task, batch.inputs.shape[0]) for batch in data.train_dataloader()]
    [(0, 4), (0, 4), (1, 4), (1, 4), (2, 4), (2, 4)]

    Three tasks trained together: the same batches, stacked.

    >>> data = TaskDataModule(Toy(), inner_steps=2, batch_size=4, task_batch=3, tasks_per_epoch=3)
    >>> [(batch.tasks, tuple(batch.inputs.shape)) for batch in data.train_dataloader()]
    [([0, 1, 2], (3, 4, 1, 4, 4)), ([0, 1, 2], (3, 4, 1, 4, 4))]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import lightning as L
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from lightning_meta.protocols import StepsPerBatch, implements
from lightning_meta.tasks.family import Split, Task, TaskFamily, dataset_length
from lightning_meta.tasks.schedule import TaskSchedule
from lightning_meta.tasks.stream import (
    TaskBatchSampler,
    TaskStreamDataset,
    collate_stacked_task_batch,
    collate_task_batch,
)


def family_by_name(name: str, root: str | None, download: bool = True) -> TaskFamily:
    """The built-in families by name: ``"glyphs"`` and ``"omniglot"`` (downloaded into ``root`` if missing and
    ``download``)."""
    from lightning_meta.tasks.glyphs import GlyphAlphabets
    from lightning_meta.tasks.omniglot import Omniglot

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
    """What meta-learning callbacks read from a data module: tasks of ``inner_steps`` optimizer steps, grouped into
    meta-batches of ``meta_batch_size``. The run's :class:`TaskSchedule` (which task each process trains at each
    step) lives here, in ``schedule``: the meta-learning callback makes it in ``setup`` from these sizes and the
    Trainer's processes, moves its origin when a run resumes, and the stream and the callback both read it.
    :class:`TaskDataModule` streams datasets; other streams (environments) too.

    Args:
        inner_steps: optimizer steps per task; meta-learning callbacks read it from here.
        meta_batch_size: tasks per meta-step (``None``: the callback decides).
        task_batch: tasks trained together in one optimizer step (task-batched training; ``None``: one at a time).
            Only streams that can stack tasks' batches take it (``stacks_tasks``).

    Attributes:
        stacks_tasks: whether this stream can serve T tasks' batches stacked (:class:`TaskDataModule` can).

    Examples:
        >>> from lightning_meta.tasks import StreamDataModule
        >>> stream = StreamDataModule(inner_steps=10, meta_batch_size=4)
        >>> schedule = stream.task_schedule()   # no callback installed one: every step's task, data-parallel
        >>> schedule.task(25), schedule.parallel
        (2, 'data')
    """

    stacks_tasks = False

    def __init__(self, inner_steps: int, meta_batch_size: int | None = None, task_batch: int | None = None) -> None:
        super().__init__()
        sizes = {"inner_steps": inner_steps, "meta_batch_size": meta_batch_size, "task_batch": task_batch}
        for name, value in sizes.items():
            if value is not None and value < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be >= 1, got {value}")
        if task_batch is not None and not self.stacks_tasks:
            raise ValueError(f"{type(self).__name__} serves one task at a time: it takes no task_batch")
        self.inner_steps = inner_steps
        self.meta_batch_size = meta_batch_size
        self.task_batch = task_batch
        self.schedule: TaskSchedule | None = None  # made by a meta-learning callback; see :meth:`task_schedule`

    def _processes(self) -> tuple[int, int]:
        """``(world_size, global_rank)`` of the Trainer (``(1, 0)`` without one)."""
        trainer = self.trainer
        return (1, 0) if trainer is None else (trainer.world_size, trainer.global_rank)

    def task_schedule(self) -> TaskSchedule:
        """The schedule a meta-learning callback installed, else data-parallel: every process trains the same
        task on its shard of each batch (ordinary DDP)."""
        if self.schedule is not None:
            return self.schedule
        world_size, rank = self._processes()
        return TaskSchedule(
            self.inner_steps,
            self.meta_batch_size or self.task_batch or 1,
            world_size,
            rank,
            parallel="data",
            task_batch=self.task_batch,
        )

    def _check_distributed(self) -> None:
        connector = getattr(self.trainer, "_accelerator_connector", None)  # what Lightning's own check reads
        if getattr(connector, "is_distributed", False) and getattr(connector, "use_distributed_sampler", False):
            raise MisconfigurationException(
                f"{type(self).__name__} splits its stream between the processes itself: pass "
                "Trainer(use_distributed_sampler=False) (--trainer.use_distributed_sampler=false)."
            )

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
    """Streams the meta-training tasks of a :class:`~lightning_meta.tasks.TaskFamily`, one task at a time.

    Each task lasts ``inner_steps`` optimizer steps (``inner_steps x accumulate_grad_batches`` batches); the task
    order and the samples are a pure function of ``seed`` and the position in the stream, so runs are reproducible,
    DataLoader workers change nothing and a resumed run continues at the exact batch it stopped at. Batches are
    :class:`~lightning_meta.tasks.stream.TaskBatch` objects: ``x, y = batch`` as usual, plus ``batch.task``; with
    ``task_batch=T`` (or a meta-learning callback's ``task_batch``) they are
    :class:`~lightning_meta.tasks.stream.StackedTaskBatch` objects holding the same batches of T tasks, stacked.

    Args:
        family: the task family, or the name of a built-in one: ``"glyphs"`` (the default,
            :class:`~lightning_meta.tasks.GlyphAlphabets`, embedded) or ``"omniglot"``
            (:class:`~lightning_meta.tasks.Omniglot`, which needs ``root``).
        root: data folder of a family given by name (``None``: the family's default).
        download: download the data of a family given by name when it is missing from ``root`` (Omniglot; needs
            internet, else the error says within seconds which files to fetch and where they go).
        inner_steps: optimizer steps per task; meta-learning callbacks read it from here.
        meta_batch_size: tasks per meta-step; meta-learning callbacks read it from here when they are not given
            one (``None``: the callback decides).
        task_batch: tasks trained together, vectorised, in one optimizer step (task-batched training, see
            :class:`~lightning_meta.MetaInit`); ``None``: one task at a time. A divisor of ``meta_batch_size``.
        batch_size: samples per batch (of each task).
        tasks_per_epoch: tasks in one Lightning epoch (default: ``meta_batch_size``, else 10; epochs only matter
            for epoch-level hooks and logging); a multiple of ``task_batch``.
        augment: apply the Leap authors' random affine augmentation (:func:`random_affine`) to training images.
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
        batch_size: int = 20,
        tasks_per_epoch: int | None = None,
        augment: bool = False,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(inner_steps, meta_batch_size, task_batch)
        tasks_per_epoch = tasks_per_epoch or self.default_tasks_per_epoch(meta_batch_size or task_batch)
        for name, value in {"batch_size": batch_size, "tasks_per_epoch": tasks_per_epoch}.items():
            if value < 1:
                raise ValueError(f"TaskDataModule: {name} must be >= 1, got {value}")
        self.family = family_by_name(family, root, download) if isinstance(family, str) else family
        self.batch_size = batch_size
        self.tasks_per_epoch = tasks_per_epoch
        self.augment = augment
        self.num_workers = num_workers
        self.seed = seed
        self._train_tasks: list[Task] | None = None

    @staticmethod
    def default_tasks_per_epoch(meta_batch_size: int | None) -> int:
        """One meta-batch (10 tasks without one)."""
        return meta_batch_size or 10

    def prepare_data(self) -> None:
        self.family.prepare_data()

    def setup(self, stage: str) -> None:
        if self._train_tasks is None:
            self._train_tasks = self.family.tasks("train")
            if not self._train_tasks:
                raise ValueError(f"{type(self.family).__name__} has no meta-training tasks")

    def train_transform(self) -> Callable[[Tensor], Tensor] | None:
        """The augmentation of meta-training images: :func:`random_affine` with ``augment``, else none."""
        return random_affine() if self.augment else None

    def tasks(self, split: Split) -> list[Task]:
        """The family's tasks of a split (meta-evaluation callbacks use ``"val"`` and ``"test"``)."""
        return self.family.tasks(split)

    def batch_sampler(self) -> TaskBatchSampler:
        """The sampler of the training stream; ``task_index(n)`` says which task the n-th task of the stream is."""
        self.setup("fit")
        assert self._train_tasks is not None
        schedule, accumulation = self.task_schedule(), self._accumulation()
        if schedule.parallel == "data" and self.batch_size % schedule.world_size:
            raise MisconfigurationException(
                f"data-parallel training shards each batch over the processes: batch_size={self.batch_size} is not a "
                f"multiple of world_size={schedule.world_size}"
            )

        def locate(batch: int) -> tuple[list[int], int]:
            step, micro = divmod(batch, accumulation)
            return schedule.tasks(step), (step - schedule.origin_step) % schedule.inner_steps * accumulation + micro

        return TaskBatchSampler(
            [dataset_length(task.train) for task in self._train_tasks],
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
        self._check_distributed()
        assert self._train_tasks is not None
        dataset = TaskStreamDataset(self._train_tasks, self.train_transform())
        stacked = self.task_schedule().task_batch is not None
        return DataLoader(
            dataset,
            batch_sampler=self.batch_sampler(),
            collate_fn=collate_stacked_task_batch if stacked else collate_task_batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
