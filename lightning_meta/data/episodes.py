"""Episodes for meta-learners with a differentiable inner loop (MAML): support batches and a query set per task.

``EpisodeDataModule`` streams the same tasks as :class:`~lightning_meta.data.TaskDataModule`, in the same seeded
order, but hands a whole task to ``training_step`` at once: ``support_batches`` batches of ``batch_size`` training
images (one per inner step, augmented as in the stream) and ``query_size`` of the task's held-out images, on which
the adapted parameters are scored. A batch holds ``meta_batch_size`` such episodes.

Examples:
    >>> import torch
    >>> from lightning_meta.data import EpisodeDataModule
    >>> from lightning_meta.data.family import ImageTensorDataset, Task, TaskFamily
    >>> class Toy(TaskFamily):
    ...     def tasks(self, split):
    ...         data = ImageTensorDataset(torch.zeros(8, 1, 4, 4, dtype=torch.uint8), torch.arange(8) % 2)
    ...         return [Task(f"{split}-{i}", data, data, 2) for i in range(3)]
    >>> data = EpisodeDataModule(Toy(), inner_steps=5, support_batches=2, batch_size=4, query_size=6,
    ...                          meta_batch_size=3)
    >>> data.setup("fit")
    >>> batch = next(iter(data.train_dataloader()))
    >>> tuple(batch.support_inputs.shape), tuple(batch.query_inputs.shape), batch.tasks
    ((3, 2, 4, 1, 4, 4), (3, 6, 1, 4, 4), [0, 1, 2])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from lightning_meta.data.datamodule import TaskDataModule
from lightning_meta.data.family import Split, Task, dataset_length
from lightning_meta.data.stream import TaskBatchSampler, TaskStreamDataset
from lightning_meta.protocols import FixedInnerSteps, implements
from lightning_meta.validation import check_range


@dataclass
class EpisodeBatch:
    """Episodes of several tasks, stacked along the first dimension.

    Attributes:
        support_inputs: ``[tasks, support_batches, batch_size, ...]``: inner step ``i`` trains on batch ``i``.
        support_targets: ``[tasks, support_batches, batch_size]``.
        query_inputs: ``[tasks, query_size, ...]``: the adapted parameters are scored here.
        query_targets: ``[tasks, query_size]``.
        tasks: each episode's position in the task stream.
        task_names: each episode's task name.
    """

    support_inputs: Tensor
    support_targets: Tensor
    query_inputs: Tensor
    query_targets: Tensor
    tasks: list[int]
    task_names: list[str]

    def __len__(self) -> int:
        return self.support_inputs.shape[0]


class EpisodeDataset(Dataset):
    """Builds the episode of the ``n``-th task of a stream (a pure function of the sampler's seed and ``n``) from the
    split's tasks, ``task_at(index)``; ``len`` is the split's task count (for evaluation: each task once)."""

    def __init__(
        self,
        task_at: Callable[[int], Task],
        sampler: TaskBatchSampler,
        query_size: int,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self.task_at = task_at
        self.sampler = sampler
        self.query_size = query_size
        self.support = TaskStreamDataset(task_at, transform)

    def __len__(self) -> int:
        if self.sampler.num_tasks is None:
            raise TypeError("a pool of tasks without end has no length")
        return self.sampler.num_tasks

    def __getitem__(self, stream_task: int) -> dict[str, Any]:
        batches = self.sampler.task_batches(stream_task)
        support = [default_collate([self.support[key][1] for key in batch]) for batch in batches]
        task = self.task_at(batches[0][0].task_index)
        rng = np.random.default_rng([self.sampler.seed, 2, stream_task])
        size = dataset_length(task.test)
        picks = rng.choice(size, size=self.query_size, replace=self.query_size > size)
        query_inputs, query_targets = default_collate([task.test[int(i)] for i in picks])
        return {
            "support_inputs": torch.stack([x for x, _ in support]),
            "support_targets": torch.stack([y for _, y in support]),
            "query_inputs": query_inputs,
            "query_targets": query_targets,
            "tasks": stream_task,
            "task_names": task.name,
        }


def collate_episodes(episodes: list[dict[str, Any]]) -> EpisodeBatch:
    """Stack episodes into an :class:`EpisodeBatch`."""
    stacked = {
        key: torch.stack([e[key] for e in episodes]) for key in episodes[0] if key.endswith(("inputs", "targets"))
    }
    return EpisodeBatch(**stacked, tasks=[e["tasks"] for e in episodes], task_names=[e["task_names"] for e in episodes])


class EpisodeBatchSampler(Sampler[list[int]]):
    """Batch ``n`` holds the tasks ``n * tasks_per_batch ...`` of the stream, from the batch ``position()`` names on;
    under DDP each process gets its own consecutive share of them.

    Args:
        tasks_per_batch: episodes per batch, over all processes.
        batches_per_epoch: ``len(sampler)``; iteration stops at the end of the current epoch.
        position: batches already consumed (e.g. from ``trainer.global_step``), so a resumed run continues there.
        shard: ``(rank, world_size)``: this process takes tasks ``rank * share ... (rank + 1) * share - 1`` of each
            batch, ``share = tasks_per_batch / world_size``.
    """

    def __init__(
        self,
        tasks_per_batch: int,
        batches_per_epoch: int,
        position: Callable[[], int] = lambda: 0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        rank, world_size = shard
        if tasks_per_batch % world_size:
            raise ValueError(
                f"each batch's {tasks_per_batch} episodes are split evenly over the {world_size} processes: choose a "
                "meta_batch_size that is a multiple of the number of processes"
            )
        self.tasks_per_batch = tasks_per_batch
        self.batches_per_epoch = batches_per_epoch
        self.position = position
        self.share = tasks_per_batch // world_size
        self.offset = rank * self.share

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        start = self.position()
        for batch in range(start, (start // len(self) + 1) * len(self)):
            first = batch * self.tasks_per_batch + self.offset
            yield list(range(first, first + self.share))


class EpisodeDataModule(TaskDataModule):
    """Streams meta-batches of episodes (support batches + query set per task) for MAML-style meta-learners.

    Takes the :class:`~lightning_meta.data.TaskDataModule` arguments (family, root, inner_steps, meta_batch_size,
    batch_size, tasks_per_epoch, augment, num_workers, seed), three of them with episode meanings:
    ``inner_steps`` is the number of steps on held-out tasks in :class:`~lightning_meta.MetaEvaluation` and the
    default number of support batches; ``meta_batch_size`` counts episodes per batch (default 1) over all
    processes: under DDP each process takes an equal share and DDP averages their gradients (gradient accumulation
    groups several batches); ``tasks_per_epoch`` counts episodes per Lightning epoch (rounded up to whole batches;
    default 10 batches), and validation runs at epoch ends.

    Args:
        *args: the :class:`~lightning_meta.data.TaskDataModule` arguments, by position.
        support_batches: support batches per episode; 1 gives the classic few-shot episode whose single support
            batch is reused at every inner step. Default: the inner steps of the Trainer's MAML module when it fixes
            them (:meth:`~lightning_meta.mixins.MAMLMixin.configure_maml`), else ``inner_steps``.
        query_size: held-out images of the task per episode (drawn with replacement only if the task has fewer).
        **kwargs: the :class:`~lightning_meta.data.TaskDataModule` arguments, by name.

    ``val_dataloader`` / ``test_dataloader`` give one episode of every task of the ``"val"`` / ``"test"`` split,
    the same episodes at every evaluation.
    """

    def __init__(self, *args: Any, support_batches: int | None = None, query_size: int = 20, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_range("EpisodeDataModule", 1, support_batches=support_batches, query_size=query_size)
        self.support_batches = support_batches
        self.query_size = query_size

    def resolved_support_batches(self) -> int:
        """``support_batches``, else the inner steps the Trainer's MAML module fixes, else ``inner_steps``."""
        if self.support_batches is not None:
            return self.support_batches
        model = self.trainer.lightning_module if self.trainer is not None else None
        fixed = model.fixed_inner_steps if implements(model, FixedInnerSteps, type(self).__name__) else None
        return fixed or self.inner_steps

    @staticmethod
    def default_tasks_per_epoch(meta_batch_size: int | None) -> int:
        """10 batches: validation (at epoch ends) every 10 meta-steps."""
        return 10 * (meta_batch_size or 1)

    def optimizer_steps(self, meta_steps: int) -> int:
        """One optimizer step is one meta-step (a meta-batch of episodes), whatever the processes."""
        return meta_steps

    @property
    def tasks_per_batch(self) -> int:
        return self.meta_batch_size or 1

    def _episodes(
        self, task_at: Callable[[int], Task], num_tasks: int | None, seed: int, transform: Callable[[Any], Any] | None
    ) -> EpisodeDataset:
        def size(index: int) -> int:
            return dataset_length(task_at(index).train)

        sampler = TaskBatchSampler(size, num_tasks, self.batch_size, self.resolved_support_batches(), 1, seed)
        return EpisodeDataset(task_at, sampler, self.query_size, transform)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        self._start_stream()
        batches = -(-self.tasks_per_epoch // self.tasks_per_batch)
        world_size, rank = self._processes()
        sampler = EpisodeBatchSampler(self.tasks_per_batch, batches, self._consumed_batches, shard=(rank, world_size))
        return DataLoader(
            self._episodes(self.train_task, self._num_train, self.seed, self.train_transform()),
            batch_sampler=sampler,
            collate_fn=collate_episodes,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _evaluation_dataloader(self, split: Split) -> DataLoader:
        tasks = self.tasks(split)
        if not tasks:
            raise ValueError(f"{type(self.family).__name__} has no {split!r} tasks to validate or test on")
        episodes = self._episodes(tasks.__getitem__, len(tasks), self.seed + 1, transform=None)
        # One pass of the stream visits every task once; the fixed seed gives the same episodes every time.
        return DataLoader(
            episodes, batch_size=self.tasks_per_batch, collate_fn=collate_episodes, num_workers=self.num_workers
        )

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_dataloader("test")
