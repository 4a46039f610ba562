"""The task-family API: a family splits its tasks into meta-train, meta-validation and meta-test.

A :class:`Task` is its training data, its held-out data and optional metadata: ``num_classes`` for classifiers,
anything else a model needs in ``metadata``. Nothing in the library assumes a kind of task: the data sets may hold
tensors, tuples of any length, dicts, dataclasses; regressions, language, classification.

A family gives the tasks of a split either as a fixed list (:meth:`TaskFamily.tasks`) or one by one from an index
(:meth:`TaskFamily.task_at`, with :meth:`TaskFamily.num_tasks` ``None`` for a pool without end). Ready-made
families turn what users already have into one: :class:`~lightning_meta.families.DatasetTasks` (each data set a task),
:class:`~lightning_meta.families.FewShotTasks` (N-way K-shot tasks drawn from one labelled data set) and
:class:`~lightning_meta.families.SeededTasks` (a task from a seed).

Examples:
    >>> import torch
    >>> from lightning_meta.data.family import ImageTensorDataset, Task
    >>> images = torch.zeros(6, 1, 28, 28, dtype=torch.uint8)
    >>> labels = torch.tensor([0, 1, 2, 0, 1, 2])
    >>> task = Task("toy", ImageTensorDataset(images, labels), ImageTensorDataset(images, labels), num_classes=3)
    >>> x, y = task.train[4]
    >>> x.shape, x.dtype, y
    (torch.Size([1, 28, 28]), torch.float32, 1)
    >>> [y for _, y in task.train.__getitems__([4, 0, 2])]  # a batch at once, as a DataLoader asks for it
    [1, 0, 2]
    >>> Task("sine", task.train, task.test, metadata={"amplitude": 2.0}).num_classes is None  # not a classifier
    True

    A family of your own implements ``tasks(split)`` (and ``prepare_data`` if it downloads):

    >>> from lightning_meta.data import TaskFamily
    >>> class Blank(TaskFamily):
    ...     def tasks(self, split):
    ...         self._check_split(split)
    ...         return [Task(f"{split}-{i}", task.train, task.test) for i in range(4 if split == "train" else 1)]
    >>> [t.name for t in Blank().tasks("val")], Blank().num_tasks("train"), Blank().task_at("train", 2).name
    (['val-0'], 4, 'train-2')
"""

from __future__ import annotations

from collections.abc import Mapping, Sized
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset, random_split

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")


class ImageTensorDataset(Dataset):
    """Images kept in memory as ``uint8`` ``[N, C, H, W]``, served as ``float32`` in ``[0, 1]`` with an int label."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise ValueError(f"images must be a uint8 tensor [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index].float().div_(255), int(self.labels[index])

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, int]]:
        """Several samples with one indexing operation (what a DataLoader asks for a batch)."""
        chosen = torch.as_tensor(indices)
        return list(zip(self.images[chosen].float().div_(255).unbind(0), self.labels[chosen].tolist()))


def dataset_length(dataset: Dataset) -> int:
    """``len(dataset)``; a task's datasets must know their length (map-style datasets with ``__len__``)."""
    if not isinstance(dataset, Sized):
        raise TypeError(f"task datasets need a length (__len__); {type(dataset).__name__} has none")
    return len(dataset)


@dataclass(frozen=True)
class Task:
    """One learning problem: ``train`` is what the inner loop trains on, ``test`` is held out from it.

    Args:
        name: shown in logs and warnings.
        train: the task's training data (a map-style data set with a length); its samples are whatever the
            model's ``training_step`` expects once collated.
        test: the task's held-out data, of the same kind.
        num_classes: for classifiers, the classes ``0..num_classes-1`` (held-out evaluation then also scores
            accuracy, and a model with a head per task sizes it); ``None`` for any other kind of task.
        metadata: anything else a model needs to know of the task (read it in ``start_task``, see
            :class:`~lightning_meta.protocols.TaskAware`).
    """

    name: str
    train: Dataset
    test: Dataset
    num_classes: int | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskInfo:
    """A task as it starts: which task, of which split, at which index of it, and (meta-training tasks) at which
    position of the stream. What :class:`~lightning_meta.protocols.TaskAware` models receive.

    Examples:
        >>> info = TaskInfo(Task("a", [0], [0], num_classes=5), "train", index=3, position=17)
        >>> info.task.num_classes, info.held_out
        (5, False)
    """

    task: Task
    split: Split
    index: int
    position: int | None = None

    @property
    def held_out(self) -> bool:
        """Whether this is a held-out task (validation or test), trained from theta_0 by an evaluation."""
        return self.split != "train"


