"""The deterministic stream of tasks behind :class:`~lightning_meta.tasks.TaskDataModule`.

Micro-batch ``n`` of meta-training belongs to task ``n // batches_per_task`` of the stream, and its samples and
augmentation seeds are a pure function of ``(seed, n)``. A resumed run therefore sees exactly the batches the
uninterrupted run would have seen, whatever the DataLoader workers or the epoch boundaries.

Examples:
    >>> sampler = TaskBatchSampler([10, 4], batch_size=3, batches_per_task=2, tasks_per_epoch=2, seed=0)
    >>> batches = list(sampler)
    >>> len(batches), len(batches[0])
    (4, 3)
    >>> [key.stream_task for key in batches[2]] == [1, 1, 1]
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler, default_collate

from lightning_meta.tasks.family import Task, dataset_length


class SampleKey(NamedTuple):
    """Which sample to load: task position in the stream, task index in the split, sample index, augmentation seed."""

    stream_task: int
    task_index: int
    sample: int
    seed: int


@dataclass
class TaskBatch:
    """A batch that says which task of the stream it belongs to, and unpacks like ``(inputs, targets)``.

    ``x, y = batch`` works as for a plain tuple, so a LightningModule written for ``(x, y)`` batches runs unchanged;
    callbacks read ``batch.task`` (the task's position in the stream), ``batch.task_name`` and ``batch.split_index``
    (the task's index in its split, e.g. to pick a per-task head).
    """

    inputs: Tensor
    targets: Tensor
    task: int
    task_name: str
    split_index: int = 0

    def __iter__(self) -> Iterator[Tensor]:
        return iter((self.inputs, self.targets))

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> Tensor:
        return (self.inputs, self.targets)[index]


def stream_task_index(stream_task: int, num_tasks: int, seed: int) -> int:
    """Which of ``num_tasks`` tasks sits at a position of the stream: each pass over them is a fresh seeded
    permutation, so every task is trained once per pass."""
    order = np.random.default_rng([seed, 0, stream_task // num_tasks]).permutation(num_tasks)
    return int(order[stream_task % num_tasks])


class TaskStreamDataset(Dataset):
    """Loads the samples named by :class:`SampleKey` from the tasks of one split, with seeded augmentation."""

    def __init__(self, tasks: Sequence[Task], transform: Callable[[Tensor], Tensor] | None = None) -> None:
        self.tasks = list(tasks)
        self.transform = transform

    def __len__(self) -> int:
        return sum(dataset_length(task.train) for task in self.tasks)

    def __getitem__(self, key: SampleKey) -> tuple[Tensor, int, SampleKey, str]:
        task = self.tasks[key.task_index]
        inputs, target = task.train[key.sample]
        if self.transform is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(key.seed)
                inputs = self.transform(inputs)
        return inputs, target, key, task.name


def collate_task_batch(samples: list[tuple[Tensor, int, SampleKey, str]]) -> TaskBatch:
    """Stack samples of one task into a :class:`TaskBatch`."""
    inputs, targets = default_collate([(x, y) for x, y, _, _ in samples])
    key, name = samples[0][2], samples[0][3]
    return TaskBatch(inputs, targets, task=key.stream_task, task_name=name, split_index=key.task_index)


class TaskBatchSampler(Sampler[list[SampleKey]]):
    """Yields the batches of the task stream, starting at the micro-batch that ``position()`` names.

    Args:
        task_sizes: number of training samples of each task of the split.
        batch_size: samples per batch.
        batches_per_task: consecutive batches drawn from one task (inner steps x gradient accumulation).
        tasks_per_epoch: tasks that make one epoch; ``len(sampler)`` is always a full epoch.
        seed: seed of the task order, the sample order and the augmentation.
        position: returns the number of micro-batches already consumed (e.g. from ``trainer.global_step``);
            iteration resumes there and stops at the end of that position's epoch.
        locate: maps micro-batch ``n`` to ``(stream task, index of the batch within the task)``; the default,
            ``divmod(n, batches_per_task)``, is one process training the stream in order (see
            :class:`~lightning_meta.tasks.schedule.TaskSchedule` for several).
        shard: ``(rank, world_size)``: yield only the samples ``rank::world_size`` of each batch (data-parallel).
    """

    def __init__(
        self,
        task_sizes: Sequence[int],
        batch_size: int,
        batches_per_task: int,
        tasks_per_epoch: int,
        seed: int,
        position: Callable[[], int] = lambda: 0,
        locate: Callable[[int], tuple[int, int]] | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if not task_sizes or min(task_sizes) < 1:
            raise ValueError(f"every task needs at least one training sample, got sizes {list(task_sizes)}")
        self.task_sizes = list(task_sizes)
        self.batch_size = batch_size
        self.batches_per_task = batches_per_task
        self.tasks_per_epoch = tasks_per_epoch
        self.seed = seed
        self.position = position
        self.locate = locate or (lambda n: divmod(n, batches_per_task))
        self.shard = shard

    def __len__(self) -> int:
        return self.tasks_per_epoch * self.batches_per_task

    def task_index(self, stream_task: int) -> int:
        """The split's task at a position of the stream (see :func:`stream_task_index`)."""
        return stream_task_index(stream_task, len(self.task_sizes), self.seed)

    def task_batches(self, stream_task: int) -> list[list[SampleKey]]:
        """All batches of one task of the stream: samples in seeded shuffled passes over the task's data."""
        index = self.task_index(stream_task)
        rng = np.random.default_rng([self.seed, 1, stream_task])
        needed = self.batches_per_task * self.batch_size
        size = self.task_sizes[index]
        samples = np.concatenate([rng.permutation(size) for _ in range(-(-needed // size))])[:needed]
        seeds = rng.integers(0, 2**62, size=needed)
        keys = [SampleKey(stream_task, index, int(s), int(z)) for s, z in zip(samples, seeds)]
        return [keys[i : i + self.batch_size] for i in range(0, needed, self.batch_size)]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        start = self.position()
        end = (start // len(self) + 1) * len(self)
        rank, world_size = self.shard
        while start < end:
            stream_task, offset = self.locate(start)
            for batch in self.task_batches(stream_task)[offset:][: end - start]:
                yield batch[rank::world_size]
                start += 1
