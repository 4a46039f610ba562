"""``RandomQuadratics``: the synthetic task family of Andrychowicz et al. (2016), f(theta) = |W theta - y|^2.

Every task draws ``W`` (``dim x dim``) and ``y`` (``dim``) from a standard normal distribution; its "data set" is
the function itself: every sample is ``(W + noise * N(0, 1), y)``, so ``noise > 0`` makes the gradients
stochastic. :class:`QuadraticOptimizee` is the model that takes ``W`` and returns ``W theta``.

Examples:
    >>> import torch
    >>> family = RandomQuadratics(dim=3, num_train=4)
    >>> task = family.tasks("train")[0]
    >>> w, y = task.train[0]
    >>> w.shape, y.shape
    (torch.Size([3, 3]), torch.Size([3]))
    >>> model = QuadraticOptimizee(dim=3)
    >>> squared_error(model(w.unsqueeze(0)), y.unsqueeze(0)).shape
    torch.Size([])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from lightning_meta.data.family import Split, Task, TaskFamily


class _QuadraticSamples(Dataset):
    def __init__(self, w: Tensor, y: Tensor, size: int, noise: float, seed: int) -> None:
        self.w, self.y, self.size, self.noise, self.seed = w, y, size, noise, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if self.noise == 0:
            return self.w, self.y
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return self.w + self.noise * torch.randn(self.w.shape, generator=generator), self.y


class RandomQuadratics(TaskFamily):
    """Random quadratic functions as tasks.

    Args:
        dim: dimension of theta (10 in the paper).
        num_train: meta-training tasks.
        num_val: meta-validation tasks.
        num_test: meta-test tasks.
        samples: samples per task (all equal when ``noise == 0``).
        noise: standard deviation of the noise added to ``W`` in every sample.
        seed: seeds the functions.
    """

    def __init__(
        self, dim: int = 10, num_train: int = 100, num_val: int = 10, num_test: int = 10, samples: int = 100,
        noise: float = 0.0, seed: int = 0,
    ) -> None:
        if min(dim, num_train, samples) < 1 or min(num_val, num_test) < 0:
            raise ValueError("RandomQuadratics: dim, num_train and samples must be >= 1, num_val and num_test >= 0")
        self.dim, self.samples, self.noise, self.seed = dim, samples, noise, seed
        self.counts = {"train": num_train, "val": num_val, "test": num_test}

    def tasks(self, split: Split) -> list[Task]:
        self._check_split(split)
        offset = {"train": 0, "val": 1, "test": 2}[split]
        tasks = []
        for index in range(self.counts[split]):
            seed = (self.seed * 3 + offset) * 1_000_003 + index
            generator = torch.Generator().manual_seed(seed)
            w, y = torch.randn(self.dim, self.dim, generator=generator), torch.randn(self.dim, generator=generator)
            samples = _QuadraticSamples(w, y, self.samples, self.noise, seed)
            tasks.append(Task(f"quadratic-{split}-{index}", samples, samples, 0))
        return tasks


class QuadraticOptimizee(nn.Module):
    """``theta`` (initialised from N(0, 1)), mapping a batch of ``W`` to ``W theta``."""

    def __init__(self, dim: int = 10) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.randn(dim))

    def forward(self, w: Tensor) -> Tensor:
        return w @ self.theta


def squared_error(outputs: Tensor, targets: Tensor) -> Tensor:
    """``|W theta - y|^2``, averaged over the batch."""
    return (outputs - targets).pow(2).sum(-1).mean()
