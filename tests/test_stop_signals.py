"""Stopping politely (issue 24): SIGTERM or SIGINT during fit saves the run at the next optimizer step boundary,
says how to resume, exits with 128 + signal; resuming gives exactly what a run never stopped gives."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import TinyClassifier, ToyFamily, flat, identical, make_trainer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from test_ddp import assert_same_init, fresh_environment, run

from lightning_meta import Leap, MetaEvaluation
from lightning_meta.callbacks import CheckpointOnSignal
from lightning_meta.callbacks.signal_checkpoint import INTERRUPTED
from lightning_meta.checkpoint_files import load_checkpoint
from lightning_meta.data import TaskDataModule

RECIPES = Path(__file__).parents[1] / "recipes"
K, M = 3, 2  # inner steps per task, tasks per meta-step: meta-steps end at steps 6, 12, 18, 24


class SignalAt(L.Callback):
    """Send a signal to this very process while optimizer step ``step`` runs, inside the micro-batch ``micro``
    (0: the first) of its accumulation window: the handler runs at once, in the middle of the step."""

    def __init__(self, step: int, signum: int = signal.SIGTERM, micro: int = 0) -> None:
        self.step, self.signum, self.micro, self.seen = step, signum, micro, 0

    def on_before_backward(self, trainer, pl_module, loss):
        if trainer.global_step == self.step:
            if self.seen == self.micro:
                os.kill(os.getpid(), self.signum)
            self.seen += 1


def logged(folder: Path) -> dict[int, dict[str, str]]:
    """Every value in a run's metrics.csv, by step, exactly as written."""
    rows: dict[int, dict[str, str]] = {}
    for row in csv.DictReader(open(folder / "metrics.csv")):
        rows.setdefault(int(row["step"]), {}).update({k: v for k, v in row.items() if v != "" and k != "step"})
    return rows


def fit(folder: Path, callbacks, ckpt_path=None, accumulate: int = 1):
    """Fit 4 meta-steps of Leap on the toy tasks with held-out evaluations after each, logging to ``folder``."""
    torch.manual_seed(0)
    data = TaskDataModule(ToyFamily(num_tasks=12, held_out=3), inner_steps=K, meta_batch_size=M, batch_size=8)
    leap, evaluation = Leap(meta_lr=0.5), MetaEvaluation(every_n_meta_steps=1, inner_steps=3, baseline=True)
    trainer = make_trainer(
        [leap, evaluation, *callbacks], max_steps=K * M * 4, logger=CSVLogger(folder, name="", version=""),
        enable_checkpointing=True, default_root_dir=folder, accumulate_grad_batches=accumulate,
    )  # fmt: skip
    trainer.fit(TinyClassifier(), datamodule=data, ckpt_path=ckpt_path)
    return flat(leap.theta_0), evaluation.history, trainer


@pytest.mark.parametrize(
    ("signum", "accumulate", "micro"),
    [(signal.SIGTERM, 1, 0), (signal.SIGINT, 1, 0), (signal.SIGTERM, 2, 0)],
    ids=["sigterm", "sigint", "sigterm-inside-an-accumulation-window"],
)
def test_a_stop_signal_saves_at_the_step_boundary_and_resuming_equals_never_stopping(
    tmp_path, signum, accumulate, micro
):
    straight, history, _ = fit(tmp_path / "straight", [], accumulate=accumulate)
    stop = CheckpointOnSignal()
    with pytest.raises(SIGTERMException) as stopped:
        fit(tmp_path / "stopped", [SignalAt(8, signum, micro), stop], accumulate=accumulate)  # task 3, mid-meta-batch
    assert stopped.value.code == 128 + signum  # 143 or 130: what shells report for a process the signal stopped
    assert stop.path == tmp_path / "stopped" / "checkpoints" / INTERRUPTED and stop.signum == signum
    assert load_checkpoint(stop.path)["global_step"] == 9  # the end of the step the signal came in, never inside it
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers of before fit are back
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    resumed, resumed_history, trainer = fit(tmp_path / "resumed", [CheckpointOnSignal()], stop.path, accumulate)
    assert trainer.global_step == K * M * 4
    assert torch.equal(resumed, straight)
    assert [step for step, _ in resumed_history] == [step for step, _ in history] == [1, 2, 3, 4]
    for (_, a), (_, b) in zip(resumed_history, history):
        assert identical(vars(a), vars(b))
    expected = logged(tmp_path / "straight")
    stopped_logs, resumed_logs = logged(tmp_path / "stopped"), logged(tmp_path / "resumed")
    assert max(stopped_logs) < 9 <= min(resumed_logs)  # each step logged by one of the two runs
    for step, values in {**stopped_logs, **resumed_logs}.items():
        assert values == expected[step], step
    assert set(stopped_logs) | set(resumed_logs) == set(expected)


