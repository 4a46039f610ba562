"""VisionDatasets on tiny files written in the on-disk formats torchvision reads: MNIST idx files, ImageFolder trees."""

from __future__ import annotations

import pickle
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from lightning_meta.data import TaskDataModule
from lightning_meta.families import VisionDatasets

MNIST_LIKE = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}


def mnist_images(count: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Image i: left half grey level 7 * (i + offset) % 256, right half its complement; label (i + offset) % 10."""
    values = (7 * (np.arange(count) + offset)) % 256
    images = np.empty((count, 28, 28), np.uint8)
    images[:, :, :14] = values[:, None, None]
    images[:, :, 14:] = 255 - values[:, None, None]
    return images, (np.arange(count) + offset) % 10


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """The idx format of LeCun's MNIST files: big-endian magic number and sizes, then the raw bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">4i", 2051, *images.shape) + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">2i", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("torchvision")
    for folder in MNIST_LIKE.values():
        write_idx(root / folder / "raw", "train", *mnist_images(30, 0))
        write_idx(root / folder / "raw", "t10k", *mnist_images(12, 100))
    return root


@pytest.mark.parametrize("name", list(MNIST_LIKE))
def test_mnist_style_idx_files_read_back_exactly(mnist_root: Path, name: str) -> None:
    family = VisionDatasets(train=[name], val=[], test=[], root=str(mnist_root))
    task = family.tasks("train")[0]
    for data, (images, labels) in ((task.train, mnist_images(30, 0)), (task.test, mnist_images(12, 100))):
        assert data.images.shape == (len(labels), 1, 28, 28) and data.images.dtype == torch.uint8
        assert torch.equal(data.images[:, 0], torch.from_numpy(images))
        assert data.labels.tolist() == labels.tolist()
    assert task.num_classes == 10 and task.name == name


def test_resized_and_repeated_to_three_channels(mnist_root: Path) -> None:
    task = VisionDatasets(train=["mnist"], val=[], test=[], root=str(mnist_root), size=14, channels=3).task("mnist")
    images, _ = mnist_images(30, 0)
    assert task.train.images.shape == (30, 3, 14, 14)
    left, right = task.train.images[..., :5].int(), task.train.images[..., 9:].int()  # away from the edge between halves
    expected = torch.from_numpy(images[:, 0, 0]).int().view(30, 1, 1, 1)
    assert (left - expected).abs().max() <= 1 and (right - (255 - expected)).abs().max() <= 1


def file_names_only(monkeypatch: pytest.MonkeyPatch, *modules: object) -> None:
    """torchvision checks the MD5 of the real CIFAR and SVHN files: accept the tiny fakes by their names."""
    for module in modules:
        monkeypatch.setattr(module, "check_integrity", lambda path, md5=None: Path(path).is_file())


def test_cifar_pickled_batches_read_back_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CIFAR-10's python format: pickled dicts with rows of 3072 bytes (red plane, green plane, blue plane)."""
    file_names_only(monkeypatch, torchvision.datasets.cifar)
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    images = {name: rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8) for name in names}
    labels = {name: [(i * 3 + j) % 10 for j in range(3)] for i, name in enumerate(images)}
    for name, batch in images.items():
        with open(folder / name, "wb") as file:
            pickle.dump({"data": batch.reshape(3, 3072), "labels": labels[name]}, file)
    with open(folder / "batches.meta", "wb") as file:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, file)
    task = VisionDatasets(train=["cifar10"], val=[], test=[], root=str(tmp_path), size=32, channels=3).task("cifar10")
    train_names = [f"data_batch_{i}" for i in range(1, 6)]
    assert torch.equal(task.train.images, torch.from_numpy(np.concatenate([images[n] for n in train_names])))
    assert task.train.labels.tolist() == [label for n in train_names for label in labels[n]]
    assert torch.equal(task.test.images, torch.from_numpy(images["test_batch"]))


