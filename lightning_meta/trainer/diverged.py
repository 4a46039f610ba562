"""How the Lightning door reports meta-training that diverged: the error names the checkpoint to resume from.

When the engine raises :class:`~lightning_meta.engine.MetaTrainingDiverged` (or ``MetaEvaluation`` finds theta_0
worse than where the run started), fit stops with that error: no ``final.ckpt`` is written, every checkpoint saved
so far stays as it was, the module holds the last good theta_0, and the message ends with the newest checkpoint the
run saved (or the one it was resumed from), whose theta_0 and meta-optimizer are intact: among those its
``ModelCheckpoint`` callbacks still know and every one the Trainer's
:class:`~lightning_meta.trainer.checkpoint_io.AtomicCheckpointIO` wrote that is still on disk (a ``ModelCheckpoint``
without a monitor only remembers its last file). The command line prints it in one line and exits with status 1.

Examples:
    >>> import lightning as L
    >>> from lightning_meta.engine import MetaTrainingDiverged
    >>> trainer = L.Trainer(logger=False, enable_checkpointing=False)
    >>> error = MetaTrainingDiverged("meta-training diverged: ...; meta_lr is likely too high.", "meta_lr")
    >>> str(with_resume_hint(error, trainer)).endswith("No checkpoint was saved: lower meta_lr and start again.")
    True
"""

from __future__ import annotations

from pathlib import Path

import lightning as L

from lightning_meta.checkpoint_files import UnreadableCheckpoint, load_checkpoint
from lightning_meta.engine import MetaTrainingDiverged


def latest_checkpoint(trainer: L.Trainer, saved_by: int | None = None) -> Path | None:
    """The newest checkpoint file that the run saved (or that it was resumed from; see the module docstring), of those
    saved by global step ``saved_by`` if given; ``None`` if there is none."""
    paths = [trainer.ckpt_path, *getattr(trainer.strategy.checkpoint_io, "written", [])]
    for callback in trainer.checkpoint_callbacks:
        paths += [getattr(callback, "last_model_path", None), getattr(callback, "best_model_path", None)]
        paths += list(getattr(callback, "best_k_models", {}))
    files = {Path(path) for path in paths if path and Path(path).is_file()}
    if saved_by is not None:
        files = {path for path in files if _global_step(path) <= saved_by}
    return max(files, key=lambda path: path.stat().st_mtime_ns, default=None)


def _global_step(path: Path) -> float:
    """The global step a checkpoint was saved at (infinite for a file that does not read)."""
    try:
        return load_checkpoint(path).get("global_step", float("inf"))
    except UnreadableCheckpoint:
        return float("inf")


def with_resume_hint(
    error: MetaTrainingDiverged, trainer: L.Trainer, saved_by: int | None = None
) -> MetaTrainingDiverged:
    """``error`` with the checkpoint to resume from (see the module docstring) appended to its message: the newest
    one, or the newest saved by global step ``saved_by`` (when later ones hold a theta_0 that is part of the
    problem)."""
    knob = "meta_lr" if error.likely_cause == "meta_lr" else "the inner learning rate"
    checkpoint = latest_checkpoint(trainer, saved_by)
    if checkpoint is None and saved_by is None:
        hint = f"No checkpoint was saved: lower {knob} and start again."
    elif checkpoint is None:
        hint = f"No checkpoint holds a theta_0 known to be sound (by step {saved_by}): lower {knob} and start again."
    else:
        hint = f"Lower {knob} and resume from {checkpoint} (its theta_0 and meta-optimizer are intact)."
    return MetaTrainingDiverged(f"{error} {hint}", error.likely_cause, error.theta_0_suspect)
