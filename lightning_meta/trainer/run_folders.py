"""Run folders claimed atomically: two runs started at once with one output folder never share a version.

Lightning's CSV and TensorBoard loggers pick their version as one more than the highest ``version_<n>`` folder
they find, and create it later: two runs started together both find the same one and write into it (one
``summary.csv``, one ``final.ckpt``, checkpoints interleaved). :func:`claim_version` makes the folder itself the
claim: ``os.mkdir`` succeeds for exactly one process, the others move on to the next number. ``lightning-meta``
claims a folder for each of the run's loggers before fit, in the process that starts the run (DDP's other
processes take rank 0's folder, as they always did).

Examples:
    >>> import tempfile
    >>> from lightning.pytorch.loggers import CSVLogger
    >>> root = tempfile.mkdtemp()
    >>> first, second = CSVLogger(root), CSVLogger(root)
    >>> first.version == second.version == 0  # what each would pick on its own
    True
    >>> claim_version(CSVLogger(root)), claim_version(CSVLogger(root))  # claimed: each gets its own
    (0, 1)
    >>> import shutil; shutil.rmtree(root)
"""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from lightning_meta.lightning_private import chosen_version, next_version, set_version


def claim_version(logger: Logger) -> int | str | None:
    """Give a CSV or TensorBoard logger whose version was left to it the first free ``version_<n>`` folder,
    created here; returns the logger's version (``None`` for another kind of logger, left alone). A version set
    by the user, and folders that are not local, stay as they are."""
    if not isinstance(logger, (CSVLogger, TensorBoardLogger)):
        return None
    if chosen_version(logger) is not None or "://" in str(logger.root_dir):
        return logger.version
    root = Path(logger.root_dir)
    root.mkdir(parents=True, exist_ok=True)
    version = next_version(logger)
    while True:
        try:
            os.mkdir(root / f"version_{version}")
        except FileExistsError:  # another run claimed it between the listing and now
            version += 1
            continue
        set_version(logger, version)
        return version
