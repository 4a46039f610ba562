"""``MetaOptions``: how theta_0 is meta-learned, the same in every front door; the one place its arguments are
defined, checked and documented.

:class:`~lightning_meta.engine.MetaLearner` takes them as keyword arguments; the Lightning callbacks
(:class:`~lightning_meta.MetaInit`, :class:`~lightning_meta.Leap`, :class:`~lightning_meta.Reptile`) take them as
``**options`` and build one ``MetaOptions`` (the command line lists them as the callback's own keys:
``--trainer.callbacks.meta_lr``).

Examples:
    >>> options = MetaOptions(meta_lr=0.5, meta_optimizer="Adam", include=r"^encoder\\.")
    >>> options.learner_arguments()["meta_lr"]
    0.5
    >>> MetaOptions(buffers="average")
    Traceback (most recent call last):
    ...
    ValueError: MetaOptions: buffers must be one of 'reset', 'keep', got 'average'
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

from torch.optim import Optimizer

from lightning_meta.engine.meta_state import check_meta_lr, optimizer_class
from lightning_meta.engine.runaway import RunawayGuard
from lightning_meta.utils import ParamFilter
from lightning_meta.validation import check_choice

Buffers = Literal["reset", "keep"]
"""What the module's buffers (BatchNorm statistics) hold when a task starts."""


@dataclass
class MetaOptions:
    """The meta-optimizer of theta_0, which parameters it holds, the buffers a task starts with, and the guard.

    Args:
        meta_lr: learning rate of the meta-optimizer.
        meta_optimizer: a ``torch.optim`` class or its name (``"SGD"``, ``"Adam"``, ``"pkg.module.Class"``).
        meta_optimizer_kwargs: further keyword arguments of the meta-optimizer (e.g. ``{"momentum": 0.9}``).
        include: which trainable parameters are meta-learned: a regular expression searched in the parameter
            name, or a predicate ``(name, parameter) -> bool``; ``None`` selects all. The others (e.g. per-task
            heads) train freely inside each task and are left alone at task starts.
        buffers: ``"reset"``: buffers (BatchNorm statistics) return to their value at the start of meta-training at
            every task start; ``"keep"``: they carry over from the last task that finished without diverging.
        guard: the checks against runaway meta-training (:class:`~lightning_meta.engine.RunawayGuard`; ``True``: its
            defaults; ``False``: none). Its loss check reads the losses of rules that use them.
    """

    meta_lr: float = 0.1
    meta_optimizer: str | type[Optimizer] = "SGD"
    meta_optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    include: str | ParamFilter | None = None
    buffers: Buffers = "reset"
    guard: RunawayGuard | bool = True

    def __post_init__(self) -> None:
        check_choice(type(self).__name__, "buffers", self.buffers, ("reset", "keep"))
        optimizer_class(self.meta_optimizer)  # a wrong name fails here, not when meta-training starts
        check_meta_lr(self.meta_lr)  # as does a meta_lr torch.optim would refuse
        self.meta_optimizer_kwargs = dict(self.meta_optimizer_kwargs or {})

    def learner_arguments(self) -> dict[str, Any]:
        """The options as :class:`~lightning_meta.engine.MetaLearner`'s keyword arguments."""
        return {option.name: getattr(self, option.name) for option in fields(self)}
