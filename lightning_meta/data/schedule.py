"""``TaskSchedule``: which task of the stream each process trains at each of its optimizer steps.

One process trains task ``step // inner_steps``. Under DDP there are two ways to share a meta-batch of
``meta_batch_size`` tasks between ``world_size`` processes:

- ``"tasks"`` (task-parallel): every process trains ``meta_batch_size / world_size`` tasks of the meta-batch, one
  after the other, each from the same theta_0; position ``j`` of process ``r`` in meta-batch ``m`` is stream task
  ``m * meta_batch_size + j * world_size + r``.
- ``"data"`` (data-parallel): every process trains the same task, on its shard of each batch (ordinary DDP).

With ``task_batch=T`` each process trains T tasks of its share at once (task-batched training: one optimizer step
advances all T), in stream order: its positions ``j * T .. j * T + T - 1`` at the j-th group of ``inner_steps``
steps. The meta-batch is then ``meta_batch_size / (world_size * T)`` groups per process, and ``max_steps`` counts
optimizer steps, each of them T tasks' step.

A run resumed on another number of processes or another ``task_batch`` continues the stream where it stopped:
``origin_step`` and ``origin_task`` say which local step trains which task when the schedule changed.

Examples:
    >>> schedule = TaskSchedule(inner_steps=10, meta_batch_size=4, world_size=2, rank=1)
    >>> [schedule.task(step) for step in (0, 10, 20, 30)]
    [1, 3, 5, 7]
    >>> TaskSchedule(inner_steps=10, meta_batch_size=4, world_size=2, rank=1, parallel="data").task(30)
    3
    >>> batched = TaskSchedule(inner_steps=10, meta_batch_size=8, world_size=2, rank=1, task_batch=2)
    >>> [batched.tasks(step) for step in (0, 10, 20)]
    [[1, 3], [5, 7], [9, 11]]
    >>> schedule.steps_for(30), batched.steps_for(30)   # 30 meta-steps: 2 tasks of 10 steps, 2 groups of 2 tasks
    (600, 600)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from lightning_meta.validation import PARALLEL, Parallel, check_choice, check_range


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
    task_batch: int | None = None

    def __post_init__(self) -> None:
        check_range("TaskSchedule", 1, inner_steps=self.inner_steps, meta_batch_size=self.meta_batch_size)
        check_range("TaskSchedule", 1, task_batch=self.task_batch)
        check_choice("TaskSchedule", "parallel", self.parallel, PARALLEL)
        if self.task_parallel and self.meta_batch_size % self.world_size:
            raise ValueError(
                f"task-parallel meta-learning splits each meta-batch evenly over the processes: meta_batch_size="
                f"{self.meta_batch_size} is not a multiple of world_size={self.world_size}. Choose a multiple, or "
                "parallel='data'."
            )
        if self.task_batch is not None and self.tasks_per_process % self.task_batch:
            raise ValueError(
                f"task_batch={self.task_batch} tasks trained together must divide the {self.tasks_per_process} tasks "
                f"each process trains per meta-step (meta_batch_size={self.meta_batch_size}, world_size="
                f"{self.world_size}, parallel={self.parallel!r}): choose a divisor."
            )

    @property
    def tasks_per_step(self) -> int:
        """Tasks one optimizer step trains: ``task_batch``, or 1."""
        return self.task_batch or 1

    @property
    def task_parallel(self) -> bool:
        return self.parallel == "tasks" and self.world_size > 1

    @property
    def tasks_per_process(self) -> int:
        """Tasks this process trains per meta-step."""
        return self.meta_batch_size // self.world_size if self.task_parallel else self.meta_batch_size

    def tasks_started(self, step: int) -> int:
        """How many tasks this process started before local optimizer step ``step`` (since the origin)."""
        return (step - self.origin_step) // self.inner_steps * self.tasks_per_step

    def tasks(self, step: int) -> list[int]:
        """The stream tasks that local optimizer step ``step`` trains (one, or ``task_batch`` together)."""
        first = self.tasks_started(step)
        positions = range(first, first + self.tasks_per_step)
        if not self.task_parallel:
            return [self.origin_task + p for p in positions]
        spread = [divmod(p, self.tasks_per_process) for p in positions]
        return [self.origin_task + m * self.meta_batch_size + j * self.world_size + self.rank for m, j in spread]

    def task(self, step: int) -> int:
        """The (first) stream task that local optimizer step ``step`` trains."""
        return self.tasks(step)[0]

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
            >>> together = TaskSchedule(inner_steps=10, meta_batch_size=4, task_batch=2)  # 2 tasks per step
            >>> [together.meta_steps_done(step) for step in (10, 20, 30, 40)]
            [0, 1, 1, 2]
        """
        tasks = self.origin_task % self.meta_batch_size + self.tasks_started(optimizer_steps)
        return self.origin_task // self.meta_batch_size + tasks // self.tasks_per_process

    def steps_for(self, meta_steps: int) -> int:
        """The local optimizer steps after which ``meta_steps`` meta-steps are done (counted from the stream's start,
        also on a resumed run): the inverse of :meth:`meta_steps_done`.

        Examples:
            >>> schedule = TaskSchedule(inner_steps=10, meta_batch_size=4, world_size=2, rank=1)
            >>> [schedule.meta_steps_done(schedule.steps_for(m)) for m in (1, 2, 7)], schedule.steps_for(7)
            ([1, 2, 7], 140)
        """
        needed = (meta_steps - self.origin_task // self.meta_batch_size) * self.tasks_per_process
        needed -= self.origin_task % self.meta_batch_size
        groups = -(-max(needed, 0) // self.tasks_per_step)
        return self.origin_step + groups * self.inner_steps

    def at_meta_step_boundary(self, step: int) -> bool:
        """Whether ``step`` (optimizer steps taken) ends this process's share of a meta-batch."""
        started = self.origin_task % self.meta_batch_size + self.tasks_started(step)
        return self.ends_task(step) and started % self.tasks_per_process == 0

    def resumed_from(self, saved: TaskSchedule, step: int) -> TaskSchedule:
        """This schedule, continuing the stream where a run with schedule ``saved`` stopped after ``step`` local
        optimizer steps; on any number of processes.

        A task-parallel run on several processes keeps a partial meta-batch per process, but only rank 0's is in
        its checkpoint: such a run resumes from checkpoints at meta-step boundaries only.
        """
        at_boundary = saved.at_meta_step_boundary(step)
        if saved.task_parallel and not at_boundary:
            raise ValueError(
                f"this checkpoint was saved in the middle of a meta-batch by a task-parallel run on {saved.world_size} "
                "processes, whose other processes' partial tasks it does not hold. Resume from a checkpoint at a "
                f"meta-step boundary (ModelCheckpoint(every_n_train_steps=a multiple of "
                f"{saved.inner_steps * saved.tasks_per_process}))."
            )
        same = (saved.world_size, saved.parallel) == (self.world_size, self.parallel)
        regrouped = saved.tasks_per_step != self.tasks_per_step
        if (same or not (saved.task_parallel or self.task_parallel)) and not regrouped:
            origin = (saved.origin_step, saved.origin_task)
        elif at_boundary:
            origin = (step, replace(saved, rank=0).task(step))  # rank 0's next task opens the next meta-batch
        else:
            raise ValueError(
                f"a run saved in the middle of a meta-batch resumes on the same number of processes "
                f"({saved.world_size}, now {self.world_size}) and task_batch ({saved.task_batch}, now "
                f"{self.task_batch}) only; resume from a checkpoint at a meta-step boundary."
            )
        return replace(self, origin_step=origin[0], origin_task=origin[1])
