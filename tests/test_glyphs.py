"""GlyphAlphabets: size of the set, image format, drawers, splits, determinism and the on-disk cache."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import BinaryIO

import matplotlib
import pytest
import torch
from matplotlib.ft2font import FT2Font

from lightning_meta.families import glyphs
from lightning_meta.families.glyphs import GlyphAlphabets

SMALL_SCRIPTS = tuple(script for script in glyphs.SCRIPTS if script[0] in ("Latin", "Armenian", "Hebrew"))


@pytest.fixture(scope="session")
def root(glyph_root: str) -> Path:
    return Path(glyph_root)


@pytest.fixture(scope="session")
def family(root: Path) -> GlyphAlphabets:
    family = GlyphAlphabets(root=str(root))
    family.prepare_data()
    return family


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only three scripts (six alphabets), for tests that build several times."""
    monkeypatch.setattr(glyphs, "SCRIPTS", SMALL_SCRIPTS)


def test_at_least_50_alphabets_of_20_characters_with_20_drawers(family: GlyphAlphabets) -> None:
    alphabets = family.alphabets()
    assert len(alphabets) >= 50
    for images in alphabets.values():
        assert images.dtype == torch.uint8
        assert images.shape[0] >= 20 and images.shape[1:] == (20, 28, 28)


def test_characters_are_real_glyphs_that_several_fonts_draw() -> None:
    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    charmaps = [set(FT2Font(str(folder / name)).get_charmap()) for name in glyphs.UNICODE_FONTS]
    codepoints = [c for _, characters in glyphs.alphabet_characters() for c in characters]
    assert len(codepoints) == len(set(codepoints))
    for codepoint in codepoints:
        assert unicodedata.category(chr(codepoint))[0] not in "MZC", hex(codepoint)
        assert sum(codepoint in charmap for charmap in charmaps) >= 4, hex(codepoint)
    assert ord("A") in codepoints and ord("\u05d0") in codepoints  # Latin A, Hebrew alef


def test_images_are_bright_strokes_on_black_and_differ_across_drawers(family: GlyphAlphabets) -> None:
    for images in family.alphabets().values():
        flat = images.flatten(2)
        assert (flat.amax(2) == 255).all()  # every image has a full-intensity stroke
        ink = (flat > 127).float().mean(2)
        assert (ink > 0.005).all() and (ink < 0.9).all() and ink.mean() < 0.4
        assert (images[:, :, 0, :].float().mean() < 10) and (images[:, :, :, 0].float().mean() < 10)  # dark border
        for character in images:
            assert len(torch.unique(character.flatten(1), dim=0)) == 20
        means = images.float().mean(1).flatten(1)
        assert len(torch.unique(means, dim=0)) == images.shape[0]


def test_tasks_split_alphabets_and_drawers(family: GlyphAlphabets) -> None:
    tasks = {split: family.tasks(split) for split in ("train", "val", "test")}
    total = len(family.alphabets())
    assert [len(tasks[split]) for split in ("train", "val", "test")] == [total - 15, 5, 10]
    names = [task.name for split_tasks in tasks.values() for task in split_tasks]
    assert sorted(names) == sorted(family.alphabets())
    task = tasks["test"][0]
    assert task.num_classes == 20 and len(task.train) == 300 and len(task.test) == 100
    x, y = task.train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    for data, per_class in ((task.train, 15), (task.test, 5)):
        assert torch.bincount(data.labels).tolist() == [per_class] * 20
    train_images = {tuple(image.flatten().tolist()) for image in task.train.images}
    assert not train_images & {tuple(image.flatten().tolist()) for image in task.test.images}


def test_num_train_ways_and_test_per_class(root: Path, family: GlyphAlphabets) -> None:
    small = GlyphAlphabets(root=str(root), ways=5, test_per_class=2, num_train=3)
    assert [task.name for task in small.tasks("train")] == [task.name for task in family.tasks("train")[:3]]
    assert [task.name for task in small.tasks("test")] == [task.name for task in family.tasks("test")]
    task = small.tasks("val")[0]
    assert task.num_classes == 5 and len(task.train) == 5 * 18 and len(task.test) == 5 * 2
    assert sorted(set(task.train.labels.tolist())) == [0, 1, 2, 3, 4]


