"""Omniglot on a tiny fake copy in torchvision's on-disk layout: pooling, exclusion, split, resize and inversion."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from lightning_meta.families.omniglot import Omniglot

BAND = 5  # character j is a black horizontal band at rows 5j..5j+4, drawer d a black vertical band at columns 5d..5d+4


def drawing(character: int, drawer: int) -> Image.Image:
    """A 105x105 mode "1" image like Omniglot's: black strokes on white."""
    image = Image.new("1", (105, 105), 1)
    pen = ImageDraw.Draw(image)
    pen.rectangle([0, BAND * character, 104, BAND * character + BAND - 1], fill=0)
    pen.rectangle([BAND * drawer, 0, BAND * drawer + BAND - 1, 104], fill=0)
    return image


def write_alphabet(folder: Path, characters: int, first: int) -> None:
    for c in range(characters):
        character = folder / f"character{c + 1:02d}"
        character.mkdir(parents=True)
        for d in range(20):
            drawing(c, d).save(character / f"{first + c:04d}_{d + 1:02d}.png")


@pytest.fixture(scope="session")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six alphabets per set plus one of 19 characters (to be excluded) in the background set."""
    root = tmp_path_factory.mktemp("omniglot")
    count = 0
    for folder in ("images_background", "images_evaluation"):
        for a in range(6):
            characters = 20 + (a % 3)  # 20, 21 or 22 characters
            write_alphabet(root / "omniglot-py" / folder / f"{folder[7:]}_{a}", characters, count)
            count += characters
    write_alphabet(root / "omniglot-py" / "images_background" / "Too_Small", 19, count)
    return root


@pytest.fixture(scope="session")
def family(root: Path) -> Omniglot:
    family = Omniglot(str(root), num_val=3, num_test=4)
    family.prepare_data()
    return family


def test_pools_both_sets_and_drops_small_alphabets(family: Omniglot) -> None:
    names = sorted(family.alphabets())
    assert names == sorted([f"background_{a}" for a in range(6)] + [f"evaluation_{a}" for a in range(6)])
    for name, images in family.alphabets().items():
        assert images.dtype == torch.uint8 and images.shape == (20 + int(name[-1]) % 3, 20, 28, 28)


def test_split_is_disjoint_and_seeded(root: Path, family: Omniglot) -> None:
    splits = {split: [task.name for task in family.tasks(split)] for split in ("train", "val", "test")}
    assert [len(splits[split]) for split in ("train", "val", "test")] == [5, 3, 4]
    assert sorted(sum(splits.values(), [])) == sorted(family.alphabets())
    assert Omniglot(str(root), seed=1, num_val=3, num_test=4).splits() != family.splits()
    assert Omniglot(str(root), num_train=2, num_val=3, num_test=4).splits()["train"] == splits["train"][:2]


def test_resized_inverted_and_split_by_drawer(family: Omniglot) -> None:
    task = next(task for task in family.tasks("train") if len(family.alphabets()[task.name]) == 20)
    assert task.num_classes == 20 and len(task.train) == 300 and len(task.test) == 100
    for data, drawers in ((task.train, range(15)), (task.test, range(15, 20))):
        assert torch.bincount(data.labels).tolist() == [len(drawers)] * 20
        for image, label, drawer in zip(data.images, data.labels, list(drawers) * 20):
            image = image[0].float()
            assert image.shape == (28, 28)
            # with all 20 characters kept, label j is character j: its band is bright, the far background dark
            row, column = (BAND * int(label) + 2) * 28 / 105, (BAND * drawer + 2) * 28 / 105
            assert abs(image.mean(1).argmax().item() - row) <= 1
            assert abs(image.mean(0).argmax().item() - column) <= 1
            assert image.max() > 200 and image.median() < 30


def test_ways_picks_characters_from_the_seed(root: Path) -> None:
    images = Omniglot(str(root), ways=5, num_val=3, num_test=4).tasks("val")[0].train.images
    assert images.shape == (5 * 15, 1, 28, 28)
    rows = {round(image[0].float().mean(1).argmax().item() * 105 / 28 / BAND) for image in images}
    assert len(rows) == 5


def test_missing_data_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="download=True") as error:
        Omniglot(str(tmp_path)).tasks("train")
    assert "omniglot-py" in str(error.value) and "images_evaluation" in str(error.value)
    write_alphabet(tmp_path / "omniglot-py" / "images_background" / "Only", 20, 0)
    with pytest.raises(FileNotFoundError, match="images_evaluation"):
        Omniglot(str(tmp_path)).prepare_data()


def test_bad_arguments(root: Path) -> None:
    with pytest.raises(ValueError, match="ways"):
        Omniglot(str(root), ways=21)
    with pytest.raises(ValueError, match="num_train"):
        Omniglot(str(root), num_train=6, num_val=3, num_test=4).tasks("train")
    with pytest.raises(ValueError, match="no training alphabet"):
        Omniglot(str(root)).tasks("train")  # 10 test + 5 val of 12 alphabets
