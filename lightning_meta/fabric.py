"""The Lightning Fabric front door: the engine's :class:`~lightning_meta.engine.MetaLearner` in a Fabric loop.

Fabric leaves the loop to you; the learner needs three calls in it (start a task, report each step after
``fabric.backward``, end the task) and sums meta-gradients over Fabric's processes by itself. Under task-parallel
training on several processes, give each process its own tasks (``meta_batch_size`` counts this process's share of
the meta-batch) and run ``fabric.backward`` inside ``fabric.no_backward_sync(model)``, so that each process's
gradients stay with its own task.

A module sharded with FSDP2's ``fully_shard`` (e.g. under Fabric's ``ModelParallelStrategy``) gets a
:class:`~lightning_meta.engine.ShardedMetaLearner` (pass ``parallel="data"``: the processes train every task together,
each on its share of every batch; see :mod:`lightning_meta.engine.sharded`).

Examples:
    >>> import lightning as L
    >>> import torch
    >>> import torch.nn.functional as F
    >>> from lightning_meta.engine import LeapRule
    >>> fabric = L.Fabric(accelerator="cpu", devices=1)
    >>> model = fabric.setup_module(torch.nn.Linear(4, 2))
    >>> meta = fabric_meta_learner(fabric, model, LeapRule(), meta_batch_size=2, meta_lr=0.1)
    >>> for task in range(4):
    ...     meta.start_task()
    ...     inner = fabric.setup_optimizers(torch.optim.SGD(model.parameters(), lr=0.1))
    ...     x, y = fabric.to_device((torch.randn(8, 4), torch.randint(0, 2, (8,))))
    ...     for step in range(5):
    ...         loss = F.cross_entropy(model(x), y)
    ...         inner.zero_grad()
    ...         fabric.backward(loss)
    ...         meta.update(loss)
    ...         inner.step()
    ...     _ = meta.end_task(final_loss=lambda: F.cross_entropy(model(x), y))
    >>> meta.meta_steps
    2
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.fabric.wrappers import is_wrapped
from torch import Tensor, nn

from lightning_meta.engine import MetaLearner, ShardedMetaLearner, TrajectoryRule
from lightning_meta.engine.sharded import sharded
from lightning_meta.validation import Parallel


def fabric_meta_learner(
    fabric: L.Fabric, module: nn.Module, rule: TrajectoryRule, parallel: Parallel = "tasks", **kwargs: Any
) -> MetaLearner:
    """A :class:`~lightning_meta.engine.MetaLearner` of ``module`` (as returned by ``fabric.setup_module``, or the
    module you gave it) whose reduce runs over Fabric's processes; a
    :class:`~lightning_meta.engine.ShardedMetaLearner` when its parameters are ``DTensor`` shards.

    Args:
        fabric: the launched Fabric.
        module: the model; parameter names (for ``include``) are those of the module you wrote.
        rule: the trajectory rule (:class:`~lightning_meta.engine.LeapRule`, ...).
        parallel: ``"tasks"`` or ``"data"`` (see :class:`~lightning_meta.engine.MetaLearner`).
        **kwargs: the other :class:`~lightning_meta.engine.MetaLearner` arguments (``meta_batch_size``,
            ``meta_lr``, ``meta_optimizer``, ``include``, ``buffers``).
    """

    def all_reduce(tensor: Tensor) -> Tensor:
        return fabric.all_reduce(tensor, reduce_op="sum")  # type: ignore[return-value]

    own: nn.Module = module.module if is_wrapped(module) else module  # type: ignore[assignment]
    learner = ShardedMetaLearner if sharded(own) else MetaLearner
    return learner(own, rule, parallel=parallel, all_reduce=all_reduce if fabric.world_size > 1 else None, **kwargs)
