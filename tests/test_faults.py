"""Fault injection: each trial of issue 16, run as a demanding user would, and what must happen now.

- inner lr 1e6 (tasks blow up but stay finite): each is dropped with its reason; after 3 such meta-batches the
  run stops naming the inner learning rate; theta_0 untouched.
- every task diverges (NaN): the same stop; from the command line exit status 1, one line, the checkpoints
  intact, no final.ckpt.
- a meta-step that would make theta_0 non-finite, or fling it far away: refused (theta_0 and the meta-optimizer
  as before), the run stops naming meta_lr.
- a Leap meta lr that wrecks theta_0 with nothing ever dropped: MetaEvaluation stops the run (held-out tasks
  train worse from theta_0 than from the weights the run started from).
- ``--data.inner_steps=0`` and the other range checks: one line with key, value and rule; exit status 1;
  ``--debug`` shows the traceback.
- Omniglot offline: one line naming the folder and the files to fetch, within seconds.
- a truncated or foreign ``--ckpt_path``: one line naming the file, no ``weights_only=False`` advice.
- (issue 24) a negative learning rate or meta_lr, zero channels: one line naming the key as the user wrote it.
- a DDP process killed mid-run: its peer exits within a minute.

Kill -9 in the middle of a meta-batch, then resume to the uninterrupted run's theta_0 and logged metrics, is
tests/test_resume.py. The other trials of issue 24 are beside this file: test_stop_signals.py (SIGTERM, SIGINT),
test_concurrent_runs.py (runs and sweeps sharing a folder, a sweep stopped), test_disk_full.py, test_one_line_errors.py
(errors of torch and PIL, damaged images, empty text folders, sweep CSVs, checkpoints of another model) and, for the
runaway guard's cause and resume point, test_runaway.py and the end of this file.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision
from helpers import TinyClassifier, ToyFamily, flat, make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from test_ddp import fresh_environment, run

from lightning_meta import Leap, MetaEvaluation, Reptile
from lightning_meta.callbacks.meta_init import FINAL_CHECKPOINT
from lightning_meta.checkpoint_files import UnreadableCheckpoint, load_checkpoint, readable_checkpoint
from lightning_meta.cli import main
from lightning_meta.cli_errors import DEBUG_ENV, run_reporting_errors
from lightning_meta.data import TaskDataModule
from lightning_meta.engine import MetaTrainingDiverged, RunawayGuard

RECIPES = Path(__file__).parents[1] / "recipes"
K, M = 3, 2  # inner steps per task, tasks per meta-batch


def toy(task_batch: int | None = None) -> TaskDataModule:
    family = ToyFamily(num_tasks=12, held_out=3)
    return TaskDataModule(family, inner_steps=K, meta_batch_size=M, batch_size=8, task_batch=task_batch)


class AlwaysNaN(TinyClassifier):
    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) * float("nan")


def fit_recording_warnings(model, callbacks, task_batch=None, **kwargs):
    """Fit 10 meta-batches of the toy tasks; the warnings it raised and the error it stopped with (``None``)."""
    trainer = make_trainer(callbacks, max_steps=K * M * 10 // (task_batch or 1), **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer.fit(model, datamodule=toy(task_batch))
            error = None
        except MetaTrainingDiverged as stopped:
            error = stopped
    return trainer, [str(w.message) for w in caught], error


# ----------------------------------------------------------------- the guard in training
@pytest.mark.parametrize(
    ("rule", "task_batch"), [(Leap, None), (Reptile, None), (Leap, M)], ids=["leap", "reptile", "leap-tasks-together"]
)
def test_tasks_that_blow_up_while_finite_are_dropped_and_the_run_stops_naming_the_inner_lr(rule, task_batch):
    torch.manual_seed(0)
    model = TinyClassifier(lr=1e6)  # tanh keeps the loss finite: ~1e6 after one step
    start = flat(model.parameters())
    callback = rule()
    trainer, caught, error = fit_recording_warnings(model, [callback], task_batch)
    why = "its loss rose from" if rule is Leap else "its weights moved"  # Reptile reads no losses: the distance check
    assert [m for m in caught if m.startswith("task ")] == [m for m in caught if f"diverged: {why}" in m]
    assert sum(m.startswith("task ") for m in caught) == 3 * M  # every task of the 3 meta-batches, each said why
    assert error is not None and error.likely_cause == "inner_lr"
    assert "every task of 3 meta-batches in a row was dropped" in str(error)
    assert "the inner learning rate (the model's optimizer) is likely too high" in str(error)
    assert trainer.global_step == 3 * M * K // (task_batch or 1)  # at the end of the third meta-batch
    assert torch.equal(flat(callback.theta_0), start) and torch.equal(flat(model.parameters()), start)


def test_every_task_diverging_stops_after_stop_after_meta_batches_or_never_with_the_guard_off():
    for guard, meta_batches in [(True, 3), (RunawayGuard(stop_after=5), 5), (False, None)]:
        torch.manual_seed(0)
        model = AlwaysNaN()
        start = flat(model.parameters())
        callback = Leap(guard=guard)
        trainer, caught, error = fit_recording_warnings(model, [callback])
        assert sum("diverged: its meta-gradient is not finite" in m for m in caught) == trainer.global_step // K
        if meta_batches is None:  # the old behaviour: drift to max_steps
            assert error is None and trainer.global_step == K * M * 10
        else:
            assert error is not None and trainer.global_step == meta_batches * M * K
        assert torch.equal(flat(callback.theta_0), start)


class Overflowing(torch.optim.SGD):
    """A meta-optimizer whose step overflows theta_0, as a huge meta_lr times a large meta-gradient would."""

    def step(self, closure=None):
        super().step(closure)
        for group in self.param_groups:
            for parameter in group["params"]:
                parameter.data.fill_(float("inf"))


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"meta_optimizer": Overflowing}, "would make theta_0 non-finite"),
        ({"meta_lr": 1e30}, "more than distance_ratio=1000 times theta_0's norm"),
    ],
    ids=["non-finite", "too-far"],
)
def test_a_meta_step_that_breaks_theta_0_is_refused_and_stops_with_the_last_checkpoint_intact(tmp_path, meta, message):
    torch.manual_seed(0)
    model = TinyClassifier()
    start = flat(model.parameters())
    callback = Leap(**meta)
    saves = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    trainer, _, error = fit_recording_warnings(model, [callback, saves], enable_checkpointing=True)
    assert error is not None and message in str(error) and error.likely_cause == "meta_lr"
    assert trainer.global_step == M * K  # the first meta-step
    assert f"resume from {tmp_path / 'epoch=0-step=4.ckpt'}" in str(error)
    assert torch.equal(flat(callback.theta_0), start) and torch.isfinite(flat(model.parameters())).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"]
    assert not (tmp_path / FINAL_CHECKPOINT).exists()
    saved = TinyClassifier.load_from_checkpoint(readable_checkpoint(tmp_path / "epoch=0-step=4.ckpt"))
    assert torch.equal(flat(saved.parameters()), start)  # theta_0 before any meta-step, as the checkpoint holds it


def test_a_meta_lr_that_wrecks_theta_0_stops_at_the_held_out_evaluation():
    results = {}
    for meta_lr in (0.1, 3.0):
        torch.manual_seed(0)
        evaluation = MetaEvaluation(every_n_meta_steps=2, inner_steps=5)
        _, _, error = fit_recording_warnings(TinyClassifier(), [Leap(meta_lr=meta_lr), evaluation])
        results[meta_lr] = error, evaluation
    error, evaluation = results[3.0]
    assert error is not None and error.likely_cause == "meta_lr" and "meta learning rate (meta_lr)" in str(error)
    step, curves = evaluation.history[-1]

    def loss_auc(loss):  # the trapezoid rule over unit steps, divided by the steps, averaged over tasks
        return float(((loss[:, 1:] + loss[:, :-1]) / 2).sum(1).mean() / (loss.shape[1] - 1))

    assert step == 2 and loss_auc(curves.loss) > 1.25 * loss_auc(evaluation.initial.loss)
    now, start = loss_auc(curves.loss), loss_auc(evaluation.initial.loss)
    assert f"training-loss AUC {now:.4g} against {start:.4g}" in str(error)
    error, evaluation = results[0.1]
    assert error is None and [s for s, _ in evaluation.history] == [2, 4, 6, 8, 10]


# ----------------------------------------------------------------- one-line errors from the command line
def command_line(capsys, args: list[str]) -> tuple[int, str]:
    """Run the command's error handling in this process: the exit status and what it printed to standard error."""
    status = run_reporting_errors(lambda: main(args), args)
    return status, capsys.readouterr().err


