"""The checks of arguments that several parts share, written once: sizes that must be positive, and choices.

Plain Python (the engine imports it, and no Lightning).

Examples:
    >>> check_positive("TaskDataModule", inner_steps=5, meta_batch_size=None)  # None: not given, fine
    >>> check_positive("TaskDataModule", inner_steps=0)
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


def check_positive(owner: str, minimum: int = 1, **sizes: int | None) -> None:
    """Fail with ``"<owner>: <name> must be >= <minimum>, got <value>"`` for the first size below ``minimum``;
    ``None`` (not given) passes."""
    for name, value in sizes.items():
        if value is not None and value < minimum:
            raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")


def check_choice(owner: str, name: str, value: object, choices: Sequence[object]) -> None:
    """Fail with a message naming the valid choices unless ``value`` is one of them."""
    if value not in choices:
        listed = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"{owner}: {name} must be one of {listed}, got {value!r}")
