"""``AtomicCheckpointIO``: Lightning's ``TorchCheckpointIO`` with checkpoints written whole or not at all.

Lightning 2.6 serialises a checkpoint into memory, writes it to a temporary file in the system's temporary folder
and moves that into place; across file systems the move is a copy into the final name, so a disk that fills up (or
a kill) mid-copy leaves a truncated file with a checkpoint's name, which a resume that picks the newest file then
picks. Here ``torch.save`` writes straight into a temporary file beside the checkpoint, which is flushed to disk and
renamed (:func:`~lightning_meta.atomic_files.write_atomically`): a checkpoint's name always holds a complete
checkpoint. A full disk is one line naming the folder, the bytes needed and the newest checkpoint this plugin
wrote, the one to resume from.

``lightning-meta`` uses it for every run; :class:`~lightning_meta.MetaInit` puts it in place of a Trainer's default
``TorchCheckpointIO``; elsewhere pass it to the Trainer.

Examples:
    >>> import lightning as L
    >>> trainer = L.Trainer(plugins=[AtomicCheckpointIO()], logger=False)
    >>> type(trainer.strategy.checkpoint_io).__name__
    'AtomicCheckpointIO'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH
from typing_extensions import override

from lightning_meta.atomic_files import DiskFull, write_atomically


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint into a temporary file in its folder, flush it to disk, then rename it (local paths;
    remote ``scheme://`` paths are Lightning's own). :attr:`written` lists the checkpoints it wrote that are still
    on disk, oldest first."""

    def __init__(self) -> None:
        self.written: list[Path] = []

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        try:
            write_atomically(path, lambda file: torch.save(checkpoint, file))
        except DiskFull as error:
            resume = self.latest()
            hint = f"resume from {resume}, the last complete one" if resume else "no checkpoint was written before"
            raise DiskFull(f"checkpoint not written: {error}; free space, then {hint}", error.errno or 0) from None
        self.written = [p for p in self.written if p != path] + [path]

    @override
    def remove_checkpoint(self, path: _PATH) -> None:
        super().remove_checkpoint(path)
        self.written = [p for p in self.written if p != Path(path)]

    def latest(self) -> Path | None:
        """The newest checkpoint this plugin wrote that is still on disk, if any."""
        return next((path for path in reversed(self.written) if path.is_file()), None)


def use_atomic_checkpoints(trainer: L.Trainer) -> None:
    """Put an :class:`AtomicCheckpointIO` in place of the Trainer's checkpoint IO where that is Lightning's default
    ``TorchCheckpointIO`` (another plugin, a user's choice, stays)."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