def omniglot_quick(*extra: str) -> list[str]:
    omniglot = RECIPES / "omniglot"
    return ["fit", "--config", str(omniglot / "leap.yaml"), "--config", str(omniglot / "quick.yaml"),
            "--trainer.enable_progress_bar=false", "--data.max_meta_steps=null", "--trainer.max_steps=1", *extra]  # fmt: skip


def overlay(tmp_path: Path, callbacks: str) -> str:
    """A config that replaces the recipe's callbacks."""
    path = tmp_path / "callbacks.yaml"
    path.write_text(f"trainer:\n  callbacks:\n{callbacks}")
    return str(path)


LEAP = "    - class_path: lightning_meta.Leap\n      init_args:\n"


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--data.inner_steps=0"], "--data.inner_steps=0: TaskDataModule: inner_steps must be >= 1, got 0"),
        (["--data.meta_batch_size=0"], "--data.meta_batch_size=0: TaskDataModule: meta_batch_size must be >= 1, got 0"),
        (["--data.batch_size=0"], "--data.batch_size=0: TaskDataModule: batch_size must be >= 1, got 0"),
        (["--data.tasks_per_epoch=-1"], "--data.tasks_per_epoch=-1: TaskDataModule: tasks_per_epoch must be >= 1"),
        (["--data.family.ways=0"], "--data.family.ways=0: ways must be in 1..20, got 0"),
        (["--data.family.num_train=99"], "--data.family.num_train=99: num_train=99 exceeds the 47 alphabets left"),
        (["--data.family=omniglot"], "--data.family=omniglot: family='omniglot' needs root="),
        (["--model.init_args.lr=-1"], "--model.init_args.lr=-1.0: ConvClassifier: lr must be > 0, got -1.0"),
        (["--model.lr=0"], "--model.lr=0.0: ConvClassifier: lr must be > 0, got 0.0"),  # the key as written
        (["--model.init_args.channels=0"], "--model.init_args.channels=0: ConvClassifier: channels must be >= 1"),
        (["--model.init_args.momentum=-0.9"], "--model.init_args.momentum=-0.9: ConvClassifier: momentum must be >= 0"),
        ([LEAP + "        meta_lr: -1\n"], "trainer.callbacks[0].meta_lr=-1.0: meta_lr must be > 0, got -1.0"),
        (["--data.meta_batch_size=0"], "--data.meta_batch_size=0: TaskDataModule: meta_batch_size must be >= 1, got 0"),
        (["--data.max_meta_steps=-1"], "--data.max_meta_steps=-1: TaskDataModule: max_meta_steps must be >= 0, got -1"),
        (
            [LEAP + "        guard:\n          class_path: lightning_meta.engine.RunawayGuard\n"
             "          init_args: {loss_ratio: 0.5}\n"],
            "trainer.callbacks[0].guard.loss_ratio=0.5: RunawayGuard: loss_ratio must be > 1 or None (off), got 0.5",
        ),  # fmt: skip
        (
            [LEAP + "        meta_lr: 0.1\n", "    - class_path: lightning_meta.MetaEvaluation\n"
             "      init_args: {worse_than_start: 0.5}\n"],
            "trainer.callbacks[1].worse_than_start=0.5: worse_than_start must be >= 1 or None (never stop), got 0.5",
        ),
    ],
    ids=lambda v: v.split("=")[0] if isinstance(v, str) else "",
)
def test_a_bad_value_is_one_line_naming_key_value_and_rule(flags, line, tmp_path, monkeypatch, capsys, glyph_root):
    monkeypatch.chdir(tmp_path)  # the recipe's logs go here
    if flags[0].startswith("    -"):
        flags = ["--config", overlay(tmp_path, "".join(flags))]
    root = [] if "--data.family=omniglot" in flags else [f"--data.family.init_args.root={glyph_root}"]
    status, err = command_line(capsys, omniglot_quick(*root, *flags))
    assert status == 1 and err.splitlines()[-1].startswith(f"lightning-meta: {line}")
    assert "Traceback" not in err


