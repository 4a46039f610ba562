"""``MetaProgressBar``: one progress bar for the whole run, in meta-steps, whose ETA counts the held-out evaluations.

The training bar spans the run: the ``max_steps`` optimizer steps and the held-out training steps that the
evaluation callbacks plan to take before fit ends (:class:`~lightning_meta.protocols.PlansHeldOutSteps`:
:class:`~lightning_meta.MetaEvaluation`, :class:`~lightning_meta.AtariEvaluation`), each counted as one step; its
ETA is the run's. Its label says the meta-steps done of the run's total and the task being trained (``tasks a-b``
where a batch holds several): the meta-steps come from the data module's task schedule under a meta-learning
callback (:class:`~lightning_meta.MetaInit`) or from a module that counts its own
(:class:`~lightning_meta.protocols.CountsMetaSteps`: MAML, learned optimizers, the dynamical language model); a
module's pretraining phase (:class:`~lightning_meta.protocols.Pretrains`) is labelled ``Pretraining``. While held-out
tasks train, the bar goes on counting and a second, labelled bar below it counts the evaluation's own steps
(:func:`held_out_progress`). The bar closes when the run's work is done, and messages logged while it is open
(Lightning's ``Trainer.fit stopped``, a checkpoint's path) are printed on a line of their own.

``lightning-meta`` adds this bar to every run unless ``--trainer.enable_progress_bar=false``; in a plain Trainer,
:class:`~lightning_meta.MetaInit` (``Leap``, ``Reptile``) and :class:`~lightning_meta.MetaEvaluation` put it in
place of Lightning's default ``TQDMProgressBar`` (:func:`use_meta_progress_bar`); any other progress bar is kept.

Examples:
    >>> import lightning as L
    >>> from lightning_meta import Leap
    >>> trainer = L.Trainer(callbacks=[Leap()], logger=False)   # fit shows a MetaProgressBar
    >>> trainer = L.Trainer(callbacks=[Leap(), MetaProgressBar(refresh_rate=10)], logger=False)
    >>> MetaProgressBar.label(done=3, total=10, task=17)
    'Meta-training: 3/10 meta-steps, task 17'
    >>> MetaProgressBar.label(done=560, total=600, task=559, first_task=556)
    'Meta-training: 560/600 meta-steps, tasks 556-559'
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_meta.data.datamodule import task_datamodule
from lightning_meta.lightning_private import LIGHTNING_MESSAGES
from lightning_meta.protocols import CountsMetaSteps, PlansHeldOutSteps, Pretrains, TrainsTasksApart, implements
from lightning_meta.utils import FIRST_TASK, META_COUNTERS

HIDDEN = ("v_num", *META_COUNTERS)
"""Progress-bar metrics left out of the bar's postfix: the counters are in its label."""


def meta_step_counter(trainer: L.Trainer) -> CountsMetaSteps | None:
    """What counts the run's meta-steps: the data module's task schedule under a meta-learning callback, a module
    that is its own meta-learner, or nothing (ordinary training)."""
    learners = [c for c in trainer.callbacks if implements(c, TrainsTasksApart, "MetaProgressBar")]  # type: ignore[attr-defined]
    data = task_datamodule(trainer)
    if learners and data is not None:
        return data.schedule
    module = trainer.lightning_module
    return module if implements(module, CountsMetaSteps, "MetaProgressBar") else None


