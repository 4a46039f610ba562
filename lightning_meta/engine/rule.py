"""``TrajectoryRule``: how one task's training trajectory becomes a meta-gradient of the initialisation theta_0.

A rule sees the task start (theta_0 and the live parameters that now hold it), every inner optimizer step (the
parameters theta_i before the step, their gradients g_i and the step's loss f_i) and the task end (theta_K and,
where the rule asks for it, the loss at theta_K). It returns the task's meta-gradient; averaging over a meta-batch,
dropping diverged tasks, the reduce over processes, the meta-optimizer and checkpoints are the
:class:`~lightning_meta.engine.MetaState`'s business, never the rule's.

Tensors may carry leading task dimensions (several tasks trained at once, stacked): ``live[j]`` then has shape
``(*tasks, *theta_0[j].shape)`` and losses have shape ``tasks``. The built-in rules handle both.

Under sharding (:mod:`~lightning_meta.engine.sharded`: parameters split over processes by FSDP2) a rule sees this
process's shard of every tensor and, as losses, this process's share of the mean loss over the processes; what needs
the whole vector (a norm) it sums from partial sums with :attr:`TrajectoryRule.shards`. A rule that does only
element-wise work on the tensors it is given is right on shards as it stands: set ``shardable = True``.

Examples:
    A rule of your own, in one class: move theta_0 against the sum of the gradients seen along the path.

    >>> import torch
    >>> class GradientSum(TrajectoryRule):
    ...     name = "gradient_sum"
    ...     def start(self, theta_0, live):
    ...         self.total = [torch.zeros_like(p) for p in live]
    ...     def step(self, live, grads, loss):
    ...         torch._foreach_add_(self.total, grads)
    ...     def end(self, live, final_loss):
    ...         return self.total
    >>> rule = GradientSum()
    >>> theta = [torch.zeros(2)]
    >>> rule.start(theta, theta)
    >>> rule.step(theta, [torch.ones(2)], None)
    >>> rule.end(theta, None)
    [tensor([1., 1.])]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    from lightning_meta.engine.sharded import Shards


class TrajectoryRule:
    """Base class of meta-gradient rules (see the module docstring); every hook defaults to doing nothing.

    Attributes:
        name: prefix of the metrics the rule reports (``"<name>/<metric>"`` in the loggers).
        needs_loss: whether :meth:`step` uses the loss (else the front doors may pass ``None``).
        needs_final_loss: whether :meth:`end` uses the loss at theta_K.
        shardable: whether the rule is right on the shards of sharded parameters (see the module docstring); a
            :class:`~lightning_meta.engine.ShardedMetaLearner` refuses a rule that does not say so.
        shards: set by a :class:`~lightning_meta.engine.ShardedMetaLearner` (``None`` otherwise): sums partial
            figures over the processes holding the shards (:meth:`~lightning_meta.engine.sharded.Shards.total`).
    """

    name = "rule"
    needs_loss = False
    needs_final_loss = False
    shardable = False
    shards: Shards | None = None

    def start(self, theta_0: Sequence[Tensor], live: Sequence[Tensor]) -> None:
        """A task starts: ``live`` holds theta_0 (broadcast over its leading task dimensions, if any)."""

    def step(self, live: Sequence[Tensor], grads: Sequence[Tensor], loss: Tensor | None) -> None:
        """Before an inner optimizer step: ``live`` is theta_i, ``grads`` g_i (unscaled), ``loss`` f_i."""

    def end(self, live: Sequence[Tensor], final_loss: Tensor | None) -> Sequence[Tensor]:
        """The task ended at theta_K = ``live``: its meta-gradient, one tensor per parameter (with the task dims)."""
        raise NotImplementedError(f"{type(self).__name__} must implement end(live, final_loss)")

    def metrics(self) -> dict[str, Tensor]:
        """Figures of the task that just ended, e.g. Leap's path length (logged as ``"<name>/<key>"``)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What a run resumed mid-task needs (tensors and plain types: checkpoints load with ``weights_only``)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`; called after :meth:`start` of the task being resumed."""