def test_a_bad_model_value_of_another_recipe_is_one_line_too(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    vision = RECIPES / "vision"
    args = ["fit", "--config", str(vision / "leap.yaml"), "--config", str(vision / "quick.yaml")]
    args.append("--model.cosine_steps=0")
    status, err = command_line(capsys, args)
    assert status == 1
    assert err.splitlines()[-1] == "lightning-meta: --model.cosine_steps=0: cosine_steps must be >= 1 or None, got 0"


def test_unknown_keys_and_wrong_types_stay_one_parse_error(monkeypatch, capsys):
    for flag in ("--data.no_such_key=1", "--data.inner_steps=many"):
        with pytest.raises(SystemExit) as exit_:
            command_line(capsys, omniglot_quick(flag))
        assert exit_.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_debug_shows_the_traceback(monkeypatch, capsys):
    monkeypatch.setenv(DEBUG_ENV, "0")  # restored after the test: --debug sets it
    args = omniglot_quick("--data.inner_steps=0", "--debug")
    with pytest.raises(ValueError, match="inner_steps must be >= 1"):
        command_line(capsys, args)
    assert "--debug" not in args


def test_an_error_that_is_no_bad_value_keeps_its_traceback(capsys):
    def bug() -> None:
        raise ValueError("a bug outside the library's checks")

    with pytest.raises(ValueError, match="a bug"):
        run_reporting_errors(bug, [])


@pytest.mark.slow
def test_the_console_script_exits_1_with_one_line_and_keeps_the_checkpoints_of_a_diverged_run(tmp_path, glyph_root):
    """Every task diverges (inner lr 1e30 on the conv net): 3 meta-batches, then status 1 and one line naming the
    inner learning rate and the newest checkpoint, which holds the untouched theta_0; no final.ckpt."""
    callbacks = LEAP + "        meta_lr: 0.1\n" + (
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "      init_args: {every_n_train_steps: 4, save_top_k: -1}\n"
    )
    args = omniglot_quick(
        "--config", overlay(tmp_path, callbacks), f"--data.family.init_args.root={glyph_root}",
        "--data.family.init_args.num_train=4", "--data.inner_steps=2", "--data.meta_batch_size=2",
        "--model.init_args.channels=8", "--model.init_args.lr=1e30", "--data.max_meta_steps=25", "--trainer.max_steps=-1",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
    )  # fmt: skip
    command = [str(Path(sys.executable).with_name("lightning-meta")), *args]
    process = subprocess.run(command, capture_output=True, text=True, env=fresh_environment(), timeout=300)
    folder = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    assert process.returncode == 1 and "Traceback" not in process.stderr
    line = process.stderr.splitlines()[-1]
    assert line.startswith("lightning-meta: meta-training diverged: every task of 3 meta-batches in a row")
    saved = sorted(folder.iterdir(), key=lambda path: path.stat().st_mtime_ns)
    assert [path.name for path in saved] == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]  # and no final.ckpt
    assert "inner learning rate" in line and f"resume from {saved[-1]}" in line
    first, last = (load_checkpoint(path)["state_dict"] for path in saved)
    assert all(torch.equal(first[k], last[k]) and torch.isfinite(last[k]).all() for k in first)  # theta_0 untouched


