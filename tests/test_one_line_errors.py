"""Errors that still ended in tracebacks or named the wrong thing (issue 24): each is one line naming the key, the
file or the row now; errors that are bugs keep their traceback."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from test_faults import command_line, omniglot_quick

from lightning_meta.checkpoint_files import WrongModelCheckpoint, load_checkpoint, readable_checkpoint
from lightning_meta.cli import main
from lightning_meta.cli_errors import run_reporting_errors
from lightning_meta.data import TaskDataModule
from lightning_meta.models import ConvClassifier, DynamicalLanguageModel, MultiHeadClassifier
from lightning_meta.tooling.sweep import ResultsFile, Sweep, grid

RECIPES = Path(__file__).parents[1] / "recipes"


# ----------------------------------------------------------------- errors of torch, while building
def test_a_value_torch_refuses_in_a_module_of_ones_own_is_one_line_naming_the_key(tmp_path, monkeypatch, capsys,
                                                                                  glyph_root):  # fmt: skip
    """helpers.TinyClassifier checks nothing: torch.optim's own error, raised in configure_optimizers, names the
    argument whose value it quotes."""
    monkeypatch.chdir(tmp_path)
    args = omniglot_quick(f"--data.family.init_args.root={glyph_root}", "--model=helpers.TinyClassifier",
                          "--model.lr=-1")  # fmt: skip
    status, err = command_line(capsys, args)
    assert status == 1 and "Traceback" not in err
    assert err.splitlines()[-1] == (
        "lightning-meta: --model.lr=-1.0: ValueError: Invalid learning rate: -1.0 (--debug shows the traceback)"
    )


def test_an_error_of_torch_while_training_is_a_bug_and_keeps_its_traceback(tmp_path, monkeypatch, capsys, glyph_root):
    monkeypatch.chdir(tmp_path)  # TinyClassifier takes 4x4 images: the 28x28 glyphs fail in training_step
    args = omniglot_quick(f"--data.family.init_args.root={glyph_root}", "--model=helpers.TinyClassifier")
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        command_line(capsys, args)


# ----------------------------------------------------------------- files that do not read
def omniglot_folder(root: Path) -> Path:
    """A one-alphabet ``omniglot-py`` tree of 20 characters x 20 drawings (the smallest Omniglot reads)."""
    alphabet = root / "omniglot-py" / "images_background" / "Tiny"
    drawing = Image.fromarray(np.full((105, 105), 255, np.uint8))
    for character in range(20):
        folder = alphabet / f"character{character:02d}"
        folder.mkdir(parents=True)
        for index in range(20):
            drawing.save(folder / f"{index:02d}.png")
    (root / "omniglot-py" / "images_evaluation").mkdir()
    return alphabet / "character07" / "13.png"


@pytest.mark.parametrize(("damage", "why"), [(b"", "0 bytes"), (b"not an image", "12 bytes")], ids=["empty", "text"])
def test_an_omniglot_image_that_does_not_read_is_one_line_naming_it(tmp_path, monkeypatch, capsys, damage, why):
    broken = omniglot_folder(tmp_path)
    broken.write_bytes(damage)
    with pytest.raises(ValueError) as error:
        TaskDataModule(family="omniglot", root=str(tmp_path), download=False).setup("fit")
    assert str(error.value).startswith(f"Omniglot: {broken} is not a readable image ({why}; PIL: cannot identify")
    monkeypatch.chdir(tmp_path)
    status, err = command_line(capsys, omniglot_quick("--data.family=omniglot", f"--data.root={tmp_path}",
                                                      "--data.download=false"))  # fmt: skip
    line = err.splitlines()[-1]
    assert status == 1 and "Traceback" not in err and line.startswith("lightning-meta: --data")  # key: the data
    assert f": Omniglot: {broken} is not a readable image ({why}; PIL: cannot identify" in line


def test_a_folder_of_empty_text_files_names_the_folder_not_the_crop(tmp_path, monkeypatch, capsys):
    for name in ("a.txt", "b.txt", "c.txt"):
        (tmp_path / name).touch()
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(RECIPES / "dynamical_lm" / "quick.yaml"),
            "--data.family=lightning_meta.families.TextDocuments", f"--data.family.root={tmp_path}"]  # fmt: skip
    status, err = command_line(capsys, args)
    assert status == 1 and err.splitlines()[-1] == (
        f"lightning-meta: --data.family.root={tmp_path}: TextDocuments: all 3 documents of root={tmp_path} are "
        "shorter than min_bytes=1 (empty files?): nothing to read"
    )


def test_documents_shorter_than_a_crop_name_inner_steps_not_the_crop(tmp_path, monkeypatch, capsys):
    (tmp_path / "short.txt").write_text("a short document")  # its name puts it in the training split
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(RECIPES / "dynamical_lm" / "quick.yaml"),
            "--data.family=lightning_meta.families.TextDocuments", f"--data.family.root={tmp_path}"]  # fmt: skip
    status, err = command_line(capsys, [*args, "--data.short_documents=skip", "--data.inner_steps=16"])
    assert status == 1 and err.splitlines()[-1].startswith(
        "lightning-meta: --data.inner_steps=16: DocumentDataModule: inner_steps=16 and segment=32 read 544 bytes"
    )
    status, err = command_line(capsys, args)  # the recipe reads whole documents: only the segment can be too long
    assert status == 1 and err.splitlines()[-1].startswith(
        "lightning-meta: --data.segment=32: DocumentDataModule: segment=32 with short_documents='whole' reads "
        "documents of 2 segments or more (64 bytes), more than any has (the longest: 16): lower segment"
    )


def test_a_sweep_csv_cell_that_is_no_number_names_the_file_line_and_column(tmp_path, capsys):
    grids = {"leap": grid(**{"Leap.meta_lr": [0.1, 0.3]})}
    sweep = Sweep(tmp_path, lambda cell, folder: [{"auc": 0.5}], grids, ["auc"], score="auc", log=lambda line: None)
    rows = [{"stage": "tune", "method": "leap", "group": "1", "seed": 0, "run_seed": 0, "setting": setting,
             "grid": "-", "auc": auc, "wall_seconds": 1, "cpu_seconds": 1}
            for setting, auc in (("Leap.meta_lr=0.1", 0.4), ("Leap.meta_lr=0.3", "n/a"))]  # fmt: skip
    ResultsFile(tmp_path / "results.csv", sweep.results.fields).append(rows)
    status = run_reporting_errors(lambda: sweep.run({"leap": ["1"]}, seeds=[0]), [])
    assert status == 1 and capsys.readouterr().err.strip() == (
        f"lightning-meta: {tmp_path / 'results.csv'}, line 3, column 'auc': 'n/a' is not a number; correct or delete "
        "that row"
    )


# ----------------------------------------------------------------- checkpoints of another model
def lightning_meta_checkpoint(path: Path, model: torch.nn.Module, class_path: str, **hyper_parameters) -> Path:
    """A checkpoint as ``lightning-meta`` writes one: the weights and the model's class and hyper-parameters."""
    torch.save({"state_dict": model.state_dict(), "global_step": 0, "pytorch-lightning_version": L.__version__,
                "hyper_parameters": {
        "_class_path": class_path, "_instantiator": "lightning.pytorch.cli.instantiate_module", **hyper_parameters}},
        path)  # fmt: skip
    return path


