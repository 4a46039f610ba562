"""``GlyphAlphabets``: an offline, Omniglot-shaped family of alphabets rendered from matplotlib's fonts.

Example (the first call builds the set in about 20 s and caches it; the tests check these numbers):
    >>> from lightning_meta.families import GlyphAlphabets
    >>> family = GlyphAlphabets(num_train=25)
    >>> [len(family.tasks(split)) for split in ("train", "val", "test")]  # doctest: +SKIP
    [25, 5, 10]
    >>> task = family.tasks("train")[0]  # doctest: +SKIP
    >>> len(task.train), len(task.test), task.num_classes  # doctest: +SKIP
    (300, 100, 20)
"""

from __future__ import annotations

import itertools
import math
import os
import pickle
import unicodedata
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.ft2font import FT2Font, LoadFlags
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from lightning_meta.atomic_files import write_atomically
from lightning_meta.families.alphabets import DRAWERS, AlphabetFamily

VERSION = 2
"""Bump when the rendering changes, so that old caches are rebuilt."""

UNICODE_FONTS = (
    *(f"DejaVuSans{s}.ttf" for s in ("", "-Bold", "-Oblique", "-BoldOblique")),
    *(f"DejaVuSerif{s}.ttf" for s in ("", "-Bold", "-Italic", "-BoldItalic")),
    *(f"DejaVuSansMono{s}.ttf" for s in ("", "-Bold", "-Oblique", "-BoldOblique")),
    *(f"STIXGeneral{s}.ttf" for s in ("", "Bol", "Italic", "BolIta")),
)
TEX_FONTS = ("cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf", "cmmi10.ttf")
"""TeX-encoded fonts: their charmaps are only trustworthy for the ASCII letters."""

ASCII_LETTERS = frozenset(range(0x41, 0x5B)) | frozenset(range(0x61, 0x7B))

SCRIPTS: tuple[tuple[str, tuple[tuple[int, int], ...]], ...] = (
    ("Latin", ((0x41, 0x5A), (0x61, 0x7A))),
    ("Latin Accented", ((0xC0, 0x17F),)),
    ("Latin Extended", ((0x180, 0x24F), (0x2C60, 0x2C7F), (0xA720, 0xA7FF))),
    ("Phonetic", ((0x250, 0x2AF), (0x1D00, 0x1DBF))),
    ("Greek", ((0x370, 0x3FF),)),
    ("Cyrillic", ((0x400, 0x52F), (0xA640, 0xA69F))),
    ("Armenian", ((0x530, 0x58F),)),
    ("Hebrew", ((0x590, 0x5FF), (0xFB1D, 0xFB4F))),
    ("Arabic", ((0x600, 0x6FF),)),
    ("Arabic Forms", ((0xFB50, 0xFDFF), (0xFE70, 0xFEFF))),
    ("Georgian", ((0x10A0, 0x10FF), (0x2D00, 0x2D2F))),
    ("Canadian Syllabics", ((0x1400, 0x167F),)),
    ("Lisu", ((0xA4D0, 0xA4FF),)),
    ("Letterlike", ((0x2100, 0x218F),)),
    ("Arrows", ((0x2190, 0x21FF), (0x27F0, 0x27FF), (0x2900, 0x297F), (0x2B00, 0x2BFF))),
    ("Math", ((0x2200, 0x22FF), (0x27C0, 0x27EF), (0x2980, 0x2AFF))),
    ("Technical", ((0x2300, 0x23FF),)),
    ("Enclosed", ((0x2460, 0x24FF),)),
    ("Box Drawing", ((0x2500, 0x259F),)),
    ("Shapes", ((0x25A0, 0x25FF),)),
    ("Symbols", ((0x2600, 0x26FF),)),
    ("Dingbats", ((0x2700, 0x27BF),)),
    ("Braille", ((0x2800, 0x28FF),)),
    ("Faces", ((0x1F600, 0x1F64F),)),
)
"""Unicode ranges per script; a script's surviving characters are cut into alphabets of 20 to 40. Accented
variants of Latin and Greek (Vietnamese, polytonic Greek) and the styled Latin of the math alphabets are left out
as near-duplicates of other alphabets."""

MIN_FONTS = 4
"""A character is kept only if at least this many fonts have a glyph for it."""
MAX_FONTS = 7
"""Fonts used per character: 7 fonts x 3 stroke widths give 21 distinct drawers."""
MIN_CHARACTERS, MAX_CHARACTERS = 20, 40
MAX_ALPHABETS = 3
"""Alphabets per script at most, so that big blocks (syllabics, math) do not crowd out the others."""
DUPLICATE_IOU = 0.8
"""Two characters of a script whose canonical renderings overlap this much count as one (``o``/``O``)."""

POINT_SIZE = 64
"""Rendering size in pixels per em; glyphs smaller than a fifth of it (dots, accents) are skipped."""
CANVAS, BOX, SIZE = 56, 40, 28
"""Glyphs are fitted into a ``BOX`` square centred on a ``CANVAS`` square, jittered there and halved to ``SIZE``."""
STROKES = 3
"""Stroke widths: thin (eroded by a 3x3 minimum), normal, thick (dilated by a 3x3 maximum)."""


