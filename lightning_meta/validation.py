"""The checks of arguments that every part shares, written once: numbers in range (sizes >= 1, rates > 0), and choices.

Plain Python (the engine imports it, and no Lightning).

Examples:
    >>> check_range("TaskDataModule", 1, inner_steps=5, meta_batch_size=None)  # None: not given, fine
    >>> check_range("TaskDataModule", 1, inner_steps=0)
    Traceback (most recent call last):
    ...
    ValueError: TaskDataModule: inner_steps must be >= 1, got 0
    >>> check_choice("MetaLearner", "parallel", "model", PARALLEL)
    Traceback (most recent call last):
    ...
    ValueError: MetaLearner: parallel must be one of 'tasks', 'data', got 'model'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

Parallel = Literal["tasks", "data"]
"""How DDP processes share a meta-batch: ``"tasks"`` (each its own tasks) or ``"data"`` (shards of the same task)."""

PARALLEL: tuple[Parallel, ...] = ("tasks", "data")


def check_range(owner: str, low: float, strict: bool = False, **values: float | None) -> None:
    """Raise ``ValueError("<owner>: <name> must be >= low, got <value>")`` (``> low`` when ``strict``) for the first of
    ``values`` out of range; ``None`` (an optional argument left out) passes. The message names the argument, so that
    ``lightning-meta`` reports the user's key for it (:mod:`lightning_meta.cli_errors`).

    Examples:
        >>> check_range("ConvClassifier", 0, strict=True, lr=0.1, pretrain_lr=None)
        >>> check_range("ConvClassifier", 1, channels=0)
        Traceback (most recent call last):
        ...
        ValueError: ConvClassifier: channels must be >= 1, got 0
    """
    for name, value in values.items():
        if value is not None and not (value > low if strict else value >= low):
            raise ValueError(f"{owner}: {name} must be {'>' if strict else '>='} {low:g}, got {value}")


def check_choice(owner: str, name: str, value: object, choices: Sequence[object]) -> None:
    """Fail with a message naming the valid choices unless ``value`` is one of them."""
    if value not in choices:
        listed = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"{owner}: {name} must be one of {listed}, got {value!r}")
