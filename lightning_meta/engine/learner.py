"""``MetaLearner``: meta-learn the initialisation of a module's parameters from any training loop.

It binds a module's parameters (those ``include`` selects) to a :class:`~lightning_meta.engine.MetaState` and a
:class:`~lightning_meta.engine.TrajectoryRule`. The loop it serves is the reference Leap code's: start each task
from theta_0, report every inner step after ``backward``, end the task; after ``meta_batch_size`` tasks theta_0 takes
a meta-step by itself. This is the engine behind all three front doors: the Lightning callbacks
(:class:`~lightning_meta.Leap`, :class:`~lightning_meta.Reptile`, :class:`~lightning_meta.MetaInit`), a Lightning
Fabric loop (:mod:`lightning_meta.fabric`) and a plain PyTorch loop, as here.

Examples:
    >>> import torch
    >>> import torch.nn.functional as F
    >>> from lightning_meta.engine import LeapRule, MetaLearner
    >>> model = torch.nn.Linear(4, 2)
    >>> meta = MetaLearner(model, LeapRule(), meta_batch_size=2, meta_lr=0.1)
    >>> for task in range(4):
    ...     meta.start_task()                                   # theta_0 into the model, a fresh trajectory
    ...     inner = torch.optim.SGD(model.parameters(), lr=0.1)  # a fresh inner optimizer per task
    ...     x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    ...     for step in range(5):
    ...         loss = F.cross_entropy(model(x), y)
    ...         inner.zero_grad()
    ...         loss.backward()
    ...         meta.update(loss)                               # after backward, before the inner step
    ...         inner.step()
    ...     _ = meta.end_task(final_loss=lambda: F.cross_entropy(model(x), y))
    >>> meta.meta_steps
    2
    >>> meta.load_init()  # the model now holds theta_0
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_meta.engine.meta_state import AllReduce, MetaState
from lightning_meta.engine.options import Buffers
from lightning_meta.engine.rule import TrajectoryRule
from lightning_meta.engine.runaway import RunawayGuard
from lightning_meta.utils import ParamFilter, parameter_filter
from lightning_meta.validation import PARALLEL, Parallel, check_choice


def select_parameters(module: nn.Module, include: str | ParamFilter | None) -> list[tuple[str, nn.Parameter]]:
    """The trainable parameters of ``module`` that ``include`` selects (see
    :func:`~lightning_meta.utils.parameter_filter`); none is an error that lists the module's parameter names."""
    chosen = parameter_filter(include)
    selected = [(n, p) for n, p in module.named_parameters() if p.requires_grad and chosen(n, p)]
    if not selected:
        names = [n for n, _ in module.named_parameters()][:20]
        raise ValueError(
            f"include={include!r} matched no trainable parameter of {type(module).__name__}; its parameters are: "
            f"{names}"
        )
    return selected


