"""``TaskSchedule``: which task of the stream each process trains at each of its optimizer steps.

One process trains task ``step // inner_steps``. Under DDP there are two ways to share a meta-batch of
``meta_batch_size`` tasks between ``world_size`` processes:

- ``"tasks"`` (task-parallel): every process trains ``meta_batch_size / world_size`` tasks of the meta-batch, one
  after the other, each from the same theta_0; position ``j`` of process ``r`` in meta-batch ``m`` is stream task
  ``m * meta_batch_size + j * world_size + r``.
- ``"data"`` (data-parallel): every process trains the same task, on its shard of each batch (ordinary DDP).

A run resumed on another number of processes continues the stream where it stopped: ``origin_step`` and
``origin_task`` say which local step trains which task when the schedule changed.

Examples:
    >>> schedule = TaskSchedule(inner_steps=10, meta_batch_size=4, world_size=2, rank=1)
    >>> [schedule.task(step) for step in (0, 10, 20, 30)]
    [1, 3, 5, 7]
    >>> TaskSchedule(inner_steps=10, meta_batch_size=4, world_size=2, rank=1, parallel="data").task(30)
    3
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Parallel = Literal["tasks", "data"]


@dataclass(frozen=True)
class TaskSchedule:
    """The task each local optimizer step belongs to (see the module docstring)."""

    inner_steps: int
    meta_batch_size: int = 1
    world_size: int = 1
    rank: int = 0
    parallel: Parallel = "tasks"
    origin_step: int = 0
    origin_task: int = 0

    def __post_init__(self) -> None:
        if self.parallel not in ("tasks", "data"):
            raise ValueError(f"parallel must be 'tasks' or 'data', got {self.parallel!r}")
        if self.task_parallel and self.meta_batch_size % self.world_size:
            raise ValueError(
                f"task-parallel meta-learning splits each meta-batch evenly over the processes: meta_batch_size="
                f"{self.meta_batch_size} is not a multiple of world_size={self.world_size}. Choose a multiple, or "
                "parallel='data'."
            )

    @property
    def task_parallel(self) -> bool:
        return self.parallel == "tasks" and self.world_size > 1

    @property
    def tasks_per_process(self) -> int:
        """Tasks this process trains per meta-step."""
        return self.meta_batch_size // self.world_size if self.task_parallel else self.meta_batch_size

    def local_task(self, step: int) -> int:
        """How many tasks this process started before ``step`` (since the origin)."""
        return (step - self.origin_step) // self.inner_steps

    def task(self, step: int) -> int:
        """The stream task that local optimizer step ``step`` trains."""
        local = self.local_task(step)
        if not self.task_parallel:
            return self.origin_task + local
        meta_batch, position = divmod(local, self.tasks_per_process)
        return self.origin_task + meta_batch * self.meta_batch_size + position * self.world_size + self.rank

    def ends_task(self, step: int) -> bool:
        """Whether ``step`` (the number of optimizer steps taken) completes a task."""
        return (step - self.origin_step) % self.inner_steps == 0
