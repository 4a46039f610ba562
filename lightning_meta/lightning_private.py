"""The few places where the library reaches past Lightning's public API, in one module, each with the public
alternative it lacks: the step limit a data module sets, the distributed-sampler setting it reads, the training step
that tasks trained together replace, ``self.log`` muted or collected while a callback runs the user's
``training_step`` again, the logger Lightning's messages go through, a CSV or TensorBoard logger's version, and
W&B's init arguments. ``tests/test_lightning_private.py`` checks every one against the installed Lightning, so that
an upgrade that moves them fails loudly there instead of quietly elsewhere.

Examples:
    >>> import lightning as L
    >>> trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    >>> set_step_limit(trainer, 600)
    >>> trainer.max_steps, trainer.max_epochs
    (600, -1)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.strategies import Strategy

DEFAULT_MAX_EPOCHS = 1000
"""What Lightning sets ``max_epochs`` to when a Trainer is given neither ``max_epochs`` nor ``max_steps``."""


def set_step_limit(trainer: L.Trainer, steps: int) -> None:
    """Stop ``fit`` after ``steps`` optimizer steps, as if ``Trainer(max_steps=steps)`` had been passed.

    Lightning has no public setter: its own tuner (``lightning.pytorch.tuner.lr_finder``) sets the epoch loop's
    ``max_steps`` the same way. The epoch limit Lightning defaults to when no limit was given (1000) is lifted, since
    the step limit now ends the run.
    """
    trainer.fit_loop.epoch_loop.max_steps = steps
    if trainer.fit_loop.max_epochs in (None, DEFAULT_MAX_EPOCHS):
        trainer.fit_loop.max_epochs = -1


def uses_distributed_sampler(trainer: L.Trainer) -> bool:
    """Whether Lightning will wrap the training data's sampler in a ``DistributedSampler`` (a distributed run with
    ``use_distributed_sampler=True``). The Trainer keeps its argument only in its accelerator connector, which is
    what Lightning's own check reads."""
    connector = getattr(trainer, "_accelerator_connector", None)
    return bool(getattr(connector, "is_distributed", False) and getattr(connector, "use_distributed_sampler", False))


@contextmanager
def strategy_training_step(strategy: Strategy, step: Callable[..., Any]) -> Iterator[None]:
    """While open, Lightning's automatic optimisation computes each step's loss with ``step(batch, batch_idx)``
    instead of ``strategy.training_step`` (which calls the module's ``training_step``).

    Lightning's public extension points for this are a Strategy subclass (the user would have to choose ours in place
    of theirs, per strategy) or a wrapper module (the Trainer would hold another module than the user's); the loop
    calls the strategy's bound method, so the instance's attribute is shadowed for the duration of the block.
    """
    strategy.training_step = step  # type: ignore[method-assign]
    try:
        yield
    finally:
        del strategy.training_step


@contextmanager
def muted_logging(pl_module: L.LightningModule, into: Any = None) -> Iterator[None]:
    """Turn ``self.log`` / ``self.log_dict`` into no-ops, e.g. while a callback re-runs ``training_step``, or send them
    to ``into``'s ``log`` / ``log_dict`` methods (to collect what is logged). Nests: on exit the previous ones are back.

    Lightning has no public switch for a module's logging: the methods are shadowed on the instance for the duration
    of the block (the module's class is untouched).
    """
    previous = {name: vars(pl_module)[name] for name in ("log", "log_dict") if name in vars(pl_module)}
    pl_module.log = getattr(into, "log", lambda *args, **kwargs: None)  # type: ignore[method-assign]
    pl_module.log_dict = getattr(into, "log_dict", lambda *args, **kwargs: None)  # type: ignore[method-assign]
    try:
        yield
    finally:
        del pl_module.log, pl_module.log_dict
        for name, method in previous.items():
            setattr(pl_module, name, method)


LIGHTNING_MESSAGES = logging.getLogger("lightning.pytorch.utilities.rank_zero")
"""The logger of Lightning's ``rank_zero_info`` / ``rank_zero_warn`` messages (its tips among them): Lightning sets
``rank_zero_module.log`` to it, and documents no other handle on it."""


def chosen_version(logger: CSVLogger | TensorBoardLogger) -> int | str | None:
    """The version the user gave the logger (``None``: left to the logger, which takes the next free one when first
    asked). Lightning keeps it only in the private ``_version``; ``logger.version`` would pick one."""
    return logger._version


def next_version(logger: CSVLogger | TensorBoardLogger) -> int:
    """The first ``version_<n>`` the logger would take now: Lightning's own listing of its folder."""
    return logger._get_next_version()


def set_version(logger: CSVLogger | TensorBoardLogger, version: int) -> None:
    """Make the logger write into ``version_<version>``, as ``CSVLogger(version=version)`` would."""
    logger._version = version


def drop_unset_anonymous(logger: WandbLogger) -> None:
    """Leave ``anonymous`` out of the arguments ``WandbLogger`` passes to ``wandb.init`` when the user did not set
    it: Lightning 2.6 passes ``anonymous=None``, which wandb answers with a warning that the setting has no effect
    (leaving the key out is what None means). Lightning keeps these arguments in the private ``_wandb_init``."""
    if logger._wandb_init.get("anonymous", "allow") is None:
        del logger._wandb_init["anonymous"]