def test_a_run_that_is_not_stopped_saves_nothing_and_keeps_the_handlers(tmp_path):
    def marker(signum, frame):  # a handler of the user's own
        raise AssertionError("no signal was sent")

    previous = signal.signal(signal.SIGTERM, marker)
    try:
        _, _, trainer = fit(tmp_path, [CheckpointOnSignal()])
        assert signal.getsignal(signal.SIGTERM) is marker
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not list(tmp_path.rglob(INTERRUPTED)) and trainer.global_step == K * M * 4
    callbacks = [type(c).__name__ for c in trainer.callbacks]
    assert callbacks.index("CheckpointOnSignal") == callbacks.index("ModelCheckpoint") - 1  # after all the others


def test_the_same_signal_twice_stops_at_once(tmp_path):
    class Twice(SignalAt):
        def on_before_backward(self, trainer, pl_module, loss):
            if trainer.global_step == self.step:
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(SystemExit) as stopped:  # Lightning's answer to KeyboardInterrupt: exit status 1
        fit(tmp_path, [Twice(4), CheckpointOnSignal()])
    assert stopped.value.code == 1 and not list(tmp_path.rglob(INTERRUPTED))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.slow
def test_sigterm_to_the_command_saves_names_the_resume_command_and_exits_143(tmp_path, glyph_root):
    """What SLURM, Kubernetes and `timeout` do: the command stops with 143 (not 0), one line names the checkpoint and
    the command that resumes it, and that command continues the run."""
    every_2 = tmp_path / "every2.yaml"
    every_2.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning_meta.Leap\n"
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n      init_args: {every_n_train_steps: 2}\n"
    )
    args = [
        "fit", "--config", str(RECIPES / "omniglot" / "leap.yaml"),
        "--config", str(RECIPES / "omniglot" / "quick.yaml"),
        "--config", str(every_2), f"--data.family.init_args.root={glyph_root}", "--data.family.init_args.num_train=4",
        "--data.inner_steps=2", "--data.meta_batch_size=2", "--model.init_args.channels=8",
        "--data.max_meta_steps=null", "--trainer.max_steps=100000", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]  # fmt: skip
    command = str(Path(sys.executable).with_name("lightning-meta"))
    process = subprocess.Popen([command, *args], stderr=subprocess.PIPE, text=True, env=fresh_environment())
    folder = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    deadline = time.monotonic() + 300
    while not list(folder.glob("epoch=*.ckpt")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # training has started: the first interval checkpoint is there
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 143, err[-3000:]
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    saved = folder / INTERRUPTED
    step = load_checkpoint(saved)["global_step"]
    assert line.startswith(f"lightning-meta: stopped by SIGTERM after step {step}; the run is saved in {saved}; ")
    resume = line.split("; resume: ", 1)[1].split()
    assert resume == ["lightning-meta", *args, f"--ckpt_path={saved}"]
    again = subprocess.run(
        [command, *resume[1:], f"--trainer.max_steps={step + 2}"], capture_output=True, text=True,
        env=fresh_environment(), timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    final = tmp_path / "lightning_logs" / "version_1" / "checkpoints" / "final.ckpt"
    assert load_checkpoint(final)["global_step"] == step + 2


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_under_ddp_a_signal_to_one_process_stops_both_at_the_same_step_saved(tmp_path):
    """Task-parallel Leap on 2 processes (2 tasks of 3 steps each per meta-step: boundaries at steps 6, 12, 18, 24);
    only rank 1 gets SIGTERM, at step 4: both wait for the meta-step boundary (their partial meta-batches are not in a
    checkpoint), save once there, exit with 143; resumed on 2 processes it ends where the run never stopped ends."""
    spec = dict(method="leap", devices=2, meta_steps=4, checkpoint_every=100)
    run(tmp_path, "stopped", returncode=143, signal_at=4, signal_rank=1, **spec)
    saved = tmp_path / "stopped" / "checkpoints" / INTERRUPTED
    assert load_checkpoint(saved)["global_step"] == 6
    resumed = run(tmp_path, "resumed", resume=str(saved), **spec)
    straight = run(tmp_path, "straight", **spec)
    assert resumed["global_step"] == straight["global_step"] == 24
    assert_same_init(resumed, straight)
