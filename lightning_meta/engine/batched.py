"""``TaskBatchedLearner``: train the T tasks of a meta-batch together, vectorised over tasks, in one process.

The meta-learned parameters are stacked with a leading task dimension, ``(T, *shape)``, and so are the module's
buffers (BatchNorm running statistics: each task keeps its own, exactly as if it trained alone). :meth:`map` runs a
function of one task's data (a loss, a ``training_step``) for all T tasks at once: ``torch.func.vmap`` over the task
dimension of the stacked tensors and of the data, with the module's tensors replaced by task t's through
``torch.func.functional_call``. ``losses.sum().backward()`` then gives every task its own gradient in ``.grad`` of the
stacked tensors, since the tasks share nothing.

One inner optimizer over the stacked tensors is T independent inner optimizers with shared hyper-parameters,
for optimizers that act element by element and whose step counters agree because all tasks step together:
``torch.optim.SGD`` (momentum, Nesterov, weight decay), ``Adam`` and ``AdamW`` (:data:`ELEMENTWISE_OPTIMIZERS`;
tested against tasks trained one by one). Anything that mixes tasks must not touch the stacked tensors: a gradient
clip by the norm of all of them, an optimizer that factorises or normalises over a tensor's dimensions.

The rule (:class:`~lightning_meta.engine.LeapRule`, :class:`~lightning_meta.engine.ReptileRule`, yours) is the same
object and the same code as one task at a time: it receives the stacked tensors and per-task losses of shape
``(T,)``, and returns stacked meta-gradients that :meth:`~lightning_meta.engine.MetaState.add_tasks` checks task by
task (a diverged task is dropped alone) and sums into the meta-batch.

Examples:
    >>> import torch
    >>> import torch.nn.functional as F
    >>> from lightning_meta.engine import LeapRule, TaskBatchedLearner
    >>> model = torch.nn.Linear(4, 2)
    >>> meta = TaskBatchedLearner(model, LeapRule(), tasks=3, meta_batch_size=6, meta_lr=0.1)
    >>> loss = lambda x, y: F.cross_entropy(model(x), y)    # written for one task's batch
    >>> for group in range(4):                              # 4 x 3 tasks: 2 meta-steps
    ...     meta.start_task()                               # all 3 stacked copies hold theta_0
    ...     inner = torch.optim.SGD(meta.live, lr=0.1)      # 3 independent SGDs
    ...     x, y = torch.randn(3, 8, 4), torch.randint(0, 2, (3, 8))   # one batch per task, stacked
    ...     for step in range(5):
    ...         losses = meta.map(loss, x, y)               # shape (3,): each task's loss
    ...         inner.zero_grad()
    ...         losses.sum().backward()                     # each task's gradient in its slice
    ...         meta.update(losses)
    ...         inner.step()
    ...     _ = meta.end_task(final_loss=lambda: meta.map(loss, x, y))
    >>> meta.meta_steps, meta.live[0].shape
    (2, torch.Size([3, 2, 4]))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.optim import Optimizer

from lightning_meta.engine.learner import MetaLearner
from lightning_meta.engine.rule import TrajectoryRule

ELEMENTWISE_OPTIMIZERS: tuple[type[Optimizer], ...] = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
"""Inner optimizers for which one instance over stacked tensors is one independent optimizer per task."""


class _Call(nn.Module):
    """Holds the module so that ``functional_call`` can swap its tensors while any function of it runs."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