class MetaLearner:
    """Meta-learn theta_0 of ``module``'s parameters with ``rule`` (see the module docstring for the loop).

    Args:
        module: the model trained on each task; its selected parameters hold the task's weights.
        rule: turns a task's trajectory into a meta-gradient (:class:`~lightning_meta.engine.LeapRule`,
            :class:`~lightning_meta.engine.ReptileRule`, your own).
        meta_batch_size: tasks this process trains per meta-step (task-parallel on W processes: its share).
        meta_lr, meta_optimizer, meta_optimizer_kwargs, include, buffers, guard: how theta_0 is meta-learned,
            documented once in :class:`~lightning_meta.engine.MetaOptions` (the callbacks' ``**options``).
        parallel: with ``all_reduce``: ``"tasks"``: each process trains its own tasks, their meta-gradients are
            summed once per meta-step; ``"data"``: all processes train the same task on shards of each batch (the
            module's gradients are already averaged, e.g. by DDP), and each step's loss is averaged over them.
        all_reduce: sums a tensor over the processes (``None``: one process).
    """

    def __init__(
        self,
        module: nn.Module,
        rule: TrajectoryRule,
        meta_batch_size: int = 1,
        meta_lr: float = 0.1,
        meta_optimizer: str | type[Optimizer] = "SGD",
        meta_optimizer_kwargs: dict[str, Any] | None = None,
        include: str | ParamFilter | None = None,
        buffers: Buffers = "reset",
        parallel: Parallel = "tasks",
        all_reduce: AllReduce | None = None,
        guard: RunawayGuard | bool = True,
    ) -> None:
        check_choice(type(self).__name__, "buffers", buffers, ("reset", "keep"))
        check_choice(type(self).__name__, "parallel", parallel, PARALLEL)
        selected = select_parameters(module, include)
        self.module = module
        self.rule = rule
        self.names = [n for n, _ in selected]
        # the module's meta-learned parameters (a sharded learner: this process's shards of them)
        self.module_parameters: list[Tensor] = self._own_tensors([p for _, p in selected])
        self.live: list[Tensor] = list(self.module_parameters)  # the tensors each task trains (here: the module's own)
        self.buffers = buffers
        self.parallel = parallel
        self.all_reduce = all_reduce
        self.state = self._meta_state(
            self.live,
            meta_batch_size,
            meta_lr,
            meta_optimizer,
            meta_optimizer_kwargs,
            all_reduce if parallel == "tasks" else None,
            guard,
        )
        self.losses: list[Tensor | None] = [None, None]  # the running task's first and latest loss, for the guard
        self.buffer_start = {n: b.detach().clone() for n, b in module.named_buffers()}

    @property
    def theta_0(self) -> list[nn.Parameter]:
        """The meta-learned init, one tensor per selected parameter (in the order of :attr:`names`)."""
        return self.state.theta_0

    @property
    def meta_steps(self) -> int:
        return self.state.meta_steps

    @property
    def live_buffers(self) -> dict[str, Tensor]:
        """The buffers the running task updates (here: the module's own, by name)."""
        return dict(self.module.named_buffers())

    @torch.no_grad()
    def load_init(self) -> None:
        """Copy theta_0 and the buffers a task starts with into the module."""
        torch._foreach_copy_(self.module_parameters, [p.detach() for p in self.theta_0])
        for name, buffer in self.module.named_buffers():
            if name in self.buffer_start:
                buffer.copy_(self.buffer_start[name])

    def start_task(self) -> None:
        """Start a task: the module holds theta_0 and the rule a fresh trajectory. (A fresh inner optimizer is the
        loop's job.)"""
        self.load_init()
        self.losses = [None, None]
        with torch.no_grad():
            self.rule.start(self.theta_0, self.live)

    @torch.no_grad()
    def update(self, loss: Tensor | None = None) -> None:
        """Record an inner step: call after ``backward`` and before the inner optimizer's ``step``; ``loss`` is the
        step's (unscaled) loss, needed by rules with ``needs_loss`` (Leap with ``loss=True``)."""
        grads = self._gradients()
        loss = self._global_loss(loss) if self.rule.needs_loss else None
        if loss is not None:
            self.losses = [loss if self.losses[0] is None else self.losses[0], loss]
        self.rule.step(self.live, grads, loss)

    # the three places where a sharded learner (engine/sharded.py) differs: its tensors, its meta-state, its gradients
    def _own_tensors(self, parameters: list[Tensor]) -> list[Tensor]:
        return parameters

    def _meta_state(self, theta_0: list[Tensor], *arguments: Any) -> MetaState:
        return MetaState(theta_0, *arguments)

    def _gradients(self) -> list[Tensor]:
        return [p.grad.detach() if p.grad is not None else torch.zeros_like(p) for p in self.live]

    def _global_loss(self, loss: Tensor | None) -> Tensor | None:
        """The loss in theta_0's precision, averaged over the processes under data-parallel training."""
        if loss is None:
            return None
        loss = loss.detach().to(self.theta_0[0].dtype)
        if self.parallel == "data" and self.all_reduce is not None:
            total, processes = self.all_reduce(torch.stack([loss, torch.ones_like(loss)]))
            loss = total / processes
        return loss

    @torch.no_grad()
    def end_task(
        self, final_loss: Tensor | Callable[[], Tensor] | None = None, task: object = None
    ) -> tuple[int, int] | None:
        """End the task at the module's current weights. When this completes the meta-batch, theta_0 steps and the
        result is ``(kept, tasks)``: the tasks of the meta-batch (over all processes) and how many of them did not
        diverge; else ``None``.

        ``final_loss`` is the loss at theta_K on the task's last batch (a tensor or a function computing it, called
        without gradients), needed by rules with ``needs_final_loss``. A task whose meta-gradient is not finite, or
        that the guard finds ran away, is dropped with a warning naming ``task`` and the reason.

        Raises:
            MetaTrainingDiverged: from :meth:`MetaState.step <lightning_meta.engine.MetaState.step>`, when the guard
                stops meta-training.
        """
        if self.rule.needs_final_loss and final_loss is None:
            raise ValueError(f"{type(self.rule).__name__} needs the loss at the task's last weights: pass final_loss=")
        if not self.rule.needs_final_loss:
            final_loss = None  # the rule does not use it: no forward pass, no collective
        elif callable(final_loss):
            final_loss = final_loss()
        final_loss = self._global_loss(final_loss)
        meta_gradient = self.rule.end(self.live, final_loss)
        first, end = self.losses[0], final_loss if final_loss is not None else self.losses[1]
        kept = self._add_tasks(meta_gradient, (first, end) if first is not None and end is not None else None)
        for ok, label, reason in zip(kept, self._task_labels(task), self.state.drop_reasons):
            if not ok:
                warnings.warn(
                    f"task {label} diverged: {reason}; it is dropped from the meta-batch and theta_0 is not affected "
                    "by it.",
                    stacklevel=2,
                )
        if self.buffers == "keep" and any(kept):
            last = max(i for i, ok in enumerate(kept) if ok)
            self.buffer_start = self._task_buffers(last)
        return self.state.step() if self.state.batch_complete else None

    # the three places where one task and tasks stacked on a leading dimension differ
    def _add_tasks(self, meta_gradient: Sequence[Tensor], losses: tuple[Tensor, Tensor] | None) -> list[bool]:
        return [self.state.add_task(meta_gradient, self.live, losses)]

    def _task_labels(self, task: object) -> list[object]:
        return [task]

    def _task_buffers(self, index: int) -> dict[str, Tensor]:
        return {n: b.detach().clone() for n, b in self.module.named_buffers()}

    def init_state_dict(self) -> dict[str, Tensor]:
        """The module's ``state_dict`` with theta_0 and the buffers a task starts with in place of the live ones."""
        init_of = {id(p): init for p, init in zip(self.module_parameters, self.theta_0)}
        state = {}
        for name, tensor in self.module.state_dict(keep_vars=True).items():
            start = init_of.get(id(tensor), self.buffer_start.get(name, tensor))
            state[name] = start.detach().clone()
        return state

    def state_dict(self) -> dict[str, Any]:
        """theta_0, the meta-optimizer, the partial meta-batch, the rule's trajectory state and the buffers' start
        values (the module's own weights are the loop's to save)."""
        state = self.state.state_dict()
        extra = {"names": self.names, "buffer_start": self.buffer_start, "losses": list(self.losses)}
        return {**state, **extra, "rule": self.rule.state_dict()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any], trajectory: bool = True) -> None:
        """Inverse of :meth:`state_dict` on a learner of the same module and ``include``; the rule resumes the
        trajectory of the task that was running (``trajectory=False``: not, for a state saved between meta-steps by
        a learner that trained another number of tasks at once)."""
        if state["names"] != self.names:
            raise ValueError(
                f"the saved state meta-learns {len(state['names'])} tensors that differ from the {len(self.names)} "
                "selected now: resume with the same model and include filter."
            )
        self.state.load_state_dict(state)
        device = self.theta_0[0].device
        self.buffer_start = {n: b.to(device) for n, b in state["buffer_start"].items()}
        if trajectory:
            self.rule.start(self.theta_0, self.live)
            self.rule.load_state_dict(state["rule"])
            self.losses = [None if loss is None else loss.to(device) for loss in state.get("losses", [None, None])]
