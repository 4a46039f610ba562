"""Task families and the data module that streams their tasks."""

from lightning_meta.tasks.atari import AtariGames
from lightning_meta.tasks.atari_data import AtariDataModule
from lightning_meta.tasks.datamodule import StreamDataModule, TaskDataModule
from lightning_meta.tasks.document_data import DocumentBatch, DocumentDataModule
from lightning_meta.tasks.documents import TextDocuments
from lightning_meta.tasks.episodes import EpisodeBatch, EpisodeDataModule
from lightning_meta.tasks.family import ImageTensorDataset, Task, TaskFamily
from lightning_meta.tasks.glyphs import GlyphAlphabets
from lightning_meta.tasks.omniglot import Omniglot
from lightning_meta.tasks.quadratics import RandomQuadratics
from lightning_meta.tasks.stream import StackedTaskBatch, TaskBatch
from lightning_meta.tasks.vision import VisionDatasets

__all__ = [
    "AtariDataModule",
    "AtariGames",
    "DocumentBatch",
    "DocumentDataModule",
    "EpisodeBatch",
    "EpisodeDataModule",
    "GlyphAlphabets",
    "ImageTensorDataset",
    "Omniglot",
    "RandomQuadratics",
    "StackedTaskBatch",
    "StreamDataModule",
    "Task",
    "TaskBatch",
    "TaskDataModule",
    "TaskFamily",
    "TextDocuments",
    "VisionDatasets",
]
