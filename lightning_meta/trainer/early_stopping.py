"""``HeldOutEarlyStopping``: stop training a held-out task when its validation error stops improving.

A seeded ``fraction`` of each class of the task's training images is set aside as a validation split (the task
trains on the rest). Every ``every`` steps the validation error is measured; after ``patience`` measurements
without a new lowest error the training stops, and the weights of the lowest validation error are restored.

Examples:
    >>> import torch
    >>> from lightning_meta.trainer.early_stopping import HeldOutEarlyStopping
    >>> from lightning_meta.data.family import ImageTensorDataset, Task
    >>> data = ImageTensorDataset(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10) % 2)
    >>> fit, validation = HeldOutEarlyStopping(fraction=0.2).split(Task("toy", data, data, 2), seed=0)
    >>> len(fit.train), len(validation)
    (8, 2)
    >>> monitor = HeldOutEarlyStopping(patience=2, every=1).monitor(torch.nn.Linear(1, 1))
    >>> [monitor.should_stop(step, error) for step, error in ((1, 0.5), (2, 0.4), (3, 0.45), (4, 0.4))]
    [False, False, False, True]
    >>> monitor.best_step
    2
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from lightning_meta.data.family import Task


@dataclass(frozen=True)
class HeldOutEarlyStopping:
    """Early stopping of the training of each held-out task on a validation split of its training images.

    Args:
        patience: validation measurements without a new lowest error before the task stops.
        every: optimizer steps between validation measurements.
        fraction: share of each class of the training images set aside for validation (at least one image).
    """

    patience: int = 5
    every: int = 20
    fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.patience < 1 or self.every < 1 or not 0 < self.fraction < 1:
            raise ValueError(f"need patience >= 1, every >= 1 and 0 < fraction < 1, got {self}")

    def split(self, task: Task, seed: int) -> tuple[Task, Dataset]:
        """``(the task training on the rest, the validation images)``; the task's test split is unchanged."""
        labels = getattr(task.train, "labels", None)
        if labels is None:
            labels = torch.tensor([int(task.train[i][1]) for i in range(len(task.train))])  # type: ignore[arg-type]
        generator = torch.Generator().manual_seed(seed)
        validation = torch.zeros(len(labels), dtype=torch.bool)
        for label in labels.unique():
            members = (labels == label).nonzero().squeeze(1)
            members = members[torch.randperm(len(members), generator=generator)]
            validation[members[: max(1, round(self.fraction * len(members)))]] = True
        if validation.all():
            raise ValueError(f"task {task.name!r} has too few training images to set {self.fraction:.0%} aside")
        rest = Subset(task.train, (~validation).nonzero().squeeze(1).tolist())
        return Task(task.name, rest, task.test, task.num_classes), Subset(
            task.train, validation.nonzero().squeeze(1).tolist()
        )

    def monitor(self, model: nn.Module) -> EarlyStoppingMonitor:
        """A fresh monitor of one task's training of ``model``."""
        return EarlyStoppingMonitor(self, model)


class EarlyStoppingMonitor:
    """Tracks one task: the lowest validation error, its step and weights, and the measurements since then."""

    def __init__(self, rule: HeldOutEarlyStopping, model: nn.Module) -> None:
        self.rule = rule
        self.model = model
        self.best_error = float("inf")
        self.best_step = 0
        self.best_state: dict[str, Tensor] = copy.deepcopy(model.state_dict())
        self.since_best = 0

    def due(self, step: int) -> bool:
        """Whether the validation error is to be measured after ``step`` optimizer steps."""
        return step % self.rule.every == 0

    def should_stop(self, step: int, error: float) -> bool:
        """Record the validation error measured after ``step`` optimizer steps; ``True`` when the task is to stop."""
        if error < self.best_error:
            self.best_error, self.best_step, self.since_best = error, step, 0
            self.best_state = copy.deepcopy(self.model.state_dict())
            return False
        self.since_best += 1
        return self.since_best >= self.rule.patience

    def restore_best(self) -> None:
        """Load the weights of the lowest validation error (the initial ones if nothing was measured)."""
        self.model.load_state_dict(self.best_state)
