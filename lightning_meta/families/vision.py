"""``VisionDatasets``: whole image data sets as tasks, the Leap paper's multi-data-set experiment.

Every data set is one task with its own label space: its training split is what a task trains on (for thousands of
steps), its test split is held out. All images are converted to one size and channel count. Sources:

- torchvision's ``mnist``, ``fashion_mnist``, ``kmnist``, ``cifar10``, ``cifar100``, ``svhn``, ``stl10`` and
  ``gtsrb`` (traffic signs), read from ``root`` through torchvision's own classes (``download=True`` fetches them);
- any ``ImageFolder`` tree, named in ``image_folders`` (a seeded ``test_fraction`` of each class is held out);
- embedded stand-ins that need no download: ``glyphs/<alphabet>`` (one alphabet of
  :class:`~lightning_meta.families.GlyphAlphabets`, all its characters as classes, 15 drawers to train on and 5 held
  out) and ``digits`` (scikit-learn's 8x8 handwritten digits, upscaled; ``pip install -e ".[vision]"`` in the
  clone).

Examples:
    >>> from lightning_meta.families import VisionDatasets
    >>> family = VisionDatasets(train=["cifar10", "svhn"], test=["mnist"], root="data", channels=3, size=32)
    >>> family.names("test")
    ['mnist']
    >>> VisionDatasets(train=["imagenet"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown data set 'imagenet': use one of cifar10, cifar100, digits, fashion_mnist, gtsrb, kmnist, ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from lightning_meta.data.family import ImageTensorDataset, Split, Task, TaskFamily
from lightning_meta.families.alphabets import DRAWERS
from lightning_meta.families.glyphs import GlyphAlphabets

TORCHVISION: dict[str, Callable[[str, bool, bool], Dataset]] = {
    "mnist": lambda root, train, download: torchvision.datasets.MNIST(root, train=train, download=download),
    "fashion_mnist": lambda root, train, download: torchvision.datasets.FashionMNIST(
        root, train=train, download=download
    ),
    "kmnist": lambda root, train, download: torchvision.datasets.KMNIST(root, train=train, download=download),
    "cifar10": lambda root, train, download: torchvision.datasets.CIFAR10(root, train=train, download=download),
    "cifar100": lambda root, train, download: torchvision.datasets.CIFAR100(root, train=train, download=download),
    "svhn": lambda root, train, download: torchvision.datasets.SVHN(
        root, "train" if train else "test", download=download
    ),
    "stl10": lambda root, train, download: torchvision.datasets.STL10(
        root, "train" if train else "test", download=download
    ),
    "gtsrb": lambda root, train, download: torchvision.datasets.GTSRB(
        root, "train" if train else "test", download=download
    ),
}
"""Name -> ``(root, train, download) -> torchvision data set`` of its training or test split."""

GLYPHS = "glyphs/"
GLYPH_TEST_DRAWERS = 5
DEFAULT_TRAIN = [
    f"{GLYPHS}{name}"
    for name in ("Latin-1", "Cyrillic-1", "Armenian-1", "Hebrew-1", "Arabic-1", "Georgian-1", "Math-1", "Symbols-1")
]
DEFAULT_VAL = [f"{GLYPHS}Technical-1"]
DEFAULT_TEST = [f"{GLYPHS}Braille-1", f"{GLYPHS}Arrows-1", f"{GLYPHS}Greek-1"]


class VisionDatasets(TaskFamily):
    """Image data sets as tasks: each one a whole classification problem with its own classes.

    The default is embedded, so that it runs offline: eight glyph alphabets of distinct scripts to meta-train on,
    one to validate on and three to hold out. They are stand-ins with the right shape (distinct data sets of
    different sizes and class counts), not the paper's data sets: fonts are far more alike than MNIST and CIFAR.

    Images are kept in memory as ``uint8 [N, channels, size, size]`` (colour turned grey by PIL's luminance, grey
    repeated to three channels); a data set is read once, on first use.

    Args:
        train: data sets to meta-train on (see the module docstring for the names).
        val: meta-validation data sets.
        test: held-out data sets.
        root: folder of the torchvision data sets (each in torchvision's own layout below it).
        download: let torchvision download missing data sets into ``root`` (needs internet access).
        size: image height and width after resizing.
        channels: 1 (grey) or 3 (RGB).
        image_folders: ``{name: folder}`` of ``ImageFolder`` trees (``folder/<class>/<image>``) usable as names.
        test_fraction: share of each class held out as the test split of sources without one (ImageFolder,
            ``digits``).
        max_train_samples: keep at most this many training images per data set (a seeded subset; ``None``: all).
        seed: seeds the held-out choice of ``test_fraction`` and ``max_train_samples``.
        glyph_root: cache folder of the glyph alphabets (default: :class:`~lightning_meta.families.GlyphAlphabets`'s).
    """

    def __init__(
        self,
        train: list[str] | None = None,
        val: list[str] | None = None,
        test: list[str] | None = None,
        root: str | None = None,
        download: bool = False,
        size: int = 28,
        channels: Literal[1, 3] = 1,
        image_folders: dict[str, str] | None = None,
        test_fraction: float = 0.2,
        max_train_samples: int | None = None,
        seed: int = 0,
        glyph_root: str | None = None,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if size < 1 or not 0 < test_fraction < 1 or (max_train_samples is not None and max_train_samples < 1):
            raise ValueError(
                f"need size >= 1, 0 < test_fraction < 1 and max_train_samples >= 1 or None; got {size}, "
                f"{test_fraction}, {max_train_samples}"
            )
        self.image_folders = dict(image_folders or {})
        self.splits: dict[Split, list[str]] = {
            "train": list(DEFAULT_TRAIN if train is None else train),
            "val": list(DEFAULT_VAL if val is None else val),
            "test": list(DEFAULT_TEST if test is None else test),
        }
        everything = [name for names in self.splits.values() for name in names]
        for name in everything:
            self._check_name(name)
        repeated = sorted({name for name in everything if everything.count(name) > 1})
        if repeated:
            raise ValueError(f"data sets listed twice (a held-out data set must not be trained on): {repeated}")
        if root is None and any(name in TORCHVISION for name in everything):
            raise ValueError("the torchvision data sets need root= (the folder that holds or will receive them)")
        self.root = root
        self.download = download
        self.size = size
        self.channels = channels
        self.test_fraction = test_fraction
        self.max_train_samples = max_train_samples
        self.seed = seed
        self.glyph_root = glyph_root
        self._tasks: dict[str, Task] = {}
        self._glyph_alphabets: GlyphAlphabets | None = None

    def _check_name(self, name: str) -> None:
        if name in TORCHVISION or name == "digits" or name in self.image_folders or name.startswith(GLYPHS):
            return
        raise ValueError(
            f"unknown data set {name!r}: use one of {', '.join(sorted([*TORCHVISION, 'digits']))}, "
            f"'{GLYPHS}<alphabet>' or a name of image_folders ({sorted(self.image_folders)})"
        )

    def names(self, split: Split) -> list[str]:
        """The data sets of one split."""
        self._check_split(split)
        return list(self.splits[split])

    def prepare_data(self) -> None:
        """Download the missing torchvision data sets (with ``download=True``), once per node."""
        if self.download:
            for name in (n for names in self.splits.values() for n in names if n in TORCHVISION):
                for train in (True, False):
                    self._torchvision(name, train, download=True)

    def tasks(self, split: Split) -> list[Task]:
        return [self.task(name) for name in self.names(split)]

    def task(self, name: str) -> Task:
        """One data set as a task (read on first use, then kept)."""
        if name not in self._tasks:
            train, test = self._load(name)
            train = self._subsample(train)
            num_classes = int(max(train.labels.max(), test.labels.max())) + 1
            self._tasks[name] = Task(name, train, test, num_classes)
        return self._tasks[name]

    # ----------------------------------------------------------------- sources
    def _load(self, name: str) -> tuple[ImageTensorDataset, ImageTensorDataset]:
        if name in TORCHVISION:
            train, test = (
                cast(Iterable[tuple[Image.Image, int]], self._torchvision(name, split, False))
                for split in (True, False)
            )
            return self._read(train), self._read(test)
        if name in self.image_folders:
            folder = Path(self.image_folders[name])
            if not folder.is_dir():
                raise FileNotFoundError(f"image folder {name!r} not found: {folder} is not a folder")
            return self._hold_out(self._read(torchvision.datasets.ImageFolder(str(folder))))
        if name == "digits":
            return self._hold_out(self._read(_digits()))
        return self._glyphs(name.removeprefix(GLYPHS))

    def _torchvision(self, name: str, train: bool, download: bool) -> Dataset:
        assert self.root is not None
        try:
            return TORCHVISION[name](self.root, train, download)
        except (RuntimeError, OSError) as error:
            hint = (
                "Check the internet connection" if download else "Pass download=True on a machine with internet access"
            )
            raise FileNotFoundError(
                f"{name}: torchvision could not {'download' if download else 'read'} the "
                f"{'training' if train else 'test'} split under {Path(self.root).resolve()} ({error}). {hint}, or copy "
                f"the files torchvision downloads into that folder in torchvision's layout."
            ) from error

    def _read(self, dataset: Iterable[tuple[Image.Image, int]]) -> ImageTensorDataset:
        """Every ``(PIL image, label)`` of a data set, resized and converted, as one in-memory data set."""
        mode = "L" if self.channels == 1 else "RGB"
        images, labels = [], []
        for image, label in dataset:
            converted = image.convert(mode).resize((self.size, self.size), Image.Resampling.BILINEAR)
            images.append(np.asarray(converted, dtype=np.uint8).reshape(self.size, self.size, self.channels))
            labels.append(int(label))
        if not images:
            raise ValueError(f"a data set of {type(dataset).__name__} has no images")
        return ImageTensorDataset(
            torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)
        )

    def _glyphs(self, alphabet: str) -> tuple[ImageTensorDataset, ImageTensorDataset]:
        if self._glyph_alphabets is None:
            self._glyph_alphabets = GlyphAlphabets(root=self.glyph_root)
        alphabets = self._glyph_alphabets.alphabets()
        if alphabet not in alphabets:
            raise ValueError(f"unknown glyph alphabet {alphabet!r}: use one of {sorted(alphabets)}")
        characters = alphabets[alphabet]  # [characters, drawers, H, W]
        cut = DRAWERS - GLYPH_TEST_DRAWERS

        def part(drawings: Tensor) -> ImageTensorDataset:
            labels = torch.arange(drawings.shape[0]).repeat_interleave(drawings.shape[1])
            pictures = (Image.fromarray(image.numpy()) for image in drawings.flatten(0, 1))
            return self._read(zip(pictures, labels.tolist()))

        return part(characters[:, :cut]), part(characters[:, cut:])

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)

    def _hold_out(self, data: ImageTensorDataset) -> tuple[ImageTensorDataset, ImageTensorDataset]:
        """Split each class: a seeded ``test_fraction`` (at least one image) to test, the rest to train."""
        generator, test = self._generator(), torch.zeros(len(data), dtype=torch.bool)
        for label in data.labels.unique():
            members = (data.labels == label).nonzero().squeeze(1)
            members = members[torch.randperm(len(members), generator=generator)]
            test[members[: max(1, round(self.test_fraction * len(members)))]] = True
        return _subset(data, ~test), _subset(data, test)

    def _subsample(self, data: ImageTensorDataset) -> ImageTensorDataset:
        if self.max_train_samples is None or len(data) <= self.max_train_samples:
            return data
        kept = torch.randperm(len(data), generator=self._generator())[: self.max_train_samples].sort().values
        return ImageTensorDataset(data.images[kept], data.labels[kept])


def _subset(data: ImageTensorDataset, mask: Tensor) -> ImageTensorDataset:
    return ImageTensorDataset(data.images[mask], data.labels[mask])


def _digits() -> list[tuple[Image.Image, int]]:
    """scikit-learn's 1797 handwritten digits (8x8, 17 grey levels) as bright-on-black PIL images."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(
            "the 'digits' data set is scikit-learn's: pip install -e '.[vision]' in the clone (or scikit-learn), or "
            "leave 'digits' out of the family's data sets"
        ) from error
    digits: Any = load_digits()
    images = np.round(digits.images * 255 / 16).astype(np.uint8)
    return [(Image.fromarray(image), int(label)) for image, label in zip(images, digits.target)]
