"""Reptile (Nichol et al., 2018): move theta_0 towards where training on each task ends.

theta_0 <- theta_0 + meta_lr * mean over tasks of (theta_K - theta_0), expressed as the meta-gradient
theta_0 - theta_K for the meta-optimizer (plain SGD with ``lr=meta_lr`` gives exactly the rule above).

Examples:
    >>> import lightning as L
    >>> from lightning_meta import Reptile
    >>> reptile = Reptile(inner_steps=100, meta_batch_size=5, meta_lr=0.1)
    >>> trainer = L.Trainer(callbacks=[reptile], max_steps=100 * 5 * 10, logger=False, enable_checkpointing=False)
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from lightning_meta.callbacks.meta_init import MetaInit


class Reptile(MetaInit):
    """Meta-learn theta_0 with Reptile; no work inside the inner loop, one subtraction per task.

    Takes the :class:`~lightning_meta.callbacks.MetaInit` arguments (``inner_steps``, ``meta_batch_size``,
    ``meta_lr``, ``meta_optimizer``, ``include``, ``buffers``, ...).
    """

    def task_meta_gradient(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> list[Tensor]:
        return list(torch._foreach_sub([p.detach() for p in self.init], self._live))
