"""Small models and task families for the tests: fast on CPU, independent of the embedded glyph data."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from lightning_meta.data import ImageTensorDataset, Task, TaskFamily


class ToyFamily(TaskFamily):
    """Tasks of 4x4 grey images labelled by a random linear teacher of each task: learnable and cheap."""

    def __init__(
        self,
        num_tasks: int = 6,
        samples: int = 60,
        classes: int = 3,
        seed: int = 0,
        same_teacher: bool = False,
        held_out: int = 1,
    ) -> None:
        self.held_out = held_out  # tasks in each of "val" and "test"
        generator = torch.Generator().manual_seed(seed)
        shared = torch.randn(16, classes, generator=generator)
        self._tasks: list[Task] = []
        for index in range(num_tasks):
            images = torch.randint(0, 256, (samples, 1, 4, 4), generator=generator, dtype=torch.uint8)
            teacher = shared if same_teacher else torch.randn(16, classes, generator=generator)
            labels = (images.float().flatten(1) / 255 - 0.5).matmul(teacher).argmax(1)
            data = ImageTensorDataset(images, labels)
            self._tasks.append(Task(f"toy-{index}", data, data, classes))

    def tasks(self, split):
        self._check_split(split)
        n, k = len(self._tasks), self.held_out
        return {"train": self._tasks[: n - 2 * k], "val": self._tasks[n - 2 * k : n - k], "test": self._tasks[n - k :]}[split]


class TinyClassifier(L.LightningModule):
    """An ordinary LightningModule: ``x, y = batch``, cross-entropy, one optimizer; knows nothing of meta-learning."""

    def __init__(
        self, lr: float = 0.5, optimizer: str = "sgd", batch_norm: bool = False, classes: int = 3, step_lr: bool = False
    ) -> None:
        super().__init__()
        self.lr = lr
        self.optimizer = optimizer
        self.step_lr = step_lr
        layers: list[nn.Module] = [nn.Flatten(), nn.Linear(16, 8)]
        if batch_norm:
            layers.append(nn.BatchNorm1d(8))
        layers += [nn.Tanh(), nn.Linear(8, classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        cls = torch.optim.Adam if self.optimizer == "adam" else torch.optim.SGD
        optimizer = cls(self.parameters(), lr=self.lr)
        if not self.step_lr:
            return optimizer
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class DictRegression(L.LightningModule):
    """A module whose batches are dicts: ``{"features": [B, 4], "target": [B]}``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        self.seen: list[type] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(type(batch))
        return F.mse_loss(self.net(batch["features"]).squeeze(-1), batch["target"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class DictSamples(Dataset):
    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        x, y = self.data[index]
        return {"features": x, "target": y}


def regression_data(seed: int, size: int = 24) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 4, generator=g)
    return TensorDataset(x, x @ torch.randn(4, generator=g))


TRAINER_ROOT: Path | None = None
"""Where :func:`make_trainer` puts a run's files: each test's own ``tmp_path`` (set by conftest's autouse fixture)."""


def make_trainer(callbacks, max_steps: int, **kwargs) -> L.Trainer:
    kwargs.setdefault("logger", False)
    kwargs.setdefault("default_root_dir", TRAINER_ROOT)
    kwargs.setdefault("enable_checkpointing", False)
    kwargs.setdefault("enable_progress_bar", False)
    return L.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, callbacks=callbacks, enable_model_summary=False, **kwargs
    )


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def identical(a: object, b: object) -> bool:
    """Bitwise equality of tensors, and of dicts of them (or ``None``), field by field."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(identical(a[key], b[key]) for key in a)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.equal(a, b)
    return a is None and b is None