def use_meta_progress_bar(trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
    """Put a :class:`MetaProgressBar` in place of Lightning's default ``TQDMProgressBar`` (that exact class, the one
    a Trainer adds when given no progress bar) in ``trainer.callbacks``, with its refresh rate and position; any
    other progress bar, and a Trainer without one, are left as they are. Call it from a ``setup`` hook."""
    for index, callback in enumerate(trainer.callbacks):  # type: ignore[attr-defined]
        if type(callback) is TQDMProgressBar:
            bar = MetaProgressBar(callback.refresh_rate, callback.process_position)
            bar.setup(trainer, pl_module, stage)  # Lightning calls it again if the bar comes later in the list
            trainer.callbacks[index] = bar  # type: ignore[attr-defined]


class _ClearBars(logging.Filter):
    """Erase the open bars before a message is logged, so that it gets a line of its own (the bars are drawn again
    at their next update); the message itself goes to the logger's handlers unchanged."""

    def __init__(self, bars: Callable[[], list[Tqdm]]) -> None:
        super().__init__()
        self.bars = bars

    def filter(self, record: logging.LogRecord) -> bool:
        for bar in self.bars():
            bar.clear()
        return True


class MetaProgressBar(TQDMProgressBar):
    """One bar for the whole run, training and held-out steps, labelled with meta-steps done of the total and the
    current task; a second, labelled bar while held-out tasks train (see the module docstring). Runs without
    ``max_steps`` (epoch-based) get Lightning's bar per epoch.

    Args:
        refresh_rate: update the bars every this many steps.
        process_position: lines to offset the bars by (several bars of several Trainers at once).
    """

    def __init__(self, refresh_rate: int = 1, process_position: int = 0) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position)
        self._held_out_done = 0  # held-out steps taken in this fit
        self._held_out_bars: list[Tqdm] = []
        self._clear_bars = _ClearBars(self._open_bars)

    @staticmethod
    def label(done: int | None, total: int | None, task: int | None, first_task: int | None = None) -> str:
        """The training bar's label: ``Meta-training: <done>/<total> meta-steps, task <task>`` (the parts known;
        ``tasks <first_task>-<task>`` for a batch of several tasks)."""
        parts = [f"{done}/{total} meta-steps"] if done is not None else []
        several = first_task is not None and first_task != task
        if task is not None:
            parts.append(f"tasks {first_task}-{task}" if several else f"task {task}")
        if not parts:
            return "Training"
        return ("Meta-training: " if done is not None else "Training: ") + ", ".join(parts)

    def _whole_run(self, trainer: L.Trainer) -> bool:
        return trainer.max_steps > 0

    def _open(self) -> bool:
        return self._train_progress_bar is not None and not self.train_progress_bar.disable

    def _open_bars(self) -> list[Tqdm]:
        bars = [self.train_progress_bar] if self._open() else []
        return bars + [bar for bar in self._held_out_bars if not bar.disable]

    def _position(self, trainer: L.Trainer) -> int:
        return trainer.global_step + self._held_out_done

    def _describe(self, trainer: L.Trainer) -> None:
        module, step = trainer.lightning_module, trainer.global_step
        pretraining = module.pretraining_steps if implements(module, Pretrains, "MetaProgressBar") else 0
        if step < pretraining:
            self.train_progress_bar.set_description(f"Pretraining: {step}/{pretraining} steps", refresh=False)
            return
        counter = meta_step_counter(trainer)
        metrics = trainer.progress_bar_metrics
        task, first = metrics.get(META_COUNTERS[0]), metrics.get(FIRST_TASK)
        done, total = (
            (counter.meta_steps_done(step), counter.meta_steps_done(trainer.max_steps))
            if counter is not None
            else (None, None)
        )
        label = self.label(done, total, None if task is None else int(task), None if first is None else int(first))
        self.train_progress_bar.set_description(label, refresh=False)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self._whole_run(trainer):
            planners = [*trainer.callbacks, pl_module]  # type: ignore[attr-defined]
            planned = [p for p in planners if implements(p, PlansHeldOutSteps, "MetaProgressBar")]
            bar = self.train_progress_bar
            bar.unit = "step"
            self._held_out_done = 0
            self._describe(trainer)
            bar.reset(total=trainer.max_steps + sum(p.held_out_steps_left(trainer) for p in planned))
            bar.initial = bar.n = trainer.global_step  # a resumed run: the ETA counts the steps left
            if not bar.disable:
                LIGHTNING_MESSAGES.addFilter(self._clear_bars)

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
        if not self._open():
            return
        bar = self.train_progress_bar
        position = self._position(trainer)
        if self._should_update(trainer.global_step, trainer.max_steps) or position >= bar.total:
            self._describe(trainer)
            bar.n = position
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes the bar
        if position >= bar.total:
            self._close()

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._whole_run(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._whole_run(trainer):
            super().on_train_end(trainer, pl_module)  # the whole-run bar stays open for the evaluations at the end

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._close()

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self._open():
            self.train_progress_bar.close()
        LIGHTNING_MESSAGES.removeFilter(self._clear_bars)

    @override
    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return {k: v for k, v in super().get_metrics(trainer, pl_module).items() if k not in HIDDEN}

    @contextmanager
    def held_out(self, label: str, total: int) -> Iterator[Callable[[], None]]:
        """A second bar, ``label`` and ``total`` steps, below the training bar, which counts them too; yields the
        function that advances both by one step. It disappears when the block ends."""
        trainer = self.trainer
        main = self.train_progress_bar if self._open() else None
        if main is not None:  # the meta-step just finished, before its evaluation starts
            self._describe(trainer)
            main.n = self._position(trainer)
            main.refresh()
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
        self._held_out_bars.append(bar)

        def advance() -> None:
            bar.update()
            if main is not None and not main.disable:
                self._held_out_done += 1
                main.update()

        try:
            yield advance
        finally:
            bar.close()
            self._held_out_bars.remove(bar)
            if main is not None and self._open() and self._position(trainer) >= main.total:
                main.n = main.total
                main.refresh()
                self._close()


@contextmanager
def held_out_progress(trainer: L.Trainer, label: str, total: int) -> Iterator[Callable[[], None]]:
    """Show held-out work of ``total`` steps as a labelled bar of the Trainer's :class:`MetaProgressBar`, which counts
    them in the run's bar too; yields the function to call after each step. With another progress bar, or none,
    ``label`` is logged once instead.

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
