"""``MetaProgressBar``: Lightning's tqdm progress bar counting the whole run, in meta-steps, with its ETA.

The training bar spans the run (``max_steps`` optimizer steps, not one epoch), so its ETA is the run's. Its label
says the meta-steps done of the run's total and the task being trained: the meta-steps come from the Trainer's
:class:`~lightning_meta.MetaInit` (its task schedule) or from a module that counts its own
(:class:`~lightning_meta.protocols.CountsMetaSteps`: MAML, learned optimizers, the dynamical language model); the
task from the ``meta/task`` counter every meta-learner logs. While held-out tasks train
(:class:`~lightning_meta.MetaEvaluation`, :class:`~lightning_meta.AtariEvaluation`, the dynamical language model's
final reading) a second, labelled bar counts their steps (:func:`held_out_progress`). ``lightning-meta`` adds this
bar to every run unless ``--trainer.enable_progress_bar=false``.

Examples:
    >>> import lightning as L
    >>> from lightning_meta import Leap
    >>> from lightning_meta.callbacks import MetaProgressBar
    >>> trainer = L.Trainer(callbacks=[Leap(), MetaProgressBar()], logger=False)
    >>> MetaProgressBar.label(done=3, total=10, task=17)
    'Meta-training: 3/10 meta-steps, task 17'
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_meta.callbacks.meta_init import MetaInit
from lightning_meta.protocols import CountsMetaSteps, implements
from lightning_meta.utils import META_COUNTERS

HIDDEN = ("v_num", *META_COUNTERS)
"""Progress-bar metrics left out of the bar's postfix: the counters are in its label."""


class MetaProgressBar(TQDMProgressBar):
    """One bar for the whole run, labelled with meta-steps done of the total and the current task; a second,
    labelled bar while held-out tasks train (see the module docstring). Runs without ``max_steps`` (epoch-based)
    get Lightning's bar per epoch.

    Args:
        refresh_rate: update the bars every this many steps.
        process_position: lines to offset the bars by (several bars of several Trainers at once).
    """

    def __init__(self, refresh_rate: int = 1, process_position: int = 0) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position)

    @staticmethod
    def label(done: int | None, total: int | None, task: int | None) -> str:
        """The training bar's label: ``Meta-training: <done>/<total> meta-steps, task <task>`` (the parts known)."""
        parts = [f"{done}/{total} meta-steps"] if done is not None else []
        parts += [f"task {task}"] if task is not None else []
        if not parts:
            return "Training"
        return ("Meta-training: " if done is not None else "Training: ") + ", ".join(parts)

    @staticmethod
    def _counter(trainer: L.Trainer) -> CountsMetaSteps | None:
        meta = next((c for c in trainer.callbacks if isinstance(c, MetaInit)), None)  # type: ignore[attr-defined]
        if meta is not None:
            return meta.schedule
        module = trainer.lightning_module
        return module if implements(module, CountsMetaSteps, "MetaProgressBar") else None

    def _whole_run(self, trainer: L.Trainer) -> bool:
        return trainer.max_steps > 0

    def _describe(self, trainer: L.Trainer) -> None:
        counter = self._counter(trainer)
        task = trainer.progress_bar_metrics.get(META_COUNTERS[0])
        done, total = (
            (counter.meta_steps_done(trainer.global_step), counter.meta_steps_done(trainer.max_steps))
            if counter is not None
            else (None, None)
        )
        label = self.label(done, total, None if task is None else int(task))
        self.train_progress_bar.set_description(label, refresh=False)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self._whole_run(trainer):
            bar = self.train_progress_bar
            bar.reset(total=trainer.max_steps)
            bar.initial = bar.n = trainer.global_step  # a resumed run: the ETA counts the steps left
            bar.unit = "step"
            self._describe(trainer)

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if not self._whole_run(trainer):
            super().on_train_epoch_start(trainer, *args)

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._whole_run(trainer):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar = self.train_progress_bar
        step = trainer.global_step
        if not bar.disable and self._should_update(step, bar.total):
            self._describe(trainer)
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes the bar

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._whole_run(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    @override
    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return {k: v for k, v in super().get_metrics(trainer, pl_module).items() if k not in HIDDEN}

    @contextmanager
    def held_out(self, label: str, total: int) -> Iterator[Callable[[], None]]:
        """A second bar, ``label`` and ``total`` steps, below the training bar; yields the function that advances
        it by one step. It disappears when the block ends."""
        bar = Tqdm(
            desc=label,
            total=total,
            unit="step",
            position=2 * self.process_position + 1,
            disable=self.is_disabled,
            leave=False,
            dynamic_ncols=True,
            file=sys.stdout,
            bar_format=self.BAR_FORMAT,
        )

        def advance() -> None:
            bar.update()

        try:
            yield advance
        finally:
            bar.close()


@contextmanager
def held_out_progress(trainer: L.Trainer, label: str, total: int) -> Iterator[Callable[[], None]]:
    """Show held-out work of ``total`` steps as a labelled bar of the Trainer's :class:`MetaProgressBar`; yields the
    function to call after each step. With another progress bar, or none, ``label`` is logged once instead.

    Examples:
        >>> import lightning as L
        >>> trainer = L.Trainer(enable_progress_bar=False, logger=False)
        >>> with held_out_progress(trainer, "Held-out evaluation", total=3) as advance:
        ...     for step in range(3):
        ...         advance()
    """
    bar = trainer.progress_bar_callback
    if isinstance(bar, MetaProgressBar) and bar.is_enabled:
        with bar.held_out(label, total) as advance:
            yield advance
    else:
        rank_zero_info(label)
        yield lambda: None
