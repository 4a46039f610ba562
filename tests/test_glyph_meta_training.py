"""End to end on the embedded glyph alphabets: meta-training helps on held-out alphabets, and the CLI recipe runs."""

import csv
from pathlib import Path

import torch
from helpers import make_trainer

from lightning_meta import Leap, MetaEvaluation
from lightning_meta.cli import main
from lightning_meta.recipes import ConvClassifier
from lightning_meta.tasks import GlyphAlphabets, TaskDataModule

RECIPES = Path(__file__).parents[1] / "recipes" / "omniglot"


def test_short_leap_meta_training_speeds_up_held_out_alphabets(glyph_root):
    torch.manual_seed(0)
    data = TaskDataModule(GlyphAlphabets(root=glyph_root), inner_steps=10, batch_size=20, tasks_per_epoch=5)
    evaluation = MetaEvaluation(split="test", max_tasks=5)
    leap = Leap(meta_batch_size=5, meta_lr=0.1)
    make_trainer([leap, evaluation], max_steps=10 * 5 * 8).fit(ConvClassifier(channels=32), datamodule=data)
    assert leap.meta_steps == 8
    initial, learned = evaluation.initial, evaluation.history[-1][1]
    # mean over the 5 held-out alphabets of the training loss after the last inner step, and of the whole curve
    assert learned.loss[:, -1].mean() < initial.loss[:, -1].mean() - 0.1
    assert learned.loss.mean() < initial.loss.mean()


def test_quick_recipe_runs_from_the_command_line(glyph_root, tmp_path):
    main([
        "fit", "--config", str(RECIPES / "quick.yaml"),
        f"--data.family.init_args.root={glyph_root}",
        "--data.inner_steps=2", "--trainer.max_steps=20", "--data.tasks_per_epoch=5",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--model.init_args.channels=8", "--trainer.enable_progress_bar=false",
    ])
    run = tmp_path / "lightning_logs" / "version_0"
    assert (run / "meta_evaluation_test.png").stat().st_size > 10_000
    header = next(csv.reader(open(run / "metrics.csv")))
    assert "meta_eval/test/meta_init/train_error_auc" in header and "leap/path_length" in header


def test_paper_recipe_parses():
    cli = main(["--config", str(RECIPES / "leap.yaml")], run=False)
    leap = next(c for c in cli.trainer.callbacks if isinstance(c, Leap))
    assert (leap.meta_batch_size, leap.meta_lr, leap.p, cli.datamodule.inner_steps) == (20, 0.1, 1, 100)
    assert isinstance(cli.model, ConvClassifier) and cli.model.hparams.channels == 64
