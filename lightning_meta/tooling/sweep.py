"""Resumable sweeps with a tuning stage: hyper-parameters chosen on validation tasks, fresh seeds scored on test tasks.

A sweep runs *cells*, each one training run (the recipe scripts, e.g. ``recipes/omniglot/sweep.py``, say how), in
two stages:

1. ``tune``: for every method, group (e.g. the number of meta-training alphabets) and seed, every setting of the
   method's grid is trained and scored on the **validation** tasks;
2. ``test``: the setting with the lowest tuning score (held-out training-error AUC; a diverged run's NaN counts as
   worst; ties go to the first in the grid) is trained again with a fresh run seed and scored on the **test**
   tasks, once. A method without a grid (no pre-training) only has this stage.

The sweep seed ``s`` drives everything random: the family's split of tasks (``s`` in both stages, so the test tasks
of seed ``s`` are never looked at while tuning it) and the init, the task order and the evaluation batches (the run
seed: ``s`` while tuning, ``s + TEST_SEED_OFFSET`` for the test run). Every CSV row names its stage, method, group,
seeds, setting, the method's whole grid, and the run's wall and CPU seconds; cells already in the CSV are not run
again, so a killed sweep resumes where it stopped.

Sweeps that share an output folder share the work: a process claims a cell before it runs it
(:func:`~lightning_meta.tooling.file_locks.claimed`, a lock the kernel drops if the process dies), skips the cells
others hold and waits for their rows, so every cell runs once and has one row. SIGTERM or SIGINT stops a sweep politely
(:mod:`lightning_meta.trainer.stop_signals`): no new cell starts, the signal is passed on to the worker processes, each
running fit saves its state (:class:`~lightning_meta.callbacks.CheckpointOnSignal`), and the sweep exits with
status ``128 + signal``; run again, a stopped cell resumes from its checkpoint (:func:`fit_arguments`).

Examples:
    >>> import tempfile
    >>> from pathlib import Path
    >>> grids = {"leap": grid(**{"Leap.meta_lr": [0.1, 1.0]}), "scratch": []}
    >>> def run(cell, folder):  # one training run; here a made-up score that prefers meta_lr 1.0
    ...     return [{"train_error_auc": 0.5 - 0.1 * dict(cell.setting).get("Leap.meta_lr", 0.0)}]
    >>> folder = Path(tempfile.mkdtemp())
    >>> sweep = Sweep(folder, run, grids, ["train_error_auc"], "alphabets", log=lambda line: None)
    >>> rows = sweep.run({"leap": ["5"], "scratch": ["any"]}, seeds=[0])
    >>> for row in rows:
    ...     print(row["stage"], row["method"], row["setting"], row["run_seed"])
    tune leap Leap.meta_lr=0.1 0
    tune leap Leap.meta_lr=1 0
    test leap Leap.meta_lr=1 1000
    test scratch - 1000
    >>> len(sweep.run({"leap": ["5"], "scratch": ["any"]}, seeds=[0]))  # resumed: nothing runs twice
    4
    >>> import shutil; shutil.rmtree(folder)  # the example leaves no files behind
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import multiprocessing
import os
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_meta.callbacks.signal_checkpoint import INTERRUPTED
from lightning_meta.engine import MetaTrainingDiverged
from lightning_meta.intervals import mean_interval
from lightning_meta.tooling.file_locks import claimed, holder, locked
from lightning_meta.trainer import stop_signals

Stage = Literal["tune", "test"]
Setting = dict[str, float]
Run = Callable[["Cell", Path], list[dict[str, object]]]
"""One training run: ``(cell, folder to write in) -> rows of metrics`` (one row, or one per held-out task). A row may
name its own ``group``: a run scored at several sizes on its way (e.g. after 20, 50 and 100 meta-steps) writes one
row per size, and the cell counts as done when one of its rows has the cell's group."""

TEST_SEED_OFFSET = 1000
"""The test run of sweep seed ``s`` uses run seed ``s + TEST_SEED_OFFSET``: not the seed its setting was chosen with."""
BOOKKEEPING = ("stage", "method", "group", "seed", "run_seed", "setting", "grid")
TIMING = ("wall_seconds", "cpu_seconds")
WAIT_SECONDS = 2.0
"""How often a sweep looks again for the rows of cells that another sweep on its folder is running."""


class Row(dict[str, str]):
    """A row of a sweep's CSV: its values by column, and where it is (``path``, ``line``) for error messages."""

    def __init__(self, values: dict[str, str], path: Path | None = None, line: int = 0) -> None:
        super().__init__(values)
        self.path = path
        self.line = line


def number(row: dict[str, str], column: str) -> float:
    """The number in ``row``'s ``column``; a value that is no number is an error naming the file, line and column.

    Examples:
        >>> number(Row({"auc": "0.5"}), "auc")
        0.5
        >>> number(Row({"auc": "n/a"}, Path("results.csv"), 7), "auc")
        Traceback (most recent call last):
        ...
        ValueError: results.csv, line 7, column 'auc': 'n/a' is not a number; correct or delete that row
    """
    value = row[column]
    try:
        return float(value)
    except (TypeError, ValueError):
        where = f"{getattr(row, 'path', None) or 'a sweep CSV'}, line {getattr(row, 'line', '?')}, column {column!r}"
        raise ValueError(f"{where}: {value!r} is not a number; correct or delete that row") from None


def grid(**axes: Sequence[float]) -> list[Setting]:
    """Every combination of the axes' values (a joint grid), the first axis varying slowest. An axis is named
    ``model.<argument>`` or ``<CallbackClass>.<argument>`` (:func:`setting_arguments`).

    Examples:
        >>> grid(**{"model.lr": [0.1, 0.5], "model.inner_lr": [0.1, 0.3]})[1]
        {'model.lr': 0.1, 'model.inner_lr': 0.3}
    """
    names = list(axes)
    return [dict(zip(names, values)) for values in itertools.product(*axes.values())]


def setting_text(setting: Setting | Iterable[tuple[str, float]]) -> str:
    """``"name=value name=value"``, or ``"-"`` for the config's own values.

    Examples:
        >>> setting_text({"model.lr": 0.5, "model.inner_lr": 0.1}), setting_text({})
        ('model.lr=0.5 model.inner_lr=0.1', '-')
    """
    pairs = setting.items() if isinstance(setting, dict) else setting
    return " ".join(f"{name}={value:g}" for name, value in pairs) or "-"


@dataclass(frozen=True)
class Cell:
    """One run of a sweep: its ``stage`` (``"tune"``: scored on validation tasks, ``"test"``: on test tasks), the
    ``method``, the ``group`` (e.g. the number of meta-training alphabets, as text), the sweep ``seed`` (the split of
    tasks) and the hyper-parameter ``setting`` as ``(name, value)`` pairs; ``run_seed`` seeds the init, the task
    order and the evaluation batches, ``key`` names the cell in the CSV and ``name`` its folder."""

    stage: Stage
    method: str
    group: str
    seed: int
    setting: tuple[tuple[str, float], ...] = ()

    @property
    def run_seed(self) -> int:
        return self.seed if self.stage == "tune" else self.seed + TEST_SEED_OFFSET

    @property
    def split(self) -> Literal["val", "test"]:
        return "val" if self.stage == "tune" else "test"

    @property
    def key(self) -> str:
        return cell_key(self.stage, self.method, self.group, self.seed, setting_text(self.setting))

    @property
    def name(self) -> str:
        return self.key.replace("/", "-").replace(" ", "_")


def cell_key(stage: str, method: str, group: str, seed: int | str, setting: str) -> str:
    """The key of a cell (and of its CSV rows)."""
    return f"{stage}/{method}/{group}/{seed}/{setting}"


def setting_arguments(setting: Iterable[tuple[str, float]], callbacks: list[dict]) -> tuple[list[str], list[dict]]:
    """A setting applied to a LightningCLI config: ``model.<arg>`` becomes ``--model.init_args.<arg>=<value>``,
    ``<Callback>.<arg>`` sets ``init_args[<arg>]`` of that callback in a copy of the config's ``trainer.callbacks``
    (matched by the last part of its ``class_path``). Returns ``(command-line arguments, callbacks)``.

    Examples:
        >>> callbacks = [{"class_path": "lightning_meta.Leap", "init_args": {"p": 1, "meta_lr": 0.1}}]
        >>> setting_arguments([("Leap.meta_lr", 0.3), ("model.lr", 0.05)], callbacks)
        (['--model.init_args.lr=0.05'], [{'class_path': 'lightning_meta.Leap', 'init_args': {'p': 1, 'meta_lr': 0.3}}])
    """
    arguments, updated = [], [{**c, "init_args": dict(c.get("init_args") or {})} for c in callbacks]
    for name, value in setting:
        owner, _, argument = name.partition(".")
        if owner == "model":
            arguments.append(f"--model.init_args.{argument}={value}")
            continue
        matches = [c for c in updated if c["class_path"].rsplit(".", 1)[-1] == owner]
        if not matches or not argument:
            classes = [c["class_path"] for c in updated]
            raise ValueError(f"setting {name!r}: use 'model.<arg>' or '<Callback>.<arg>' of a callback in {classes}")
        matches[0]["init_args"][argument] = value
    return arguments, updated


def interrupted_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint that a stop signal left in a cell's ``folder`` (``interrupted.ckpt`` of
    :class:`~lightning_meta.callbacks.CheckpointOnSignal`), if any."""
    saved = list(folder.rglob(INTERRUPTED)) if folder.is_dir() else []
    return max(saved, key=lambda path: path.stat().st_mtime_ns, default=None)


def fit_arguments(configs: Sequence[Path], cell: Cell, folder: Path) -> list[str]:
    """The ``lightning-meta fit`` arguments of a cell of a recipe: its configs (the method's first), then an overlay
    written to ``folder/sweep.yaml`` with the method's callbacks, the cell's setting applied and its
    ``MetaEvaluation`` scoring the cell's split (``"val"`` while tuning) with the run seed, once, at the end of fit
    (no baseline); then the seeds (``seed_everything`` and the data's ``seed``: the run seed; the family's split
    ``seed``: the sweep seed), the run folder and the setting's ``model`` arguments; and ``--ckpt_path`` of the
    cell's :func:`interrupted_checkpoint` if a stop signal left one (the cell resumes where it stopped).

    Examples:
        >>> import tempfile
        >>> config = Path(tempfile.mkdtemp()) / "leap.yaml"
        >>> _ = config.write_text("trainer:\\n  callbacks:\\n    - class_path: lightning_meta.MetaEvaluation\\n")
        >>> arguments = fit_arguments([config], Cell("tune", "leap", "5", 2), config.parent / "run")
        >>> arguments[5:8]
        ['--seed_everything=2', '--data.seed=2', '--data.family.init_args.seed=2']
        >>> print((config.parent / "run" / "sweep.yaml").read_text().strip())
        trainer:
          callbacks:
          - class_path: lightning_meta.MetaEvaluation
            init_args:
              split: val
              seed: 2
              baseline: false
              every_n_meta_steps: 0
        >>> import shutil; shutil.rmtree(config.parent)  # the example leaves no files behind
    """
    callbacks = (yaml.safe_load(Path(configs[0]).read_text()).get("trainer") or {}).get("callbacks") or []
    model_arguments, callbacks = setting_arguments(cell.setting, callbacks)
    evaluations = [c for c in callbacks if c["class_path"].rsplit(".", 1)[-1] == "MetaEvaluation"]
    if len(evaluations) != 1:
        raise ValueError(f"{configs[0]} needs exactly one MetaEvaluation callback to score a sweep cell")
    evaluations[0]["init_args"].update(split=cell.split, seed=cell.run_seed, baseline=False, every_n_meta_steps=0)
    folder.mkdir(parents=True, exist_ok=True)
    overlay = folder / "sweep.yaml"
    overlay.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}, sort_keys=False))
    resume = interrupted_checkpoint(folder)
    return [
        "fit", *(part for config in [*configs, overlay] for part in ("--config", str(config))),
        f"--seed_everything={cell.run_seed}",
        f"--data.seed={cell.run_seed}",
        f"--data.family.init_args.seed={cell.seed}",
        f"--trainer.default_root_dir={folder}", f"--trainer.logger.init_args.save_dir={folder}",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", *model_arguments,
        *([f"--ckpt_path={resume}"] if resume is not None else []),
    ]


def chosen_setting(rows: Sequence[Row], cell: Cell, settings: Sequence[Setting], score: str) -> Setting:
    """The setting of ``settings`` whose tuning rows for ``cell``'s method, group and seed have the lowest mean
    ``score``; NaN (a diverged run) counts as worst and ties go to the first setting of the grid.

    Examples:
        >>> rows = [Row({"stage": "tune", "method": "leap", "group": "5", "seed": "0", "setting": s, "auc": a})
        ...         for s, a in (("Leap.meta_lr=0.1", "0.6"), ("Leap.meta_lr=1", "nan"))]
        >>> chosen_setting(rows, Cell("test", "leap", "5", 0), grid(**{"Leap.meta_lr": [0.1, 1.0]}), "auc")
        {'Leap.meta_lr': 0.1}
    """
    means = cell_means(rows, score, "tune")

    def badness(setting: Setting) -> float:
        mean = means.get((cell.method, cell.group, setting_text(setting), str(cell.seed)))
        if mean is None:
            missing = f"{cell.method}, {cell.group}, seed {cell.seed}, {setting_text(setting)}"
            raise ValueError(f"no tuning row for {missing}: run the tuning stage first")
        return math.inf if math.isnan(mean) else mean

    return min(settings, key=badness)


class ResultsFile:
    """The sweep's CSV: complete rows only (a line cut short by a kill is dropped when the file is opened), each
    cell's rows appended with one ``write`` call, under a lock (``<name>.lock`` beside it) that sweeps sharing the
    file take to write and to read."""

    def __init__(self, path: Path, fields: Sequence[str]) -> None:
        self.path = path
        self.fields = list(fields)
        with locked(self.lock):
            if not path.exists():
                return
            text = path.read_text()
            reader = csv.DictReader(io.StringIO(text))
            if reader.fieldnames is not None and list(reader.fieldnames) != self.fields:
                raise ValueError(
                    f"{path} has columns {reader.fieldnames}, this sweep writes {self.fields}: it was written by "
                    "another version of the sweep; use another --out (or move the file away)"
                )
            rows = [row for row in reader if None not in row.values() and None not in row]
            if text and (not text.endswith("\n") or len(rows) != text.count("\n") - 1):  # a row cut short
                path.write_text(self._text(rows, header=True))

    @property
    def lock(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def rows(self) -> list[Row]:
        """Every row, with its line number in the file."""
        if not self.path.exists():
            return []
        with locked(self.lock, shared=True), open(self.path, newline="") as handle:
            reader = csv.DictReader(handle)
            return [Row(row, self.path, reader.line_num) for row in reader]

    def keys(self) -> set[str]:
        return {cell_key(r["stage"], r["method"], r["group"], r["seed"], r["setting"]) for r in self.rows()}

    def append(self, rows: Sequence[dict[str, object]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with locked(self.lock):
            data = self._text(rows, header=not self.path.exists() or self.path.stat().st_size == 0).encode()
            handle = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(handle, data)
            finally:
                os.close(handle)

    def _text(self, rows: Sequence[dict[str, object]], header: bool) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, self.fields, lineterminator="\n")
        if header:
            writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()


def timed(
    run: Run, cell: Cell, folder: Path, metrics: Sequence[str], threads: int | None = None
) -> list[dict[str, object]]:
    """``run(cell, folder)`` with its wall and CPU seconds (``time.process_time``: this process, all its threads)
    added to every row; ``threads`` sets torch's intra-op threads first (in a worker process of the pool). A run that
    stops with :class:`~lightning_meta.engine.MetaTrainingDiverged` (the runaway guards) is one row with every metric
    NaN: a setting that diverged is never chosen, and a test cell that diverged shows as NaN in the tables."""
    if threads is not None:
        torch.set_num_threads(threads)
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        rows = run(cell, folder)
    except MetaTrainingDiverged as error:
        print(f"sweep: {cell.name} diverged, scored NaN: {error}")
        rows = [dict.fromkeys(metrics, math.nan)]
    seconds = {"wall_seconds": round(time.perf_counter() - wall, 1), "cpu_seconds": round(time.process_time() - cpu, 1)}
    return [{**row, **seconds} for row in rows]


@dataclass(frozen=True)
class CellJob:
    """Everything a process needs to run one cell: claim it, run it if nobody did, append its rows."""

    run: Run
    cell: Cell
    folder: Path
    metrics: tuple[str, ...]
    results: ResultsFile
    claim: Path
    bookkeeping: dict[str, object]
    threads: int | None = None


def run_claimed(job: CellJob) -> list[dict[str, object]] | str:
    """Run ``job``'s cell if this process can claim it and its rows are not in the CSV yet: its rows, appended
    before the claim is let go (so no other sweep can run it again); else ``"held"`` (another process is running
    it), ``"done"`` (its rows are there) or ``"stopped"`` (a stop signal came first: nothing started)."""
    with claimed(job.claim) as mine:
        if not mine:
            return "held"
        if job.cell.key in job.results.keys():
            return "done"
        if stop_signals.received() is not None:
            return "stopped"
        rows = [{**job.bookkeeping, **row} for row in timed(job.run, job.cell, job.folder, job.metrics, job.threads)]
        job.results.append(rows)
        return rows


_worker_signals: Any = None  # a worker's block that records stop signals, open for the worker's life


def _start_worker() -> None:
    """In each worker process: record stop signals instead of dying (an idle worker killed by SIGTERM would break
    the pool and the cells the others are saving); a worker that got one starts no cell."""
    global _worker_signals
    _worker_signals = stop_signals.catching_stop_signals()
    _worker_signals.__enter__()


class Sweep:
    """Runs the two stages of a sweep into ``out/results.csv`` (runs under ``out/runs/<cell name>``, claims under
    ``out/claims``), with other sweeps on the same ``out`` if there are (see the module docstring).

    Args:
        out: output folder.
        run: one training run (a module-level function, or a ``functools.partial`` of one, so that worker
            processes can receive it).
        grids: the tuned settings of each method (an empty list: nothing to tune, only the test stage).
        metrics: the columns of the rows ``run`` returns.
        group_name: what the group is, for messages (``"alphabets"``).
        score: the metric the tuning stage minimises.
        log: where progress lines go.
    """

    def __init__(
        self,
        out: Path,
        run: Run,
        grids: dict[str, list[Setting]],
        metrics: Sequence[str],
        group_name: str = "group",
        score: str = "train_error_auc",
        log: Callable[[str], None] = print,
    ) -> None:
        self.out = out
        self.run_one = run
        self.grids = grids
        self.metrics = list(metrics)
        self.group_name = group_name
        self.score = score
        self.log = log
        self.results = ResultsFile(out / "results.csv", [*BOOKKEEPING, *self.metrics, *TIMING])
        self._pool: ProcessPoolExecutor | None = None

    def run(self, plan: dict[str, Sequence[str]], seeds: Sequence[int], jobs: int = 1) -> list[Row]:
        """Both stages for ``plan`` (``{method: its groups}``) and ``seeds``; cells already in the CSV are skipped,
        ``jobs`` > 1 runs that many cells at once in worker processes. Returns all rows of the CSV.

        Raises:
            SystemExit: stopped by SIGTERM or SIGINT, with status ``128 + signal``, once the running cells saved.
        """
        unknown = [m for m in plan if m not in self.grids]
        if unknown:
            raise ValueError(f"no grid for methods {unknown}; known: {sorted(self.grids)}")
        combinations = [(method, group, seed) for method, groups in plan.items() for group in groups for seed in seeds]
        tuning = [
            Cell("tune", method, group, seed, tuple(setting.items()))
            for method, group, seed in combinations
            for setting in self.grids[method]
        ]
        with stop_signals.catching_stop_signals(self._pass_on):
            self._run_cells("tuning (validation tasks)", tuning, jobs)
            rows = self.results.rows()
            testing = []
            for method, group, seed in combinations:
                settings = self.grids[method]
                cell = Cell("test", method, group, seed)
                chosen = chosen_setting(rows, cell, settings, self.score) if settings else {}
                testing.append(Cell("test", method, group, seed, tuple(chosen.items())))
            self._run_cells("test (test tasks, fresh run seeds)", testing, jobs)
        return self.results.rows()

    def _run_cells(self, stage: str, cells: list[Cell], jobs: int) -> None:
        """Run the cells not in the CSV, and wait for those another sweep holds, until every cell has its rows."""
        done = self.results.keys()
        todo = [cell for cell in cells if cell.key not in done]
        self.log(f"sweep, {stage}: {len(cells)} cells, {len(cells) - len(todo)} already in {self.results.path}, "
                 f"{len(todo)} to run")
        waiting_said = False
        while todo:
            held = self._run_pass(todo, jobs)
            done = self.results.keys()
            todo = [cell for cell in cells if cell.key not in done]
            if todo and held:
                if not waiting_said:
                    holders = sorted({holder(self.claim(cell)) for cell in held})
                    self.log(f"sweep: {len(held)} cells are running in another sweep on {self.out} "
                             f"({', '.join(holders)}); waiting for their rows")
                    waiting_said = True
                time.sleep(WAIT_SECONDS)

    def _run_pass(self, cells: list[Cell], jobs: int) -> list[Cell]:
        """Try every cell once (at most ``jobs`` at a time); returns those another sweep holds. A stop signal ends
        the pass when the running cells have stopped and saved, with ``SystemExit``."""
        held: list[Cell] = []
        stopped: list[Cell] = []
        total = len(cells)
        threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
        pending = iter(cells)
        running: dict[Future[list[dict[str, object]] | str], Cell] = {}
        context = multiprocessing.get_context("spawn")  # a fork of a process that holds torch threads may hang
        pool = ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker) if jobs > 1 else None
        self._pool = pool
        finished = 0
        try:
            while True:
                while len(running) < max(1, jobs) and stop_signals.received() is None:
                    cell = next(pending, None)
                    if cell is None:
                        break
                    if pool is None:  # in this process
                        try:
                            outcome: list[dict[str, object]] | str = run_claimed(self._job(cell, None))
                        except SIGTERMException:
                            stopped.append(cell)
                            break
                        finished += self._report(finished, total, cell, outcome, held)
                    else:
                        running[pool.submit(run_claimed, self._job(cell, threads))] = cell
                if not running:
                    break
                ready, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in ready:
                    cell = running.pop(future)
                    try:
                        outcome = future.result()
                    except SIGTERMException:
                        stopped.append(cell)
                        continue
                    finished += self._report(finished, total, cell, outcome, held)
        finally:
            self._pool = None
            if pool is not None:
                pool.shutdown(cancel_futures=True)  # after a failed cell, the queued ones do not start
        signum = stop_signals.received()
        if signum is not None:
            self._stop(signum, stopped)
        return held

    def _job(self, cell: Cell, threads: int | None) -> CellJob:
        grid_text = " | ".join(setting_text(s) for s in self.grids[cell.method]) or "-"
        bookkeeping = {"stage": cell.stage, "method": cell.method, "group": cell.group, "seed": cell.seed,
                       "run_seed": cell.run_seed, "setting": setting_text(cell.setting), "grid": grid_text}
        return CellJob(self.run_one, cell, self.folder(cell), tuple(self.metrics), self.results, self.claim(cell),
                       bookkeeping, threads)

    def _report(
        self, finished: int, total: int, cell: Cell, outcome: list[dict[str, object]] | str, held: list[Cell]
    ) -> int:
        """Log a finished cell; returns 1 if it ran here. A cell another sweep holds goes to ``held``."""
        if outcome == "held":
            held.append(cell)
        if isinstance(outcome, str):
            return 0
        scores = [number({self.score: str(row[self.score])}, self.score) for row in outcome]
        self.log(f"[{finished + 1}/{total}] {cell.stage} {cell.method} {self.group_name}={cell.group} "
                 f"seed={cell.seed} {setting_text(cell.setting)}: {self.score} {sum(scores) / len(scores):.3f}, "
                 f"{outcome[0]['wall_seconds']} s wall, {outcome[0]['cpu_seconds']} s CPU")
        return 1

    def _stop(self, signum: int, stopped: list[Cell]) -> None:
        """End the sweep after a stop signal, naming what the stopped cells saved."""
        stop_signals.acknowledge()
        for cell in stopped:
            saved = interrupted_checkpoint(self.folder(cell))
            self.log(f"sweep: {cell.name} stopped; " + (f"saved in {saved}" if saved else "nothing to save yet"))
        name = signal.Signals(signum).name
        self.log(f"sweep: stopped by {name}; {len(stopped)} running cells stopped, no new cell started; the same "
                 "command resumes the sweep (stopped cells from their checkpoints)")
        raise SystemExit(stop_signals.exit_status(signum))

    def _pass_on(self, signum: int) -> None:
        """Pass a stop signal on to the worker processes, as SIGTERM: each saves its fit and stops."""
        processes = getattr(self._pool, "_processes", None) or {}  # the pool keeps its workers there
        for process in list(processes.values()):
            try:
                os.kill(process.pid, signal.SIGTERM)
            except ProcessLookupError:  # already gone
                pass

    def folder(self, cell: Cell) -> Path:
        return self.out / "runs" / cell.name

    def claim(self, cell: Cell) -> Path:
        return self.out / "claims" / f"{cell.name}.lock"


def format_interval(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> str:
    """``"mean ± half-width"`` of the 95 % t-interval of ``values`` (times ``scale``); one value: just the mean.

    Examples:
        >>> format_interval([0.50, 0.54, 0.58]), format_interval([0.7], scale=100, digits=1)
        ('0.540 ± 0.099', '70.0')
    """
    mean, half = mean_interval([v * scale for v in values])
    return f"{mean:.{digits}f}" if math.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def chosen_counts(rows: Sequence[Row]) -> str:
    """The settings of the rows' cells, with how many seeds ran each, most frequent first.

    Examples:
        >>> chosen_counts([{"setting": "Leap.meta_lr=0.3", "seed": "0"}, {"setting": "Leap.meta_lr=1", "seed": "1"},
        ...                {"setting": "Leap.meta_lr=0.3", "seed": "2"}])
        'Leap.meta_lr=0.3 (2), Leap.meta_lr=1 (1)'
    """
    seeds = Counter(setting for setting, _ in dict.fromkeys((r["setting"], r["seed"]) for r in rows))
    return ", ".join(f"{setting} ({count})" for setting, count in seeds.most_common())


def cell_means(rows: Sequence[Row], metric: str, stage: Stage) -> dict[tuple[str, str, str, str], float]:
    """``{(method, group, setting, seed): mean of metric over the cell's rows}`` of one stage (a cell has one row,
    or one per held-out task)."""
    values: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
    for row in rows:
        if row["stage"] == stage:
            values[row["method"], row["group"], row["setting"], row["seed"]].append(number(row, metric))
    return {key: sum(v) / len(v) for key, v in values.items()}


def tuning_table(rows: Sequence[Row], score: str, group_name: str) -> str:
    """Markdown: per method, group and setting of the grid, the tuning score (mean ± 95 % t-interval over seeds)
    and how many seeds chose it for their test run."""
    tuning: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for (method, group, setting, _), value in cell_means(rows, score, "tune").items():
        tuning[method, group, setting].append(value)
    chosen = Counter((method, group, setting) for method, group, setting, _ in cell_means(rows, score, "test"))
    methods = list(dict.fromkeys(row["method"] for row in rows))
    grids = {row["method"]: row["grid"].split(" | ") for row in rows}

    def order(key: tuple[str, str, str]) -> tuple[int, int, str, int]:  # methods as they come, groups, grid order
        method, group, setting = key
        return methods.index(method), int(group) if group.isdigit() else -1, group, grids[method].index(setting)

    lines = [f"| method | {group_name} | setting | validation {score} | chosen by seeds |", "|---|---:|---|---:|---:|"]
    for method, group, setting in sorted(tuning, key=order):
        values = tuning[method, group, setting]
        lines.append(f"| {method} | {group} | {setting} | {format_interval(values)} | "
                     f"{chosen[method, group, setting]} of {len(values)} |")
    return "\n".join(lines)
