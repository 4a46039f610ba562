"""The data side of meta-learning: the task API (:class:`Task`, :class:`TaskFamily`), the data modules that stream a
family's tasks and own the run's task schedule, and the episodes, documents and rollouts other learners read."""

from lightning_meta.data.atari_data import AtariDataModule
from lightning_meta.data.datamodule import StreamDataModule, TaskDataModule
from lightning_meta.data.document_data import DocumentBatch, DocumentDataModule
from lightning_meta.data.episodes import EpisodeBatch, EpisodeDataModule
from lightning_meta.data.family import ImageTensorDataset, Task, TaskFamily, TaskInfo

__all__ = [
    "AtariDataModule",
    "DocumentBatch",
    "DocumentDataModule",
    "EpisodeBatch",
    "EpisodeDataModule",
    "ImageTensorDataset",
    "StreamDataModule",
    "Task",
    "TaskDataModule",
    "TaskFamily",
    "TaskInfo",
]
