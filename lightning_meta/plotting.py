"""Figures (mean learning curves with a band of one standard deviation across tasks, returns of held-out games,
language-model losses against the position in the document) and sending them to Lightning's loggers.

Examples:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from lightning_meta.plotting import plot_learning_curves
    >>> loss, error = torch.rand(3, 10), torch.rand(3, 10)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     plot_learning_curves({"init": (loss, error)}, Path(folder) / "curves.png", "toy").exists()
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.image import imread
from torch import Tensor


def plot_learning_curves(curves: dict[str, tuple[Tensor, Tensor | None]], path: Path, title: str) -> Path:
    """Two panels (training loss, training error) of ``{label: (loss [tasks, steps], error [tasks, steps])}``; the
    loss alone where the tasks have no error (not classifiers: ``error`` is ``None``)."""
    panels = 2 if all(error is not None for _, error in curves.values()) else 1
    figure = Figure(figsize=(5 * panels, 4), layout="constrained")  # no pyplot: works under any backend
    axes = figure.subplots(1, panels, squeeze=False)[0]
    for label, pair in curves.items():
        for axis, values in zip(axes, pair):
            assert values is not None
            steps = range(1, values.shape[-1] + 1)
            mean, std = values.mean(0), values.std(0) if values.shape[0] > 1 else values.mean(0) * 0
            axis.plot(steps, mean, label=label)
            axis.fill_between(steps, mean - std, mean + std, alpha=0.2)
    for axis, name in zip(axes, ("training loss", "training error")):
        axis.set_xlabel("step on the held-out task")
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle(f"Mean learning curves on {title} (band: one std across tasks)")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def log_image(loggers: Sequence[Any], key: str, path: Path, step: int) -> None:
    """Send a PNG to every logger that takes images: W&B and Neptune (``log_image``), TensorBoard (``add_image``)."""
    for logger in loggers:
        if hasattr(logger, "log_image"):
            logger.log_image(key=key, images=[str(path)])
            continue
        experiment: Any = getattr(logger, "experiment", None)  # the Logger base class does not declare it
        if hasattr(experiment, "add_image"):
            experiment.add_image(key, imread(path)[..., :3], step, dataformats="HWC")


def plot_return_curves(curves: dict[str, dict[str, Tensor]], steps: Tensor, path: Path, ylabel: str) -> Path:
    """One panel per game of ``{game: {label: returns [seeds, points]}}`` against ``steps [points]``: the mean over
    seeds with a band of one standard deviation (NaN where a seed has no finished episode yet)."""
    figure = Figure(figsize=(5 * len(curves), 4), layout="constrained")
    axes = figure.subplots(1, len(curves), squeeze=False)
    for axis, (game, runs) in zip(axes[0], curves.items()):
        for label, returns in runs.items():
            mean = returns.nanmean(0)
            std = (returns - mean).square().nanmean(0).sqrt()
            axis.plot(steps, mean, label=f"{label} ({returns.shape[0]} seeds)")
            axis.fill_between(steps, mean - std, mean + std, alpha=0.2)
        axis.set_title(game)
        axis.set_xlabel("environment steps (agent steps of 4 frames)")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        axis.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def plot_position_curves(
    panels: dict[str, dict[str, Tensor]],
    positions: Tensor,
    path: Path,
    title: str,
    mark: tuple[str, float] | None = None,
    bands: dict[str, dict[str, Tensor]] | None = None,
) -> Path:
    """One panel per ``{ylabel: {label: values [points]}}`` against ``positions [points]`` (bytes read), e.g. bits per
    byte against the position in the document; ``mark = (label, position)`` draws a dashed vertical line there;
    ``bands`` (same keys, half-widths) shades ``values +- half-width`` where it is finite."""
    figure = Figure(figsize=(5.5 * len(panels), 4), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)
    labels = dict.fromkeys(label for curves in panels.values() for label in curves)
    colors = {label: f"C{i}" for i, label in enumerate(labels)}  # one colour per label in every panel
    for axis, (ylabel, curves) in zip(axes[0], panels.items()):
        for label, values in curves.items():
            axis.plot(positions, values, label=label, color=colors[label])
            half = (bands or {}).get(ylabel, {}).get(label)
            if half is not None:
                axis.fill_between(positions, values - half, values + half, color=colors[label], alpha=0.15, lw=0)
        if mark is not None:
            axis.axvline(mark[1], color="grey", linestyle="--", label=mark[0])
        axis.set_xlabel("position in the document (bytes read)")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    figure.suptitle(title, fontsize="medium")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path
