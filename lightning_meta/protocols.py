"""The links between parts that are not imports, declared once: what one part needs another object to have.

Each link is a ``typing.Protocol``. The part that relies on it asks :func:`implements` (an optional ability: does
the object have it?) or :func:`require` (a must); both name what is missing when an object has only part of it.

Examples:
    >>> import torch
    >>> class Classifier:
    ...     def start_task(self, task) -> None:
    ...         self.classes = task.task.num_classes
    >>> implements(Classifier(), TaskAware, "MetaEvaluation")
    True
    >>> implements(torch.nn.Linear(2, 2), TaskAware, "MetaEvaluation")
    False
    >>> class HalfData:
    ...     inner_steps = 10
    ...     collate_fn = None
    ...     def tasks(self, split): return []
    >>> require(HalfData(), HeldOutTasks, "MetaEvaluation")
    Traceback (most recent call last):
    ...
    TypeError: MetaEvaluation needs HalfData to have batch_size (HeldOutTasks: What a data module gives held-out ...
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard, TypeVar, runtime_checkable

from torch.optim import Optimizer
from typing_extensions import get_protocol_members

if TYPE_CHECKING:
    from pathlib import Path

    import lightning as L

    from lightning_meta.data.family import Split, Task, TaskInfo

P = TypeVar("P")


@runtime_checkable
class StepsPerBatch(Protocol):
    """A module that takes several optimizer steps per batch (e.g. truncated back-propagation through an unroll):
    the task stream counts the batches a run consumed with it (:class:`~lightning_meta.data.TaskDataModule`)."""

    @property
    def optimizer_steps_per_batch(self) -> int: ...


@runtime_checkable
class FixedInnerSteps(Protocol):
    """A module whose inner loop has a fixed number of steps (MAML): episodes carry that many support batches
    unless told otherwise (:class:`~lightning_meta.data.EpisodeDataModule`); ``None``: not fixed."""

    @property
    def fixed_inner_steps(self) -> int | None: ...


@runtime_checkable
class InnerOptimizer(Protocol):
    """A module whose ``configure_optimizers`` is not how held-out tasks train (MAML's meta-optimizer, a fine-tuning
    baseline's pre-training rate): held-out tasks train with this optimizer instead, given in any form
    ``configure_optimizers`` may return one optimizer (:class:`~lightning_meta.trainer.held_out.HeldOutTraining`)."""

    def configure_inner_optimizer(self) -> Optimizer | dict[str, Any]: ...


@runtime_checkable
class TaskAware(Protocol):
    """A model that needs to know the task it starts (a head per task sized by ``num_classes``, one chosen by the
    task's index, anything in ``metadata``): ``start_task`` is called as each task starts, with its
    :class:`~lightning_meta.data.TaskInfo`: meta-training tasks by :class:`~lightning_meta.MetaInit` (Leap,
    Reptile), held-out tasks by :class:`~lightning_meta.MetaEvaluation`. Trained without a meta-learning callback, a
    model reads its task from the data module (``trainer.datamodule.current_task()``)."""

    def start_task(self, task: TaskInfo) -> None: ...


@runtime_checkable
class TrainsTasksApart(Protocol):
    """A callback under which each DDP process trains tasks of its own, without gradient averaging inside a task
    (:class:`~lightning_meta.MetaInit`): a task stream whose ``parallel`` is not set then spreads the tasks of each
    meta-batch over the processes (``"tasks"``), else every process trains the same task (``"data"``)."""

    trains_tasks_apart: bool


@runtime_checkable
class HeldOutTasks(Protocol):
    """What a data module gives held-out evaluation: the tasks of a split, the default steps per task and batch
    size, and how samples collate (``None``: PyTorch's ``default_collate``) (:class:`~lightning_meta.MetaEvaluation`;
    a :class:`~lightning_meta.data.TaskDataModule` has them)."""

    inner_steps: int
    batch_size: int
    collate_fn: Callable[[list[Any]], Any] | None

    def tasks(self, split: Split) -> list[Task]: ...


@runtime_checkable
class CountsMetaSteps(Protocol):
    """A module that is its own meta-learner (MAML, learned optimizers): the meta-steps completed after a number of
    optimizer steps, which :class:`~lightning_meta.callbacks.progress.MetaProgressBar` shows of the run's total (a
    :class:`~lightning_meta.data.schedule.TaskSchedule` has the same method)."""

    def meta_steps_done(self, optimizer_steps: int) -> int: ...


@runtime_checkable
class ResumePoints(Protocol):
    """A callback whose state resumes exactly only at some steps (a task-parallel meta-learner on several processes:
    at meta-step boundaries); :class:`~lightning_meta.callbacks.CheckpointOnSignal` saves at the first step where
    every such callback says yes."""

    def resumable_now(self, trainer: L.Trainer) -> bool: ...


class Pretrains(Protocol):
    """A module whose run begins with ordinary training before meta-training (the dynamical language model): the
    optimizer steps of that phase, which :class:`~lightning_meta.callbacks.progress.MetaProgressBar` labels
    ``Pretraining`` rather than counting them as meta-steps."""

    pretraining_steps: int


@runtime_checkable
class PlansHeldOutSteps(Protocol):
    """A callback that trains held-out tasks during fit (:class:`~lightning_meta.MetaEvaluation`,
    :class:`~lightning_meta.AtariEvaluation`): the held-out training steps this process will still take until fit
    ends, each about as costly as a training step; :class:`~lightning_meta.callbacks.progress.MetaProgressBar` counts
    them in the run's total, so that its ETA includes them."""

    def held_out_steps_left(self, trainer: Any) -> int: ...


@runtime_checkable
class ReportsResults(Protocol):
    """A callback or module that evaluates the run (held-out tasks, games, documents): one row per evaluation, and
    the figure it drew (``None`` before), for the run's summary (:class:`~lightning_meta.callbacks.RunSummary`)."""

    figure: Path | None

    def results(self) -> list[dict[str, str | int | float]]: ...


def _missing(obj: object, protocol: type) -> tuple[list[str], list[str]]:
    """``(present, missing)`` members of ``protocol`` on ``obj``; a method that is there but not callable is missing."""
    present: list[str] = []
    missing: list[str] = []
    for name in sorted(get_protocol_members(protocol)):
        wanted_callable = inspect.isfunction(inspect.getattr_static(protocol, name, None))
        value = getattr(obj, name, _ABSENT)
        ok = value is not _ABSENT and (callable(value) or not wanted_callable)
        (present if ok else missing).append(name)
    return present, missing


_ABSENT = object()


def implements(obj: object, protocol: type[P], user: str) -> TypeGuard[P]:
    """Whether ``obj`` has all of ``protocol``; some but not all of it is an error naming the rest (``user``: who
    relies on it, for the message)."""
    present, missing = _missing(obj, protocol)
    if present and missing:
        _fail(obj, protocol, user, present, missing)
    return not missing


def require(obj: object, protocol: type[P], user: str) -> None:
    """Fail with a message naming what ``obj`` lacks of ``protocol`` unless it has all of it."""
    present, missing = _missing(obj, protocol)
    if missing:
        _fail(obj, protocol, user, present, missing)


def _fail(obj: object, protocol: type, user: str, present: list[str], missing: list[str]) -> None:
    summary = (protocol.__doc__ or "").split(":")[0].strip()
    has = f": it has {', '.join(present)}" if present else ""
    raise TypeError(
        f"{user} needs {type(obj).__name__} to have {', '.join(missing)} ({protocol.__name__}: {summary}){has}"
    )
