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

from dataclasses import dataclass, replace
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

    def meta_steps_done(self, optimizer_steps: int) -> int:
        """Meta-steps completed once this process has taken ``optimizer_steps`` optimizer steps: one per meta-batch of
        ``meta_batch_size`` tasks of the stream (the progress bar counts them with it).

        Examples:
            >>> schedule = TaskSchedule(inner_steps=10, meta_batch_size=4, world_size=2, rank=1)
            >>> [schedule.meta_steps_done(step) for step in (19, 20, 39, 40)]  # 2 tasks of 10 steps per process
            [0, 1, 1, 2]
        """
        tasks = self.origin_task % self.meta_batch_size + self.local_task(optimizer_steps)
        return self.origin_task // self.meta_batch_size + tasks // self.tasks_per_process

    def resumed_from(self, saved: TaskSchedule, tasks_in_batch: int, step: int) -> TaskSchedule:
        """This schedule, continuing the stream where a run with schedule ``saved`` stopped after ``step`` local
        optimizer steps with ``tasks_in_batch`` tasks of its meta-batch done; on any number of processes.

        A task-parallel run on several processes keeps a partial meta-batch per process, but only rank 0's is in
        its checkpoint: such a run resumes from checkpoints at meta-step boundaries only.
        """
        at_boundary = tasks_in_batch == 0 and saved.ends_task(step)
        if saved.task_parallel and not at_boundary:
            raise ValueError(
                f"this checkpoint was saved in the middle of a meta-batch by a task-parallel run on {saved.world_size} "
                "processes, whose other processes' partial tasks it does not hold. Resume from a checkpoint at a "
                f"meta-step boundary (ModelCheckpoint(every_n_train_steps=a multiple of "
                f"{saved.inner_steps * saved.tasks_per_process}))."
            )
        same = (saved.world_size, saved.parallel) == (self.world_size, self.parallel)
        if same or not (saved.task_parallel or self.task_parallel):
            origin = (saved.origin_step, saved.origin_task)
        elif at_boundary:
            origin = (step, replace(saved, rank=0).task(step))  # rank 0's next task opens the next meta-batch
        else:
            raise ValueError(
                f"a run saved in the middle of a meta-batch resumes on the same number of processes only "
                f"({saved.world_size}, now {self.world_size}); resume from a checkpoint at a meta-step boundary."
            )
        return replace(self, origin_step=origin[0], origin_task=origin[1])