def test_svhn_mat_files_read_back_with_label_10_as_0_in_grey(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SVHN's format: MATLAB files with X [32, 32, 3, N] and y [N, 1] in 1..10, where 10 is the digit 0."""
    scipy_io = pytest.importorskip("scipy.io")
    file_names_only(monkeypatch, torchvision.datasets.svhn)
    rng = np.random.default_rng(1)
    pictures = {}
    for split, count in (("train", 4), ("test", 2)):
        pictures[split] = rng.integers(0, 256, (32, 32, 3, count), dtype=np.uint8)
        scipy_io.savemat(tmp_path / f"{split}_32x32.mat", {"X": pictures[split], "y": np.arange(7, 7 + count).reshape(-1, 1)})
    task = VisionDatasets(train=["svhn"], val=[], test=[], root=str(tmp_path), size=32).task("svhn")
    assert task.train.labels.tolist() == [7, 8, 9, 0] and task.test.labels.tolist() == [7, 8]
    rgb = torch.from_numpy(pictures["train"]).permute(3, 2, 0, 1).int()  # [N, 3, H, W]
    grey = (rgb[:, 0] * 299 + rgb[:, 1] * 587 + rgb[:, 2] * 114) / 1000  # ITU-R 601-2 luma
    assert (task.train.images[:, 0].int() - grey).abs().max() <= 1


def test_stl10_binary_files_read_back_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """STL-10's binary format: uint8 images [N, 3, 96, 96] stored column-major, labels 1..10 as bytes."""
    file_names_only(monkeypatch, torchvision.datasets.stl10)
    rng = np.random.default_rng(2)
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    images = {split: rng.integers(0, 256, (count, 3, 96, 96), dtype=np.uint8) for split, count in (("train", 3), ("test", 2))}
    for split, pictures in images.items():
        (folder / f"{split}_X.bin").write_bytes(np.transpose(pictures, (0, 1, 3, 2)).tobytes())
        (folder / f"{split}_y.bin").write_bytes(np.arange(1, len(pictures) + 1, dtype=np.uint8).tobytes())
    (folder / "unlabeled_X.bin").write_bytes(b"")
    (folder / "class_names.txt").write_text("\n".join(f"class{i}" for i in range(10)))
    task = VisionDatasets(train=["stl10"], val=[], test=[], root=str(tmp_path), size=96, channels=3).task("stl10")
    assert torch.equal(task.train.images, torch.from_numpy(images["train"])) and task.train.labels.tolist() == [0, 1, 2]
    assert torch.equal(task.test.images, torch.from_numpy(images["test"])) and task.test.labels.tolist() == [0, 1]


def test_gtsrb_folders_and_test_csv_read_back(tmp_path: Path) -> None:
    """GTSRB's layout: Training/<5-digit class>/<image>.ppm; Final_Test/Images/<image>.ppm with labels in a CSV."""
    base = tmp_path / "gtsrb"
    colours = [(200, 30, 30), (20, 180, 60), (40, 40, 220)]
    for label, colour in enumerate(colours):
        (base / "GTSRB" / "Training" / f"{label:05d}").mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (30 + 7 * i, 33), colour).save(base / "GTSRB" / "Training" / f"{label:05d}" / f"{i:05d}.ppm")
    (base / "GTSRB" / "Final_Test" / "Images").mkdir(parents=True)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i, label in enumerate([2, 0]):
        Image.new("RGB", (40, 41), colours[label]).save(base / "GTSRB" / "Final_Test" / "Images" / f"{i:05d}.ppm")
        rows.append(f"{i:05d}.ppm;40;41;5;5;35;36;{label}")
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    task = VisionDatasets(train=["gtsrb"], val=[], test=[], root=str(tmp_path), size=16, channels=3).task("gtsrb")
    assert task.train.labels.tolist() == [0, 0, 1, 1, 2, 2] and task.test.labels.tolist() == [2, 0]
    for data in (task.train, task.test):
        for image, label in zip(data.images, data.labels):
            assert image.shape == (3, 16, 16) and image[:, 8, 8].tolist() == list(colours[int(label)])


def write_image_folder(root: Path, counts: dict[str, int]) -> dict[str, tuple[int, int, int]]:
    """One solid RGB colour per class; returns the colours."""
    colours = {}
    for index, (name, count) in enumerate(sorted(counts.items())):
        colour = (40 * index + 10, 255 - 30 * index, 17 * index)
        colours[name] = colour
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (20 + i, 16), colour).save(root / name / f"{i}.png")  # sizes differ: all get resized
    return colours


def test_image_folder_holds_out_a_seeded_share_of_each_class_in_grey(tmp_path: Path) -> None:
    counts = {"cat": 10, "dog": 5, "emu": 7}
    colours = write_image_folder(tmp_path / "animals", counts)
    family = VisionDatasets(train=["zoo"], val=[], test=[], image_folders={"zoo": str(tmp_path / "animals")}, size=8)
    task = family.task("zoo")
    assert task.num_classes == 3
    held_out = {0: 2, 1: 1, 2: 1}  # round(0.2 * n), at least one
    assert torch.bincount(task.test.labels).tolist() == [held_out[c] for c in range(3)]
    assert torch.bincount(task.train.labels).tolist() == [counts[n] - held_out[c] for c, n in enumerate(sorted(counts))]
    for data in (task.train, task.test):
        for image, label in zip(data.images, data.labels):
            r, g, b = colours[sorted(counts)[int(label)]]
            grey = (r * 299 + g * 587 + b * 114) // 1000  # ITU-R 601-2 luma, as PIL's "L" conversion documents
            assert image.shape == (1, 8, 8) and (image.int() - grey).abs().max() <= 1


def test_missing_data_names_the_folder_and_the_fix(tmp_path: Path) -> None:
    family = VisionDatasets(train=["mnist"], val=[], test=[], root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"(?s)mnist.*{tmp_path}.*download=True"):
        family.tasks("train")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        VisionDatasets(train=["x"], val=[], test=[], image_folders={"x": str(tmp_path / "nowhere")}).tasks("train")


