"""The deterministic stream of tasks behind :class:`~lightning_meta.tasks.TaskDataModule`.

Micro-batch ``n`` of meta-training belongs to task ``n // batches_per_task`` of the stream, and its samples and
augmentation seeds are a pure function of ``(seed, n)``. A resumed run therefore sees exactly the batches the
uninterrupted run would have seen, whatever the DataLoader workers or the epoch boundaries. Under task-batched
training a batch holds the same-numbered batch of T tasks, stacked (:class:`StackedTaskBatch`): each task's samples
are exactly those it gets when trained alone.

Examples:
    >>> sampler = TaskBatchSampler([10, 4], batch_size=3, batches_per_task=2, tasks_per_epoch=2, seed=0)
    >>> batches = list(sampler)
    >>> len(batches), len(batches[0])
    (4, 3)
    >>> [key.stream_task for key in batches[2]] == [1, 1, 1]
    True

    Two tasks together (``locate`` names the tasks of each batch, here tasks 0 and 1 for every batch):

    >>> together = TaskBatchSampler([10, 4], 3, 2, 2, seed=0, locate=lambda n: ([0, 1], n), tasks_per_batch=2)
    >>> [[key.stream_task for key in batch] for batch in together]
    [[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1]]
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler, default_collate
from typing_extensions import Self

from lightning_meta.tasks.family import Task, dataset_length


class SampleKey(NamedTuple):
    """Which sample to load: task position in the stream, task index in the split, sample index, augmentation seed."""

    stream_task: int
    task_index: int
    sample: int
    seed: int


class InputsTargets:
    """What :class:`TaskBatch` and :class:`StackedTaskBatch` share: they unpack like ``(inputs, targets)``, and
    Lightning moves them to a device by calling their ``to`` (instead of deep-copying the dataclass at every step)."""

    inputs: Tensor
    targets: Tensor

    def __iter__(self) -> Iterator[Tensor]:
        return iter((self.inputs, self.targets))

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> Tensor:
        return (self.inputs, self.targets)[index]

    def to(self, *args: Any, **kwargs: Any) -> Self:
        """The batch with its tensors moved (``Tensor.to``'s arguments)."""
        moved = {"inputs": self.inputs.to(*args, **kwargs), "targets": self.targets.to(*args, **kwargs)}
        return replace(self, **moved)  # type: ignore[type-var]


@dataclass
class TaskBatch(InputsTargets):
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


@dataclass
class StackedTaskBatch(InputsTargets):
    """The batches of T tasks trained together, stacked: ``inputs`` is ``(T, B, ...)``, ``targets`` ``(T, B)``, and
    ``x, y = batch`` works as for :class:`TaskBatch`. ``tasks``, ``task_names`` and ``split_indices`` say, in order,
    which task of the stream, of which name and split index each slice belongs to.
    """

    inputs: Tensor
    targets: Tensor
    tasks: list[int]
    task_names: list[str]
    split_indices: list[int]


def batch_tasks(batch: Any) -> list[int] | None:
    """The stream tasks a batch says it holds: ``[task]`` of a :class:`TaskBatch`, the ``tasks`` of a
    :class:`StackedTaskBatch`, ``None`` for a batch that does not say."""
    if isinstance(batch, TaskBatch):
        return [batch.task]
    return batch.tasks if isinstance(batch, StackedTaskBatch) else None


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
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[SampleKey]) -> list[tuple[Tensor, int, SampleKey, str]]:
        """The samples of a batch (the DataLoader asks for a whole batch at once): fetched task by task in one call
        where the task's data set can (``__getitems__``, e.g. :class:`~lightning_meta.tasks.ImageTensorDataset`),
        then augmented one by one."""
        samples = []
        for index, group in itertools.groupby(keys, key=lambda key: key.task_index):
            task, chosen = self.tasks[index], list(group)
            fetch = getattr(task.train, "__getitems__", None)
            fetched = fetch([key.sample for key in chosen]) if fetch else [task.train[k.sample] for k in chosen]
            for key, (inputs, target) in zip(chosen, fetched):
                samples.append((self._augment(inputs, key.seed), target, key, task.name))
        return samples

    def _augment(self, inputs: Tensor, seed: int) -> Tensor:
        if self.transform is None:
            return inputs
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(inputs)


def collate_task_batch(samples: list[tuple[Tensor, int, SampleKey, str]]) -> TaskBatch:
    """Stack samples of one task into a :class:`TaskBatch`."""
    inputs, targets = default_collate([(x, y) for x, y, _, _ in samples])
    key, name = samples[0][2], samples[0][3]
    return TaskBatch(inputs, targets, task=key.stream_task, task_name=name, split_index=key.task_index)


def collate_stacked_task_batch(samples: list[tuple[Tensor, int, SampleKey, str]]) -> StackedTaskBatch:
    """Stack the samples of several tasks (each task's consecutive, as many for each) into a
    :class:`StackedTaskBatch`."""
    groups: dict[int, list[tuple[Tensor, int, SampleKey, str]]] = {}
    for sample in samples:
        groups.setdefault(sample[2].stream_task, []).append(sample)
    batches = [collate_task_batch(group) for group in groups.values()]
    return StackedTaskBatch(
        torch.stack([b.inputs for b in batches]),
        torch.stack([b.targets for b in batches]),
        tasks=[b.task for b in batches],
        task_names=[b.task_name for b in batches],
        split_indices=[b.split_index for b in batches],
    )


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
        locate: maps micro-batch ``n`` to ``(stream tasks, index of the batch within the tasks)``; the default,
            ``([n // batches_per_task], n % batches_per_task)``, is one process training the stream in order (see
            :class:`~lightning_meta.tasks.schedule.TaskSchedule` for several, and for tasks trained together).
        shard: ``(rank, world_size)``: yield only the samples ``rank::world_size`` of each batch (data-parallel).
        tasks_per_batch: tasks whose batches each yielded batch joins (task-batched training); ``tasks_per_epoch``
            must be a multiple of it.
    """

    def __init__(
        self,
        task_sizes: Sequence[int],
        batch_size: int,
        batches_per_task: int,
        tasks_per_epoch: int,
        seed: int,
        position: Callable[[], int] = lambda: 0,
        locate: Callable[[int], tuple[Sequence[int], int]] | None = None,
        shard: tuple[int, int] = (0, 1),
        tasks_per_batch: int = 1,
    ) -> None:
        if not task_sizes or min(task_sizes) < 1:
            raise ValueError(f"every task needs at least one training sample, got sizes {list(task_sizes)}")
        if tasks_per_batch < 1 or tasks_per_epoch % tasks_per_batch:
            raise ValueError(
                f"tasks_per_epoch={tasks_per_epoch} must be a multiple of the {tasks_per_batch} tasks trained together"
            )
        self.task_sizes = list(task_sizes)
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
            stream_tasks, offset = self.locate(start)
            per_task = [self.task_batches(task)[offset:][: end - start] for task in stream_tasks]
            for batches in zip(*per_task):
                yield [key for batch in batches for key in batch[rank::world_size]]
                start += 1