@pytest.mark.slow
def test_the_console_script_exits_1_with_one_line_for_a_bad_value():
    command = [str(Path(sys.executable).with_name("lightning-meta")), *omniglot_quick("--data.inner_steps=0")]
    process = subprocess.run(command, capture_output=True, text=True, env=fresh_environment(), timeout=300)
    assert process.returncode == 1 and "Traceback" not in process.stderr
    assert process.stderr.splitlines()[-1] == (
        "lightning-meta: --data.inner_steps=0: TaskDataModule: inner_steps must be >= 1, got 0"
    )


# ----------------------------------------------------------------- Omniglot offline
def test_omniglot_without_data_and_download_off_names_the_folder_in_one_line(tmp_path):
    data = TaskDataModule(family="omniglot", root=str(tmp_path), download=False)
    with pytest.raises(FileNotFoundError) as error:
        data.setup("fit")
    message = str(error.value)
    assert "\n" not in message and str(tmp_path / "omniglot-py" / "images_background") in message
    assert "download=True" in message and "copy an extracted 'omniglot-py' folder" in message


def refuse_connections(monkeypatch):
    def refused(*args, **kwargs):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", refused)


def test_omniglot_download_without_network_fails_within_seconds_in_one_line(tmp_path, monkeypatch):
    refuse_connections(monkeypatch)
    data = TaskDataModule(family="omniglot", root=str(tmp_path), download=True)
    started = time.perf_counter()
    with pytest.raises(FileNotFoundError) as error:
        data.setup("fit")
    assert time.perf_counter() - started < 5
    message, prefix = str(error.value), torchvision.datasets.Omniglot.download_url_prefix
    assert "\n" not in message and "could not be downloaded" in message and "Connection refused" in message
    assert f"{prefix}/images_background.zip" in message and f"extract them into {tmp_path / 'omniglot-py'}" in message


def test_omniglot_download_that_fails_midway_is_the_same_one_line(tmp_path, monkeypatch):
    class Reachable:
        def close(self) -> None: ...

    def no_route(*args, **kwargs):
        raise URLError("no route to host")

    monkeypatch.setattr(socket, "create_connection", lambda *args, **kwargs: Reachable())
    monkeypatch.setattr(torchvision.datasets.omniglot, "download_and_extract_archive", no_route)
    with pytest.raises(FileNotFoundError, match=r"could not be downloaded \(raw.githubusercontent.com: no route"):
        TaskDataModule(family="omniglot", root=str(tmp_path)).setup("fit")


