"""``MetaEvaluation``: how fast does a model learn held-out tasks from the current meta-learned init?

Every ``every_n_meta_steps`` meta-steps and at the end of fit, a copy of the module starts from theta_0 (read from
the :class:`~lightning_meta.callbacks.MetaInit` callback of the Trainer, or the module's own weights when there is
none) and trains on each held-out task for ``inner_steps`` steps with the module's own ``configure_optimizers`` (or
``configure_inner_optimizer``, where a MAML module has one) and ``training_step``. It records the training loss and
error of every step and the final accuracy on the task's held-out images and on its training images, logs their
means and learning-curve AUCs, and draws the mean curves next to those of the weights the run started from. The
training run itself is left untouched: weights, meta-state and RNG streams.

A module with a ``start_task(num_classes)`` method (e.g. :class:`~lightning_meta.recipes.DatasetClassifier`, whose
head is a task parameter) has it called at the start of every held-out task. With ``early_stopping`` each held-out
task trains on part of its training images, stops when the error on the rest stops improving and is scored with
the weights of the lowest validation error (:class:`~lightning_meta.callbacks.early_stopping.HeldOutEarlyStopping`).

With a meta-learning callback and ``baseline=True`` the evaluation also guards the run: theta_0 that trains the
held-out tasks far worse than the weights the run started from (a meta learning rate that wrecked it, with no task
ever blowing up) stops fit with :class:`~lightning_meta.engine.MetaTrainingDiverged`, naming the newest checkpoint
saved by the last evaluation that found theta_0 sound (``worse_than_start``).

Examples:
    >>> import lightning as L
    >>> from lightning_meta import Leap, MetaEvaluation
    >>> callbacks = [Leap(meta_batch_size=5), MetaEvaluation(split="test", every_n_meta_steps=10)]
    >>> trainer = L.Trainer(callbacks=callbacks, max_steps=1000, logger=False, enable_checkpointing=False)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from lightning_meta.callbacks.diverged import with_resume_hint
from lightning_meta.callbacks.early_stopping import HeldOutEarlyStopping
from lightning_meta.callbacks.held_out import HeldOutTraining
from lightning_meta.callbacks.meta_init import MetaInit
from lightning_meta.callbacks.progress import held_out_progress
from lightning_meta.engine import MetaTrainingDiverged
from lightning_meta.metrics import TrainingPath, curve_auc
from lightning_meta.plotting import log_image, plot_learning_curves
from lightning_meta.protocols import CountsMetaSteps, HeldOutTasks, implements, require
from lightning_meta.tasks.family import Split, Task, dataset_length
from lightning_meta.tasks.stream import TaskBatchSampler, TaskStreamDataset, collate_task_batch
from lightning_meta.utils import run_dir

SCORING_BATCH = 1024
"""Images per forward pass when scoring a data set (with batch statistics: the statistics of each such batch)."""


@dataclass
class HeldOutCurves:
    """Per-task learning curves: ``loss`` and ``error`` are ``[tasks, inner_steps]`` (each step's training batch,
    before the step); the rest are ``[tasks]``, scored after training: ``test_accuracy`` on the task's held-out
    images and ``train_accuracy`` on the images it trained on, both with the evaluation's BatchNorm mode;
    ``test_accuracy_batch_statistics`` and ``test_accuracy_running_statistics`` on the held-out images with each
    BatchNorm mode named (train mode: every scoring batch normalised with its own statistics; eval mode: the running
    statistics the task's training steps accumulated, as the Leap authors score); ``steps`` the steps each task
    trained (fewer than ``inner_steps`` when early stopping cut it short: the curves then stay at their last
    value); ``path_length`` the length of each task's training path in the joint (theta, loss) space, Leap's
    objective (:func:`~lightning_meta.metrics.path_length`: theta is all the module's parameters, the loss each
    step's training loss; empty in curves saved before it was measured)."""

    loss: Tensor
    error: Tensor
    test_accuracy: Tensor
    train_accuracy: Tensor
    steps: Tensor
    test_accuracy_batch_statistics: Tensor
    test_accuracy_running_statistics: Tensor
    path_length: Tensor = field(default_factory=lambda: torch.empty(0))

    def summary(self) -> dict[str, float]:
        """Means over the tasks: learning-curve AUCs, the loss of the last step, the final training error (all the
        task's training images after the last step), the held-out accuracies and the mean path length."""
        return {
            "train_loss_auc": float(curve_auc(self.loss).mean()),
            "train_error_auc": float(curve_auc(self.error).mean()),
            "final_train_loss": float(self.loss[:, -1].mean()),
            "final_train_error": float(1 - self.train_accuracy.mean()),
            "test_accuracy": float(self.test_accuracy.mean()),
            "test_accuracy_batch_statistics": float(self.test_accuracy_batch_statistics.mean()),
            "test_accuracy_running_statistics": float(self.test_accuracy_running_statistics.mean()),
            "path_length": float(self.path_length.mean()),
        }


class _LogitsHook:
    """Keeps the output of the module's last forward call, to score predictions without a second forward pass."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.logits: Tensor | None = None
        self.handle = module.register_forward_hook(self)

    def __call__(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        self.logits = output if isinstance(output, Tensor) else None


def adapt(
    pl_module: L.LightningModule,
    state: dict[str, Tensor],
    tasks: list[Task],
    inner_steps: int,
    batch_size: int,
    seed: int,
    batch_statistics: bool = True,
    indices: Sequence[int] | None = None,
    early_stopping: HeldOutEarlyStopping | None = None,
    device: torch.device | None = None,
    progress: Callable[[], None] | None = None,
) -> HeldOutCurves:
    """Train a copy of ``pl_module`` from ``state`` on each task; the module itself and the global RNG are untouched.

    The held-out images are scored in both BatchNorm modes; ``test_accuracy``, ``train_accuracy`` and early
    stopping use the module in training mode (BatchNorm with the statistics of each scoring batch) when
    ``batch_statistics``, else in eval mode (running statistics after the task's steps). Task ``i`` is
    seeded with ``seed + indices[i]`` (default ``indices = range(len(tasks))``), so a task's curve does not depend on
    which other tasks are evaluated with it. ``early_stopping``: see
    :class:`~lightning_meta.callbacks.early_stopping.HeldOutEarlyStopping`. ``device``: where the copy trains
    (default: the module's; at the end of fit Lightning has already moved the module to the CPU). ``progress`` is
    called after every training step.
    """
    if not tasks:  # e.g. a process of a DDP run with more processes than tasks
        return HeldOutCurves(torch.empty(0, inner_steps), torch.empty(0, inner_steps), *torch.empty(6, 0))
    device = device or pl_module.device
    losses, errors, train_accuracies, steps, running_accuracies, batch_accuracies, paths = [], [], [], [], [], [], []
    with HeldOutTraining(pl_module, device, progress) as run:
        model = run.model
        hook = _LogitsHook(model)
        for index, task in zip(indices if indices is not None else range(len(tasks)), tasks):
            run.start(state, seed + index, task.num_classes)
            fit, validation = early_stopping.split(task, seed + index) if early_stopping else (task, task.test)
            monitor = early_stopping.monitor(model) if early_stopping else None
            sampler = TaskBatchSampler([dataset_length(fit.train)], batch_size, inner_steps, 1, seed=seed + index)
            loader = DataLoader(TaskStreamDataset([fit]), batch_sampler=sampler, collate_fn=collate_task_batch)
            task_losses, task_errors = [], []
            path = TrainingPath(model.parameters())
            for step, batch in enumerate(loader):
                x, y = batch.inputs.to(device), batch.targets.to(device)
                task_losses.append(run.step((x, y), step))
                path.step(task_losses[-1])
                logits = hook.logits
                wrong = (logits.argmax(-1) != y).float().mean() if logits is not None else torch.tensor(float("nan"))
                task_errors.append(wrong.to(device))
                done = step + 1
                if monitor is not None and (monitor.due(done) or done == inner_steps):
                    error = 1 - float(_accuracy(model, validation, device, batch_statistics))
                    model.train()
                    if monitor.should_stop(done, error):
                        break
            paths.append(path.length(final_loss=run.loss((x, y), step)))
            if monitor is not None:
                monitor.restore_best()
            steps.append(torch.tensor(float(len(task_losses))))
            losses.append(_extend(torch.stack(task_losses), inner_steps))
            errors.append(_extend(torch.stack(task_errors), inner_steps))
            running_accuracies.append(_accuracy(model, task.test, device, batch_statistics=False))
            batch_accuracies.append(_accuracy(model, task.test, device, batch_statistics=True))
            train_accuracies.append(_accuracy(model, fit.train, device, batch_statistics))
        hook.handle.remove()
    loss_curves, error_curves = torch.stack(losses).float().cpu(), torch.stack(errors).float().cpu()
    by_batch, by_running = torch.stack(batch_accuracies).cpu(), torch.stack(running_accuracies).cpu()
    accuracy = by_batch if batch_statistics else by_running
    train_accuracy = torch.stack(train_accuracies).cpu()
    return HeldOutCurves(
        loss_curves, error_curves, accuracy, train_accuracy, torch.stack(steps), by_batch, by_running,
        torch.stack(paths).float().cpu(),
    )


def _extend(curve: Tensor, length: int) -> Tensor:
    """A curve cut short by early stopping, held at its last value up to ``length`` steps."""
    return torch.cat([curve, curve[-1:].expand(length - len(curve))])


@torch.no_grad()
def _accuracy(model: L.LightningModule, data: Dataset, device: torch.device, batch_statistics: bool) -> Tensor:
    """Accuracy on ``data``; scoring with batch statistics leaves the running statistics as training left them."""
    model.train(batch_statistics)
    buffers = [buffer.clone() for buffer in model.buffers()] if batch_statistics else []
    size = dataset_length(data)
    loader = DataLoader(data, batch_size=min(size, SCORING_BATCH) if batch_statistics else 256)
    correct = sum(int((model(x.to(device)).argmax(-1) == y.to(device)).sum()) for x, y in loader)
    for buffer, saved in zip(model.buffers(), buffers):
        buffer.copy_(saved)
    return torch.tensor(correct / size)


class MetaEvaluation(L.Callback):
    """Learning curves on held-out tasks from the current meta-learned init, logged and plotted.

    Args:
        split: which tasks of the family to evaluate on (``"val"`` or ``"test"``).
        every_n_meta_steps: evaluate after every n-th meta-step (0: only at the end of fit).
        inner_steps: steps per held-out task (default: the data module's ``inner_steps``).
        batch_size: batch size on held-out tasks (default: the data module's).
        max_tasks: evaluate on at most this many tasks of the split.
        seed: seed of the held-out batches (the same for every evaluation, so curves are comparable).
        baseline: also evaluate the weights the run started from, once, as the reference curve.
        batch_statistics: score held-out images with BatchNorm using their own batch statistics (the usual
            transductive few-shot protocol); ``False`` uses eval mode, whose running statistics are still far from
            converged after a few dozen steps on a new task. The mode of ``test_accuracy``, ``train_accuracy`` and
            early stopping: the curves also hold the held-out accuracy in both modes, named.
        plot_path: where to write the PNG (default: ``meta_evaluation_<split>.png`` in the run's versioned folder,
            :func:`~lightning_meta.utils.run_dir`).
        early_stopping: stop each held-out task when the error on a validation split of its training images stops
            improving (``None``: every task trains ``inner_steps`` steps).
        worse_than_start: stop meta-training (:class:`~lightning_meta.engine.MetaTrainingDiverged`) when theta_0's
            held-out training-loss AUC exceeds this many times that of the weights the run started from (needs
            ``baseline`` and a meta-learning callback; ``None``: never).
    """

    def __init__(
        self,
        split: Literal["val", "test"] = "test",
        every_n_meta_steps: int = 0,
        inner_steps: int | None = None,
        batch_size: int | None = None,
        max_tasks: int | None = None,
        seed: int = 0,
        baseline: bool = True,
        batch_statistics: bool = True,
        plot_path: str | None = None,
        early_stopping: HeldOutEarlyStopping | None = None,
        worse_than_start: float | None = 1.25,
    ) -> None:
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        if worse_than_start is not None and not worse_than_start >= 1:
            raise ValueError(f"worse_than_start must be >= 1 or None (never stop), got {worse_than_start}")
        self.split: Split = split
        self.every_n_meta_steps = every_n_meta_steps
        self.inner_steps = inner_steps
        self.batch_size = batch_size
        self.max_tasks = max_tasks
        self.seed = seed
        self.baseline = baseline
        self.batch_statistics = batch_statistics
        self.plot_path = plot_path
        self.early_stopping = early_stopping
        self.worse_than_start = worse_than_start
        self.sound_at = 0  # the global step of the last evaluation that found theta_0 no worse than the start
        self.history: list[tuple[int, HeldOutCurves]] = []  # (meta-step, curves) of every evaluation
        self.initial: HeldOutCurves | None = None
        self.figure: Path | None = None  # the PNG, once written
        self._initial_state: dict[str, Tensor] | None = None
        self._tasks: list[Task] = []
        self._meta: MetaInit | None = None  # the Trainer's meta-learner, if any
        self._counter: CountsMetaSteps | None = None  # a module that is its own meta-learner (MAML), if any

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(split=self.split)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule: Any = getattr(trainer, "datamodule", None)  # Lightning sets it without declaring it
        try:
            require(datamodule, HeldOutTasks, "MetaEvaluation (held-out tasks come from the data module)")
        except TypeError as error:
            raise MisconfigurationException(str(error)) from None
        self._tasks = datamodule.tasks(self.split)[: self.max_tasks]
        if not self._tasks:
            raise MisconfigurationException(f"the task family has no {self.split!r} tasks to evaluate on")
        self.inner_steps = self.inner_steps or datamodule.inner_steps
        self.batch_size = self.batch_size or datamodule.batch_size
        self._meta = next((c for c in trainer.callbacks if isinstance(c, MetaInit)), None)  # type: ignore[attr-defined]
        self._counter = pl_module if implements(pl_module, CountsMetaSteps, "MetaEvaluation") else None

    @override
    def state_dict(self) -> dict[str, Any]:
        """The evaluations so far, the baseline's curves, and the weights the run started from until the baseline
        has been evaluated: a resumed run logs what the uninterrupted one would."""
        return {
            "history": [(step, asdict(curves)) for step, curves in self.history],
            "initial": None if self.initial is None else asdict(self.initial),
            "initial_state": self._initial_state if self.initial is None else None,
            "sound_at": self.sound_at,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [(step, HeldOutCurves(**curves)) for step, curves in state_dict["history"]]
        self.initial = None if state_dict["initial"] is None else HeldOutCurves(**state_dict["initial"])
        self._initial_state = state_dict["initial_state"]
        self.sound_at = state_dict.get("sound_at", 0)

    @property
    def task_names(self) -> list[str]:
        """Names of the evaluated tasks, in the order of the rows of the curves."""
        return [task.name for task in self._tasks]

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.baseline and self.initial is None and self._initial_state is None:  # not restored from a checkpoint
            self._initial_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def _meta_step(self, trainer: L.Trainer) -> int:
        if self._meta is not None:
            return self._meta.meta_steps
        return self._counter.meta_steps_done(trainer.global_step) if self._counter else trainer.global_step

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = self._meta_step(trainer)
        due = self.every_n_meta_steps and step and step % self.every_n_meta_steps == 0
        if due and (not self.history or self.history[-1][0] != step):
            self.evaluate(trainer, pl_module)

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The final evaluation, also when fit trains no step at all (``max_steps=0``: a no-pre-training baseline)."""
        if not self.history or self.history[-1][0] != self._meta_step(trainer):
            self.evaluate(trainer, pl_module)
        path = self._plot_path(trainer)  # on every process: trainer.log_dir is a collective under DDP
        if trainer.is_global_zero:
            self.plot(trainer, path)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> HeldOutCurves:
        """Evaluate theta_0 now; log the summary to the Trainer's loggers and keep the curves in ``history``."""
        meta = self._meta
        state = meta.init_state_dict(pl_module) if meta is not None else pl_module.state_dict()
        if self.initial is None and self._initial_state is not None:
            self.initial = self._adapt(trainer, pl_module, self._initial_state, "initial weights")
            self._initial_state = None  # the curves are all a resumed run needs now
            self._log(trainer, "initial", self.initial)
        step = self._meta_step(trainer)
        curves = self._adapt(trainer, pl_module, state, self._weights(step))
        self.history.append((step, curves))
        self._log(trainer, "meta_init", curves)
        self._check_progress(trainer, step, curves)
        return curves

    def _check_progress(self, trainer: L.Trainer, step: int, curves: HeldOutCurves) -> None:
        """Stop meta-training when theta_0 trains the held-out tasks far worse than the start (``worse_than_start``);
        every process decides alike, on the gathered curves."""
        if self.worse_than_start is None or self._meta is None or self.initial is None:
            return
        now, start = curves.summary()["train_loss_auc"], self.initial.summary()["train_loss_auc"]
        if now <= self.worse_than_start * start:  # a NaN curve is worse
            self.sound_at = trainer.global_step
            return
        error = MetaTrainingDiverged(
            f"meta-training diverged: at meta-step {step} theta_0 trains the {len(self._tasks)} held-out {self.split} "
            f"tasks worse than the weights the run started from (training-loss AUC {now:.4g} against {start:.4g}, "
            f"more than worse_than_start={self.worse_than_start:g} times); the meta learning rate (meta_lr) is likely "
            "too high.",
            "meta_lr",
            theta_0_suspect=True,
        )
        raise with_resume_hint(error, trainer, saved_by=self.sound_at)

    def _weights(self, step: int) -> str:
        return f"meta-step {step}" if self._meta or self._counter else f"after {step} steps"

    def _adapt(
        self, trainer: L.Trainer, pl_module: L.LightningModule, state: dict[str, Tensor], weights: str
    ) -> HeldOutCurves:
        """Under DDP, process ``r`` adapts tasks ``r, r + world_size, ...`` and the curves are gathered on all."""
        assert self.inner_steps is not None and self.batch_size is not None
        world_size, rank = trainer.world_size, trainer.global_rank
        indices = list(range(rank, len(self._tasks), world_size))
        label = f"Held-out evaluation, {weights} ({len(self._tasks)} {self.split} tasks x {self.inner_steps} steps)"
        with held_out_progress(trainer, label, len(indices) * self.inner_steps) as advance:
            mine = adapt(
                pl_module,
                state,
                [self._tasks[i] for i in indices],
                self.inner_steps,
                self.batch_size,
                self.seed,
                self.batch_statistics,
                indices,
                self.early_stopping,
                trainer.strategy.root_device,  # not the module's: Lightning moves it to the CPU before on_fit_end
                advance,
            )
        if world_size == 1:
            return mine
        return HeldOutCurves(*(self._gather(trainer, getattr(mine, part.name)) for part in fields(mine)))

    def _gather(self, trainer: L.Trainer, part: Tensor) -> Tensor:
        """Rows of every process, back in task order (padded with NaN to the same count for the all-gather)."""
        world_size, count = trainer.world_size, len(self._tasks)
        rows = -(-count // world_size)
        device = trainer.strategy.root_device  # the module is on the CPU after fit; NCCL gathers on the GPU
        padded = torch.full((rows, *part.shape[1:]), float("nan"), device=device)
        padded[: part.shape[0]] = part.to(device)
        gathered = trainer.strategy.all_gather(padded)  # [world_size, rows, ...]: task r + i * world_size at [r, i]
        return gathered.transpose(0, 1).reshape(rows * world_size, *part.shape[1:])[:count].cpu()

    def _log(self, trainer: L.Trainer, name: str, curves: HeldOutCurves) -> None:
        metrics = {f"meta_eval/{self.split}/{name}/{key}": value for key, value in curves.summary().items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def _plot_path(self, trainer: L.Trainer) -> Path:
        return Path(self.plot_path or run_dir(trainer) / f"meta_evaluation_{self.split}.png")

    def results(self) -> list[dict[str, str | int | float]]:
        """One row per evaluation, for the run's summary: the weights the run started from (``step`` 0), then
        theta_0 at each evaluated meta-step (the module's weights at each training step without a meta-learner);
        the means over the held-out tasks of :meth:`HeldOutCurves.summary`."""
        evaluated = [("initial weights", 0, self.initial)] if self.initial is not None else []
        evaluated += [(self._weights(step), step, curves) for step, curves in self.history]
        shared = {"split": self.split, "tasks": len(self._tasks), "steps_per_task": self.inner_steps or 0}
        return [{"weights": name, "step": step, **shared, **curves.summary()} for name, step, curves in evaluated]

    def plot(self, trainer: L.Trainer, path: Path | None = None) -> Path:
        """Write the mean held-out learning curves (initial weights vs. the evaluations of theta_0) as a PNG."""
        label = "meta-learned init (meta-step {})" if self._meta or self._counter else "weights after {} training steps"
        curves = {label.format(step): c for step, c in self.history[-3:]}
        if self.initial is not None:
            curves = {"initial weights": self.initial, **curves}
        path = path or self._plot_path(trainer)
        title = f"{len(self._tasks)} held-out {self.split} tasks"
        self.figure = plot_learning_curves({k: (c.loss, c.error) for k, c in curves.items()}, path, title)
        log_image(trainer.loggers, f"meta_eval/{self.split}/learning_curves", path, trainer.global_step)
        rank_zero_info(f"MetaEvaluation: learning curves written to {path}")
        return path
