"""The Leap paper's Omniglot classifier as an ordinary LightningModule.

Examples:
    >>> import torch
    >>> from lightning_meta.models import ConvClassifier
    >>> model = ConvClassifier(num_classes=20)
    >>> model(torch.zeros(5, 1, 28, 28)).shape
    torch.Size([5, 20])
    >>> from lightning_meta.models import MultiHeadClassifier
    >>> baseline = MultiHeadClassifier(num_heads=25, num_classes=20, channels=32)
    >>> len(baseline.heads), baseline.heads[0].out_features
    (25, 20)
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta.checkpoint_files import ChecksCheckpointClass
from lightning_meta.data.datamodule import TaskDataModule
from lightning_meta.data.family import TaskInfo
from lightning_meta.validation import check_range


def conv_block(in_channels: int, channels: int) -> nn.Sequential:
    """conv 3x3 (padding 1), max-pool 2, BatchNorm, ReLU: one of the Leap paper's four blocks."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1), nn.MaxPool2d(2), nn.BatchNorm2d(channels), nn.ReLU()
    )


class ConvClassifier(ChecksCheckpointClass, L.LightningModule):
    """4 x [conv 3x3, ``channels``, max-pool 2, BatchNorm, ReLU] then a linear head, trained with cross-entropy.

    Nothing in it knows about meta-learning: Leap or Reptile meta-learn its init from the outside. The encoder's
    parameters are named ``encoder.*`` and the head's ``head.*`` (``include="encoder"`` meta-learns the encoder only).

    Args:
        num_classes: outputs of the head (20 for 20-way alphabets).
        in_channels: image channels.
        channels: channels of each conv block.
        blocks: number of conv blocks (4 in the paper, for 28x28 inputs).
        lr: learning rate of the inner optimizer.
        optimizer: ``"sgd"`` (the paper's) or ``"adam"``.
        momentum: SGD momentum.
    """

    def __init__(
        self,
        num_classes: int = 20,
        in_channels: int = 1,
        channels: int = 64,
        blocks: int = 4,
        lr: float = 0.1,
        optimizer: Literal["sgd", "adam"] = "sgd",
        momentum: float = 0.0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_range(name, 1, num_classes=num_classes, in_channels=in_channels, channels=channels, blocks=blocks)
        check_range(name, 0, strict=True, lr=lr)
        check_range(name, 0, momentum=momentum)
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"{name}: optimizer must be 'sgd' or 'adam', got {optimizer!r}")
        self.save_hyperparameters()
        layers = [conv_block(in_channels if i == 0 else channels, channels) for i in range(blocks)]
        self.encoder = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log("train_loss", loss, prog_bar=True)
        self.log("train_acc", (logits.argmax(1) == y).float().mean())
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_with(self.hparams["lr"])

    def optimizer_with(self, lr: float) -> torch.optim.Optimizer:
        """The module's optimizer (``optimizer``, ``momentum``) over all its parameters, at learning rate ``lr``."""
        if self.hparams["optimizer"] == "adam":
            return torch.optim.Adam(self.parameters(), lr=lr)
        return torch.optim.SGD(self.parameters(), lr=lr, momentum=self.hparams["momentum"])


class MultiHeadClassifier(ConvClassifier):
    """The multi-headed fine-tuning baseline: one shared encoder, one head per meta-training task.

    Meta-training task ``i`` of the family (its index in the training split, read from the data module's task of
    each step) trains through ``heads[i]``; a held-out task (:meth:`start_task` tells it) or data outside a task
    stream goes through ``head``, which meta-training never touches: a new task starts from the shared encoder and a
    fresh head.

    Pre-training (the run's own ``fit``) steps at ``pretrain_lr``; held-out tasks train at ``lr``, as every other
    method's do (``configure_inner_optimizer``), so that tuning the pre-training rate leaves the held-out training
    alone.

    Args:
        num_heads: heads for meta-training tasks (the number of meta-training tasks).
        pretrain_lr: learning rate of the pre-training on the meta-training tasks (default: ``lr``).
        **kwargs: the :class:`ConvClassifier` arguments.
    """

    def __init__(self, num_heads: int = 25, pretrain_lr: float | None = None, **kwargs: Any) -> None:
        check_range(type(self).__name__, 1, num_heads=num_heads)
        check_range(type(self).__name__, 0, strict=True, pretrain_lr=pretrain_lr)
        super().__init__(**kwargs)
        hp = self.hparams
        self.heads = nn.ModuleList(nn.Linear(hp["channels"], hp["num_classes"]) for _ in range(num_heads))
        self.head_index: int | None = None  # the head of the meta-training task being trained (None: ``head``)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_with(self.hparams["pretrain_lr"] or self.hparams["lr"])

    def configure_inner_optimizer(self) -> torch.optim.Optimizer:
        """Held-out tasks train at ``lr``."""
        return self.optimizer_with(self.hparams["lr"])

    def start_task(self, task: TaskInfo) -> None:
        """A task starts: meta-training task ``i`` trains ``heads[i]``, a held-out task the fresh ``head``."""
        self.head_index = None if task.held_out else task.index

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """The pre-training's own fit: the head of the data module's task of this step."""
        datamodule = getattr(self.trainer, "datamodule", None)  # Lightning sets it without declaring it
        if isinstance(datamodule, TaskDataModule):
            self.start_task(datamodule.current_task())

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        index = self.head_index
        if index is None:
            return super().training_step(batch, batch_idx)
        if index >= len(self.heads):
            raise IndexError(
                f"meta-training task {index} has no head: MultiHeadClassifier(num_heads={len(self.heads)})"
            )
        x, y = batch
        loss = F.cross_entropy(self.heads[index](self.encoder(x)), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss
