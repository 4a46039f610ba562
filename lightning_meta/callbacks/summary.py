"""``RunSummary``: a run's results as a table in the terminal and as a tidy CSV beside its metrics, with its files.

When fit is over (after the last evaluation, a module's own included), every callback and the module that evaluate
the run (:class:`~lightning_meta.protocols.ReportsResults`: :class:`~lightning_meta.MetaEvaluation`,
:class:`~lightning_meta.AtariEvaluation`, :class:`~lightning_meta.models.DynamicalLanguageModel`) give one row per
evaluation: each source is printed as a table (values shared by all its rows go into its title) and all rows are
written to ``summary.csv`` in the run's folder (:func:`~lightning_meta.utils.run_dir`, beside ``metrics.csv``), a
``source`` column first. A run that evaluates nothing reports its last logged training metrics instead. Then come
the paths of the figures, of the checkpoint (``final.ckpt`` where :class:`~lightning_meta.MetaInit` wrote one, else
the ``ModelCheckpoint``'s last) and of the logs, and the wall time of fit. ``lightning-meta`` adds it to every run.

Examples:
    >>> rows = [{"weights": "initial weights", "split": "test", "test_accuracy": 0.819},
    ...         {"weights": "meta-step 10", "split": "test", "test_accuracy": 0.9}]
    >>> print(format_table("MetaEvaluation", rows))
    MetaEvaluation (split test)
      weights          test_accuracy
      initial weights          0.819
      meta-step 10             0.900
    >>> import lightning as L
    >>> trainer = L.Trainer(callbacks=[RunSummary()], max_steps=10, logger=False)
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_meta.callbacks.meta_init import FINAL_CHECKPOINT
from lightning_meta.protocols import ReportsResults, implements
from lightning_meta.utils import META_COUNTERS, run_dir

FILE = "summary.csv"
"""The name of the summary's CSV in the run's folder."""

Row = dict[str, Any]


def format_value(value: Any) -> str:
    """Floats with 3 decimals, anything else as text."""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


WIDTH = 100
"""Columns the printed tables fit in."""

Column = tuple[str, list[str], bool]
"""A printed column: its header, its cells and whether it is aligned left (text) rather than right (numbers)."""


def format_table(title: str, rows: list[Row], width: int = WIDTH) -> str:
    """``rows`` as an aligned text table under ``title`` that fits ``width`` columns; non-float columns whose value
    all rows share go into the title instead. Text columns are aligned left, numbers right. A table too wide is
    printed transposed (one line per column, one column per row); one still too wide, as several tables of the
    columns that fit, each beginning with the first column."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    shared = [c for c in columns if len(rows) > 1 and not isinstance(rows[0].get(c), float)]
    shared = [c for c in shared if all(row.get(c) == rows[0].get(c) for row in rows)]
    columns = [c for c in columns if c not in shared]
    if shared:
        title += " (" + ", ".join(f"{c} {format_value(rows[0][c])}" for c in shared) + ")"
    table = [(c, [format_value(row.get(c, "")) for row in rows], isinstance(rows[0].get(c), str)) for c in columns]
    if _width(table) <= width:
        return "\n".join([title, *_lines(table)])
    label, values = table[0], table[1:]
    transposed = [("", [header for header, _, _ in values], True)]
    transposed += [(label[1][i], [cells[i] for _, cells, _ in values], False) for i in range(len(rows))]
    if _width(transposed) <= width:
        return "\n".join([title, *_lines(transposed)])
    blocks: list[list[Column]] = [[label]]
    for column in values:
        if len(blocks[-1]) > 1 and _width([*blocks[-1], column]) > width:
            blocks.append([label])
        blocks[-1].append(column)
    return "\n".join([title, *(line for block in blocks for line in _lines(block))])


def _width(table: list[Column]) -> int:
    return 2 + sum(max(len(header), *map(len, cells)) for header, cells, _ in table) + 2 * (len(table) - 1)


def _lines(table: list[Column]) -> list[str]:
    widths = [max(len(header), *map(len, cells)) for header, cells, _ in table]

    def line(values: list[str]) -> str:
        cells = (v.ljust(w) if left else v.rjust(w) for v, w, (_, _, left) in zip(values, widths, table))
        return ("  " + "  ".join(cells)).rstrip()

    rows = len(table[0][1])
    return [line([header for header, _, _ in table]), *(line([c[1][i] for c in table]) for i in range(rows))]


class RunSummary(L.Callback):
    """Print the run's results and files when fit is over; write them to ``summary.csv`` (see the module docstring).

    Args:
        filename: the CSV's name in the run's folder.
    """

    def __init__(self, filename: str = FILE) -> None:
        self.filename = filename
        self.path: Path | None = None  # the CSV, once written
        self._start = 0.0

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """After ``on_fit_end`` of every callback and of the module: all evaluations are done."""
        if stage != "fit" or trainer.interrupted:
            return
        folder = run_dir(trainer)  # on every process: a collective under DDP
        if trainer.is_global_zero:
            rank_zero_info(self.report(trainer, pl_module, folder / self.filename))

    def sources(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[tuple[str, ReportsResults]]:
        """The callbacks and the module that evaluate the run, with their names."""
        candidates = [*trainer.callbacks, pl_module]  # type: ignore[attr-defined]
        return [(type(c).__name__, c) for c in candidates if implements(c, ReportsResults, "RunSummary")]

    def report(self, trainer: L.Trainer, pl_module: L.LightningModule, path: Path) -> str:
        """Write the CSV to ``path``; return the text to print."""
        tables = [(name, source.results()) for name, source in self.sources(trainer, pl_module)]
        tables = [(name, rows) for name, rows in tables if rows]
        if not tables:
            metrics = trainer.callback_metrics.items()
            last = {k: float(v) for k, v in metrics if v.numel() == 1 and k not in META_COUNTERS}
            tables = [("training (last logged)", [{"step": trainer.global_step, **last}])]
        rows = [{"source": name, **row} for name, table in tables for row in table]
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as file:
            writer = csv.DictWriter(file, list(dict.fromkeys(key for row in rows for key in row)), restval="")
            writer.writeheader()
            writer.writerows(rows)
        self.path = path
        lines = [f"Results ({path}):", *(format_table(name, table) for name, table in tables)]
        figures = [source.figure for _, source in self.sources(trainer, pl_module) if source.figure is not None]
        lines += [f"Figure:      {figure}" for figure in figures]
        if (checkpoint := self.checkpoint(trainer)) is not None:
            lines.append(f"Checkpoint:  {checkpoint}")
        lines += [f"Logs:        {log}" for log in self.logs(trainer)]
        lines.append(f"Fit took {format_duration(time.perf_counter() - self._start)}.")
        return "\n".join(lines)

    @staticmethod
    def checkpoint(trainer: L.Trainer) -> Path | None:
        """``final.ckpt`` where :class:`~lightning_meta.MetaInit` wrote it, else the ``ModelCheckpoint``'s last save."""
        callback = trainer.checkpoint_callback
        directory = getattr(callback, "dirpath", None)
        if directory is not None and (final := Path(directory) / FINAL_CHECKPOINT).exists():
            return final
        last = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
        return Path(last) if last else None

    @staticmethod
    def logs(trainer: L.Trainer) -> list[Path]:
        """Each logger's metrics: ``metrics.csv`` of the CSV logger, the log folder of the others."""
        paths = []
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                paths.append(Path(logger.experiment.metrics_file_path))
            elif (folder := getattr(logger, "log_dir", None) or logger.save_dir) is not None:
                paths.append(Path(folder))
        return paths


def format_duration(seconds: float) -> str:
    """``2 min 26 s`` (``1 h 2 min 5 s`` from an hour on, ``42 s`` below a minute).

    Examples:
        >>> format_duration(146.4), format_duration(3725), format_duration(42)
        ('2 min 26 s', '1 h 2 min 5 s', '42 s')
    """
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours} h"] if hours else []
    parts += [f"{minutes} min"] if hours or minutes else []
    return " ".join([*parts, f"{secs} s"])
