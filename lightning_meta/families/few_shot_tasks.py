"""``FewShotTasks``: N-way K-shot tasks drawn from one labelled data set (what learn2learn's ``TaskDataset`` with
``NWays``, ``KShots`` and ``RemapLabels`` gives).

The classes are split once, at random, into meta-training, meta-validation and meta-test classes; a task of a split
draws ``ways`` of its classes, relabels them ``0..ways-1`` in the order drawn, and takes ``shots`` samples of each to
train on and ``queries`` others to hold out. Every draw is a pure function of ``(seed, split, index)``, so a
resumed run and every process see the same tasks.

Examples:
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> from lightning_meta.data import TaskDataModule
    >>> from lightning_meta.families import FewShotTasks
    >>> x, labels = torch.randn(400, 8), torch.arange(400) % 40          # 40 classes of 10 samples
    >>> family = FewShotTasks(TensorDataset(x, labels), ways=5, shots=1, queries=3, labels=labels.tolist())
    >>> task = family.task_at("train", 7)
    >>> len(task.train), len(task.test), task.num_classes
    (5, 15, 5)
    >>> sorted(int(y) for _, y in task.train)                           # labels remapped to 0..4
    [0, 1, 2, 3, 4]
    >>> len(family.classes["train"]), len(family.classes["val"]), len(family.classes["test"])
    (26, 6, 8)
    >>> tasks = TaskDataModule(family, inner_steps=5, batch_size=5)       # ready for Leap or Reptile
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from lightning_meta.data.family import SPLITS, IndexedFamily, Split, Task, dataset_length
from lightning_meta.validation import check_range


class RelabeledSubset(Dataset):
    """Samples ``indices`` of ``dataset``, each ``(input, label, ...)`` with its label replaced by ``labels[i]``."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], labels: Sequence[int]) -> None:
        self.dataset, self.indices, self.labels = dataset, list(indices), list(labels)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        sample = self.dataset[self.indices[i]]
        return (sample[0], self.labels[i], *sample[2:])

    def __getitems__(self, positions: list[int]) -> list[tuple[Any, ...]]:
        """A batch at once, through the data set's own ``__getitems__`` where it has one."""
        fetch = getattr(self.dataset, "__getitems__", None)
        indices = [self.indices[i] for i in positions]
        samples = fetch(indices) if fetch else [self.dataset[i] for i in indices]
        return [(s[0], self.labels[i], *s[2:]) for i, s in zip(positions, samples)]


def dataset_labels(dataset: Dataset) -> list[int]:
    """The label of every sample: the data set's ``targets`` or ``labels`` (torchvision's data sets have them), else
    the second element of every sample (one pass over the data set)."""
    for name in ("targets", "labels"):
        found = getattr(dataset, name, None)
        if found is not None:
            return [int(y) for y in found]
    return [int(dataset[i][1]) for i in range(dataset_length(dataset))]


class FewShotTasks(IndexedFamily):
    """N-way K-shot classification tasks from one labelled data set of ``(input, label)`` samples.

    Args:
        dataset: the labelled data set.
        ways: classes per task (N).
        shots: training samples per class (K).
        queries: held-out samples per class.
        classes: the split of the classes: shares ``(train, val, test)`` of a seeded permutation of the classes,
            or ``{"train": [...], "val": [...], "test": [...]}``.
        labels: the label of every sample (default: :func:`dataset_labels`).
        train_tasks: meta-training tasks (a fixed pool visited in seeded order), or ``None``: every position of the
            stream draws a new task.
        val_tasks: meta-validation tasks (drawn once, fixed).
        test_tasks: meta-test tasks.
        seed: seed of the class split and of every draw.
    """

    def __init__(
        self,
        dataset: Dataset,
        ways: int = 5,
        shots: int = 1,
        queries: int = 15,
        classes: Sequence[float] | Mapping[str, Sequence[int]] = (0.64, 0.16, 0.2),
        labels: Sequence[int] | None = None,
        train_tasks: int | None = None,
        val_tasks: int = 100,
        test_tasks: int = 100,
        seed: int = 0,
    ) -> None:
        check_range("FewShotTasks", 1, ways=ways, shots=shots, queries=queries, train_tasks=train_tasks)
        check_range("FewShotTasks", 0, val_tasks=val_tasks, test_tasks=test_tasks)
        self.dataset = dataset
        self.ways, self.shots, self.queries, self.seed = ways, shots, queries, seed
        self.counts: dict[str, int | None] = {"train": train_tasks, "val": val_tasks, "test": test_tasks}
        all_labels = dataset_labels(dataset) if labels is None else [int(y) for y in labels]
        self.members: dict[int, list[int]] = {}
        for index, label in enumerate(all_labels):
            self.members.setdefault(label, []).append(index)
        self.classes = self._split_classes(classes)
        for split, chosen in self.classes.items():
            needed = ways if self.counts[split] != 0 else 0
            if len(chosen) < needed:
                raise ValueError(
                    f"FewShotTasks: the {split!r} split has {len(chosen)} classes, fewer than ways={ways}; change the "
                    "class shares (classes=) or ways"
                )
        small = [c for c, members in self.members.items() if len(members) < shots + queries]
        if small:
            raise ValueError(
                f"FewShotTasks: classes {sorted(small)[:10]} have fewer than shots + queries = {shots + queries} "
                "samples; lower shots or queries"
            )

    def _split_classes(self, classes: Sequence[float] | Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
        if isinstance(classes, Mapping):
            unknown = [c for chosen in classes.values() for c in chosen if c not in self.members]
            if unknown:
                raise ValueError(f"FewShotTasks: classes {unknown[:10]} have no sample in the data set")
            return {split: [int(c) for c in classes.get(split, [])] for split in SPLITS}
        if len(classes) != 3 or min(classes) < 0 or sum(classes) <= 0:
            raise ValueError(f"FewShotTasks: classes must be three shares (train, val, test), got {classes!r}")
        order = np.random.default_rng([self.seed, 0]).permutation(sorted(self.members))
        cuts = np.round(np.cumsum(classes) / sum(classes) * len(order)).astype(int)
        return {split: order[start:end].tolist() for split, start, end in zip(SPLITS, (0, *cuts[:2]), cuts)}

    def task_at(self, split: Split, index: int) -> Task:
        self._check_index(split, index)
        rng = np.random.default_rng([self.seed, 1 + SPLITS.index(split), index])
        drawn = rng.choice(self.classes[split], size=self.ways, replace=False).tolist()
        train: list[int] = []
        test: list[int] = []
        for members in (self.members[c] for c in drawn):
            picks = rng.choice(len(members), size=self.shots + self.queries, replace=False)
            train += [members[p] for p in picks[: self.shots]]
            test += [members[p] for p in picks[self.shots :]]
        train_labels = [i // self.shots for i in range(len(train))]
        test_labels = [i // self.queries for i in range(len(test))]
        return Task(
            f"{split}-{index}",
            RelabeledSubset(self.dataset, train, train_labels),
            RelabeledSubset(self.dataset, test, test_labels),
            num_classes=self.ways,
            metadata={"classes": drawn},
        )
