"""End to end on the embedded glyph alphabets: meta-training helps on held-out alphabets, and the CLI recipe runs."""

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import make_trainer
from torchvision.transforms import v2

from lightning_meta import Leap, MetaEvaluation, MetaInit
from lightning_meta.cli import main
from lightning_meta.data import EpisodeDataModule, TaskDataModule
from lightning_meta.engine import LeapRule, ReptileRule
from lightning_meta.families import GlyphAlphabets, Omniglot
from lightning_meta.models import ConvClassifier, MAMLClassifier, MultiHeadClassifier

RECIPES = Path(__file__).parents[1] / "recipes" / "omniglot"


def test_short_leap_meta_training_speeds_up_held_out_alphabets(glyph_root):
    torch.manual_seed(0)
    family = GlyphAlphabets(root=glyph_root)
    data = TaskDataModule(family, inner_steps=10, meta_batch_size=5, max_meta_steps=8, batch_size=20)
    evaluation = MetaEvaluation(split="test", max_tasks=5)
    leap = Leap(meta_lr=0.1)
    make_trainer([leap, evaluation], max_steps=-1).fit(ConvClassifier(channels=32), datamodule=data)
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
        "--data.inner_steps=2", "--data.meta_batch_size=2", f"--data.max_meta_steps={8 if 'maml' in method else 2}",
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


AUTHORS = {  # the Leap authors' Omniglot code (src/omniglot/main.py defaults, run_multi.py, data.py)
    "meta_steps": 1000, "meta_batch_size": 20, "inner_steps": 100, "batch_size": 20, "ways": 20, "test_alphabets": 10,
    "inner_lr": 0.1, "channels": 64, "blocks": 4, "augmentation": ([0.0, 360.0], (0.2, 0.2), (0.8, 1.2)),
    "meta_lr": {"leap": 0.1, "reptile": 0.1, "fomaml": 0.5, "maml": 0.5}, "maml_inner_steps": 5,
}


@pytest.mark.parametrize("method", ["leap", "reptile", "finetune", "scratch", "fomaml", "maml"])
def test_configs_follow_the_authors_omniglot_protocol(method):
    cli = main(["--config", str(RECIPES / f"{method}.yaml")], run=False)
    data, model, trainer = cli.datamodule, cli.model, cli.trainer
    assert (data.inner_steps, data.meta_batch_size, data.batch_size) == tuple(
        AUTHORS[k] for k in ("inner_steps", "meta_batch_size", "batch_size"))
    assert (data.family.ways, data.family.num_test) == (AUTHORS["ways"], AUTHORS["test_alphabets"])
    augment = data.train_transform()
    assert isinstance(augment, v2.RandomAffine) and augment.degrees == AUTHORS["augmentation"][0]
    assert (augment.translate, augment.scale) == AUTHORS["augmentation"][1:]
    assert (model.hparams.channels, model.hparams.blocks) == (AUTHORS["channels"], AUTHORS["blocks"])
    meta = next((c for c in trainer.callbacks if isinstance(c, MetaInit)), None)
    assert data.max_meta_steps == AUTHORS["meta_steps"] and trainer.max_steps == -1  # the data module stops fit
    if method in ("leap", "reptile", "finetune"):  # one optimizer step is one inner step of one task
        assert data.optimizer_steps(AUTHORS["meta_steps"]) == AUTHORS["meta_steps"] * 20 * 100
        assert model.hparams.lr == AUTHORS["inner_lr"]
    if meta is not None:
        assert (meta.meta_lr, meta.meta_optimizer) == (AUTHORS["meta_lr"][method], "SGD")
        assert isinstance(meta.rule, LeapRule if method == "leap" else ReptileRule)
    if method == "finetune":
        assert isinstance(model, MultiHeadClassifier) and model.hparams.pretrain_lr == AUTHORS["inner_lr"]
    if method == "scratch":
        assert trainer.limit_train_batches == 0 and meta is None
    if method in ("fomaml", "maml"):  # one training step is one meta-step
        assert isinstance(model, MAMLClassifier) and isinstance(data, EpisodeDataModule)
        assert data.optimizer_steps(AUTHORS["meta_steps"]) == AUTHORS["meta_steps"]
        settings = model.maml
        assert (model.hparams.lr, settings.inner_lr) == (AUTHORS["meta_lr"][method], AUTHORS["inner_lr"])
        assert settings.first_order == (method == "fomaml")
        data.trainer = SimpleNamespace(lightning_module=model)  # as the Trainer attaches it in fit
        expected = AUTHORS["maml_inner_steps"] if method == "maml" else AUTHORS["inner_steps"]
        assert data.resolved_support_batches() == expected


def test_real_omniglot_is_one_argument_away():
    cli = main(["--config", str(RECIPES / "finetune.yaml"), "--data.family=omniglot", "--data.root=/nowhere"], run=False)
    assert isinstance(cli.model, MultiHeadClassifier) and isinstance(cli.datamodule.family, Omniglot)
