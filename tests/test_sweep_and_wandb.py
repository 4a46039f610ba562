"""The sweep scripts end to end (tuning on validation tasks, test runs, resumable after a kill) and W&B, offline."""

import csv
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
TINY = ["--data.inner_steps=2", "--data.meta_batch_size=2", "--data.max_meta_steps=1", "--model.init_args.channels=8"]


def sweep_command(out, glyph_root, *options):
    return [sys.executable, str(ROOT / "recipes" / "omniglot" / "sweep.py"), "--quick", "--methods", "scratch", "leap",
            "--alphabets", "1", "2", "--seeds", "0", "--out", str(out), *options, "--",
            f"--data.family.init_args.root={glyph_root}", *TINY]


def rows_of(path):
    return list(csv.DictReader(open(path))) if path.exists() else []


def test_sweep_tunes_on_validation_tests_the_choice_and_resumes_after_a_kill(tmp_path, glyph_root):
    results = tmp_path / "results.csv"
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(sweep_command(tmp_path, glyph_root), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 300
        while len(rows_of(results)) < 2 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        first.kill()  # SIGKILL, mid-way through the tuning stage
        first.wait()
    before = rows_of(results)
    assert 2 <= len(before) < 9, (tmp_path / "first.log").read_text()[-3000:]
    second = subprocess.run(sweep_command(tmp_path, glyph_root, "--jobs", "2"), capture_output=True, text=True,
                            cwd=ROOT)
    assert second.returncode == 0, second.stderr[-3000:]
    rows = rows_of(results)
    keys = [(r["stage"], r["method"], r["group"], r["seed"], r["setting"]) for r in rows]
    assert len(keys) == len(set(keys)) == 6 + 2 + 1  # 3 settings x 2 alphabet counts, 2 tests, no pre-training once
    assert rows[: len(before)] == before  # the rows of the killed run are kept, and those cells did not run again
    started = re.findall(r"^\[\d+/\d+\] (\w+) (\w+) alphabets=(\w+) seed=(\d+) (\S+):", second.stdout, re.M)
    assert len(started) == 9 - len(before)
    assert not set(started) & {k[:5] for k in keys[: len(before)]}
    tuning = [r for r in rows if r["stage"] == "tune"]
    assert {r["setting"] for r in tuning} == {"Leap.meta_lr=0.1", "Leap.meta_lr=0.3", "Leap.meta_lr=1"}
    assert all(r["grid"] == "Leap.meta_lr=0.1 | Leap.meta_lr=0.3 | Leap.meta_lr=1" and r["run_seed"] == "0" for r in tuning)
    for group in ("1", "2"):  # the test run uses the setting of the lowest validation AUC, with a fresh seed
        candidates = [r for r in tuning if r["group"] == group]
        best = min(candidates, key=lambda r: float(r["train_error_auc"]))  # min keeps the first of equals
        (test,) = [r for r in rows if r["stage"] == "test" and r["method"] == "leap" and r["group"] == group]
        assert (test["setting"], test["run_seed"]) == (best["setting"], "1000")
    assert [(r["group"], r["setting"]) for r in rows if r["method"] == "scratch"] == [("any", "-")]
    assert all(float(r["cpu_seconds"]) > 0 and 0 <= float(r["final_train_error"]) <= 1 for r in rows)
    assert "| leap | 2 | 1 | Leap.meta_lr=" in second.stdout and "| scratch | any | 1 | - (1) |" in second.stdout
    assert (tmp_path / "auc_vs_alphabets.png").stat().st_size > 10_000


def test_vision_sweep_tunes_leap_on_the_validation_data_set(tmp_path, glyph_root):
    command = [sys.executable, str(ROOT / "recipes" / "vision" / "sweep.py"), "--quick", "--methods", "leap", "scratch",
               "--seeds", "0", "--out", str(tmp_path), "--", f"--data.family.init_args.glyph_root={glyph_root}", *TINY,
               "--model.init_args.cosine_steps=2"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = rows_of(tmp_path / "results.csv")
    tuning = [r for r in rows if r["stage"] == "tune"]
    assert sorted(r["setting"] for r in tuning) == ["Leap.meta_lr=0.003", "Leap.meta_lr=0.01", "Leap.meta_lr=0.03"]
    assert {r["dataset"] for r in tuning} == {"glyphs/Technical-1"}  # the validation data set
    assert {r["dataset"] for r in rows if r["stage"] == "test"} == {"glyphs/Braille-1", "glyphs/Greek-1", "digits"}
    best = min(tuning, key=lambda r: float(r["train_error_auc"]))["setting"]
    assert {r["setting"] for r in rows if r["stage"] == "test" and r["method"] == "leap"} == {best}
    assert "| average | test error |" in result.stdout and (tmp_path / "held_out_curves.png").exists()


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