def test_offline_download_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    family = VisionDatasets(train=["cifar10"], val=[], test=[], root=str(tmp_path), download=True)
    with pytest.raises(FileNotFoundError, match="(?s)cifar10: torchvision could not download.*internet"):
        family.prepare_data()


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown data set 'imagenet'"):
        VisionDatasets(train=["imagenet"])
    with pytest.raises(ValueError, match="listed twice"):
        VisionDatasets(train=["digits"], val=[], test=["digits"])
    with pytest.raises(ValueError, match="need root="):
        VisionDatasets(train=["svhn"], val=[], test=[])
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        VisionDatasets(channels=2)  # type: ignore[arg-type]


def test_digits_are_scikit_learns_images() -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    family = VisionDatasets(train=["digits"], val=[], test=[], size=8, max_train_samples=500)
    task = family.task("digits")
    assert task.num_classes == 10 and len(task.train) == 500
    assert len(VisionDatasets(train=["digits"], val=[], test=[], size=8).task("digits").train) + len(task.test) == 1797
    reference = {tuple(np.round(image * 255 / 16).astype(np.uint8).flatten()): label for image, label in zip(digits.images, digits.target)}
    for image, label in zip(task.test.images, task.test.labels):
        assert reference[tuple(image.flatten().tolist())] == label


def test_glyph_alphabets_are_data_sets_with_all_their_characters(glyph_root: str) -> None:
    from lightning_meta.families import GlyphAlphabets

    alphabets = GlyphAlphabets(root=glyph_root).alphabets()
    family = VisionDatasets(train=["glyphs/Greek-1"], val=[], test=["glyphs/Latin-1"], glyph_root=glyph_root)
    for name in ("Greek-1", "Latin-1"):
        task, drawings = family.task(f"glyphs/{name}"), alphabets[name]
        characters = drawings.shape[0]
        assert task.num_classes == characters and len(task.train) == 15 * characters and len(task.test) == 5 * characters
        assert torch.equal(task.train.images[:, 0], drawings[:, :15].flatten(0, 1))
        assert torch.equal(task.test.labels, torch.arange(characters).repeat_interleave(5))


def test_selectable_from_yaml_by_class_path() -> None:
    from lightning_meta import HeldOutEarlyStopping, MetaEvaluation
    from lightning_meta.cli import main
    from lightning_meta.models import DatasetClassifier

    recipes = Path(__file__).parents[1] / "recipes" / "vision"
    cli = main(["--config", str(recipes / "leap.yaml"), "--config", str(recipes / "quick.yaml"),
                "--trainer.logger=false", "--trainer.default_root_dir=/tmp/lightning-meta-vision-yaml"], run=False)
    assert isinstance(cli.datamodule, TaskDataModule) and isinstance(cli.datamodule.family, VisionDatasets)
    assert cli.datamodule.family.names("test") == ["glyphs/Braille-1", "glyphs/Greek-1", "digits"]
    assert isinstance(cli.model, DatasetClassifier) and cli.model.hparams.cosine_steps == cli.datamodule.inner_steps == 100
    evaluation = next(c for c in cli.trainer.callbacks if isinstance(c, MetaEvaluation))
    assert evaluation.early_stopping == HeldOutEarlyStopping(patience=4, every=25, fraction=0.1)


def test_leap_meta_trains_on_data_sets_and_evaluates_a_held_out_one_with_early_stopping(mnist_root: Path) -> None:
    """The recipe's pieces together on the tiny idx files: two data sets to meta-train on, MNIST held out."""
    from helpers import make_trainer

    from lightning_meta import HeldOutEarlyStopping, Leap, MetaEvaluation
    from lightning_meta.models import DatasetClassifier

    torch.manual_seed(0)
    family = VisionDatasets(train=["fashion_mnist", "kmnist"], val=[], test=["mnist"], root=str(mnist_root))
    data = TaskDataModule(family, inner_steps=3, meta_batch_size=2, batch_size=6)
    leap = Leap(p=2, include=r"^encoder\.", meta_optimizer="Adam", meta_lr=0.01)
    evaluation = MetaEvaluation(baseline=False, inner_steps=8, early_stopping=HeldOutEarlyStopping(patience=1, every=2))
    model = DatasetClassifier(max_classes=10, channels=4, blocks=2, cosine_steps=3)
    make_trainer([leap, evaluation], max_steps=6).fit(model, datamodule=data)
    assert leap.meta_steps == 1 and evaluation.task_names == ["mnist"]
    curves = evaluation.history[-1][1]
    steps = int(curves.steps[0])
    assert steps in (4, 6, 8) and curves.error.shape == (1, 8)  # a stop needs two checks (every 2 steps), or the end
    assert torch.equal(curves.error[0, steps:], curves.error[0, steps - 1].expand(8 - steps))
