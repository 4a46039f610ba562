"""``DatasetTasks``: each of several data sets a task, the family you already have when you have data sets.

Examples:
    Two regression data sets to meta-train on and one held out, each a data set of ``(x, y)`` pairs; a seeded fifth
    of each is held out from its task's training:

    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> from lightning_meta.data import TaskDataModule
    >>> from lightning_meta.families import DatasetTasks
    >>> def line(slope):
    ...     x = torch.linspace(-1, 1, 50).unsqueeze(1)
    ...     return TensorDataset(x, slope * x)
    >>> family = DatasetTasks({"up": line(1.0), "down": line(-1.0), "flat": line(0.0)}, test=["flat"])
    >>> [task.name for task in family.tasks("train")], [task.name for task in family.tasks("test")]
    (['up', 'down'], ['flat'])
    >>> len(family.tasks("train")[0].train), len(family.tasks("train")[0].test)
    (40, 10)
    >>> tasks = TaskDataModule(family, inner_steps=5, batch_size=8)   # ready for Leap or Reptile
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lightning_meta.data.family import Split, Task, TaskData, TaskFamily, as_task


class DatasetTasks(TaskFamily):
    """Each data set a task; the ones named in ``val`` and ``test`` are held out, the others meta-train.

    Args:
        datasets: ``{name: data}`` or a list of data (named ``"task-0"``, ``"task-1"``, ...). Each data is a data set
            (a seeded share ``held_out`` of it is the task's held-out data), a pair ``(train, held_out)`` or a
            :class:`~lightning_meta.data.Task` (with ``num_classes`` or ``metadata``, if the model needs them).
        val: names (or, for a list, indices) of the meta-validation tasks.
        test: names (or indices) of the meta-test tasks.
        held_out: share of the samples of a plain data set held out from its training.
        seed: seed of those splits.
    """

    def __init__(
        self,
        datasets: Mapping[str, TaskData] | Sequence[TaskData],
        val: Sequence[str | int] = (),
        test: Sequence[str | int] = (),
        held_out: float = 0.2,
        seed: int = 0,
    ) -> None:
        named = dict(datasets) if isinstance(datasets, Mapping) else {f"task-{i}": d for i, d in enumerate(datasets)}
        names = list(named)
        held_out_names = (("val", val), ("test", test))
        chosen = {split: [n if isinstance(n, str) else names[n] for n in wanted] for split, wanted in held_out_names}
        unknown = [n for wanted in chosen.values() for n in wanted if n not in named]
        if unknown:
            raise ValueError(f"DatasetTasks: val/test name tasks {unknown} that are not among the data sets {names}")
        both = set(chosen["val"]) & set(chosen["test"])
        if both:
            raise ValueError(f"DatasetTasks: tasks {sorted(both)} are in both val and test; a task has one split")
        held = set(chosen["val"]) | set(chosen["test"])
        self.names = {"train": [n for n in names if n not in held], "val": chosen["val"], "test": chosen["test"]}
        if not self.names["train"]:
            raise ValueError("DatasetTasks: every data set is held out (val/test); at least one must meta-train")
        self._tasks = {
            name: as_task(name, data, held_out, seed + index) for index, (name, data) in enumerate(named.items())
        }

    def tasks(self, split: Split) -> list[Task]:
        self._check_split(split)
        return [self._tasks[name] for name in self.names[split]]

