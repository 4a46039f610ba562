"""``RunawayGuard``: meta-training that has gone wrong says so at once and stops, instead of drifting on quietly.

A :class:`~lightning_meta.engine.MetaState` consults its guard at the end of each task and at each meta-step, never
inside a task's inner loop:

- **A task is dropped** from its meta-batch, like a task whose loss became NaN and with a warning that says why,
  when (one host-device synchronisation per task, shared with the check that its meta-gradient is finite)

  - ``loss_ratio``: its final loss is more than ``loss_ratio`` times its first loss: training blew up while staying
    finite. This check reads the losses of rules that use them (``LeapRule(loss=True)``: cross-entropies and the
    like) and needs a positive first loss; rules that ignore losses (Reptile, ``LeapRule(loss=False)``, e.g. on
    reinforcement-learning losses of any sign) rely on the next two;
  - ``distance_ratio``: its weights ended more than ``distance_ratio`` times theta_0's own norm away from theta_0
    (weights that blew up, whatever the loss says: behind BatchNorm a loss can stay calm);
  - ``norm_ratio``: its meta-gradient's norm is more than ``norm_ratio`` times the typical one: the median, over the
    last ``window`` meta-steps, of each meta-step's mean over its kept tasks (from the ``warmup``-th meta-step on).

- **Meta-training stops** with :class:`MetaTrainingDiverged`, which names the likely cause, when

  - ``stop_after`` meta-batches in a row had every task dropped: tasks that diverge from the initial weights point
    at the inner learning rate (also when a meta-step was taken, if most tasks trained from the initial weights,
    before any meta-step, were dropped too: the starting weights already diverge with this inner learning rate),
    tasks that diverge only after meta-steps were taken at the meta learning rate (theta_0 went bad);
  - a meta-step would make theta_0 non-finite, or move it more than ``distance_ratio`` times its norm (the meta
    learning rate): theta_0 and the meta-optimizer are copied before each meta-step and keep their last values.

``None`` turns a check off; ``guard=False`` on the learner turns the guard off (only non-finite tasks are dropped
then, and nothing stops). The running statistics are part of ``state_dict``, so a resumed run decides as the
uninterrupted one would. Under several processes the statistics come from figures summed over all of them
(with the meta-gradients, in the same collective), so all processes decide alike.

Examples:
    >>> guard = RunawayGuard(loss_ratio=10.0, stop_after=2)
    >>> guard.judge_task([1.0, 2.0, 0.5, 4.0, 3.0, 45.0])  # finite, |meta-gradient| 2, moved 0.5, |theta_0| 4, loss
    'its loss rose from 3 to 45, more than loss_ratio=10 times'
    >>> guard.judge_task([1.0, 2.0, 0.5, 4.0, 3.0, 1.5]) is None
    True
    >>> guard.end_meta_batch(None, kept=1, norm_sum=2.0, tasks=1)  # a meta-step with the one kept task
    >>> guard.end_meta_batch(("dropped", "its loss rose from 3 to 45"))  # a meta-batch with every task dropped
    >>> try:  # doctest: +NORMALIZE_WHITESPACE
    ...     guard.end_meta_batch(("dropped", "its loss rose from 3 to 60"))  # the second in a row: stop_after=2
    ... except MetaTrainingDiverged as error:
    ...     print(error.likely_cause, "|", error)
    meta_lr | meta-training diverged: every task of 2 meta-batches in a row was dropped (last: its loss rose from 3
    to 60); theta_0 went bad after 1 meta-step (the tasks trained from the initial weights did not diverge): the
    meta learning rate (meta_lr) is likely too high, else the inner learning rate.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_meta.validation import check_range

Cause = Literal["inner_lr", "meta_lr"]
Failure = Literal["dropped", "refused"]
NOT_FINITE = "its meta-gradient is not finite (a NaN or infinite loss or parameters)"


class MetaTrainingDiverged(RuntimeError):
    """Meta-training cannot usefully go on; theta_0 and the meta-optimizer hold their last good values.

    Attributes:
        likely_cause: ``"inner_lr"`` (tasks diverge from the initial weights) or ``"meta_lr"`` (theta_0 moved to
            where tasks diverge, or a meta-step would make it non-finite or move it too far).
        theta_0_suspect: whether theta_0 itself is where tasks now diverge, so that a run should resume from a
            checkpoint saved before its last meta-step.
    """

    def __init__(self, message: str, likely_cause: Cause, theta_0_suspect: bool = False) -> None:
        super().__init__(message)
        self.likely_cause: Cause = likely_cause
        self.theta_0_suspect = theta_0_suspect


class RunawayGuard:
    """Drops tasks whose training ran away and stops meta-training that no longer moves (see the module docstring).

    Args:
        loss_ratio: drop a task whose final loss exceeds this many times its first (``None``: off).
        distance_ratio: drop a task whose weights end farther than this many times theta_0's norm from theta_0, and
            stop at a meta-step that would move theta_0 so far (``None``: off).
        norm_ratio: drop a task whose meta-gradient norm exceeds this many times the typical norm (``None``: off).
        stop_after: raise :class:`MetaTrainingDiverged` after this many meta-batches in a row with every task dropped
            (``None``: never).
        window: meta-steps whose mean meta-gradient norms make the typical norm.
        warmup: meta-steps taken before ``norm_ratio`` applies.
    """

    def __init__(
        self,
        loss_ratio: float | None = 10.0,
        distance_ratio: float | None = 1000.0,
        norm_ratio: float | None = 100.0,
        stop_after: int | None = 3,
        window: int = 10,
        warmup: int = 2,
    ) -> None:
        ratios = {"loss_ratio": loss_ratio, "distance_ratio": distance_ratio, "norm_ratio": norm_ratio}
        for name, ratio in ratios.items():
            if ratio is not None and not ratio > 1:
                raise ValueError(f"RunawayGuard: {name} must be > 1 or None (off), got {ratio}")
        check_range("RunawayGuard", 1, stop_after=stop_after, window=window, warmup=warmup)  # stop_after None: never
        self.loss_ratio = loss_ratio
        self.distance_ratio = distance_ratio
        self.norm_ratio = norm_ratio
        self.stop_after = stop_after
        self.window = window
        self.warmup = warmup
        self.reset()

    def reset(self) -> None:
        """Forget the running statistics (a new meta-training)."""
        self.norms: list[float] = []  # mean kept-task meta-gradient norm of each of the last `window` meta-steps
        self.meta_steps = 0  # meta-steps taken under this guard
        self.norm_sum = 0.0  # sum of the meta-gradient norms of this process's kept tasks of the current meta-batch
        self.failures: list[tuple[Failure, str]] = []  # each meta-batch since the last meta-step: why it took none
        self.last_ratios: dict[str, float] = {}  # the last task's figures over their thresholds' references
        self.start_tasks = [0, 0]  # tasks trained from the initial weights (before any meta-step): [kept, all]

    # ----------------------------------------------------------------- tasks
    @staticmethod
    def task_figures(
        meta_gradients: Sequence[Tensor],
        theta_0: Sequence[Tensor],
        end_points: Sequence[Tensor] | None,
        losses: tuple[Tensor, Tensor] | None,
    ) -> list[list[float]]:
        """``[finite, norm, distance, size, first loss, final loss]`` of each of T tasks, read from the device at once
        (NaN where unknown): whether its meta-gradient is finite, its norm, ``|theta_K - theta_0|`` for its final
        weights, ``|theta_0|`` (norms in float64, which does not overflow), its first and final loss. The tensors carry
        a leading task dimension: ``(T, *shape)``, losses ``(T,)``."""
        return RunawayGuard.task_figures_on_device(meta_gradients, theta_0, end_points, losses).tolist()

    @staticmethod
    @torch.no_grad()
    def task_figures_on_device(
        meta_gradients: Sequence[Tensor],
        theta_0: Sequence[Tensor],
        end_points: Sequence[Tensor] | None,
        losses: tuple[Tensor, Tensor] | None,
    ) -> Tensor:
        """:meth:`task_figures` as a ``(T, 6)`` float64 tensor on the tensors' device (no synchronisation)."""
        tasks = meta_gradients[0].shape[0]
        norm = _task_norms(meta_gradients)
        nan = norm.new_full((tasks,), float("nan"))
        distance = nan if end_points is None else _task_norms([e - t for e, t in zip(end_points, theta_0)])
        first, final = (nan, nan) if losses is None else (loss.detach().to(nan).reshape(tasks) for loss in losses)
        finite = torch.stack([g.reshape(tasks, -1).isfinite().all(1) for g in meta_gradients]).all(0).to(nan)
        size = _task_norms([t.unsqueeze(0) for t in theta_0]).expand(tasks)
        return torch.stack([finite, norm, distance, size, first, final], dim=1)

    def judge_tasks(self, figures: Sequence[Sequence[float]]) -> list[str | None]:
        """:meth:`judge_task` for each task's figures; :meth:`metrics` then holds the largest ratios among them."""
        reasons, ratios = [], []
        for row in figures:
            reasons.append(self.judge_task(row))
            ratios.append(self.last_ratios)
        keys = {key for task in ratios for key in task}
        self.last_ratios = {key: max(task[key] for task in ratios if key in task) for key in sorted(keys)}
        return reasons

    def judge_task(self, figures: Sequence[float]) -> str | None:
        """Why the task with these :meth:`task_figures` is dropped, or ``None``: then it joins the meta-batch."""
        finite, norm, distance, size, first, final = figures
        typical = self.typical_norm
        ratios = {
            "loss_ratio": final / first if first > 0 else math.nan,
            "distance_ratio": distance / size if size > 0 else math.nan,
            "norm_ratio": norm / typical if typical else math.nan,
        }
        self.last_ratios = {key: value for key, value in ratios.items() if math.isfinite(value)}
        if not finite:
            return NOT_FINITE
        if self.loss_ratio is not None and first > 0 and final > self.loss_ratio * first:
            return f"its loss rose from {first:.4g} to {final:.4g}, more than loss_ratio={self.loss_ratio:g} times"
        too_far = self._too_far(distance, size)
        if too_far:
            return f"its weights moved {distance:.4g} from theta_0, {too_far}"
        if self.norm_ratio is not None and typical is not None and norm > self.norm_ratio * typical:
            return (
                f"its meta-gradient norm {norm:.4g} is more than norm_ratio={self.norm_ratio:g} times the typical "
                f"{typical:.4g}"
            )
        self.norm_sum += norm
        return None

    def _too_far(self, distance: float, size: float) -> str | None:
        """Whether a move of ``distance`` goes beyond ``distance_ratio`` times theta_0's norm ``size``, in words."""
        if self.distance_ratio is None or not size > 0 or not distance > self.distance_ratio * size:
            return None
        return f"more than distance_ratio={self.distance_ratio:g} times theta_0's norm {size:.4g}"

    def metrics(self) -> dict[str, float]:
        """The last tasks' figures next to each threshold (the largest among tasks trained together):
        ``loss_ratio`` (final over first loss), ``distance_ratio`` (``|theta_K - theta_0|`` over ``|theta_0|``),
        ``norm_ratio`` (meta-gradient norm over the typical one); those that could be worked out. The Lightning door
        logs them as ``guard/<name>``."""
        return dict(self.last_ratios)

    @property
    def typical_norm(self) -> float | None:
        """The median of the recent meta-steps' mean meta-gradient norms, once ``warmup`` meta-steps were taken."""
        return statistics.median(self.norms) if self.meta_steps >= self.warmup and self.norms else None

    # ----------------------------------------------------------------- meta-batches
    @staticmethod
    def step_figures(theta_0: Sequence[Tensor], before: Sequence[Tensor]) -> list[float]:
        """``[distance, size]`` of a meta-step from ``before`` to ``theta_0``: ``|theta_0 - before|`` (not finite
        when theta_0 is not) and ``|before|``, read at once."""
        return RunawayGuard.step_figures_on_device(theta_0, before).tolist()

    @staticmethod
    @torch.no_grad()
    def step_figures_on_device(theta_0: Sequence[Tensor], before: Sequence[Tensor]) -> Tensor:
        """:meth:`step_figures` as a float64 tensor of shape ``(2,)`` on the tensors' device."""
        return torch.stack([_norm([p - b for p, b in zip(theta_0, before)]), _norm(before)])

    def judge_step(self, figures: Sequence[float]) -> str | None:
        """Why the meta-step with these :meth:`step_figures` is refused (non-finite, or too far), or ``None``."""
        distance, size = figures
        if not math.isfinite(distance):
            return "the meta-step would make theta_0 non-finite"
        too_far = self._too_far(distance, size)
        return f"the meta-step would move theta_0 by {distance:.4g}, {too_far}" if too_far else None

    def end_meta_batch(
        self, failure: tuple[Failure, str] | None, kept: int = 0, norm_sum: float = 0.0, tasks: int = 0
    ) -> None:
        """Count a meta-batch of ``tasks`` tasks that took a meta-step with ``kept`` of them, whose meta-gradient
        norms add up to ``norm_sum`` (all three over all processes), or that did not (``failure``: ``"dropped"``,
        every task was dropped; ``"refused"``, :meth:`judge_step` refused the step; and why).

        Raises:
            MetaTrainingDiverged: at once for a refused step; when ``stop_after`` meta-batches in a row had every task
                dropped.
        """
        if not self.meta_steps:  # trained from the initial weights
            self.start_tasks = [self.start_tasks[0] + kept, self.start_tasks[1] + max(tasks, kept)]
        self.norm_sum = 0.0
        if failure is None:
            self.meta_steps += 1
            self.norms = [*self.norms, norm_sum / kept][-self.window :]
            self.failures = []
            return
        if failure[0] == "refused":
            self.failures = []
            raise MetaTrainingDiverged(
                f"meta-training diverged: {failure[1]} (theta_0 and the meta-optimizer keep their values from before "
                "it); the meta learning rate (meta_lr) is likely too high.",
                "meta_lr",
            )
        self.failures.append(failure)
        if self.stop_after is not None and len(self.failures) >= self.stop_after:
            failures, self.failures = self.failures, []
            what = f"every task of {len(failures)} meta-batches in a row was dropped (last: {failures[-1][1]})"
            kept, started = self.start_tasks
            start_diverged = 2 * (started - kept) > started  # most tasks trained from the initial weights were dropped
            if not self.meta_steps:
                advice = (
                    "the tasks diverge from the initial weights: the inner learning rate (the model's optimizer) is "
                    "likely too high"
                )
            elif start_diverged:
                advice = (
                    f"the starting weights already diverge with this inner learning rate ({started - kept} of the "
                    f"{started} tasks trained from them, before any meta-step, were dropped): the inner learning rate "
                    "(the model's optimizer) is likely too high"
                )
            else:
                steps = f"{self.meta_steps} meta-step{'s' if self.meta_steps > 1 else ''}"
                advice = (
                    f"theta_0 went bad after {steps} (the tasks trained from the initial weights did not diverge): the "
                    "meta learning rate (meta_lr) is likely too high, else the inner learning rate"
                )
            suspect = self.meta_steps > 0 and not start_diverged
            cause: Cause = "meta_lr" if suspect else "inner_lr"
            raise MetaTrainingDiverged(f"meta-training diverged: {what}; {advice}.", cause, suspect)

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The running statistics (plain Python values)."""
        return {
            "norms": list(self.norms),
            "meta_steps": self.meta_steps,
            "norm_sum": self.norm_sum,
            "failures": [list(failure) for failure in self.failures],
            "start_tasks": list(self.start_tasks),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.norms = list(state["norms"])
        self.meta_steps = state["meta_steps"]
        self.norm_sum = state["norm_sum"]
        self.failures = [(kind, why) for kind, why in state["failures"]]
        self.start_tasks = list(state.get("start_tasks", [0, 0]))  # checkpoints before 0.1.0's end have none


def _norm(tensors: Sequence[Tensor]) -> Tensor:
    """The norm of all ``tensors`` as one vector, in float64 (which does not overflow where float32 would)."""
    return torch.stack([torch.linalg.vector_norm(t.detach(), dtype=torch.float64) for t in tensors]).norm()


def _task_norms(tensors: Sequence[Tensor]) -> Tensor:
    """For tensors with a leading task dimension, the norm of each task's slices as one vector, ``(T,)``, in
    float64."""
    rows = [torch.linalg.vector_norm(t.detach().reshape(t.shape[0], -1), dim=1, dtype=torch.float64) for t in tensors]
    return torch.stack(rows).norm(dim=0)
