"""A conv classifier for tasks with different numbers of classes: a shared encoder and a fresh head per task.

Examples:
    >>> import torch
    >>> from lightning_meta.models import DatasetClassifier
    >>> from lightning_meta.data import Task, TaskInfo
    >>> model = DatasetClassifier(max_classes=100, cosine_steps=1000)
    >>> digits = Task("digits", [], [], num_classes=10)
    >>> model.start_task(TaskInfo(digits, "test", index=0))  # a new held-out task: a freshly initialised 10-way head
    >>> model(torch.zeros(5, 1, 28, 28)).shape
    torch.Size([5, 10])
"""

from __future__ import annotations

import zlib
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn

from lightning_meta.data.datamodule import TaskDataModule
from lightning_meta.data.family import SPLITS, Task, TaskInfo
from lightning_meta.models.classifier import ConvClassifier
from lightning_meta.validation import check_range


class DatasetClassifier(ConvClassifier):
    """:class:`~lightning_meta.models.ConvClassifier` whose linear head is a task parameter, not a meta-parameter.

    The head has ``max_classes`` outputs of which a task with ``n`` classes uses the first ``n``: exactly an
    ``n``-way linear head (the other rows get no gradient), kept at one shape so that the Trainer's optimizer keeps
    holding the same tensors. :meth:`start_task` draws a fresh head: the meta-learning callback calls it at every
    meta-training task's start (without one, the module asks the data module for its task at each step), and
    :class:`~lightning_meta.MetaEvaluation` at the start of every held-out task. Meta-learn the encoder only:
    ``Leap(include="encoder")``.

    Only the head is the module's to renew: clearing the optimizer's state and rewinding the LR schedule at every
    task start is the meta-learner's job (:class:`~lightning_meta.MetaInit` does both). Trained without one, the
    optimizer's state (momentum, Adam moments) carries over from task to task.

    With ``multi_head=True`` (the multi-headed fine-tuning baseline) each meta-training data set keeps its own
    head for the whole run instead (built in ``setup`` from the data module's training tasks); held-out tasks still
    get the fresh ``head``.

    Args:
        max_classes: outputs of the heads, at least the classes of the largest task.
        cosine_steps: period of the inner learning-rate schedule, cosine annealing from ``lr`` towards 0 that
            restarts every ``cosine_steps`` optimizer steps (set it to the steps per task); ``None``: constant.
        multi_head: one persistent head per meta-training data set.
        pretrain_lr: learning rate of the run's own training on the meta-training data sets (default: ``lr``);
            held-out data sets train at ``lr`` (``configure_inner_optimizer``), so that tuning the multi-headed
            pre-training rate leaves the held-out training alone.
        **kwargs: the :class:`~lightning_meta.models.ConvClassifier` arguments but ``num_classes``.
    """

    def __init__(
        self,
        max_classes: int = 100,
        cosine_steps: int | None = None,
        multi_head: bool = False,
        pretrain_lr: float | None = None,
        **kwargs: Any,
    ) -> None:
        # the saved hyper-parameters hold num_classes = max_classes (ConvClassifier's): accept that, refuse others
        if kwargs.pop("num_classes", max_classes) != max_classes:
            raise ValueError("DatasetClassifier sizes its heads with max_classes; the classes come from each task")
        if cosine_steps is not None and cosine_steps < 1:
            raise ValueError(f"cosine_steps must be >= 1 or None, got {cosine_steps}")
        check_range(type(self).__name__, 1, max_classes=max_classes)
        check_range(type(self).__name__, 0, strict=True, pretrain_lr=pretrain_lr)
        super().__init__(num_classes=max_classes, **kwargs)
        self.max_classes = max_classes
        self.cosine_steps = cosine_steps
        self.multi_head = multi_head
        self.pretrain_lr = pretrain_lr
        self.active_classes = max_classes  # classes of the task being trained
        self.heads = nn.ModuleList()  # multi_head: one per meta-training data set, built in setup
        self.train_classes: list[int] = []  # classes of each meta-training data set, read in setup
        self._task: int | None = None  # position in the stream of the task being trained
        self._head_index: int | None = None  # multi_head: the head of the meta-training task being trained
        self.data_seed = 0  # the data module's seed, read in setup; seeds the head of each task

    def setup(self, stage: str) -> None:
        """Read the classes of the data module's tasks; every split's must fit the heads (checked now rather than
        when the held-out evaluation reaches a big data set)."""
        datamodule = getattr(self.trainer, "datamodule", None)  # Lightning sets it without declaring it
        if stage != "fit" or not isinstance(datamodule, TaskDataModule):
            return
        self.data_seed = datamodule.seed
        self.train_classes = [self._classes(task) for task in datamodule.tasks("train")]
        largest = max((self._classes(task) for split in SPLITS for task in datamodule.tasks(split)), default=1)
        self._check_classes(largest)
        if self.multi_head and not self.heads:
            self.heads.extend(nn.Linear(self.head.in_features, self.max_classes) for _ in self.train_classes)

    @staticmethod
    def _classes(task: Task) -> int:
        if task.num_classes is None:
            raise MisconfigurationException(f"DatasetClassifier classifies: task {task.name!r} has no num_classes")
        return task.num_classes

    def _check_classes(self, num_classes: int) -> None:
        if not 1 <= num_classes <= self.max_classes:
            raise MisconfigurationException(
                f"a task has {num_classes} classes but DatasetClassifier(max_classes={self.max_classes}): "
                "raise max_classes to the largest task's classes"
            )

    @torch.no_grad()
    def start_task(self, task: TaskInfo) -> None:
        """A task starts: a held-out one gets a fresh head drawn from the global RNG (which the evaluation seeds);
        a meta-training one a fresh head drawn from a seed of its position in the stream (and the data module's
        seed: every DDP process draws the same head, and the global RNG is untouched), or with ``multi_head`` its
        own persistent head. The head's first ``num_classes`` rows are used."""
        classes = self._classes(task.task)
        self._check_classes(classes)
        self._task = task.position
        self.active_classes = classes
        self._head_index = task.index if self.multi_head and not task.held_out else None
        if task.held_out:
            self.head.reset_parameters()
        elif not self.multi_head:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(zlib.crc32(f"{self.data_seed}:{task.position}".encode()))
                self.head.reset_parameters()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Trained without a meta-learning callback (which calls :meth:`start_task` itself), start the data module's
        task of this step when it is new."""
        datamodule = getattr(self.trainer, "datamodule", None)  # Lightning sets it without declaring it
        if isinstance(datamodule, TaskDataModule):
            task = datamodule.current_task()
            if task.position != self._task:
                self.start_task(task)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The task being trained, so that a run resumed in the middle of a task keeps its head."""
        checkpoint["dataset_classifier"] = {
            "task": self._task,
            "head_index": self._head_index,
            "active_classes": self.active_classes,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the task being trained; a multi-head module that was never set up (``load_from_checkpoint``)
        builds its heads first, one per ``heads.<i>.weight`` of the checkpoint."""
        if self.multi_head and not self.heads:
            count = sum(1 for key in checkpoint["state_dict"] if key.startswith("heads.") and key.endswith(".weight"))
            self.heads.extend(nn.Linear(self.head.in_features, self.max_classes) for _ in range(count))
        state = checkpoint.get("dataset_classifier", {})
        self._task = state.get("task")
        self._head_index = state.get("head_index")
        self.active_classes = state.get("active_classes", self.max_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))[:, : self.active_classes]

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        index = self._head_index
        if not self.multi_head or index is None:
            return super().training_step(batch, batch_idx)
        x, y = batch
        loss = F.cross_entropy(self.heads[index](self.encoder(x))[:, : self.train_classes[index]], y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> Any:
        return self._scheduled(self.pretrain_lr or self.hparams["lr"])

    def configure_inner_optimizer(self) -> Any:
        """Held-out data sets train at ``lr`` (with the cosine schedule)."""
        return self._scheduled(self.hparams["lr"])

    def _scheduled(self, lr: float) -> Any:
        optimizer = self.optimizer_with(lr)
        if self.cosine_steps is None:
            return optimizer
        schedule = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=self.cosine_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
