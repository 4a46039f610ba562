"""The deterministic stream of tasks behind :class:`~lightning_meta.data.TaskDataModule`.

Micro-batch ``n`` of meta-training belongs to task ``n // batches_per_task`` of the stream, and its samples and
augmentation seeds are a pure function of ``(seed, n)``. A resumed run therefore sees exactly the batches the
uninterrupted run would have seen, whatever the DataLoader workers or the epoch boundaries.

A batch is exactly what the task's samples collate to (a tensor, a tuple, a dict, a dataclass with a collate
function of yours): nothing is wrapped around it, and which task it belongs to is the
:class:`~lightning_meta.data.schedule.TaskSchedule`'s to say. Under task-batched training a batch holds the
same-numbered batch of T tasks, each collated alone and then stacked on a leading task dimension: each task's
samples are exactly those it gets when trained alone.

Examples:
    >>> sizes = lambda task: [10, 4][task]   # samples of the split's tasks 0 and 1
    >>> sampler = TaskBatchSampler(sizes, 2, batch_size=3, batches_per_task=2, tasks_per_epoch=2, seed=0)
    >>> batches = list(sampler)
    >>> len(batches), len(batches[0])
    (4, 3)
    >>> [key.stream_task for key in batches[2]] == [1, 1, 1]
    True

    Two tasks together (``locate`` names the tasks of each batch, here tasks 0 and 1 for every batch):

    >>> together = TaskBatchSampler(sizes, 2, 3, 2, 2, seed=0, locate=lambda n: ([0, 1], n), tasks_per_batch=2)
    >>> [[key.stream_task for key in batch] for batch in together]
    [[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1]]
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, default_collate

from lightning_meta.data.family import Task


class SampleKey(NamedTuple):
    """Which sample to load: task position in the stream, task index in the split, sample index, augmentation seed."""

    stream_task: int
    task_index: int
    sample: int
    seed: int


def stream_task_index(stream_task: int, num_tasks: int | None, seed: int) -> int:
    """Which of ``num_tasks`` tasks sits at a position of the stream: each pass over them is a fresh seeded
    permutation, so every task is trained once per pass; from a pool without end (``None``), the task at the
    position's own index."""
    if num_tasks is None:
        return stream_task
    order = np.random.default_rng([seed, 0, stream_task // num_tasks]).permutation(num_tasks)
    return int(order[stream_task % num_tasks])


class TaskStreamDataset(Dataset):
    """Loads the samples named by :class:`SampleKey` from the tasks of one split (``task_at(index)``), with seeded
    augmentation: ``transform`` gets the whole sample (torchvision's ``v2`` transforms change its image and pass the
    rest through). Each sample comes with its key, for :class:`TaskCollate`."""

    def __init__(self, task_at: Callable[[int], Task], transform: Callable[[Any], Any] | None = None) -> None:
        self.task_at = task_at
        self.transform = transform

    def __getitem__(self, key: SampleKey) -> tuple[SampleKey, Any]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[SampleKey]) -> list[tuple[SampleKey, Any]]:
        """The samples of a batch (the DataLoader asks for a whole batch at once): fetched task by task in one call
        where the task's data set can (``__getitems__``, e.g. :class:`~lightning_meta.data.ImageTensorDataset`),
        then augmented one by one."""
        samples = []
        for index, group in itertools.groupby(keys, key=lambda key: key.task_index):
            data, chosen = self.task_at(index).train, list(group)
            fetch = getattr(data, "__getitems__", None)
            fetched = fetch([key.sample for key in chosen]) if fetch else [data[key.sample] for key in chosen]
            samples += [(key, self._augment(sample, key.seed)) for key, sample in zip(chosen, fetched)]
        return samples

    def _augment(self, sample: Any, seed: int) -> Any:
        if self.transform is None:
            return sample
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(sample)


class TaskCollate:
    """Collates a batch of the stream: the samples of one task with ``collate_fn`` (default: PyTorch's
    ``default_collate``), exactly as a DataLoader of the task's data set would; with ``stacked``, the samples of T
    tasks (each task's consecutive, as many for each), each task's collated alone and the T batches stacked on a
    leading task dimension (``default_collate`` of the batches: tensors, tuples, lists and dicts of them).

    Examples:
        >>> key = lambda task: SampleKey(task, task, 0, 0)
        >>> samples = [(key(0), {"x": torch.ones(2), "y": 1}), (key(0), {"x": torch.zeros(2), "y": 0})]
        >>> TaskCollate()(samples)
        {'x': tensor([[1., 1.],
                [0., 0.]]), 'y': tensor([1, 0])}
        >>> together = TaskCollate(stacked=True)(samples + [(key(1), s) for _, s in samples])
        >>> together["x"].shape, together["y"].shape
        (torch.Size([2, 2, 2]), torch.Size([2, 2]))
    """

    def __init__(self, collate_fn: Callable[[list[Any]], Any] | None = None, stacked: bool = False) -> None:
        self.collate_fn = collate_fn or default_collate
        self.stacked = stacked

    def __call__(self, keyed: list[tuple[SampleKey, Any]]) -> Any:
        if not self.stacked:
            return self.collate_fn([sample for _, sample in keyed])
        tasks = [list(group) for _, group in itertools.groupby(keyed, key=lambda pair: pair[0].stream_task)]
        return default_collate([self.collate_fn([sample for _, sample in task]) for task in tasks])


class TaskBatchSampler(Sampler[list[SampleKey]]):
    """Yields the batches of the task stream, starting at the micro-batch that ``position()`` names.

    Args:
        task_size: number of training samples of the split's task at an index.
        num_tasks: tasks in the split (``None``: a pool without end, every position of the stream a new task).
        batch_size: samples per batch.
        batches_per_task: consecutive batches drawn from one task (inner steps x gradient accumulation).
        tasks_per_epoch: tasks that make one epoch; ``len(sampler)`` is always a full epoch.
        seed: seed of the task order, the sample order and the augmentation.
        position: returns the number of micro-batches already consumed (e.g. from ``trainer.global_step``);
            iteration resumes there and stops at the end of that position's epoch.
        locate: maps micro-batch ``n`` to ``(stream tasks, index of the batch within the tasks)``; the default,
            ``([n // batches_per_task], n % batches_per_task)``, is one process training the stream in order (see
            :class:`~lightning_meta.data.schedule.TaskSchedule` for several, and for tasks trained together).
        shard: ``(rank, world_size)``: yield only the samples ``rank::world_size`` of each batch (data-parallel).
        tasks_per_batch: tasks whose batches each yielded batch joins (task-batched training); ``tasks_per_epoch``
            must be a multiple of it.
    """

    def __init__(
        self,
        task_size: Callable[[int], int],
        num_tasks: int | None,
        batch_size: int,
        batches_per_task: int,
        tasks_per_epoch: int,
        seed: int,
        position: Callable[[], int] = lambda: 0,
        locate: Callable[[int], tuple[Sequence[int], int]] | None = None,
        shard: tuple[int, int] = (0, 1),
        tasks_per_batch: int = 1,
    ) -> None:
        if num_tasks is not None and num_tasks < 1:
            raise ValueError("the task stream needs at least one meta-training task")
        if tasks_per_batch < 1 or tasks_per_epoch % tasks_per_batch:
            raise ValueError(
                f"tasks_per_epoch={tasks_per_epoch} must be a multiple of the {tasks_per_batch} tasks trained together"
            )
        self.task_size = task_size
        self.num_tasks = num_tasks
        self.batch_size = batch_size
        self.batches_per_task = batches_per_task
        self.tasks_per_epoch = tasks_per_epoch
        self.seed = seed
        self.position = position
        self.locate = locate or (lambda n: ([n // batches_per_task], n % batches_per_task))
        self.shard = shard
        self.tasks_per_batch = tasks_per_batch

    def __len__(self) -> int:
        return self.tasks_per_epoch // self.tasks_per_batch * self.batches_per_task

    def task_index(self, stream_task: int) -> int:
        """The split's task at a position of the stream (see :func:`stream_task_index`)."""
        return stream_task_index(stream_task, self.num_tasks, self.seed)

    def task_batches(self, stream_task: int) -> list[list[SampleKey]]:
        """All batches of one task of the stream: samples in seeded shuffled passes over the task's data."""
        index = self.task_index(stream_task)
        size = self.task_size(index)
        if size < 1:
            raise ValueError(f"task {index} of the split has no training sample: every task needs at least one")
        rng = np.random.default_rng([self.seed, 1, stream_task])
        needed = self.batches_per_task * self.batch_size
        samples = np.concatenate([rng.permutation(size) for _ in range(-(-needed // size))])[:needed]
        seeds = rng.integers(0, 2**62, size=needed)
        keys = [SampleKey(stream_task, index, int(s), int(z)) for s, z in zip(samples, seeds)]
        return [keys[i : i + self.batch_size] for i in range(0, needed, self.batch_size)]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        start = self.position()
        end = (start // len(self) + 1) * len(self)
        rank, world_size = self.shard
        while start < end:
            stream_tasks, offset = self.locate(start)
            per_task = [self.task_batches(task)[offset:][: end - start] for task in stream_tasks]
            for batches in zip(*per_task):
                yield [key for batch in batches for key in batch[rank::world_size]]
                start += 1
