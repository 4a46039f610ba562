"""The few places where the library reaches past Lightning's public API, in one module, each with the public
alternative it lacks. ``tests/test_lightning_private.py`` checks every one against the installed Lightning, so that
an upgrade that moves them fails loudly there instead of quietly elsewhere.

Examples:
    >>> import lightning as L
    >>> trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    >>> set_step_limit(trainer, 600)
    >>> trainer.max_steps, trainer.max_epochs
    (600, -1)
"""

from __future__ import annotations

import lightning as L

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
