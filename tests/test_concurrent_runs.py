"""Nothing mixed (issue 24): runs and sweeps started together with one output folder each get their own, a sweep
stopped by a signal passes it on to its workers, saves what runs and exits with 128 + signal, then resumes."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from sweep_runs import GRIDS, PLAN, fit_until_stopped
from test_ddp import fresh_environment
from test_stop_signals import SignalAt

from lightning_meta.tooling import sweep as sweep_module
from lightning_meta.callbacks.signal_checkpoint import INTERRUPTED
from lightning_meta.checkpoint_files import load_checkpoint
from lightning_meta.tooling.sweep import Cell, Sweep, interrupted_checkpoint
from lightning_meta.trainer.run_folders import claim_version

ROOT = Path(__file__).parents[1]
SWEEP = [sys.executable, str(Path(__file__).with_name("sweep_runs.py"))]
CELLS = 6 + 3  # tuning: 3 settings x 2 groups; test: 2 groups, and no pre-training once


# ----------------------------------------------------------------- run folders
@pytest.mark.parametrize("logger", [CSVLogger, TensorBoardLogger])
def test_two_runs_that_list_the_folder_before_either_creates_one_get_two_versions(tmp_path, logger):
    """The race of two runs started together, in slow motion: both look for the next free version before either
    has made its folder. Lightning gives both version_0; claimed, they get 0 and 1."""
    first, second = logger(tmp_path), logger(tmp_path)
    assert first._get_next_version() == second._get_next_version() == 0  # what each would take on its own
    assert (claim_version(first), claim_version(second)) == (0, 1)
    assert first.log_dir != second.log_dir and sorted(p.name for p in Path(first.root_dir).iterdir()) == [
        "version_0", "version_1"
    ]  # fmt: skip
    assert claim_version(logger(tmp_path, version="mine")) == "mine"  # a version the user chose stays


@pytest.mark.slow
def test_two_fits_started_together_with_one_output_folder_never_share_a_version(tmp_path, glyph_root):
    command = [
        str(Path(sys.executable).with_name("lightning-meta")), "fit",
        "--config", str(ROOT / "recipes" / "omniglot" / "leap.yaml"),
        "--config", str(ROOT / "recipes" / "omniglot" / "quick.yaml"),
        f"--data.family.init_args.root={glyph_root}", "--data.family.init_args.num_train=4", "--data.inner_steps=2",
        "--data.meta_batch_size=2", "--model.init_args.channels=8", "--data.max_meta_steps=2",
        "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]  # fmt: skip
    runs = [
        subprocess.Popen([*command, f"--seed_everything={seed}"], stderr=subprocess.PIPE, text=True,
                         env=fresh_environment())
        for seed in (0, 1)
    ]  # fmt: skip
    errors = [run.communicate(timeout=600)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    versions = tmp_path / "lightning_logs"
    assert sorted(p.name for p in versions.iterdir()) == ["version_0", "version_1"]
    lines = [line for err in errors for line in err.splitlines() if "theta_0 written to" in line]
    written = sorted(line.split(" written to ")[1] for line in lines)
    assert written == [str(versions / f"version_{n}" / "checkpoints" / "final.ckpt") for n in (0, 1)]
    seeds = set()
    for folder in versions.iterdir():
        assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["final.ckpt", "last.ckpt"]  # no -v1
        assert (folder / "summary.csv").exists()
        config = (folder / "config.yaml").read_text()
        seeds.add(next(line for line in config.splitlines() if line.startswith("seed_everything")))
    assert seeds == {"seed_everything: 0", "seed_everything: 1"}  # each folder holds its own run


# ----------------------------------------------------------------- sweeps sharing a folder
def csv_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(path)))


@pytest.mark.slow
def test_two_sweeps_on_one_folder_run_every_cell_once(tmp_path):
    """Both sweeps are inside their cells at the same time (a barrier in the cells); every cell runs in one process
    only and has one row, and both sweeps end with the whole table."""
    sweeps = [subprocess.Popen([*SWEEP, str(tmp_path), "scores", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=fresh_environment()) for _ in range(2)]  # fmt: skip
    outputs = [sweep.communicate(timeout=600)[0] for sweep in sweeps]
    assert [sweep.returncode for sweep in sweeps] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    rows = csv_rows(tmp_path / "results.csv")
    keys = [(r["stage"], r["method"], r["group"], r["setting"]) for r in rows]
    assert len(keys) == len(set(keys)) == CELLS
    for folder in (tmp_path / "runs").iterdir():
        ran = (folder / "ran").read_text().split()
        assert len(ran) == 1, folder.name  # one process ran the cell, once
    assert {r["pid"] for r in rows} <= {str(sweep.pid) for sweep in sweeps}
    for output in outputs:  # each printed progress for the cells it ran; none failed for want of another's rows
        assert "Traceback" not in output


def test_a_cell_held_by_another_process_is_waited_for_not_run(tmp_path, monkeypatch):
    """In slow motion: another process holds the claim of a cell; the sweep runs the others, says whom it waits for,
    waits for that cell's row (which the holder appends) and never runs it."""
    ran, lines = [], []

    def score(cell, folder):
        ran.append(cell.key)
        return [{"auc": dict(cell.setting)["Leap.meta_lr"]}]

    sweep = Sweep(tmp_path, score, {"leap": GRIDS["leap"]}, ["auc"], score="auc", log=lines.append)
    held = Cell("tune", "leap", "1", 0, (("Leap.meta_lr", 0.3),))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from lightning_meta.tooling.file_locks import claimed\n"
         "with claimed(Path(sys.argv[1])) as mine:\n    print(mine, flush=True); sys.stdin.readline()",
         str(sweep.claim(held))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "True"

    waited = []

    def other_sweep_finishes(seconds):  # while this sweep waits, the holder appends the cell's row and lets go
        waited.append(seconds)
        monkeypatch.undo()  # a real time.sleep again (waiting for the holder uses it)
        bookkeeping = sweep._job(held, None).bookkeeping
        sweep.results.append([{**bookkeeping, "auc": 0.3, "wall_seconds": 1.0, "cpu_seconds": 1.0}])
        holder.communicate("\n", timeout=60)

    monkeypatch.setattr(sweep_module.time, "sleep", other_sweep_finishes)
    rows = sweep.run({"leap": ["1"]}, seeds=[0])
    assert waited == [sweep_module.WAIT_SECONDS] and held.key not in ran
    assert len(ran) == 3  # the two other tuning cells and the test cell
    assert sorted(r["setting"] for r in rows if r["stage"] == "tune") == [
        "Leap.meta_lr=0.1", "Leap.meta_lr=0.3", "Leap.meta_lr=1"
    ]  # fmt: skip
    assert f"1 cells are running in another sweep on {tmp_path} ({socket.gethostname()} pid {holder.pid})" in "".join(
        lines
    )  # fmt: skip


