"""Task families (your data sets, N-way K-shot draws, seeded tasks, the recipes' families) and the data module that
streams their tasks and owns the task schedule."""

from lightning_meta.tasks.atari import AtariGames
from lightning_meta.tasks.atari_data import AtariDataModule
from lightning_meta.tasks.datamodule import StreamDataModule, TaskDataModule
from lightning_meta.tasks.dataset_tasks import DatasetTasks
from lightning_meta.tasks.document_data import DocumentBatch, DocumentDataModule
from lightning_meta.tasks.documents import TextDocuments
from lightning_meta.tasks.episodes import EpisodeBatch, EpisodeDataModule
from lightning_meta.tasks.family import ImageTensorDataset, Task, TaskFamily, TaskInfo
from lightning_meta.tasks.few_shot_tasks import FewShotTasks
from lightning_meta.tasks.glyphs import GlyphAlphabets
from lightning_meta.tasks.omniglot import Omniglot
from lightning_meta.tasks.quadratics import RandomQuadratics
from lightning_meta.tasks.seeded_tasks import SeededTasks
from lightning_meta.tasks.vision import VisionDatasets

__all__ = [
    "AtariDataModule",
    "AtariGames",
    "DatasetTasks",
    "DocumentBatch",
    "DocumentDataModule",
    "EpisodeBatch",
    "EpisodeDataModule",
    "FewShotTasks",
    "GlyphAlphabets",
    "ImageTensorDataset",
    "Omniglot",
    "RandomQuadratics",
    "SeededTasks",
    "StreamDataModule",
    "Task",
    "TaskDataModule",
    "TaskFamily",
    "TaskInfo",
    "TextDocuments",
    "VisionDatasets",
]
