"""Figures: mean learning curves with a band of one standard deviation across tasks.

Examples:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from lightning_meta.plotting import plot_learning_curves
    >>> loss, error = torch.rand(3, 10), torch.rand(3, 10)
    >>> path = plot_learning_curves({"init": (loss, error)}, Path(tempfile.mkdtemp()) / "curves.png", "toy")
    >>> path.exists()
    True
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from torch import Tensor


def plot_learning_curves(curves: dict[str, tuple[Tensor, Tensor]], path: Path, title: str) -> Path:
    """Two panels (training loss, training error) of ``{label: (loss [tasks, steps], error [tasks, steps])}``."""
    figure = Figure(figsize=(10, 4), layout="constrained")  # no pyplot: works under any backend, leaves it alone
    axes = figure.subplots(1, 2)
    for label, pair in curves.items():
        for axis, values in zip(axes, pair):
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