def test_omniglot_offline_from_the_command_line_is_one_line(tmp_path, monkeypatch, capsys):
    refuse_connections(monkeypatch)
    monkeypatch.chdir(tmp_path)
    status, err = command_line(capsys, omniglot_quick("--data.family=omniglot", "--data.root=EMPTY"))
    assert status == 1
    assert err.splitlines()[-1].startswith(
        "lightning-meta: --data.root=EMPTY: Omniglot is not in root=EMPTY and could not be downloaded"
    )


# ----------------------------------------------------------------- unreadable checkpoints
@pytest.fixture
def bad_checkpoints(tmp_path) -> dict[str, Path]:
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": TinyClassifier().state_dict(), "global_step": 3}, good)
    files = {"truncated": tmp_path / "truncated.ckpt", "random": tmp_path / "random.ckpt", "foreign": tmp_path / "w.pt"}
    files["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    files["random"].write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                              dtype=torch.uint8).numpy().tobytes())  # fmt: skip
    torch.save(TinyClassifier().state_dict(), files["foreign"])  # a torch file, but no Lightning checkpoint
    return files


WHY = {
    "truncated": "it is truncated or damaged",
    "random": "it is not a file that torch.save wrote",
    "foreign": "torch.save wrote it, but it is no Lightning checkpoint",
}


@pytest.mark.parametrize("kind", sorted(WHY))
def test_an_unreadable_ckpt_path_is_one_line_naming_the_file(kind, bad_checkpoints, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = bad_checkpoints[kind]
    status, err = command_line(capsys, omniglot_quick(f"--ckpt_path={path}"))
    assert status == 1
    assert err.splitlines()[-1].startswith(f"lightning-meta: {path} is not a readable checkpoint: {WHY[kind]}")
    assert "weights_only" not in err


@pytest.mark.parametrize("kind", sorted(WHY))
def test_load_from_checkpoint_through_the_library_names_the_file(kind, bad_checkpoints):
    with pytest.raises(UnreadableCheckpoint, match=f"{bad_checkpoints[kind]} is not a readable checkpoint") as error:
        TinyClassifier.load_from_checkpoint(readable_checkpoint(bad_checkpoints[kind]))
    assert "weights_only" not in str(error.value)


class NaNFromTask(TinyClassifier):
    """Trains well until task ``task`` of the stream, whose loss and every later one's is NaN: theta_0 looks bad
    only after meta-steps were taken."""

    def __init__(self, task: int) -> None:
        super().__init__()
        self.task = task
        self.poisoned = False

    def start_task(self, task):  # TaskAware: the meta-learner says which task of the stream starts
        self.poisoned = task.position is not None and task.position >= self.task

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.poisoned else loss


def test_a_theta_0_that_went_bad_names_the_newest_checkpoint_before_it_though_more_were_saved(tmp_path):
    """Issue 24's trial: checkpoints every 4 steps; meta-steps end at steps 6, 12, 18, then every task diverges
    (tasks 6 on) and the run stops at step 36. A ModelCheckpoint without a monitor remembers only its last file (step
    32); the error names the newest one saved before theta_0's last meta-step, step 16, which is on disk."""
    torch.manual_seed(0)
    saves = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1)
    trainer, _, error = fit_recording_warnings(NaNFromTask(6), [Leap(), saves], enable_checkpointing=True)
    assert error is not None and error.likely_cause == "meta_lr" and trainer.global_step == 36
    assert "theta_0 went bad after 3 meta-steps" in str(error)
    (sound,) = tmp_path.glob("*step=16.ckpt")
    assert str(error).endswith(f"Lower meta_lr and resume from {sound} (its theta_0 and meta-optimizer are intact).")
    assert len(list(tmp_path.glob("*.ckpt"))) == 8  # steps 4 ... 32, all kept: the stop comes before step 36's save


# ----------------------------------------------------------------- DDP
@pytest.mark.slow
def test_a_killed_ddp_process_makes_its_peer_exit_within_a_minute(tmp_path):
    run(tmp_path, "killed", returncode=1, method="leap", devices=2, meta_steps=50, kill_at=4, kill_rank=1)
    exited = time.time()
    killed = float((tmp_path / "killed" / "killed_at").read_text())
    assert exited - killed < 60