def test_cache_is_reused(root: Path, family: GlyphAlphabets, monkeypatch: pytest.MonkeyPatch) -> None:
    assert family.path.parent == root and family.path.exists()
    assert [path.name for path in root.iterdir()] == [family.path.name]  # no temporary file left behind

    def fail(seed: int) -> None:
        raise AssertionError("rebuilt instead of loading the cache")

    monkeypatch.setattr(glyphs, "build_alphabets", fail)
    again = GlyphAlphabets(root=str(root))
    assert all(torch.equal(again.alphabets()[name], images) for name, images in family.alphabets().items())


def test_default_root_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LIGHTNING_META_CACHE", str(tmp_path))
    assert GlyphAlphabets(seed=3).path == tmp_path / "glyphs-v2-seed3.pt"


def test_same_seed_same_bytes_other_seed_other_split(small: None, tmp_path: Path, capsys) -> None:
    first = GlyphAlphabets(root=str(tmp_path / "a"), num_val=2, num_test=3)
    second = GlyphAlphabets(root=str(tmp_path / "b"), num_val=2, num_test=3)
    other = GlyphAlphabets(root=str(tmp_path / "c"), seed=1, num_val=2, num_test=3)
    assert len(first.alphabets()) == 6
    rendering = capsys.readouterr().err  # the first build announces itself with a bar that counts the alphabets
    assert f"Rendering the glyph alphabets once, into {first.path}" in rendering and "6/6" in rendering
    assert first.alphabets().keys() == second.alphabets().keys() == other.alphabets().keys()
    assert all(torch.equal(first.alphabets()[name], second.alphabets()[name]) for name in first.alphabets())
    assert first.path.read_bytes() == second.path.read_bytes()
    assert not all(torch.equal(first.alphabets()[name], other.alphabets()[name]) for name in first.alphabets())
    assert first.splits() == second.splits() != other.splits()


def fake_build(seed: int, announce: str | None = None) -> dict[str, torch.Tensor]:
    return {f"Fake-{i}": torch.full((20, 20, 28, 28), seed, dtype=torch.uint8) for i in range(3)}


def test_stale_cache_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(glyphs, "build_alphabets", fake_build)
    family = GlyphAlphabets(root=str(tmp_path), num_val=1, num_test=1)
    stale = {"stamp": {"version": 0, "seed": 0}, "alphabets": {"Stale": torch.zeros(20, 20, 28, 28, dtype=torch.uint8)}}
    torch.save(stale, family.path)
    assert sorted(family.alphabets()) == ["Fake-0", "Fake-1", "Fake-2"]
    assert sorted(torch.load(family.path, weights_only=True)["alphabets"]) == ["Fake-0", "Fake-1", "Fake-2"]


def test_interrupted_write_leaves_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(obj: object, file: BinaryIO) -> None:
        file.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(glyphs, "build_alphabets", fake_build)
    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        GlyphAlphabets(root=str(tmp_path), num_val=1, num_test=1).prepare_data()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ways": 21}, "ways"),
        ({"ways": 0}, "ways"),
        ({"test_per_class": 20}, "test_per_class"),
        ({"test_per_class": 0}, "test_per_class"),
        ({"num_train": 0}, "num_train"),
        ({"num_val": -1}, "num_val"),
    ],
)
def test_bad_arguments(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GlyphAlphabets(root="unused", **kwargs)


def test_counts_beyond_the_alphabets(root: Path, family: GlyphAlphabets) -> None:
    with pytest.raises(ValueError, match="num_train"):
        GlyphAlphabets(root=str(root), num_train=len(family.alphabets())).tasks("train")
    with pytest.raises(ValueError, match="no training alphabet"):
        GlyphAlphabets(root=str(root), num_test=len(family.alphabets())).tasks("train")
    with pytest.raises(ValueError, match="split"):
        family.tasks("validation")  # type: ignore[arg-type]
