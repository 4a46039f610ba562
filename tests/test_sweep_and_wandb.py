"""The Omniglot sweep script (resumable, one CSV row per cell, a figure) and W&B tracking, offline."""

import csv
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
TINY = ["--data.inner_steps=2", "--data.meta_batch_size=2", "--trainer.max_steps=4", "--model.init_args.channels=8"]


def sweep(out, glyph_root):
    command = [sys.executable, str(ROOT / "recipes" / "omniglot" / "sweep.py"), "--methods", "scratch", "maml", "leap",
               "--alphabets", "1", "2", "--seeds", "0", "--out", str(out), "--",
               f"--data.family.init_args.root={glyph_root}", *TINY]
    return subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT).stdout


def test_sweep_writes_a_row_per_cell_and_resumes(tmp_path, glyph_root):
    first = sweep(tmp_path, glyph_root)
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    cells = [(m, n) for m in ("leap", "maml", "scratch") for n in ("1", "2")]
    assert sorted((r["method"], r["alphabets"]) for r in rows) == cells
    assert all(0.0 <= float(r["train_error_auc"]) <= 1.0 for r in rows)
    assert [r["meta_steps"] for r in rows if r["method"] == "leap"] == ["1", "1"]  # 4 steps = 2 tasks of 2 = 1 meta-step
    assert [r["meta_steps"] for r in rows if r["method"] == "maml"] == ["4", "4"]  # one training step per meta-step
    assert "6 to run" in first and "| leap | 2 | 1 |" in first and "| maml | 1 | 1 |" in first
    assert (tmp_path / "auc_vs_alphabets.png").stat().st_size > 10_000
    second = sweep(tmp_path, glyph_root)  # resumable: every cell is already there
    assert "0 to run" in second
    assert len(list(csv.DictReader(open(tmp_path / "results.csv")))) == 6


def test_wandb_logger_runs_offline_without_a_key(tmp_path, glyph_root):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    environment["HOME"] = str(tmp_path)  # no ~/.netrc and no WANDB_API_KEY: no key anywhere
    command = [
        sys.executable, "-m", "lightning_meta.cli", "fit", "--config", str(ROOT / "recipes" / "omniglot" / "leap.yaml"),
        f"--data.family.init_args.root={glyph_root}", *TINY, f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1",
        "--trainer.logger=WandbLogger", f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.logger.init_args.log_model=true", "--trainer.logger.init_args.project=lightning-meta-test",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "runs offline" in result.stderr + result.stdout
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    assert list((run / "files" / "media" / "images" / "meta_eval").rglob("learning_curves_*.png"))
    # an offline run keeps its records (metrics, config, artifacts) in W&B's binary log until `wandb sync`
    (log,) = run.glob("run-*.wandb")
    records = log.read_bytes()
    assert b"meta_eval/test/meta_init/train_error_auc" in records and b"leap/path_length" in records
    assert b"meta_batch_size" in records  # the full LightningCLI config
    assert b"last.ckpt" in records and b"model-" in records  # theta_0's checkpoint as a model artifact
