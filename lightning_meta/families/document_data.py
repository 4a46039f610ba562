"""``DocumentDataModule``: streams text documents, one a task, cut into the segments a model reads between updates.

Batch ``n`` holds the documents ``n * meta_batch_size ...`` of a seeded stream over the training documents (each
pass a fresh permutation, as for every task stream here), each as ``inner_steps + 1`` consecutive segments of
``segment`` bytes: ``inner_steps`` updates, each scored on the segment after it. With ``short_documents="whole"``,
training documents shorter than a crop are read whole (their whole segments), padded to the crop: a long crop then
trains on whole documents. The stream is a pure function of ``seed`` and the batch's position, so a resumed run
reads exactly what the uninterrupted run would have.

Examples:
    >>> from lightning_meta.families import TextDocuments
    >>> data = DocumentDataModule(TextDocuments(), segment=32, inner_steps=4, meta_batch_size=2)
    >>> data.setup("fit")
    >>> batch = next(iter(data.train_dataloader()))
    >>> tuple(batch.inputs.shape), batch.inputs.dtype, len(batch)
    ((2, 5, 32), torch.int64, 2)
    >>> bool((batch.inputs[:, :, 1:] == batch.targets[:, :, :-1]).all())  # each byte is the next one's input
    True
    >>> name, inputs, targets = data.held_out("test")[0]
    >>> name, inputs[:3].tolist(), bytes(targets[:11].tolist())
    ('attribute-access', [0, 67, 117], b'Customizing')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_meta.data.datamodule import StreamDataModule
from lightning_meta.data.episodes import EpisodeBatchSampler
from lightning_meta.data.family import Split, Task
from lightning_meta.data.stream import stream_task_index
from lightning_meta.families.documents import START, ByteDocument, TextDocuments


@dataclass
class DocumentBatch:
    """Crops of several documents, stacked along the first dimension.

    Attributes:
        inputs: ``[documents, segments, segment]`` byte values (``int64``): each byte's predecessor.
        targets: ``[documents, segments, segment]``: the bytes to predict.
        tasks: each document's position in the task stream.
        names: each document's name.
        segments: the segments of each crop that hold its document (the rest is padding), at least 2.
    """

    inputs: Tensor
    targets: Tensor
    tasks: list[int]
    names: list[str]
    segments: list[int]

    def __len__(self) -> int:
        return self.inputs.shape[0]


def next_byte_pairs(document: ByteDocument, start: int = 0, length: int | None = None) -> tuple[Tensor, Tensor]:
    """``(inputs, targets)`` of bytes ``start ... start + length - 1`` (default: to the end) of a document, as
    ``int64``: ``targets`` are those bytes, ``inputs`` the byte before each (:data:`START` before the first); a
    ``length`` past the end stops at the end."""
    data = document.data.long()
    stop = len(data) if length is None else start + length
    previous = torch.cat([data.new_tensor([START]), data[:-1]])
    return previous[start:stop], data[start:stop]


def byte_document(task: Task) -> ByteDocument:
    """A task's document; a clear error for a family whose tasks are not :class:`ByteDocument` s."""
    if not isinstance(task.train, ByteDocument):
        kind = type(task.train).__name__
        raise TypeError(f"task {task.name!r} holds a {kind}, not a ByteDocument: use a TextDocuments family")
    return task.train