# ----------------------------------------------------------------- sweeps stopped by a signal
def test_a_sweep_stopped_by_sigterm_saves_its_running_cell_exits_143_and_resumes_it(tmp_path, monkeypatch):
    """In this process (jobs=1): SIGTERM during the first cell's fit; the cell saves and the sweep exits with 143,
    no row written; run again, that cell resumes from its checkpoint and every cell has one row."""
    monkeypatch.setenv("SWEEP_STEPS", "12")
    lines: list[str] = []
    stopped = Sweep(tmp_path, partial(fit_until_stopped, extra=(SignalAt(5),)), GRIDS, ["auc", "pid", "resumed_from"],
                    score="auc", log=lines.append)  # fmt: skip
    with pytest.raises(SystemExit) as stop:
        stopped.run(PLAN, seeds=[0])
    assert stop.value.code == 143
    saved = interrupted_checkpoint(stopped.folder(Cell("tune", "leap", "1", 0, (("Leap.meta_lr", 0.1),))))
    assert saved is not None and load_checkpoint(saved)["global_step"] == 6
    assert not (tmp_path / "results.csv").exists()
    assert lines[-1].startswith("sweep: stopped by SIGTERM; 1 running cells stopped, no new cell started")
    assert any(line.endswith(f"stopped; saved in {saved}") for line in lines)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    resumed = Sweep(tmp_path, fit_until_stopped, GRIDS, ["auc", "pid", "resumed_from"], score="auc", log=lines.append)
    rows = resumed.run(PLAN, seeds=[0])
    assert len(rows) == CELLS and [r["resumed_from"] for r in rows].count("6") == 1
    assert rows[0]["resumed_from"] == "6"  # the stopped cell, first in the plan, went on from step 6


@pytest.mark.slow
def test_sigterm_to_a_sweep_reaches_its_workers_which_save_and_the_sweep_exits_143(tmp_path):
    """jobs=2: SIGTERM to the sweep only; both workers' fits save, no third cell starts, the workers are gone, the
    sweep exits 143; run again (finite fits, in one process), the two cells resume from their checkpoints."""
    sweep = subprocess.Popen([*SWEEP, str(tmp_path), "fits", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=fresh_environment())  # fmt: skip
    deadline = time.monotonic() + 300
    while len(list(tmp_path.glob("runs/*/started"))) < 2 and sweep.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    started = sorted(tmp_path.glob("runs/*/started"))
    workers = [int(path.read_text()) for path in started]
    assert len(workers) == 2
    sweep.send_signal(signal.SIGTERM)
    output = sweep.communicate(timeout=300)[0]
    assert sweep.returncode == 143, output[-3000:]
    assert "sweep: stopped by SIGTERM; 2 running cells stopped, no new cell started" in output
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone
    assert sorted(p.parent for p in tmp_path.glob("runs/*/started")) == [p.parent for p in started]  # no third
    saved = sorted(tmp_path.glob(f"runs/*/**/{INTERRUPTED}"))
    assert sorted(p.relative_to(tmp_path).parts[1] for p in saved) == [p.parent.name for p in started]
    steps = {p.relative_to(tmp_path).parts[1]: load_checkpoint(p)["global_step"] for p in saved}
    assert not (tmp_path / "results.csv").exists()

    environment = {**fresh_environment(), "SWEEP_STEPS": "8"}
    again = subprocess.run([*SWEEP, str(tmp_path), "fits", "1"], capture_output=True, text=True, env=environment,
                           timeout=600)  # fmt: skip  # in one process: no second pool to start
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    rows = csv_rows(tmp_path / "results.csv")
    assert len(rows) == CELLS
    keys = {sweep_module.cell_key(r["stage"], r["method"], r["group"], r["seed"], r["setting"]): r for r in rows}
    by_folder = {key.replace("/", "-").replace(" ", "_"): row for key, row in keys.items()}  # as Cell.name
    for name, step in steps.items():
        assert by_folder[name]["resumed_from"] == str(step)