class TaskBatchedLearner(MetaLearner):
    """Meta-learn theta_0 of ``module`` training ``tasks`` tasks at once (see the module docstring for the loop).

    Args:
        module: the model; its meta-learned parameters keep holding theta_0, the tasks train :attr:`live`.
        rule: the trajectory rule, as for :class:`~lightning_meta.engine.MetaLearner`.
        tasks: T, the tasks trained together; each :meth:`end_task` hands T tasks to the meta-batch.
        meta_batch_size: tasks per meta-step on this process, a multiple of ``tasks`` (default: ``tasks``).
        **kwargs: the other :class:`~lightning_meta.engine.MetaLearner` arguments (``meta_lr``, ``meta_optimizer``,
            ``include``, ``buffers``, ``all_reduce``); ``parallel="data"`` is not supported (each process trains its
            own tasks).

    Buffers: each task starts from the buffers' start values and keeps its own (``buffers="reset"``, the default,
    exactly as one task at a time); ``buffers="keep"``, which chains them from task to task, needs ``tasks=1``.
    Every trainable parameter must be meta-learned: one outside ``include`` would train once for all T tasks, not
    once per task. Freeze it (``requires_grad=False``: the tasks share it) or train one task at a time.
    """

    def __init__(
        self,
        module: nn.Module,
        rule: TrajectoryRule,
        tasks: int,
        meta_batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        meta_batch_size = tasks if meta_batch_size is None else meta_batch_size
        if tasks < 1 or meta_batch_size % tasks:
            raise ValueError(
                f"tasks={tasks} must be >= 1 and divide meta_batch_size={meta_batch_size} (the tasks of this process "
                "per meta-step), so that every meta-batch is whole groups of tasks trained together"
            )
        if kwargs.get("parallel", "tasks") != "tasks":
            raise ValueError("TaskBatchedLearner trains each process's own tasks: parallel='data' is not supported")
        if kwargs.get("buffers") == "keep" and tasks > 1:
            raise ValueError(
                "buffers='keep' hands each task the buffers (BatchNorm statistics) the task before it ended with, "
                "which tasks trained together cannot do: use buffers='reset' or train one task at a time"
            )
        super().__init__(module, rule, meta_batch_size, **kwargs)
        chosen = {id(p) for p in self.module_parameters}
        shared = [n for n, p in module.named_parameters() if p.requires_grad and id(p) not in chosen]
        if shared:
            raise ValueError(
                f"{type(module).__name__} has trainable parameters outside include={kwargs.get('include')!r}: "
                f"{shared[:10]}. Tasks trained together would train them jointly, not each task its own: meta-learn "
                "them too, freeze them (requires_grad=False), or train one task at a time."
            )
        self.tasks = tasks
        self.live = [p.detach().expand(tasks, *p.shape).clone().requires_grad_() for p in self.module_parameters]
        self.task_buffers = {n: b.detach().expand(tasks, *b.shape).clone() for n, b in module.named_buffers()}
        self._call = _Call(module)

    @property
    def live_buffers(self) -> dict[str, Tensor]:
        """The stacked buffers, ``(T, *shape)``, that the tasks update."""
        return self.task_buffers

    def start_task(self) -> None:
        """Start T tasks: every slice of :attr:`live` and of the stacked buffers holds theta_0 and the buffers' start
        values (the module holds them too); the rule starts T fresh trajectories."""
        with torch.no_grad():
            for live, init in zip(self.live, self.theta_0):
                live.copy_(init)
            for name, buffer in self.task_buffers.items():
                buffer.copy_(self.buffer_start[name])
        super().start_task()

    def map(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` for every task at once: ``args`` carry the task dimension first (tensors, or tuples / lists /
        dicts of them), ``fn`` sees one task's slice, and the module inside ``fn`` holds that task's weights and
        buffers. Returns ``fn``'s results stacked over tasks. Random operations draw differently for each task.
        """
        names = [f"module.{n}" for n in self.names]

        def one_task(live: list[Tensor], buffers: dict[str, Tensor], *task_args: Any) -> Any:
            tensors = {**dict(zip(names, live)), **{f"module.{n}": b for n, b in buffers.items()}}
            return functional_call(self._call, tensors, (fn, *task_args))

        return vmap(one_task, randomness="different")(self.live, self.task_buffers, *args)

    def _add_tasks(self, meta_gradient: Sequence[Tensor], losses: tuple[Tensor, Tensor] | None) -> list[bool]:
        return self.state.add_tasks(meta_gradient, self.live, losses)

    def _task_labels(self, task: object) -> list[object]:
        return list(task) if isinstance(task, Sequence) and not isinstance(task, str) else [task] * self.tasks

    def _task_buffers(self, index: int) -> dict[str, Tensor]:
        return {n: b[index].clone() for n, b in self.task_buffers.items()}