class DocumentCrops(Dataset):
    """The crop of the ``n``-th document of the stream: ``segments x segment`` bytes from its start or from a
    seeded random position (a pure function of ``seed`` and ``n``); a shorter document's whole segments from its
    start, padded with zeros."""

    def __init__(
        self, tasks: list[Task], segment: int, segments: int, crop: Literal["start", "random"], seed: int
    ) -> None:
        self.tasks, self.segment, self.segments, self.crop, self.seed = tasks, segment, segments, crop, seed

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, stream_task: int) -> dict[str, Any]:
        task = self.tasks[stream_task_index(stream_task, len(self.tasks), self.seed)]
        length = self.segment * self.segments
        document = byte_document(task)
        room = len(document) - length
        rng = np.random.default_rng([self.seed, 3, stream_task])
        start = 0 if self.crop == "start" or room <= 0 else int(rng.integers(room + 1))
        segments = min(self.segments, len(document) // self.segment)
        inputs, targets = next_byte_pairs(document, start, segments * self.segment)
        pad = length - len(inputs)
        inputs, targets = (F.pad(x, (0, pad)).view(self.segments, self.segment) for x in (inputs, targets))
        return {"inputs": inputs, "targets": targets, "task": stream_task, "name": task.name, "segments": segments}


def collate_documents(crops: list[dict[str, Any]]) -> DocumentBatch:
    """Stack document crops into a :class:`DocumentBatch`."""
    return DocumentBatch(
        torch.stack([c["inputs"] for c in crops]),
        torch.stack([c["targets"] for c in crops]),
        [c["task"] for c in crops],
        [c["name"] for c in crops],
        [c["segments"] for c in crops],
    )


class DocumentDataModule(StreamDataModule):
    """Streams the training documents of a :class:`~lightning_meta.families.TextDocuments` family as crops of
    ``inner_steps + 1`` segments; :meth:`held_out` gives the validation and test documents whole.

    Args:
        family: the documents (default: :class:`~lightning_meta.families.TextDocuments`, the embedded topics).
        segment: bytes read between two updates of the model's weights.
        inner_steps: updates per training document (its crop has ``inner_steps + 1`` segments); shorter
            documents are left out of training.
        meta_batch_size: documents per batch.
        crop: where a training crop starts: at the document's ``"start"``, or at a seeded ``"random"`` byte.
        short_documents: training documents shorter than a crop are left out (``"skip"``) or read whole, from their
            start, padded to the crop (``"whole"``; at least 2 whole segments).
        tasks_per_epoch: documents in one Lightning epoch (rounded up to whole batches; default: the training
            documents). Epochs only matter for logging.
        eval_bytes: held-out documents are read from their start for at most this many bytes (``None``: whole).
        num_workers: DataLoader worker processes.
        seed: seed of the document order and of the crops.
    """

    def __init__(
        self,
        family: TextDocuments | None = None,
        segment: int = 64,
        inner_steps: int = 16,
        meta_batch_size: int = 1,
        crop: Literal["start", "random"] = "random",
        short_documents: Literal["skip", "whole"] = "skip",
        tasks_per_epoch: int | None = None,
        eval_bytes: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(inner_steps, meta_batch_size)  # checks both
        for name, value in {"segment": segment, "tasks_per_epoch": tasks_per_epoch, "eval_bytes": eval_bytes}.items():
            if value is not None and value < 1:
                raise ValueError(f"DocumentDataModule: {name} must be >= 1, got {value}")
        if crop not in ("start", "random"):
            raise ValueError(f"DocumentDataModule: crop must be 'start' or 'random', got {crop!r}")
        if short_documents not in ("skip", "whole"):
            raise ValueError(f"DocumentDataModule: short_documents must be 'skip' or 'whole', got {short_documents!r}")
        self.family = family if family is not None else TextDocuments()
        self.segment, self.crop, self.tasks_per_epoch = segment, crop, tasks_per_epoch
        self.short_documents = short_documents
        self.eval_bytes, self.num_workers, self.seed = eval_bytes, num_workers, seed
        self._train_tasks: list[Task] | None = None

    @property
    def crop_bytes(self) -> int:
        """Bytes of a training crop: ``(inner_steps + 1) * segment``."""
        return (self.inner_steps + 1) * self.segment

    def setup(self, stage: str) -> None:
        if self._train_tasks is None:
            tasks = self.family.tasks("train")
            shortest = self.crop_bytes if self.short_documents == "skip" else 2 * self.segment
            self._train_tasks = [t for t in tasks if len(byte_document(t)) >= shortest]
            if not self._train_tasks:
                longest = max((len(byte_document(t)) for t in tasks), default=0)
                reads = (
                    f"inner_steps={self.inner_steps} and segment={self.segment} read {shortest} bytes of each "
                    "training document ((inner_steps + 1) * segment)"
                    if self.short_documents == "skip"
                    else f"segment={self.segment} with short_documents='whole' reads documents of 2 segments or more "
                    f"({shortest} bytes)"
                )
                fix = "lower inner_steps or segment" if self.short_documents == "skip" else "lower segment"
                raise ValueError(f"DocumentDataModule: {reads}, more than any has (the longest: {longest}): {fix}")

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        self._start_stream()
        assert self._train_tasks is not None and self.meta_batch_size is not None
        per_epoch = self.tasks_per_epoch or len(self._train_tasks)
        world_size, rank = self._processes()
        sampler = EpisodeBatchSampler(
            self.meta_batch_size, -(-per_epoch // self.meta_batch_size), self._consumed_batches, (rank, world_size)
        )
        crops = DocumentCrops(self._train_tasks, self.segment, self.inner_steps + 1, self.crop, self.seed)
        return DataLoader(
            crops,
            batch_sampler=sampler,
            collate_fn=collate_documents,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def held_out(self, split: Split) -> list[tuple[str, Tensor, Tensor]]:
        """Every document of ``split`` as ``(name, inputs, targets)`` from its start (at most ``eval_bytes``)."""
        tasks = self.family.tasks(split)
        if not tasks:
            raise ValueError(f"{type(self.family).__name__} has no {split!r} documents")
        return [(t.name, *next_byte_pairs(byte_document(t), 0, self.eval_bytes)) for t in tasks]
