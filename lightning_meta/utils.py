"""Small helpers shared by the meta-learners: parameter filters,
checks of numeric arguments, and the folder of a run's files."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:  # the engine imports this module and no Lightning
    import lightning as L

ParamFilter = Callable[[str, Tensor], bool]


def parameter_filter(include: str | ParamFilter | None) -> ParamFilter:
    """``include`` as a predicate ``(name, parameter) -> bool``: a regular expression searched in the name, a
    predicate as is, or ``None`` for every parameter.

    Examples:
        >>> import torch
        >>> chosen = parameter_filter("^head")
        >>> chosen("head.weight", torch.zeros(1)), chosen("encoder.0.weight", torch.zeros(1))
        (True, False)
    """
    if include is None:
        return lambda name, parameter: True
    if isinstance(include, str):
        pattern = re.compile(include)
        return lambda name, parameter: pattern.search(name) is not None
    return include


FIRST_TASK = "meta/first_task"
"""The first task of a batch of several, which :func:`log_meta_progress` logs beside the last."""

META_COUNTERS = ("meta/task", "meta/step", FIRST_TASK)
"""The names :func:`log_meta_progress` logs the counters under."""


def log_meta_progress(pl_module: L.LightningModule, task: int | Sequence[int], meta_step: int) -> None:
    """Show the meta-learning counters in the progress bar and log them: ``meta/task``, the position in the task
    stream of the task being trained (the last of ``task`` when a batch trains several), ``meta/step``, the
    meta-steps done, and for several tasks ``meta/first_task``, the first of them."""
    tasks = [task] if isinstance(task, int) else list(task)
    counters = {META_COUNTERS[0]: float(tasks[-1]), META_COUNTERS[1]: float(meta_step)}
    if len(tasks) > 1:
        counters[FIRST_TASK] = float(tasks[0])
    pl_module.log_dict(counters, prog_bar=True, on_step=True, on_epoch=False)


def training_loss(output: Any) -> Tensor:
    """The loss in what ``training_step`` returned: a tensor or a mapping with ``"loss"``."""
    loss = output["loss"] if isinstance(output, dict) else output
    if not isinstance(loss, Tensor):
        raise TypeError(f"training_step must return a loss tensor or a dict with 'loss', got {type(output).__name__}")
    return loss


def run_dir(trainer: L.Trainer) -> Path:
    """The versioned folder of a run's files, the one its ``ModelCheckpoint`` puts ``checkpoints/`` in:
    ``<save_dir>/<name>/version_<n>`` for the CSV and TensorBoard loggers, ``<save_dir>/<project>/<run id>`` for W&B
    (and any logger with a ``save_dir``, ``name`` and ``version``), ``default_root_dir`` without a logger. The next
    run gets a new folder, so figures written here are never overwritten. Call it on every process: under DDP rank
    0's answer is broadcast.

    Examples:
        >>> import lightning as L
        >>> run_dir(L.Trainer(logger=False, default_root_dir="outputs/toy"))
        PosixPath('outputs/toy')
    """
    return trainer.strategy.broadcast(own_run_dir(trainer))


def own_run_dir(trainer: L.Trainer) -> Path:
    """:func:`run_dir` as this process sees it, without the broadcast (for code that runs on process 0 only)."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger  # here: the engine imports this module

    if not trainer.loggers:
        return Path(trainer.default_root_dir)
    if isinstance(logger := trainer.loggers[0], (CSVLogger, TensorBoardLogger)):
        return Path(logger.log_dir)
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    parts = [str(part) for part in (logger.name, version) if part]
    return Path(logger.save_dir or trainer.default_root_dir, *parts)
