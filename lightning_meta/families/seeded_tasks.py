"""``SeededTasks``: a task from a seed (sine waves, quadratics, procedurally generated problems), fixed pools or a
pool without end.

Examples:
    MAML's sine-wave regression: each task a sine of random amplitude and phase, ``(x, y)`` pairs.

    >>> import math, torch
    >>> from torch.utils.data import TensorDataset
    >>> from lightning_meta.data import TaskDataModule
    >>> from lightning_meta.families import SeededTasks
    >>> def sine_wave(seed):
    ...     g = torch.Generator().manual_seed(seed)
    ...     amplitude, phase = 0.1 + 4.9 * torch.rand(1, generator=g), math.pi * torch.rand(1, generator=g)
    ...     x = 10 * torch.rand(60, 1, generator=g) - 5
    ...     return TensorDataset(x, amplitude * torch.sin(x + phase))
    >>> family = SeededTasks(sine_wave, val_tasks=5, test_tasks=5)   # meta-training tasks without end
    >>> family.num_tasks("train"), family.num_tasks("test")
    (None, 5)
    >>> task = family.task_at("train", 123456)                        # any index: a new sine wave
    >>> task.name, len(task.train), len(task.test)
    ('task-train-123456', 30, 30)
    >>> tasks = TaskDataModule(family, inner_steps=5, batch_size=10)   # ready for Leap or Reptile
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lightning_meta.data.family import SPLITS, IndexedFamily, Split, Task, TaskData, as_task
from lightning_meta.validation import check_range


class SeededTasks(IndexedFamily):
    """Tasks made by ``make(seed)``, one seed per task, the seeds of each split disjoint streams.

    Args:
        make: ``seed -> data`` for one task: a data set (a seeded share ``held_out`` of it is held out from the task's
            training), a pair ``(train, held_out)`` or a :class:`~lightning_meta.data.Task`.
        train_tasks: meta-training tasks (a fixed pool, visited in seeded order), or ``None``: every position of
            the stream is a new task.
        val_tasks: meta-validation tasks.
        test_tasks: meta-test tasks.
        held_out: share of the samples of a task's data set held out from its training.
        seed: picks the tasks; a task's seed is a pure function of ``(seed, split, index)`` (:meth:`task_seed`),
            so a resumed run and every process see the same tasks.
        name: prefix of the tasks' names (``"<name>-<split>-<index>"``).
    """

    def __init__(
        self,
        make: Callable[[int], TaskData],
        train_tasks: int | None = None,
        val_tasks: int = 10,
        test_tasks: int = 10,
        held_out: float = 0.5,
        seed: int = 0,
        name: str = "task",
    ) -> None:
        check_range("SeededTasks", 1, train_tasks=train_tasks)
        check_range("SeededTasks", 0, val_tasks=val_tasks, test_tasks=test_tasks)
        self.make = make
        self.counts: dict[str, int | None] = {"train": train_tasks, "val": val_tasks, "test": test_tasks}
        self.held_out = held_out
        self.seed = seed
        self.name = name

    def task_seed(self, split: Split, index: int) -> int:
        """The seed ``make`` gets for the task at ``index`` of ``split``: drawn by numpy's ``SeedSequence`` from
        ``(seed, split, index)``.

        Examples:
            >>> family = SeededTasks(lambda seed: [seed])
            >>> family.task_seed("train", 0) == SeededTasks(lambda seed: [seed]).task_seed("train", 0)
            True
            >>> family.task_seed("train", 0) != family.task_seed("test", 0)
            True
        """
        return int(np.random.SeedSequence([self.seed, SPLITS.index(split), index]).generate_state(1)[0])

    def task_at(self, split: Split, index: int) -> Task:
        self._check_index(split, index)
        seed = self.task_seed(split, index)
        return as_task(f"{self.name}-{split}-{index}", self.make(seed), self.held_out, seed)
