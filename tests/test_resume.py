"""A run killed with SIGKILL in the middle of a meta-batch and resumed from its last checkpoint logs exactly what
the uninterrupted run logs, and ends with the same theta_0; the final theta_0 is on disk whatever the checkpoint
interval."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from helpers import TinyClassifier, ToyFamily, flat, identical, make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from test_ddp import run

from lightning_meta import Leap
from lightning_meta.callbacks.meta_init import FINAL_CHECKPOINT
from lightning_meta.data import TaskDataModule


def logged_evaluations(folder: Path) -> dict[int, dict[str, str]]:
    """The ``meta_eval/*`` values in a run's metrics.csv, by step, exactly as written."""
    rows: dict[int, dict[str, str]] = {}
    path = folder / "logs" / "metrics.csv"
    if not path.exists():  # killed before the logger wrote its file
        return rows
    for row in csv.DictReader(open(path)):
        values = {k: v for k, v in row.items() if k.startswith("meta_eval/") and v != ""}
        if values:
            rows.setdefault(int(row["step"]), {}).update(values)
    return rows


@pytest.mark.parametrize("every", [0, 1], ids=["evaluate-at-end", "evaluate-every-meta-step"])
def test_kill_9_mid_meta_batch_then_resume_logs_what_the_uninterrupted_run_logs(tmp_path, every):
    # 3 steps a task, 2 tasks a meta-step: meta-steps end at steps 6, 12, 18, 24. The checkpoint at step 9 is in the
    # middle of the second meta-batch (task 3 half trained); the process dies at step 11.
    spec = dict(method="leap", devices=1, inner_steps=3, meta_batch_size=2, meta_steps=4, evaluate=True,
                evaluate_every=every, baseline=True, csv=True)  # fmt: skip
    straight = run(tmp_path, "straight", **spec)
    run(tmp_path, "killed", returncode=-9, checkpoint_every=9, kill_at=11, **spec)
    (checkpoint,) = (tmp_path / "killed" / "checkpoints").glob("*step=9.ckpt")
    resumed = run(tmp_path, "resumed", resume=str(checkpoint), **spec)

    assert torch.equal(resumed["init"], straight["init"])
    assert [step for step, _ in resumed["history"]] == [step for step, _ in straight["history"]] == [
        *([1] if every else []), *([2, 3, 4] if every else [4])
    ]
    for (_, a), (_, b) in zip(resumed["history"], straight["history"]):
        assert identical(vars(a), vars(b))
    assert identical(vars(resumed["initial"]), vars(straight["initial"]))

    logged, resumed_logs = logged_evaluations(tmp_path / "straight"), logged_evaluations(tmp_path / "resumed")
    assert sorted(logged) == ([6, 12, 18, 24] if every else [24])
    assert sorted(resumed_logs) == [step for step in logged if step > 9]  # nothing evaluated twice
    for step, values in resumed_logs.items():
        assert values == logged[step]  # the baseline included, when it is logged after the resume
    for step, values in logged_evaluations(tmp_path / "killed").items():
        assert values == logged[step]


def test_final_theta_0_is_on_disk_whatever_the_checkpoint_interval(tmp_path):
    torch.manual_seed(0)
    model = TinyClassifier()
    leap = Leap()
    periodic = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=7, save_top_k=-1, save_last=True)
    data = TaskDataModule(ToyFamily(), inner_steps=4, meta_batch_size=2, batch_size=8)
    trainer = make_trainer([leap, periodic], max_steps=20, enable_checkpointing=True)  # 20 is no multiple of 7
    trainer.fit(model, datamodule=data)
    at_end = flat(model.parameters())
    torch.testing.assert_close(at_end, flat(leap.theta_0))
    restored = TinyClassifier.load_from_checkpoint(tmp_path / FINAL_CHECKPOINT)
    assert torch.equal(flat(restored.parameters()), at_end)
    last = TinyClassifier.load_from_checkpoint(tmp_path / "last.ckpt")  # ModelCheckpoint's own: step 14
    assert not torch.equal(flat(last.parameters()), at_end)
    assert torch.load(tmp_path / FINAL_CHECKPOINT, weights_only=True)["global_step"] == 20


def test_without_checkpointing_no_file_is_written(tmp_path):
    data = TaskDataModule(ToyFamily(), inner_steps=2, batch_size=8, tasks_per_epoch=2)
    make_trainer([Leap()], max_steps=4, default_root_dir=tmp_path).fit(TinyClassifier(), datamodule=data)
    assert not list(tmp_path.rglob("*.ckpt"))
