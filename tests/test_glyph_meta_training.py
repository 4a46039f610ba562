"""End to end on the embedded glyph alphabets: meta-training helps on held-out alphabets, and the CLI recipe runs."""

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import make_trainer

from lightning_meta import Leap, MetaEvaluation, MetaInit
from lightning_meta.cli import main
from lightning_meta.recipes import ConvClassifier, MAMLClassifier, MultiHeadClassifier
from lightning_meta.tasks import EpisodeDataModule, GlyphAlphabets, Omniglot, TaskDataModule

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


@pytest.mark.parametrize("method", ["leap", "reptile", "finetune", "scratch", "fomaml", "maml"])
def test_every_method_config_runs_end_to_end(method, glyph_root, tmp_path):
    cli = main([
        "fit", "--config", str(RECIPES / f"{method}.yaml"), "--config", str(RECIPES / "quick.yaml"),
        f"--data.family.init_args.root={glyph_root}", "--data.family.init_args.num_train=3",
        "--data.inner_steps=2", "--data.meta_batch_size=2", "--trainer.max_steps=8",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--model.init_args.channels=8", "--trainer.enable_progress_bar=false",
        *(["--model.init_args.num_heads=3"] if method == "finetune" else []),
        *(["--model.init_args.inner_steps=2"] if method == "maml" else []),
    ])
    run = tmp_path / "lightning_logs" / "version_0"
    assert (run / "meta_evaluation_test.png").stat().st_size > 10_000
    header = next(csv.reader(open(run / "metrics.csv")))
    assert "meta_eval/test/meta_init/train_error_auc" in header
    assert cli.trainer.global_step == (0 if method == "scratch" else 8)  # for (FO)MAML: 8 meta-steps
    if method in ("leap", "reptile"):
        assert next(c for c in cli.trainer.callbacks if isinstance(c, MetaInit)).meta_steps == 2  # 8 steps = 4 tasks of 2 steps = 2 meta-batches


def test_paper_recipes_parse():
    cli = main(["--config", str(RECIPES / "leap.yaml")], run=False)
    leap = next(c for c in cli.trainer.callbacks if isinstance(c, Leap))
    assert (leap.rule.p, leap.meta_lr, cli.datamodule.inner_steps, cli.datamodule.meta_batch_size) == (1, 0.1, 100, 20)
    assert isinstance(cli.model, ConvClassifier) and cli.model.hparams.channels == 64
    cli = main(["--config", str(RECIPES / "finetune.yaml"), "--data.family=omniglot", "--data.root=/nowhere"], run=False)
    assert isinstance(cli.model, MultiHeadClassifier) and isinstance(cli.datamodule.family, Omniglot)
    for method, steps, support, first_order in (("maml", 5, 5, False), ("fomaml", None, 100, True)):
        cli = main(["--config", str(RECIPES / f"{method}.yaml")], run=False)
        assert isinstance(cli.model, MAMLClassifier) and isinstance(cli.datamodule, EpisodeDataModule)
        settings = cli.model.maml
        assert (settings.inner_steps, settings.first_order, cli.model.hparams.lr) == (steps, first_order, 0.5)
        cli.datamodule.trainer = SimpleNamespace(lightning_module=cli.model)  # as the Trainer attaches it in fit
        assert (cli.datamodule.resolved_support_batches(), cli.datamodule.meta_batch_size) == (support, 20)
