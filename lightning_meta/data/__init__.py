"""The data side of meta-learning, whatever the family: the task API (:class:`Task`, :class:`TaskFamily`), the data
modules that stream a family's tasks and own the run's task schedule, and the episodes MAML and learned optimizers
read. (The data modules of one family, documents and Atari rollouts, are in :mod:`lightning_meta.families`.)"""

from lightning_meta.data.datamodule import StreamDataModule, TaskDataModule
from lightning_meta.data.episodes import EpisodeBatch, EpisodeDataModule
from lightning_meta.data.family import ImageTensorDataset, Task, TaskFamily, TaskInfo

__all__ = [
    "EpisodeBatch",
    "EpisodeDataModule",
    "ImageTensorDataset",
    "StreamDataModule",
    "Task",
    "TaskDataModule",
    "TaskFamily",
    "TaskInfo",
]