def test_load_from_checkpoint_of_another_model_class_is_one_line_naming_both(tmp_path):
    language = lightning_meta_checkpoint(tmp_path / "lm.ckpt", DynamicalLanguageModel(hidden_size=8, num_layers=1),
                                         "lightning_meta.models.DynamicalLanguageModel", hidden_size=8, num_layers=1)
    with pytest.raises(WrongModelCheckpoint) as error:
        ConvClassifier.load_from_checkpoint(language)
    assert str(error.value) == (
        f"{language} is a checkpoint of DynamicalLanguageModel (lightning_meta.models.DynamicalLanguageModel), not "
        "of ConvClassifier: load it with DynamicalLanguageModel.load_from_checkpoint, or pass a checkpoint of a "
        "ConvClassifier"
    )
    with pytest.raises(WrongModelCheckpoint, match="is a checkpoint of DynamicalLanguageModel"):
        readable_checkpoint(language, ConvClassifier)  # the same for a module of one's own
    heads = lightning_meta_checkpoint(tmp_path / "heads.ckpt", MultiHeadClassifier(num_heads=2, channels=8),
                                      "lightning_meta.models.MultiHeadClassifier", num_heads=2, channels=8)
    assert isinstance(MultiHeadClassifier.load_from_checkpoint(heads), MultiHeadClassifier)  # its own class loads
    readable_checkpoint(heads, ConvClassifier)  # a subclass's checkpoint is no other model's


def test_ckpt_path_of_another_recipe_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    language = lightning_meta_checkpoint(tmp_path / "lm.ckpt", DynamicalLanguageModel(hidden_size=8, num_layers=1),
                                         "lightning_meta.models.DynamicalLanguageModel", hidden_size=8, num_layers=1)
    monkeypatch.chdir(tmp_path)
    status, err = command_line(capsys, omniglot_quick(f"--ckpt_path={language}"))
    assert status == 1 and err.splitlines()[-1] == (
        f"lightning-meta: {language} is a checkpoint of DynamicalLanguageModel "
        "(lightning_meta.models.DynamicalLanguageModel), but this run's model is ConvClassifier "
        "(lightning_meta.models.ConvClassifier): resume it with the config that wrote it, or start this run without "
        "--ckpt_path"
    )


def test_a_configured_model_value_wins_over_the_checkpoint_and_one_that_changes_the_weights_is_refused(
    tmp_path, monkeypatch, capsys, glyph_root
):
    monkeypatch.chdir(tmp_path)
    tiny = [f"--data.family.init_args.root={glyph_root}", "--data.family.init_args.num_train=4", "--data.inner_steps=2",
            "--data.meta_batch_size=2", "--model.init_args.channels=8", f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}"]  # fmt: skip
    assert command_line(capsys, omniglot_quick(*tiny, "--trainer.max_steps=4"))[0] == 0
    final = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "final.ckpt"
    assert load_checkpoint(final)["hyper_parameters"]["lr"] == 0.1

    resume = [*tiny, f"--ckpt_path={final}", "--trainer.max_steps=6"]
    cli = main(omniglot_quick(*resume, "--model.init_args.lr=0.05"))  # lower the inner lr and resume, as advised
    assert cli.model.hparams["lr"] == 0.05 and cli.trainer.global_step == 6
    line = f"lightning-meta: --model.init_args.lr=0.05 replaces the checkpoint's lr=0.1 ({final})"
    assert line in capsys.readouterr().err.splitlines()

    status, err = command_line(capsys, omniglot_quick(*resume, "--model.init_args.channels=16"))
    assert status == 1 and err.splitlines()[-1] == (
        f"lightning-meta: {final} does not fit this run's model: encoder.0.0.weight is [8, 1, 3, 3] there and "
        "[16, 1, 3, 3] here (configured --model.init_args.channels=16 (the checkpoint's 8)): resume with the "
        "checkpoint's values, or start without --ckpt_path"
    )
