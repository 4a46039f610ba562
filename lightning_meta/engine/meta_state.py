"""``MetaState``: theta_0, its meta-optimizer and the meta-batch being gathered, shared by every front door.

Tasks hand in their meta-gradients with :meth:`MetaState.add_task`; one that is not finite (a task that diverged)
or that the :class:`~lightning_meta.engine.RunawayGuard` finds ran away is dropped and never touches theta_0; tasks
trained together hand in theirs stacked, with :meth:`MetaState.add_tasks`. After ``meta_batch_size`` tasks
:meth:`MetaState.step` averages the kept ones (over all processes, through the ``all_reduce`` the front door passes
in) and steps the meta-optimizer, unless the guard refuses the step; it raises
:class:`~lightning_meta.engine.MetaTrainingDiverged` when meta-training stopped moving or a meta-step would break
theta_0. ``state_dict`` / ``load_state_dict`` carry all of it, a half-gathered meta-batch included.

Examples:
    >>> import torch
    >>> state = MetaState([torch.zeros(2)], meta_batch_size=2, meta_lr=0.5)
    >>> state.add_task([torch.tensor([1.0, 2.0])]), state.add_task([torch.tensor([float("nan"), 0.0])])
    (True, False)
    >>> state.batch_complete, state.step()
    (True, (1, 2))
    >>> state.theta_0[0].detach()  # SGD: 0 - 0.5 * mean of the one kept task
    tensor([-0.5000, -1.0000])

    Three tasks trained together hand in their meta-gradients stacked on a leading task dimension:

    >>> stacked = torch.tensor([[1.0, 1.0], [float("inf"), 0.0], [3.0, 1.0]])
    >>> state.add_tasks([stacked]), state.step()
    ([True, False, True], (2, 3))
    >>> state.theta_0[0].detach()  # minus 0.5 * the mean of the two finite tasks, [2, 1]
    tensor([-1.5000, -1.5000])

    In a plain ``torch.distributed`` run (one process per rank, the process group initialised), the meta-batch is
    spread over the processes and reduced with :func:`distributed_sum`:

    >>> shared = MetaState([torch.zeros(2)], meta_batch_size=1, all_reduce=distributed_sum)
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterable, Sequence
from copy import deepcopy
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_meta.engine.runaway import NOT_FINITE, Failure, RunawayGuard
from lightning_meta.validation import check_range

AllReduce = Callable[[Tensor], Tensor]
"""Sums a tensor over all processes and returns the sum (e.g. ``lambda t: fabric.all_reduce(t, reduce_op="sum")``)."""


def optimizer_class(spec: str | type[Optimizer]) -> type[Optimizer]:
    """Resolve ``"SGD"``, ``"torch.optim.Adam"``, ``"my_pkg.MyOptimizer"`` or a class to an optimizer class."""
    if isinstance(spec, str):
        module, _, name = spec.rpartition(".")
        spec = getattr(importlib.import_module(module or "torch.optim"), name, None)  # type: ignore[assignment]
    if not (isinstance(spec, type) and issubclass(spec, Optimizer)):
        raise ValueError(f"meta_optimizer must name a torch.optim.Optimizer class (e.g. 'SGD', 'Adam'), got {spec!r}")
    return spec


def check_meta_lr(meta_lr: float) -> None:
    """A learning rate of the meta-optimizer must be positive: torch's own check fails at the start of fit, deep in a
    traceback."""
    if not meta_lr > 0:
        raise ValueError(f"meta_lr must be > 0, got {meta_lr}")


def distributed_sum(tensor: Tensor) -> Tensor:
    """The :data:`AllReduce` of a plain ``torch.distributed`` loop: the sum over the default process group."""
    torch.distributed.all_reduce(tensor)
    return tensor


class MetaState:
    """theta_0 (``theta_0``: parameters whose ``.grad`` gathers the meta-batch), the meta-optimizer and counters.

    Args:
        theta_0: the initial values of the meta-learned tensors (copied).
        meta_batch_size: tasks this process adds before each meta-step (under task-parallel training on W
            processes: the meta-batch's share of this process).
        meta_lr: learning rate of the meta-optimizer.
        meta_optimizer: a ``torch.optim`` class or its name (``"SGD"``, ``"Adam"``, ``"pkg.module.Class"``).
        meta_optimizer_kwargs: further keyword arguments of the meta-optimizer (e.g. ``{"momentum": 0.9}``).
        all_reduce: sums over processes; given, each meta-step averages the kept tasks of all processes.
        guard: the checks against runaway meta-training (``True``: a :class:`~lightning_meta.engine.RunawayGuard`
            with its defaults; ``False``: none, only non-finite tasks are dropped).

    Attributes:
        drop_reasons: why each task last handed in (by :meth:`add_task` or :meth:`add_tasks`) was dropped (``None``
            for a task that was kept).
    """

    def __init__(
        self,
        theta_0: Iterable[Tensor],
        meta_batch_size: int = 1,
        meta_lr: float = 0.1,
        meta_optimizer: str | type[Optimizer] = "SGD",
        meta_optimizer_kwargs: dict[str, Any] | None = None,
        all_reduce: AllReduce | None = None,
        guard: RunawayGuard | bool = True,
    ) -> None:
        check_range(type(self).__name__, 1, meta_batch_size=meta_batch_size)
        check_meta_lr(meta_lr)
        self.theta_0 = [torch.nn.Parameter(t.detach().clone()) for t in theta_0]
        for p in self.theta_0:
            p.grad = torch.zeros_like(p)
        # every torch.optim class takes lr; the base class's signature does not say so
        self.optimizer = optimizer_class(meta_optimizer)(
            self.theta_0, lr=meta_lr, **(meta_optimizer_kwargs or {})  # type: ignore[call-arg]
        )
        self.meta_batch_size = meta_batch_size
        self.meta_lr = meta_lr
        self.all_reduce = all_reduce
        self.guard = (RunawayGuard() if guard is True else None) if isinstance(guard, bool) else guard
        if self.guard is not None:
            self.guard.reset()
        self.drop_reasons: list[str | None] = []
        self.meta_steps = 0
        self.tasks_in_batch = 0  # tasks of the current meta-batch handed in on this process
        self.tasks_kept = 0  # of those, the ones that stayed finite

    @property
    def grads(self) -> list[Tensor]:
        """The sum of the kept meta-gradients of the current meta-batch."""
        return [p.grad for p in self.theta_0]  # type: ignore[misc]

    @property
    def batch_complete(self) -> bool:
        """Whether this process has handed in all its tasks of the meta-batch."""
        return self.tasks_in_batch >= self.meta_batch_size

    def add_task(
        self,
        meta_gradient: Sequence[Tensor],
        end_point: Sequence[Tensor] | None = None,
        losses: tuple[Tensor, Tensor] | None = None,
    ) -> bool:
        """Add one task's meta-gradient to the meta-batch; ``False`` (nothing added, the reason in
        :attr:`drop_reasons`) if it is not finite or the guard finds the task ran away. ``end_point`` (the task's
        final weights theta_K) and ``losses`` (its first and final loss) feed the guard's checks."""
        end_points = None if end_point is None else [p.unsqueeze(0) for p in end_point]
        stacked = None if losses is None else (losses[0].reshape(1), losses[1].reshape(1))
        return self.add_tasks([g.unsqueeze(0) for g in meta_gradient], end_points, stacked)[0]

    @torch.no_grad()
    def add_tasks(
        self,
        meta_gradients: Sequence[Tensor],
        end_points: Sequence[Tensor] | None = None,
        losses: tuple[Tensor, Tensor] | None = None,
    ) -> list[bool]:
        """Add the meta-gradients of tasks trained together, stacked on a leading task dimension (``(T, *shape)``
        each, as are their final weights ``end_points``; their first and final ``losses`` have shape ``(T,)``); a task
        that is not finite or that the guard finds ran away is dropped. Returns which tasks were kept (one
        host-device synchronisation for all of them)."""
        self.drop_reasons = self._judge_tasks(meta_gradients, end_points, losses)
        kept = [reason is None for reason in self.drop_reasons]
        self.tasks_in_batch += len(kept)
        if any(kept):
            rows = None if all(kept) else [i for i, ok in enumerate(kept) if ok]
            torch._foreach_add_(self.grads, [(g if rows is None else g[rows]).sum(0) for g in meta_gradients])
            self.tasks_kept += sum(kept)
        return kept

    def _judge_tasks(
        self,
        meta_gradients: Sequence[Tensor],
        end_points: Sequence[Tensor] | None,
        losses: tuple[Tensor, Tensor] | None,
    ) -> list[str | None]:
        """Why each of the tasks handed in together is dropped, or ``None`` (one synchronisation for all)."""
        if self.guard is None:
            finite = torch.stack([g.reshape(g.shape[0], -1).isfinite().all(1) for g in meta_gradients]).all(0)
            return [None if ok else NOT_FINITE for ok in finite.tolist()]
        return self.guard.judge_tasks(self.guard.task_figures(meta_gradients, self.theta_0, end_points, losses))

    def _step_figures(self, before: Sequence[Tensor]) -> list[float]:
        """The guard's figures of the meta-step from ``before`` to theta_0 (see ``RunawayGuard.step_figures``)."""
        assert self.guard is not None
        return self.guard.step_figures(self.theta_0, before)

    @torch.no_grad()
    def step(self) -> tuple[int, int]:
        """Average the kept meta-gradients (over all processes) and step theta_0; returns ``(kept, tasks)``: the tasks
        of the meta-batch and how many of them did not diverge.

        Raises:
            MetaTrainingDiverged: the guard's ``stop_after`` meta-batches in a row had every task dropped, or it
                refused the step (non-finite or too far; theta_0 and the meta-optimizer keep their values from before).
        """
        grads = self.grads
        kept, tasks, norm_sum = self.tasks_kept, self.tasks_in_batch, self.guard.norm_sum if self.guard else 0.0
        if self.all_reduce is not None:  # one collective: every process's sums and counts
            counts = grads[0].new_tensor([kept, tasks, norm_sum])
            flat = self.all_reduce(torch.cat([g.flatten() for g in grads] + [counts]))
            sums = flat[:-3].split([g.numel() for g in grads])
            torch._foreach_copy_(grads, [v.view_as(g) for v, g in zip(sums, grads)])
            kept, tasks, norm_sum = flat[-3:].tolist()
            kept, tasks = int(kept), int(tasks)
        failure: tuple[Failure, str] | None = None
        if kept:
            torch._foreach_div_(grads, float(kept))
            failure = self._guarded_step()
        else:
            failure = ("dropped", next((r for r in self.drop_reasons[::-1] if r), NOT_FINITE))
            warnings.warn("every task of the meta-batch diverged; theta_0 is unchanged.", stacklevel=2)
        torch._foreach_zero_(grads)
        self.tasks_in_batch = self.tasks_kept = 0
        if failure is None:
            self.meta_steps += 1
        if self.guard is not None:
            self.guard.end_meta_batch(failure, kept, norm_sum, tasks)
        return kept, tasks

    def _guarded_step(self) -> tuple[Failure, str] | None:
        """Step the meta-optimizer. Under a guard, theta_0 and the optimizer's state are copied first and put back
        when the guard refuses the step (one synchronisation per meta-step)."""
        if self.guard is None:
            self.optimizer.step()
            return None
        before = [p.detach().clone() for p in self.theta_0]
        optimizer_before = deepcopy(self.optimizer.state_dict())
        self.optimizer.step()
        refusal = self.guard.judge_step(self._step_figures(before))
        if refusal is None:
            return None
        torch._foreach_copy_([p.data for p in self.theta_0], before)
        self.optimizer.load_state_dict(optimizer_before)
        return "refused", refusal

    def state_dict(self) -> dict[str, Any]:
        return {
            "init": [p.detach().clone() for p in self.theta_0],
            "meta_grad": [g.clone() for g in self.grads],
            "meta_optimizer": self.optimizer.state_dict(),
            "guard": None if self.guard is None else self.guard.state_dict(),
            "counters": {
                "meta_steps": self.meta_steps,
                "tasks_in_batch": self.tasks_in_batch,
                "tasks_kept": self.tasks_kept,
            },
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`. The meta-optimizer keeps this state's ``meta_lr``, so that a run resumed
        with a smaller one (after :class:`~lightning_meta.engine.MetaTrainingDiverged`) uses it."""
        torch._foreach_copy_([p.data for p in self.theta_0], state["init"])
        torch._foreach_copy_(self.grads, state["meta_grad"])
        if state["meta_optimizer"] is not None:
            self.optimizer.load_state_dict(state["meta_optimizer"])
            for group in self.optimizer.param_groups:
                group["lr"] = self.meta_lr
        if self.guard is not None and state.get("guard") is not None:  # states saved without a guard have none
            self.guard.load_state_dict(state["guard"])
        counters = state["counters"]
        self.meta_steps = counters["meta_steps"]
        self.tasks_in_batch = counters["tasks_in_batch"]
        self.tasks_kept = counters["tasks_kept"]
