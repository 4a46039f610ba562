"""Small helpers for calling a user's LightningModule from a callback without side effects."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
from torch import Tensor


@contextmanager
def muted_logging(pl_module: L.LightningModule) -> Iterator[None]:
    """Turn ``self.log`` / ``self.log_dict`` into no-ops, e.g. while a callback re-runs ``training_step``."""
    pl_module.log = pl_module.log_dict = lambda *args, **kwargs: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        del pl_module.log, pl_module.log_dict


def training_loss(output: Any) -> Tensor:
    """The loss in what ``training_step`` returned: a tensor or a mapping with ``"loss"``."""
    loss = output["loss"] if isinstance(output, dict) else output
    if not isinstance(loss, Tensor):
        raise TypeError(f"training_step must return a loss tensor or a dict with 'loss', got {type(output).__name__}")
    return loss
