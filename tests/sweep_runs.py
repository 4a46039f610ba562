"""Stand-in sweep runs for the tests of sweeps that share a folder or are stopped, and a script that runs a sweep:

    python tests/sweep_runs.py OUT {scores|fits} JOBS

``scores``: cells that wait until two sweeps run on OUT (a barrier), record which process ran them, and score;
``fits``: cells that are real tiny Leap fits, which run until a stop signal unless ``SWEEP_STEPS`` caps them, and
resume from the checkpoint a stop left (for 4 more steps).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).parent))

from helpers import TinyClassifier, ToyFamily, flat  # noqa: E402

from lightning_meta import Leap  # noqa: E402
from lightning_meta.callbacks import CheckpointOnSignal  # noqa: E402
from lightning_meta.checkpoint_files import load_checkpoint  # noqa: E402
from lightning_meta.data import TaskDataModule  # noqa: E402
from lightning_meta.tooling.sweep import Cell, Sweep, grid, interrupted_checkpoint  # noqa: E402

GRIDS = {"leap": grid(**{"Leap.meta_lr": [0.1, 0.3, 1.0]}), "scratch": []}
PLAN = {"leap": ["1", "2"], "scratch": ["any"]}  # 6 tuning cells, then 3 test cells


def score_when_both_run(cell: Cell, folder: Path) -> list[dict[str, object]]:
    """Wait (at most a minute) until both sweeps have started, note this process in ``folder/ran``, score."""
    out = folder.parents[1]
    deadline = time.monotonic() + 60
    while len(list(out.glob("ready-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "ran", "a") as ran:
        ran.write(f"{os.getpid()}\n")
    time.sleep(0.2)
    return [{"auc": abs(dict(cell.setting).get("Leap.meta_lr", 0.5) - 0.3), "pid": os.getpid()}]


class Started(L.Callback):
    """Write ``started`` into the cell's folder when training starts (and the stop signals are recorded)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step == 1:
            (self.folder / "started").write_text(str(os.getpid()))


def fit_until_stopped(cell: Cell, folder: Path, extra: tuple[L.Callback, ...] = ()) -> list[dict[str, object]]:
    """A tiny Leap fit of ``SWEEP_STEPS`` steps (default: until stopped); resumed from a stopped run's checkpoint,
    4 steps more than it holds."""
    torch.manual_seed(cell.run_seed)
    folder.mkdir(parents=True, exist_ok=True)
    resume = interrupted_checkpoint(folder)
    resumed_from = -1 if resume is None else load_checkpoint(resume)["global_step"]
    steps = resumed_from + 4 if resume is not None else int(os.environ.get("SWEEP_STEPS", 10**9))
    leap = Leap(meta_lr=dict(cell.setting).get("Leap.meta_lr", 0.1))
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, logger=False,
        callbacks=[leap, CheckpointOnSignal(), Started(folder), *extra], enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=folder,
    )  # fmt: skip
    data = TaskDataModule(ToyFamily(num_tasks=8, held_out=2), inner_steps=2, meta_batch_size=2, batch_size=8)
    trainer.fit(TinyClassifier(), datamodule=data, ckpt_path=resume)
    return [{"auc": float(flat(leap.theta_0).norm()), "pid": os.getpid(), "resumed_from": resumed_from}]


def main(out: Path, kind: str, jobs: int) -> None:
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"ready-{os.getpid()}").touch()
    if kind == "scores":
        sweep = Sweep(out, score_when_both_run, GRIDS, ["auc", "pid"], score="auc")
    else:
        sweep = Sweep(out, fit_until_stopped, GRIDS, ["auc", "pid", "resumed_from"], score="auc")
    sweep.run(PLAN, seeds=[0], jobs=jobs)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
