"""``Reptile``: the Lightning callback of Reptile (Nichol et al., 2018), the rule of
:class:`~lightning_meta.engine.ReptileRule`: theta_0 <- theta_0 + meta_lr * mean over tasks of (theta_K - theta_0).

Examples:
    >>> import lightning as L
    >>> from lightning_meta import Reptile
    >>> from lightning_meta.data import TaskDataModule
    >>> tasks = TaskDataModule("glyphs", inner_steps=100, meta_batch_size=5, max_meta_steps=10)  # the schedule
    >>> trainer = L.Trainer(callbacks=[Reptile(meta_lr=0.1)], logger=False, enable_checkpointing=False)
"""

from __future__ import annotations

from typing import Any

from lightning_meta.callbacks.meta_init import MetaInit
from lightning_meta.engine import ReptileRule


class Reptile(MetaInit):
    """Meta-learn theta_0 with Reptile; no work inside the inner loop, one subtraction per task.

    Args:
        **kwargs: the :class:`~lightning_meta.callbacks.MetaInit` arguments (``meta_lr``, ``meta_optimizer``,
            ``include``, ``buffers``, ``guard``, ...); the task schedule is the data module's.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(rule=ReptileRule(), **kwargs)
