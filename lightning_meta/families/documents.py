"""``TextDocuments``: text documents read as byte streams, each document one task.

The embedded default needs no download: the documentation topics that every Python installation ships
(``pydoc_data.topics``, the language reference's sections as ``help()`` prints them, 79 documents, 466 kB on
Python 3.11), or the standard library's own ``.py`` files. ``root=`` reads a folder of your own: WikiText-style raw
files (``wiki.train.raw``, ``wiki.valid.raw``, ``wiki.test.raw``, articles separated by `` = Title = `` lines) give
the three splits; otherwise every ``.txt`` file is a document and every other ``.raw`` file a series of articles.

A document's split follows from its name alone (:func:`split_of`: CRC-32 of the name modulo 10, 0 test, 1
validation, else training), so it does not move when other documents are added or removed.

Examples:
    >>> family = TextDocuments()
    >>> [len(family.tasks(split)) for split in ("train", "val", "test")]
    [60, 14, 5]
    >>> task = family.tasks("test")[0]
    >>> task.name, bytes(task.train.data[:11].tolist())
    ('attribute-access', b'Customizing')
    >>> task.train[1]  # (previous byte, byte): next-byte prediction, "C" then "u"
    (67, 117)
"""

from __future__ import annotations

import sysconfig
import zlib
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import Dataset

from lightning_meta.data.family import Split, Task, TaskFamily

START = 0
"""The byte read before a document's first byte (NUL, which text does not contain)."""

WIKITEXT_SPLITS: dict[Split, str] = {"train": "train", "val": "valid", "test": "test"}


class ByteDocument(Dataset):
    """A document as bytes: sample ``i`` is ``(byte i - 1, byte i)`` (:data:`START` before the first byte)."""

    def __init__(self, data: bytes) -> None:
        if not data:
            raise ValueError("a document needs at least one byte")
        self.data = torch.frombuffer(bytearray(data), dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[int, int]:
        return int(self.data[index - 1]) if index > 0 else START, int(self.data[index])


def split_of(name: str) -> Split:
    """The split of a document named ``name``: CRC-32 of its UTF-8 bytes modulo 10: 0 ``"test"``, 1 ``"val"``,
    else ``"train"``.

    Examples:
        >>> split_of("attribute-access"), split_of("assert"), split_of("break")
        ('test', 'val', 'train')
    """
    rest = zlib.crc32(name.encode()) % 10
    return "test" if rest == 0 else "val" if rest == 1 else "train"


def wikitext_articles(text: bytes) -> list[tuple[str, bytes]]:
    """The articles of a WikiText raw file as ``(title, text)``: an article starts at a `` = Title = `` line (one
    ``=`` on each side; `` = = Section = = `` lines stay inside it) and runs to the next; text before the first
    title is dropped.

    Examples:
        >>> raw = b" \\n = Apple = \\n \\n Apples grow . \\n = = Uses = = \\n Pie . \\n = Pear = \\n Pears too . \\n"
        >>> [(title, len(body)) for title, body in wikitext_articles(raw)]
        [('Apple', 53), ('Pear', 25)]
    """
    articles: list[tuple[str, bytes]] = []
    title: str | None = None
    lines: list[bytes] = []
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith(b"= ") and stripped.endswith(b" =") and not stripped.startswith(b"= = "):
            if title is not None:
                articles.append((title, b"".join(lines)))
            title, lines = stripped[2:-2].decode("utf-8", errors="replace").strip(), []
        lines.append(line)
    if title is not None:
        articles.append((title, b"".join(lines)))
    return articles


def _stdlib_sources() -> list[tuple[str, bytes]]:
    """The standard library's ``.py`` files, test suites and installed packages left out, by relative path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test"}
    files = sorted(f for f in root.rglob("*.py") if not skip & set(f.relative_to(root).parts))
    return [(f.relative_to(root).as_posix(), f.read_bytes()) for f in files]


def _pydoc_topics() -> list[tuple[str, bytes]]:
    from pydoc_data.topics import topics

    return [(name, topics[name].encode()) for name in sorted(topics)]


class TextDocuments(TaskFamily):
    """Text documents as tasks: each task's ``train`` and ``test`` are the same :class:`ByteDocument`, because a
    dynamically evaluated model predicts each byte before it learns from it.

    Args:
        root: a folder of your own text (see the module docstring); ``None``: the embedded ``source``.
        source: the embedded documents: ``"topics"`` (``pydoc_data.topics``, English prose of the language
            reference) or ``"stdlib"`` (the standard library's ``.py`` files, about 13 MB).
        min_bytes: leave out documents shorter than this.
    """

    def __init__(
        self, root: str | None = None, source: Literal["topics", "stdlib"] = "topics", min_bytes: int = 1
    ) -> None:
        if source not in ("topics", "stdlib"):
            raise ValueError(f"TextDocuments: source must be 'topics' or 'stdlib', got {source!r}")
        if min_bytes < 1:
            raise ValueError(f"TextDocuments: min_bytes must be >= 1, got {min_bytes}")
        self.root, self.source, self.min_bytes = root, source, min_bytes
        self._splits: dict[Split, list[Task]] | None = None

    def documents(self) -> dict[Split, list[tuple[str, bytes]]]:
        """Every document by split, as ``(name, bytes)`` in a fixed order."""
        if self.root is None:
            named = _pydoc_topics() if self.source == "topics" else _stdlib_sources()
            return self._by_name(named)
        root = Path(self.root)
        if not root.is_dir():
            raise FileNotFoundError(f"TextDocuments: root={self.root!r} is not a folder")
        wikitext = {split: sorted(root.glob(f"*.{name}.raw")) for split, name in WIKITEXT_SPLITS.items()}
        if any(wikitext.values()):
            return {
                split: [(f"{f.name}/{title}", body) for f in files for title, body in wikitext_articles(f.read_bytes())]
                for split, files in wikitext.items()
            }
        named = []
        for f in sorted(root.rglob("*")):
            name = f.relative_to(root).as_posix()
            if f.suffix == ".txt":
                named.append((name, f.read_bytes()))
            elif f.suffix == ".raw":
                named += [(f"{name}/{title}", body) for title, body in wikitext_articles(f.read_bytes())]
        if not named:
            raise FileNotFoundError(f"TextDocuments: no .txt or .raw files under root={self.root!r}")
        return self._by_name(named)

    @staticmethod
    def _by_name(named: list[tuple[str, bytes]]) -> dict[Split, list[tuple[str, bytes]]]:
        splits: dict[Split, list[tuple[str, bytes]]] = {"train": [], "val": [], "test": []}
        for name, data in named:
            splits[split_of(name)].append((name, data))
        return splits

    def tasks(self, split: Split) -> list[Task]:
        self._check_split(split)
        if self._splits is None:
            minimum = self.min_bytes
            documents = self.documents()
            if not any(len(data) >= minimum for docs in documents.values() for _, data in docs):
                count = sum(len(docs) for docs in documents.values())
                where = "the embedded documents" if self.root is None else f"root={self.root}"
                raise ValueError(
                    f"TextDocuments: all {count} documents of {where} are shorter than min_bytes={minimum} (empty "
                    "files?): nothing to read"
                )
            self._splits = {
                part: [Task(name, doc := ByteDocument(data), doc, 256) for name, data in docs if len(data) >= minimum]
                for part, docs in documents.items()
            }
        return self._splits[split]
