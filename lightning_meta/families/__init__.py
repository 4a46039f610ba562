"""Task families: from what you already have (data sets, one labelled data set to draw N-way K-shot tasks from, a
function of a seed) and the recipes' own (glyph alphabets, Omniglot, vision data sets, quadratics, documents, Atari
games), with the data modules that serve one family (documents, Atari rollouts)."""

from lightning_meta.families.atari import AtariGames
from lightning_meta.families.atari_data import AtariDataModule
from lightning_meta.families.dataset_tasks import DatasetTasks
from lightning_meta.families.document_data import DocumentBatch, DocumentDataModule
from lightning_meta.families.documents import TextDocuments
from lightning_meta.families.few_shot_tasks import FewShotTasks
from lightning_meta.families.glyphs import GlyphAlphabets
from lightning_meta.families.omniglot import Omniglot
from lightning_meta.families.quadratics import RandomQuadratics
from lightning_meta.families.seeded_tasks import SeededTasks
from lightning_meta.families.vision import VisionDatasets

__all__ = [
    "AtariDataModule",
    "AtariGames",
    "DatasetTasks",
    "DocumentBatch",
    "DocumentDataModule",
    "FewShotTasks",
    "GlyphAlphabets",
    "Omniglot",
    "RandomQuadratics",
    "SeededTasks",
    "TextDocuments",
    "VisionDatasets",
]
