"""``MetaCheckpoint``: Lightning's ``ModelCheckpoint`` whose files are named in meta-steps, ``meta-step=10.ckpt``.

A meta-learning run counts meta-steps, not epochs of a task stream or optimizer steps (``epoch=19-step=2000.ckpt``
is meta-step 1 of the Leap authors' Omniglot protocol). The template may use ``{meta_step}`` beside Lightning's
``{epoch}``, ``{step}`` and logged metrics; the meta-steps are counted as the progress bar counts them (the data
module's task schedule under a meta-learning callback, or a module that counts its own,
:func:`~lightning_meta.callbacks.progress.meta_step_counter`). Without a meta-learner (a baseline's pretraining)
the default name counts optimizer steps, ``step=200.ckpt``: the epochs of an endless task stream mean nothing.
Every other argument is ``ModelCheckpoint``'s; the recipes use it.

Examples:
    >>> import lightning as L
    >>> from lightning_meta import Leap
    >>> checkpoint = MetaCheckpoint(every_n_train_steps=2000, save_last=True)
    >>> trainer = L.Trainer(callbacks=[Leap(), checkpoint], logger=False)
    >>> checkpoint.format_checkpoint_name({"meta_step": 10})
    'meta-step=10.ckpt'
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor
from typing_extensions import override

from lightning_meta.callbacks.progress import meta_step_counter

META_STEP_FILENAME = "meta-step={meta_step}"
"""The default file name template: ``meta-step=10.ckpt``."""


class MetaCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` with file names in meta-steps (see the module docstring).

    Args:
        filename: the template; ``{meta_step}`` is the meta-steps done when the file is saved.
        auto_insert_metric_name: as ``ModelCheckpoint``'s (off: the default template names its one number).
        **kwargs: the other arguments of ``ModelCheckpoint`` (``every_n_train_steps``, ``save_last``, ...).
    """

    def __init__(
        self, filename: str | None = META_STEP_FILENAME, auto_insert_metric_name: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(filename=filename, auto_insert_metric_name=auto_insert_metric_name, **kwargs)
        self._trainer: L.Trainer | None = None

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._trainer = trainer

    @override
    def format_checkpoint_name(
        self, metrics: dict[str, Tensor], filename: str | None = None, ver: int | None = None, prefix: str | None = None
    ) -> str:
        counter = meta_step_counter(self._trainer) if self._trainer is not None else None
        if counter is not None and self._trainer is not None:
            metrics = {**metrics, "meta_step": torch.tensor(counter.meta_steps_done(self._trainer.global_step))}
        elif "meta_step" not in metrics and (filename or self.filename) == META_STEP_FILENAME:
            filename = "step={step}"  # no meta-steps to count (a baseline's pretraining): optimizer steps, not epochs
        return super().format_checkpoint_name(metrics, filename, ver, prefix)
