"""``CheckpointOnSignal``: SIGTERM or SIGINT during fit saves a resumable checkpoint, then stops the run.

A scheduler that preempts a job (SLURM, Kubernetes, ``timeout``) sends SIGTERM and kills the process a little
later; Ctrl+C sends SIGINT. Lightning on its own stops at SIGTERM with exit status 0 and saves nothing, so the work
since the last interval checkpoint is lost and the scheduler thinks the run succeeded. With this callback the signal
is recorded (:mod:`lightning_meta.trainer.stop_signals`) and answered at the next optimizer step boundary (after the
step, never inside a gradient-accumulation window): the run's full state goes to ``interrupted.ckpt`` beside the
``ModelCheckpoint``'s files (in the run's ``checkpoints/`` folder without one), one line names the file and how to
resume, and fit stops through Lightning's own SIGTERM exit, whose ``SystemExit`` carries the status
``128 + signal`` (143 for SIGTERM, 130 for SIGINT). Resuming from the file continues exactly where the run stopped:
the same steps, the same meta-state, the same logged metrics as a run that was never stopped. Under DDP the
processes agree at each step boundary (one boolean all-reduce; Lightning itself broadcasts its SIGTERM flag at every
step) and stop together. A callback whose state resumes only at some steps
(:class:`~lightning_meta.protocols.ResumePoints`: a task-parallel :class:`~lightning_meta.MetaInit` on several
processes, whose partial meta-batch lives on every process) makes the save wait for the next such step: there, the
next meta-step boundary.

A signal after the last training step (while ``final.ckpt`` is written or the final evaluation runs) is answered
by the signal's usual effect once training has ended; ``final.ckpt`` then holds theta_0. ``lightning-meta`` adds
the callback to every run and prints the command that resumes it.

Examples:
    >>> import lightning as L
    >>> trainer = L.Trainer(callbacks=[CheckpointOnSignal()], max_steps=10, logger=False)
    >>> # trainer.fit(...) under SIGTERM: SystemExit(143), the state in <checkpoints>/interrupted.ckpt
"""

from __future__ import annotations

import shlex
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.optim import Optimizer
from typing_extensions import override

from lightning_meta.protocols import ResumePoints
from lightning_meta.trainer import stop_signals
from lightning_meta.utils import run_dir

INTERRUPTED = "interrupted.ckpt"
"""The file name of the checkpoint saved at a stop signal."""


class CheckpointOnSignal(L.Callback):
    """Save the run to ``filename`` and stop, at the optimizer step boundary after SIGTERM or SIGINT (see the module
    docstring). After a stop, :attr:`path` is the file and :attr:`signum` the signal.

    Args:
        filename: the checkpoint's name, in the ``ModelCheckpoint``'s folder (else ``checkpoints/`` in the run's
            folder, :func:`~lightning_meta.utils.run_dir`).
        resume_command: the command that ran fit, to print with ``--ckpt_path=<file>`` added (its own
            ``--ckpt_path`` left out); ``None``: the line says to pass ``ckpt_path`` to ``fit``.
    """

    def __init__(self, filename: str = INTERRUPTED, resume_command: Sequence[str] | None = None) -> None:
        self.filename = filename
        self.resume_command = None if resume_command is None else list(resume_command)
        self.path: Path | None = None
        self.signum: int | None = None
        self._catching: Any = None
        self._stepped = False

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Move this callback after every other one but the checkpoint callbacks, so that it saves what they did at
        the step, as ``ModelCheckpoint`` does. (A new list: the hook loop running now goes on over the old one.)"""
        if stage == "fit":
            others = [c for c in trainer.callbacks if c is not self]  # type: ignore[attr-defined]
            last = [c for c in others if isinstance(c, Checkpoint)]
            trainer.callbacks = [c for c in others if c not in last] + [self] + last  # type: ignore[attr-defined]

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Record stop signals from now on, in place of the SIGTERM handler Lightning installed just before (it would
        stop after the current batch, unsaved, even inside an accumulation window)."""
        self.path = self.signum = None
        self._stop_catching()
        self._catching = stop_signals.catching_stop_signals()
        self._catching.__enter__()
        if trainer.received_sigterm:  # between Lightning's handler and this one
            trainer._signal_connector.received_sigterm = False
            stop_signals.request(signal.SIGTERM)

    @override
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Optimizer) -> None:
        self._stepped = True

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        stepped, self._stepped = self._stepped, False
        if pl_module.automatic_optimization and not stepped:  # inside an accumulation window: wait for its step
            return
        signum = stop_signals.received()
        if trainer.world_size > 1:  # every process stops at the same step
            if not trainer.strategy.reduce_boolean_decision(signum is not None, all=False):
                return
            signum = trainer.strategy.broadcast(signum or signal.SIGTERM)
        elif signum is None:
            return
        callbacks = trainer.callbacks  # type: ignore[attr-defined]
        if not all(c.resumable_now(trainer) for c in callbacks if isinstance(c, ResumePoints)):
            return  # e.g. inside a task-parallel meta-batch on several processes: wait for its end
        directory = getattr(trainer.checkpoint_callback, "dirpath", None)
        path = Path(directory) if directory is not None else run_dir(trainer) / "checkpoints"
        trainer.save_checkpoint(path / self.filename, weights_only=False)  # the whole state: a run resumes from it
        self.path, self.signum = path / self.filename, signum
        stop_signals.acknowledge()
        rank_zero_info(self.report(trainer.global_step))
        trainer._signal_connector.received_sigterm = True  # Lightning's own exit at the end of this step

    def report(self, step: int) -> str:
        """The line printed at a stop: the signal, the step, the checkpoint and the command that resumes."""
        assert self.path is not None and self.signum is not None
        name = signal.Signals(self.signum).name
        if self.resume_command is None:
            resume = f"pass ckpt_path='{self.path}' to fit"
        else:
            resume = shlex.join([*without_ckpt_path(self.resume_command), f"--ckpt_path={self.path}"])
        return f"lightning-meta: stopped by {name} after step {step}; the run is saved in {self.path}; resume: {resume}"

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_catching()  # training is over: a signal now has its usual effect

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and self.signum is not None:
            exception.code = stop_signals.exit_status(self.signum)
        self._stop_catching()

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._stop_catching()

    def _stop_catching(self) -> None:
        if self._catching is not None:
            catching, self._catching = self._catching, None
            catching.__exit__(None, None, None)


def without_ckpt_path(args: Sequence[str]) -> list[str]:
    """Command-line arguments without their ``--ckpt_path`` (``--ckpt_path=FILE`` or ``--ckpt_path FILE``).

    Examples:
        >>> without_ckpt_path(["fit", "--ckpt_path", "a.ckpt", "--config", "x.yaml", "--ckpt_path=b.ckpt"])
        ['fit', '--config', 'x.yaml']
    """
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        elif not arg.startswith("--ckpt_path="):
            kept.append(arg)
    return kept