class TaskFamily:
    """A distribution of tasks, split into disjoint meta-train / meta-validation / meta-test tasks.

    Subclasses implement :meth:`tasks` (a fixed list per split), or :meth:`task_at` and :meth:`num_tasks` (tasks
    made from their index, e.g. from a seed; ``num_tasks`` ``None`` for a pool without end); :meth:`prepare_data`
    is where a family downloads or builds files (called once per node by :class:`~lightning_meta.data.TaskDataModule`).
    """

    def prepare_data(self) -> None:
        """Download or build what the family needs on disk. Default: nothing."""

    def tasks(self, split: Split) -> list[Task]:
        """The tasks of one split, in a fixed order (default: every :meth:`task_at` of a finite split)."""
        if type(self).task_at is TaskFamily.task_at:
            raise NotImplementedError(f"{type(self).__name__} must implement tasks(split), or task_at and num_tasks")
        count = self.num_tasks(split)
        if count is None:
            raise ValueError(
                f"{type(self).__name__} has no end of {split!r} tasks: list a finite number of them, or take them one "
                "by one with task_at(split, index)"
            )
        return [self.task_at(split, index) for index in range(count)]

    def num_tasks(self, split: Split) -> int | None:
        """How many tasks the split has (``None``: no end, every index a new task). Default: ``len(tasks(split))``."""
        if type(self).tasks is TaskFamily.tasks:
            raise NotImplementedError(f"{type(self).__name__} must implement num_tasks(split) with task_at")
        return len(self.tasks(split))

    def task_at(self, split: Split, index: int) -> Task:
        """The task at ``index`` of the split (default: ``tasks(split)[index]``)."""
        return self.tasks(split)[index]

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


class IndexedFamily(TaskFamily):
    """A family whose tasks are made from their index (:meth:`task_at`), with a count per split in ``counts``
    (``None``: no end)."""

    counts: dict[str, int | None]

    def num_tasks(self, split: Split) -> int | None:
        self._check_split(split)
        return self.counts[split]

    def _check_index(self, split: Split, index: int) -> None:
        count = self.num_tasks(split)
        if index < 0 or (count is not None and index >= count):
            raise IndexError(f"{type(self).__name__} has {count} {split!r} tasks, no task {index}")


TaskData = Dataset | tuple[Dataset, Dataset] | Task
"""What a ready-made family accepts as one task: a data set (a seeded share of it is held out), a pair ``(train,
held_out)``, or a :class:`Task` (its name and metadata kept or, for a name, replaced)."""


def as_task(name: str, data: TaskData, held_out: float, seed: int) -> Task:
    """``data`` as a :class:`Task` named ``name``: a data set is split at random (``seed``) into a training part and
    a held-out share ``held_out`` of its samples (at least one each), with :func:`torch.utils.data.random_split`.

    Examples:
        >>> task = as_task("squares", [(i, i * i) for i in range(10)], held_out=0.2, seed=0)
        >>> len(task.train), len(task.test), task.num_classes
        (8, 2, None)
    """
    if isinstance(data, Task):
        return data if data.name == name else Task(name, data.train, data.test, data.num_classes, data.metadata)
    if isinstance(data, tuple):
        train, test = data
        return Task(name, train, test)
    size = dataset_length(data)
    if size < 2 or not 0 < held_out < 1:
        raise ValueError(
            f"task {name!r}: splitting {size} samples into training and held-out data needs at least 2 samples and "
            f"0 < held_out < 1 (got {held_out}); or give the task as a pair (train, held_out)"
        )
    test_size = min(size - 1, max(1, round(held_out * size)))
    train, test = random_split(data, [size - test_size, test_size], torch.Generator().manual_seed(seed))
    return Task(name, train, test)
