"""``Omniglot``: the real Omniglot alphabets as 20-way tasks, following the Leap paper's protocol.

Both Omniglot sets (``images_background`` and ``images_evaluation``) are pooled; every alphabet with at least 20
characters is a task, split by the seed into 10 meta-test alphabets, ``num_val`` meta-validation alphabets and
meta-training alphabets (all the others, or the first ``num_train``).

Example (needs the data, hence skipped):
    >>> from lightning_meta.families.omniglot import Omniglot
    >>> family = Omniglot("data", download=True, num_train=10)  # doctest: +SKIP
    >>> task = family.tasks("train")[0]  # doctest: +SKIP
    >>> len(task.train), len(task.test), task.num_classes  # doctest: +SKIP
    (300, 100, 20)
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
import torchvision
from PIL import Image, ImageOps
from torch import Tensor

from lightning_meta.families.alphabets import DRAWERS, AlphabetFamily

SETS = ("images_background", "images_evaluation")
MIN_CHARACTERS = 20
SIZE = 28
CONNECT_TIMEOUT = 5.0
"""Seconds to wait for the download server before saying that it cannot be reached (no network: fail fast)."""


class Omniglot(AlphabetFamily):
    """Omniglot (Lake et al., 2015) through torchvision's on-disk format, resized to ``28x28``, strokes bright on black.

    Images are read once and kept in memory as ``uint8``.

    Args:
        root: Folder holding (or to receive) torchvision's ``omniglot-py`` folder.
        download: Download the missing sets with torchvision (needs internet). Without a network the error says so
            within seconds and names the files to fetch and where they go.
        **kwargs: the split and task arguments of :class:`~lightning_meta.families.alphabets.AlphabetFamily`.
    """

    def __init__(self, root: str, download: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.download = download

    @property
    def folder(self) -> Path:
        """torchvision's ``omniglot-py`` folder."""
        return self.root / torchvision.datasets.Omniglot.folder

    def load_alphabets(self) -> dict[str, Tensor]:
        missing = [name for name in SETS if not (self.folder / name).is_dir()]
        if missing and self.download:
            self._download(missing)
            missing = [name for name in SETS if not (self.folder / name).is_dir()]
        if missing:
            raise FileNotFoundError(
                f"Omniglot not found in root={self.root}: missing "
                f"{', '.join(str(self.folder / name) for name in missing)}. Expected "
                f"{self.folder}/<set>/<alphabet>/<character>/<image>.png for <set> in {SETS}, as torchvision extracts "
                "it. Pass download=True on a machine with internet access, or copy an extracted "
                f"'omniglot-py' folder into {self.root}."
            )
        alphabets: dict[str, Tensor] = {}
        for name in SETS:
            for alphabet in sorted(path for path in (self.folder / name).iterdir() if path.is_dir()):
                characters = sorted(path for path in alphabet.iterdir() if path.is_dir())
                if len(characters) < MIN_CHARACTERS:
                    continue
                if alphabet.name in alphabets:
                    raise RuntimeError(f"alphabet {alphabet.name!r} appears in both Omniglot sets")
                alphabets[alphabet.name] = torch.stack([_load_character(character) for character in characters])
        if not alphabets:
            raise FileNotFoundError(f"no alphabet with at least {MIN_CHARACTERS} characters under {self.folder}")
        return alphabets


    def _download(self, sets: list[str]) -> None:
        """Download and extract ``sets`` with torchvision; an unreachable server is a one-line error, fast."""
        prefix = torchvision.datasets.Omniglot.download_url_prefix
        urls = " and ".join(f"{prefix}/{name}.zip" for name in sets)
        host = urlparse(prefix).hostname or prefix
        try:
            socket.create_connection((host, 443), timeout=CONNECT_TIMEOUT).close()
            for name in sets:
                torchvision.datasets.Omniglot(str(self.root), background=name == SETS[0], download=True)
        except OSError as error:  # URLError, timeouts and refused connections are all OSErrors
            reason = getattr(error, "reason", None) or error
            raise FileNotFoundError(
                f"Omniglot is not in root={self.root} and could not be downloaded ({host}: {reason}). On a machine "
                f"with internet access, download {urls} and extract them into {self.folder} (or run there with "
                "download=True and copy the 'omniglot-py' folder)."
            ) from None


def _load_character(folder: Path) -> Tensor:
    """The 20 drawings of one character as ``uint8 [20, 28, 28]``, inverted to bright strokes on black."""
    paths = sorted(folder.glob("*.png"))
    if len(paths) != DRAWERS:
        raise RuntimeError(f"expected {DRAWERS} drawings in {folder}, found {len(paths)}")
    return torch.from_numpy(np.stack([_load_image(path) for path in paths]))


def _load_image(path: Path) -> np.ndarray:
    """One drawing as ``uint8 [28, 28]``; a file PIL cannot read is an error naming it."""
    try:
        with Image.open(path) as image:
            inverted = ImageOps.invert(image.convert("L"))
    except (OSError, ValueError, SyntaxError) as error:  # PIL: unidentified, truncated or malformed images
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(
            f"Omniglot: {path} is not a readable image ({path.stat().st_size} bytes; PIL: {reason}): replace it with "
            "the file from the Omniglot archive, or extract the archive again"
        ) from None
    return np.asarray(inverted.resize((SIZE, SIZE), Image.Resampling.LANCZOS))
