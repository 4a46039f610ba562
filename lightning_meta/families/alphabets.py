"""``AlphabetFamily``: alphabets as tasks, the protocol of the Leap paper's Omniglot experiment.

Every alphabet is one task, its characters are the classes and its 20 drawings per character (drawers) the
examples. Shared by :class:`~lightning_meta.families.GlyphAlphabets` and :class:`~lightning_meta.families.Omniglot`.

Examples:
    >>> import torch
    >>> from lightning_meta.families.alphabets import AlphabetFamily
    >>> class Blank(AlphabetFamily):
    ...     def load_alphabets(self):
    ...         return {f"script-{i}": torch.zeros(20, 20, 4, 4, dtype=torch.uint8) for i in range(8)}
    >>> family = Blank(num_val=2, num_test=3)
    >>> [len(family.tasks(split)) for split in ("train", "val", "test")]
    [3, 2, 3]
    >>> task = family.tasks("test")[0]
    >>> len(task.train), len(task.test), task.num_classes
    (300, 100, 20)
"""

from __future__ import annotations

import zlib
from abc import abstractmethod

import torch
from torch import Tensor

from lightning_meta.data.family import ImageTensorDataset, Split, Task, TaskFamily

DRAWERS = 20
"""Drawings per character, as in Omniglot."""


class AlphabetFamily(TaskFamily):
    """Alphabets as ``ways``-way tasks, split into meta-train / meta-validation / meta-test by a seeded permutation.

    Subclasses implement :meth:`load_alphabets`. Each task keeps ``ways`` characters of its alphabet (chosen from
    the seed when the alphabet has more), with labels ``0..ways-1``; per character the first
    ``20 - test_per_class`` drawers go to ``Task.train`` and the others to ``Task.test``.

    Args:
        seed: seeds the characters kept per task and the split of alphabets.
        ways: characters (classes) per task, at most 20.
        test_per_class: held-out drawers per character; the other ``20 - test_per_class`` are for training.
        num_train: meta-training alphabets; default all that are not in val or test.
        num_val: meta-validation alphabets.
        num_test: meta-test alphabets.
    """

    def __init__(
        self,
        seed: int = 0,
        ways: int = 20,
        test_per_class: int = 5,
        num_train: int | None = None,
        num_val: int = 5,
        num_test: int = 10,
    ) -> None:
        if not 1 <= ways <= DRAWERS:
            raise ValueError(f"ways must be in 1..{DRAWERS}, got {ways}")
        if not 1 <= test_per_class < DRAWERS:
            raise ValueError(f"test_per_class must be in 1..{DRAWERS - 1}, got {test_per_class}")
        if num_train is not None and num_train < 1:
            raise ValueError(f"num_train must be positive or None, got {num_train}")
        if num_val < 0 or num_test < 0:
            raise ValueError(f"num_val and num_test must be non-negative, got {num_val} and {num_test}")
        self.seed = seed
        self.ways = ways
        self.test_per_class = test_per_class
        self.num_train = num_train
        self.num_val = num_val
        self.num_test = num_test
        self._alphabets: dict[str, Tensor] | None = None

    @abstractmethod
    def load_alphabets(self) -> dict[str, Tensor]:
        """All alphabets by name, each ``uint8 [characters, 20, H, W]``, strokes bright on black."""

    def alphabets(self) -> dict[str, Tensor]:
        """All alphabets by name (loaded on first use), each ``uint8 [characters, 20, H, W]``."""
        if self._alphabets is None:
            alphabets = self.load_alphabets()
            self._check_counts(alphabets)
            self._alphabets = alphabets
        return self._alphabets

    def prepare_data(self) -> None:
        self.alphabets()

    def splits(self) -> dict[Split, list[str]]:
        """Alphabet names per split."""
        names = sorted(self.alphabets())
        order = [names[i] for i in torch.randperm(len(names), generator=torch.Generator().manual_seed(self.seed))]
        rest = order[self.num_test + self.num_val :]
        return {
            "train": rest if self.num_train is None else rest[: self.num_train],
            "val": order[self.num_test : self.num_test + self.num_val],
            "test": order[: self.num_test],
        }

    def tasks(self, split: Split) -> list[Task]:
        self._check_split(split)
        return [self._task(name) for name in self.splits()[split]]

    def _task(self, name: str) -> Task:
        images = self.alphabets()[name]
        generator = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{name}".encode()))
        characters = torch.randperm(images.shape[0], generator=generator)[: self.ways].sort().values
        images = images[characters].unsqueeze(2)  # [ways, drawers, 1, H, W]
        cut = DRAWERS - self.test_per_class

        def dataset(part: Tensor) -> ImageTensorDataset:
            labels = torch.arange(self.ways).repeat_interleave(part.shape[1])
            return ImageTensorDataset(part.flatten(0, 1), labels)

        return Task(name, dataset(images[:, :cut]), dataset(images[:, cut:]), self.ways)

    def _check_counts(self, alphabets: dict[str, Tensor]) -> None:
        smallest = min(images.shape[0] for images in alphabets.values())
        if self.ways > smallest:
            raise ValueError(f"ways={self.ways} exceeds the smallest alphabet ({smallest} characters)")
        available = len(alphabets) - self.num_val - self.num_test
        if available < 1:
            raise ValueError(
                f"num_val={self.num_val} + num_test={self.num_test} leave no training alphabet of {len(alphabets)}"
            )
        if self.num_train is not None and self.num_train > available:
            raise ValueError(f"num_train={self.num_train} exceeds the {available} alphabets left for training")