class GlyphAlphabets(AlphabetFamily):
    """Omniglot-shaped alphabets drawn from the fonts shipped with matplotlib: an honest stand-in, not Omniglot.

    Unicode scripts (Latin, Greek, Cyrillic, Armenian, Hebrew, Arabic, Braille, arrows, box drawing, ...) are
    cut into alphabets of 20 to 40 characters that at least four fonts have a glyph for. Each character has 20
    "drawers": a font, a stroke width and a small random rotation, shear, scale and shift, rendered as a
    ``28x28`` grey image with bright strokes on black. Real handwriting varies far more than fonts do, so
    results on this family say whether a method runs and learns, not how it does on Omniglot.

    The set is built on first use (about 10 to 20 seconds) and cached in ``root/glyphs-v2-seed{seed}.pt``.

    Args:
        root: Cache folder. Default: ``$LIGHTNING_META_CACHE`` or ``~/.cache/lightning_meta``.
        **kwargs: the split and task arguments of :class:`~lightning_meta.families.alphabets.AlphabetFamily`
            (``seed`` also seeds the drawers here).
    """

    def __init__(self, root: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        default = os.environ.get("LIGHTNING_META_CACHE") or Path.home() / ".cache" / "lightning_meta"
        self.root = Path(root if root is not None else default)

    @property
    def path(self) -> Path:
        """The cache file."""
        return self.root / f"glyphs-v{VERSION}-seed{self.seed}.pt"

    def load_alphabets(self) -> dict[str, Tensor]:
        """The cached set if the cache is current and readable, else a fresh build (written to the cache whole or
        not at all: :func:`~lightning_meta.atomic_files.write_atomically`)."""
        stamp = _stamp(self.seed)
        if self.path.exists():
            try:
                cached = torch.load(self.path, weights_only=True)
            except (RuntimeError, EOFError, OSError, pickle.UnpicklingError):  # damaged (e.g. by another program)
                warnings.warn(f"the glyph cache {self.path} is damaged; building it again", stacklevel=2)
                cached = {}
            if isinstance(cached, dict) and cached.get("stamp") == stamp:
                return cached["alphabets"]
        alphabets = build_alphabets(self.seed, announce=f"Rendering the glyph alphabets once, into {self.path}")
        write_atomically(self.path, lambda file: torch.save({"stamp": stamp, "alphabets": alphabets}, file))
        return alphabets


def build_alphabets(seed: int, announce: str | None = None) -> dict[str, Tensor]:
    """Render every alphabet: name -> ``uint8 [characters, 20, 28, 28]``; with ``announce``, a progress bar of that
    label counts the alphabets (on standard error: the first run renders for about half a minute)."""
    fonts = _fonts()
    generator = torch.Generator().manual_seed(seed)
    alphabets = {}
    characters = alphabet_characters(fonts)
    for name, codepoints in tqdm(characters, announce, unit="alphabet", disable=announce is None, dynamic_ncols=True):
        canvases, strokes = [], []
        for codepoint in codepoints:
            covering = [font for font, charmap in fonts if codepoint in charmap]
            shuffled = (_render(covering[i], codepoint) for i in torch.randperm(len(covering), generator=generator))
            renders = list(itertools.islice((render for render in shuffled if render is not None), MAX_FONTS))
            combos = [(render, stroke) for render in renders for stroke in range(STROKES)]
            order = torch.randperm(len(combos), generator=generator).repeat(math.ceil(DRAWERS / len(combos)))
            for i in order[:DRAWERS]:
                canvases.append(combos[i][0])
                strokes.append(combos[i][1])
        images = _draw(torch.from_numpy(np.stack(canvases)), torch.tensor(strokes), generator)
        alphabets[name] = images.view(len(codepoints), DRAWERS, SIZE, SIZE)
    return alphabets


def alphabet_characters(fonts: list[tuple[FT2Font, frozenset[int]]] | None = None) -> list[tuple[str, list[int]]]:
    """The alphabets as ``(name, code points)``: the first characters of each script that enough fonts cover, that
    are big enough to draw and unlike the ones before, cut into runs of 20 to 40."""
    fonts = _fonts() if fonts is None else fonts
    alphabets = []
    for script, ranges in SCRIPTS:
        kept: list[int] = []
        shapes = np.zeros((MAX_ALPHABETS * MAX_CHARACTERS, SIZE * SIZE), np.float32)
        areas = np.zeros(len(shapes), np.float32)
        for codepoint in (c for first, last in ranges for c in range(first, last + 1)):
            if len(kept) == len(shapes):
                break
            if unicodedata.category(chr(codepoint))[0] in "MZC":  # marks, spaces, controls, unassigned
                continue
            covering = [font for font, charmap in fonts if codepoint in charmap]
            if len(covering) < MIN_FONTS or (render := _render(covering[0], codepoint)) is None:
                continue
            shape = (render.reshape(SIZE, 2, SIZE, 2).mean((1, 3)) > 0.3).flatten().astype(np.float32)
            overlap = shapes @ shape
            if not (overlap > DUPLICATE_IOU * (areas + shape.sum() - overlap)).any():
                shapes[len(kept)], areas[len(kept)] = shape, shape.sum()
                kept.append(codepoint)
        if len(kept) < MIN_CHARACTERS:
            continue
        parts = math.ceil(len(kept) / MAX_CHARACTERS)
        bounds = [round(i * len(kept) / parts) for i in range(parts + 1)]
        for i in range(parts):
            alphabets.append((script if parts == 1 else f"{script}-{i + 1}", kept[bounds[i] : bounds[i + 1]]))
    return alphabets


def _fonts() -> list[tuple[FT2Font, frozenset[int]]]:
    """The fonts with the code points each can be trusted to draw."""
    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = []
    for name in UNICODE_FONTS + TEX_FONTS:
        font = FT2Font(str(folder / name))
        font.set_size(POINT_SIZE, 72)
        charmap = frozenset(font.get_charmap())
        fonts.append((font, charmap & ASCII_LETTERS if name in TEX_FONTS else charmap))
    return fonts


def _stamp(seed: int) -> dict[str, object]:
    """What a cache must match to be reused: format version, seed and the inputs that shape the glyphs."""
    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    sizes = [(folder / name).stat().st_size for name in UNICODE_FONTS + TEX_FONTS]
    return {"version": VERSION, "seed": seed, "fonts": sizes, "unicode": unicodedata.unidata_version}


def _render(font: FT2Font, codepoint: int) -> np.ndarray | None:
    """The glyph fitted into a ``BOX`` square at the centre of a float ``CANVAS`` square, or None if it is tiny."""
    font.set_text(chr(codepoint), flags=LoadFlags.NO_HINTING)
    font.draw_glyphs_to_bitmap()
    bitmap = np.asarray(font.get_image())
    rows, cols = np.flatnonzero(bitmap.any(1)), np.flatnonzero(bitmap.any(0))
    if len(rows) == 0 or max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 < POINT_SIZE / 5:
        return None
    glyph = bitmap[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = BOX / max(glyph.shape)
    height, width = (max(1, round(side * scale)) for side in glyph.shape)
    resized = Image.fromarray(glyph).resize((width, height), Image.Resampling.LANCZOS)
    canvas = np.zeros((CANVAS, CANVAS), np.float32)
    top, left = (CANVAS - height) // 2, (CANVAS - width) // 2
    canvas[top : top + height, left : left + width] = np.asarray(resized, np.float32) / 255
    return canvas


def _draw(canvases: Tensor, strokes: Tensor, generator: torch.Generator) -> Tensor:
    """Jitter ``[N, CANVAS, CANVAS]`` glyphs, make strokes ``0`` thinner and ``2`` thicker, halve to ``uint8``
    ``[N, SIZE, SIZE]`` and stretch each image to full brightness."""

    def uniform(*shape: int, bound: float) -> Tensor:
        return (torch.rand(*shape, generator=generator) * 2 - 1) * bound

    n = canvases.shape[0]
    angle, shear, scale = uniform(n, bound=math.radians(10)), uniform(n, bound=0.2), 1 + uniform(n, bound=0.1)
    rotation = torch.stack([angle.cos(), -angle.sin(), angle.sin(), angle.cos()], 1).view(n, 2, 2)
    shearing = torch.eye(2).repeat(n, 1, 1)
    shearing[:, 0, 1] = shear
    inverse = torch.linalg.inv(scale.view(n, 1, 1) * rotation @ shearing)  # output -> input coordinates
    shift = uniform(n, 2, 1, bound=0.1)
    grid = F.affine_grid(torch.cat([inverse, -inverse @ shift], 2), [n, 1, CANVAS, CANVAS], align_corners=False)
    images = F.grid_sample(canvases.unsqueeze(1), grid, align_corners=False)
    thin, thick = strokes == 0, strokes == 2
    eroded = _morph(images[thin], torch.minimum)
    kept = eroded.sum((1, 2, 3)) >= 0.5 * images[thin].sum((1, 2, 3))  # hairline fonts stay as they are
    images[thin] = torch.where(kept.view(-1, 1, 1, 1), eroded, images[thin])
    images[thick] = _morph(images[thick], torch.maximum)
    images = F.avg_pool2d(images, 2).squeeze(1)
    images = images / images.amax((1, 2), keepdim=True).clamp(min=1e-3)  # hairlines as bright as bold strokes
    return images.mul(255).round().clamp(0, 255).to(torch.uint8)


def _morph(images: Tensor, op: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Grey erosion (``torch.minimum``) or dilation (``torch.maximum``) of ``[N, 1, H, W]`` by a 3x3 square."""
    padded = F.pad(images, (1, 1, 1, 1))
    rows = op(op(padded[..., :-2, :], padded[..., 1:-1, :]), padded[..., 2:, :])
    return op(op(rows[..., :-2], rows[..., 1:-1]), rows[..., 2:])
