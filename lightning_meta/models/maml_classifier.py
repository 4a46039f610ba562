"""The Leap paper's Omniglot classifier meta-trained by MAML or first-order MAML.

Examples:
    >>> import torch
    >>> from lightning_meta.models import MAMLClassifier
    >>> from lightning_meta.data import EpisodeBatch
    >>> model = MAMLClassifier(num_classes=5, channels=8, inner_steps=2, first_order=True)
    >>> batch = EpisodeBatch(torch.rand(1, 1, 5, 1, 28, 28), torch.arange(5).view(1, 1, 5),
    ...                      torch.rand(1, 10, 1, 28, 28), torch.arange(10).view(1, 10) % 5, [0], ["toy"])
    >>> model.maml_loss(batch).loss.shape
    torch.Size([])
"""

from __future__ import annotations

from typing import Any

from lightning_meta.mixins.maml import BatchNormMode, MAMLMixin
from lightning_meta.models.classifier import ConvClassifier


class MAMLClassifier(MAMLMixin, ConvClassifier):
    """:class:`ConvClassifier` with the MAML mixin: ``lr`` and ``optimizer`` are the meta-optimizer's.

    Args:
        inner_steps: inner SGD steps per task (``None``: one per support batch of the episode).
        inner_lr: inner SGD learning rate (also used to train held-out tasks in
            :class:`~lightning_meta.MetaEvaluation`).
        first_order: first-order MAML.
        learn_inner_lr: learn one inner learning rate per step and tensor.
        adapt: regular expression of the parameters the inner loop adapts (``"^head"``: ANIL); ``None``: all.
        batch_norm: ``"batch"``, ``"task"`` or ``"frozen"`` (see :meth:`MAMLMixin.configure_maml`).
        checkpoint_segments: gradient-checkpointed segments of the unrolled inner loop (0: none).
        **kwargs: the :class:`ConvClassifier` arguments.
    """

    def __init__(
        self,
        inner_steps: int | None = None,
        inner_lr: float = 0.1,
        first_order: bool = False,
        learn_inner_lr: bool = False,
        adapt: str | None = None,
        batch_norm: BatchNormMode = "batch",
        checkpoint_segments: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.configure_maml(inner_steps, inner_lr, first_order, learn_inner_lr, adapt, batch_norm, checkpoint_segments)
