"""The task-family API: a family splits its tasks into meta-train, meta-validation and meta-test.

Each task has its own training data, its own held-out data and its own label space ``0..num_classes-1``.

Examples:
    >>> import torch
    >>> from lightning_meta.tasks.family import ImageTensorDataset, Task
    >>> images = torch.zeros(6, 1, 28, 28, dtype=torch.uint8)
    >>> labels = torch.tensor([0, 1, 2, 0, 1, 2])
    >>> task = Task("toy", ImageTensorDataset(images, labels), ImageTensorDataset(images, labels), 3)
    >>> x, y = task.train[4]
    >>> x.shape, x.dtype, y
    (torch.Size([1, 28, 28]), torch.float32, 1)
    >>> [y for _, y in task.train.__getitems__([4, 0, 2])]  # a batch at once, as a DataLoader asks for it
    [1, 0, 2]

    A family of your own implements ``tasks(split)`` (and ``prepare_data`` if it downloads):

    >>> from lightning_meta.tasks import TaskFamily
    >>> class Blank(TaskFamily):
    ...     def tasks(self, split):
    ...         self._check_split(split)
    ...         return [Task(f"{split}-{i}", task.train, task.test, 3) for i in range(4 if split == "train" else 1)]
    >>> [t.name for t in Blank().tasks("val")]
    ['val-0']
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sized
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

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
    """One learning problem: ``train`` is what the inner loop trains on, ``test`` is held out from it."""

    name: str
    train: Dataset
    test: Dataset
    num_classes: int


class TaskFamily(ABC):
    """A distribution of tasks, split into disjoint meta-train / meta-validation / meta-test tasks.

    Subclasses implement :meth:`tasks`; :meth:`prepare_data` is where a family downloads or builds files
    (called once per node by :class:`~lightning_meta.tasks.TaskDataModule`).
    """

    def prepare_data(self) -> None:  # noqa: B027 (optional hook: most families have nothing to prepare)
        """Download or build what the family needs on disk. Default: nothing."""

    @abstractmethod
    def tasks(self, split: Split) -> list[Task]:
        """The tasks of one split, in a fixed order."""

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
