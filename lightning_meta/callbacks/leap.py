"""``Leap``: the Lightning callback of Leap (Flennerhag et al., ICLR 2019), the rule of
:class:`~lightning_meta.engine.LeapRule` (formula, departures from the reference code) in any Trainer.

Examples:
    >>> import lightning as L
    >>> from lightning_meta import Leap
    >>> from lightning_meta.data import TaskDataModule
    >>> tasks = TaskDataModule("glyphs", inner_steps=100, meta_batch_size=20, max_meta_steps=10)  # the schedule
    >>> trainer = L.Trainer(callbacks=[Leap(meta_lr=0.1)], logger=False, enable_checkpointing=False)
"""

from __future__ import annotations

from typing import Any, Literal

from lightning_meta.callbacks.meta_init import MetaInit
from lightning_meta.engine import LeapRule


class Leap(MetaInit):
    """Meta-learn theta_0 with Leap's gradient-path rule; add it to any Trainer with automatic optimisation.

    One extra no-grad forward pass per task (the loss at theta_K, with ``loss=True``); memory: three copies of the
    meta-learned parameters for the running task, whatever its length; no host-device synchronisation per step.

    Args:
        p: 1 minimises the length of the training path, 2 its energy (with the factor 2 of the true derivative:
            twice the reference code's ``norm=False``).
        loss: include the loss dimension f(theta) in the path (else parameters only).
        stabilizer: replace df_i by -|df_i|, which keeps the meta-gradient from pulling towards loss increases.
        norm: the reference code's name for the choice of ``p``: ``True`` is ``p=1``, ``False`` is ``p=2``;
            leave it ``None`` and set ``p``.
        **kwargs: the :class:`~lightning_meta.callbacks.MetaInit` arguments (``meta_lr``, ``meta_optimizer``,
            ``include``, ``buffers``, ``guard``, ...); the task schedule is the data module's.
    """

    def __init__(
        self,
        p: Literal[1, 2] = 1,
        loss: bool = True,
        stabilizer: bool = True,
        norm: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(rule=LeapRule(p, loss, stabilizer, norm), **kwargs)
