"""``MetaEvaluation``: how fast does a model learn held-out tasks from the current meta-learned init?

Every ``every_n_meta_steps`` meta-steps and at the end of fit, a copy of the module starts from theta_0 (read from
the :class:`~lightning_meta.callbacks.MetaInit` callback of the Trainer, or the module's own weights when there is
none) and trains on each held-out task for ``inner_steps`` steps with the module's own ``configure_optimizers`` (or
``configure_inner_optimizer``, where a MAML module has one) and ``training_step``, on batches exactly as the task's
samples collate (the data module's ``collate_fn``). Any module, any kind of task: the score is the module's own
loss, what ``training_step`` returns: its learning curve over the steps (and AUC) and, after training, its mean on
the task's held-out data (``test_loss``). ``metrics`` adds torchmetrics of yours on the held-out data. For
classifiers (tasks with ``num_classes``, batches ``(x, y)``) the error of every training step and the accuracy on
held-out and training data are scored too, as the Leap paper does. The means and AUCs are logged, and the mean curves
drawn next to those of the weights the run started from. The training run itself is left untouched: weights,
meta-state and RNG streams.

A :class:`~lightning_meta.protocols.TaskAware` module (e.g. :class:`~lightning_meta.models.DatasetClassifier`,
whose head is a task parameter) has ``start_task`` called at the start of every held-out task. With
``early_stopping`` each held-out task of a classifier trains on part of its training data, stops when the error on
the rest stops improving and is scored with the weights of the lowest validation error
(:class:`~lightning_meta.trainer.early_stopping.HeldOutEarlyStopping`).

With a meta-learning callback and ``baseline=True`` the evaluation also guards the run: theta_0 that trains the
held-out tasks far worse than the weights the run started from (a meta learning rate that wrecked it, with no task
ever blowing up) stops fit with :class:`~lightning_meta.engine.MetaTrainingDiverged`, naming the newest checkpoint
saved by the last evaluation that found theta_0 sound (``worse_than_start``).

Examples:
    >>> import lightning as L
    >>> from torchmetrics.regression import MeanSquaredError
    >>> from lightning_meta import Leap, MetaEvaluation
    >>> evaluation = MetaEvaluation(split="test", every_n_meta_steps=10, metrics={"mse": MeanSquaredError()})
    >>> trainer = L.Trainer(callbacks=[Leap(), evaluation], logger=False, enable_checkpointing=False)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler, default_collate
from torchmetrics import Metric
from typing_extensions import override

from lightning_meta.callbacks.meta_init import MetaInit
from lightning_meta.callbacks.progress import held_out_progress, use_meta_progress_bar
from lightning_meta.data.family import Split, Task, TaskInfo, dataset_length
from lightning_meta.data.stream import TaskBatchSampler, TaskCollate, TaskStreamDataset
from lightning_meta.engine import MetaTrainingDiverged
from lightning_meta.lightning_private import muted_logging
from lightning_meta.metrics import TrainingPath, curve_auc
from lightning_meta.plotting import log_image, plot_learning_curves
from lightning_meta.protocols import CountsMetaSteps, HeldOutTasks, implements, require
from lightning_meta.trainer.diverged import with_resume_hint
from lightning_meta.trainer.early_stopping import HeldOutEarlyStopping
from lightning_meta.trainer.held_out import HeldOutTraining
from lightning_meta.utils import run_dir, training_loss

SCORING_BATCH = 1024
"""Samples per forward pass when scoring a data set (with batch statistics: the statistics of each such batch)."""

Predict = Callable[[torch.nn.Module, Any], tuple[Tensor, Tensor]]
"""``(model, batch) -> (predictions, targets)``: what the ``metrics`` of :class:`MetaEvaluation` are updated with."""


def inputs_and_targets(model: torch.nn.Module, batch: Any) -> tuple[Tensor, Tensor]:
    """The default :data:`Predict`: ``(model(x), y)`` of a batch ``(x, y, ...)``."""
    if not isinstance(batch, Sequence) or len(batch) < 2:
        raise TypeError(
            f"MetaEvaluation's metrics are updated with (model(x), y) of a batch (x, y, ...), but a batch here is a "
            f"{type(batch).__name__}: pass predict=lambda model, batch: (predictions, targets)"
        )
    return model(batch[0]), batch[1]


@dataclass
class HeldOutCurves:
    """Per-task results of one evaluation. For every task: ``loss`` ``[tasks, inner_steps]`` (each step's training
    loss, before the step), ``test_loss`` (the module's loss on the held-out data after training), ``steps`` (the
    steps each task trained: fewer than ``inner_steps`` when early stopping cut it short, the curves then stay at
    their last value) and ``metrics`` (``{name: [tasks]}``, the evaluation's torchmetrics on the held-out data).
    For classifiers, else ``None``: ``error`` ``[tasks, inner_steps]`` (each step's training batch),
    ``test_accuracy`` on the held-out data and ``train_accuracy`` on the data the task trained on, both in the
    evaluation's BatchNorm mode; ``test_accuracy_batch_statistics`` and ``test_accuracy_running_statistics`` on the
    held-out data in each mode, named (train mode: every scoring batch normalised with its own statistics; eval
    mode: the running statistics the task's training steps accumulated, as the Leap authors score). For every
    module, ``path_length`` ``[tasks]``: the length of each task's training path in the joint (theta, loss) space,
    Leap's objective (:func:`~lightning_meta.metrics.path_length`: theta is all the module's parameters, the loss
    each step's training loss; empty in curves saved before it was measured)."""

    loss: Tensor
    test_loss: Tensor
    steps: Tensor
    error: Tensor | None = None
    test_accuracy: Tensor | None = None
    train_accuracy: Tensor | None = None
    test_accuracy_batch_statistics: Tensor | None = None
    test_accuracy_running_statistics: Tensor | None = None
    metrics: dict[str, Tensor] = field(default_factory=dict)
    path_length: Tensor = field(default_factory=lambda: torch.empty(0))

    def summary(self) -> dict[str, float]:
        """Means over the tasks: the learning-curve AUC and last value of the training loss, the held-out loss, the
        metrics (``test_<name>``), the mean path length; for classifiers the error AUC, the final training error (all
        the task's training data after the last step) and the held-out accuracies."""
        result = {
            "train_loss_auc": float(curve_auc(self.loss).mean()),
            "final_train_loss": float(self.loss[:, -1].mean()),
            "test_loss": float(self.test_loss.mean()),
            "path_length": float(self.path_length.mean()),
        }
        if self.error is not None and self.train_accuracy is not None:
            result |= {
                "train_error_auc": float(curve_auc(self.error).mean()),
                "final_train_error": float(1 - self.train_accuracy.mean()),
            }
        for name in ("test_accuracy", "test_accuracy_batch_statistics", "test_accuracy_running_statistics"):
            value = getattr(self, name)
            if value is not None:
                result[name] = float(value.mean())
        return result | {f"test_{name}": float(values.mean()) for name, values in self.metrics.items()}


class _OutputHook:
    """Keeps the output of the module's last forward call, to score predictions without a second forward pass."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.output: Tensor | None = None
        self.handle = module.register_forward_hook(self)

    def __call__(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        self.output = output if isinstance(output, Tensor) else None


@dataclass(frozen=True)
class Scoring:
    """How held-out data is batched and scored: ``collate_fn`` (``None``: ``default_collate``), the BatchNorm mode
    (``batch_statistics``), torchmetrics ``metrics`` fed by ``predict``, and whether the tasks are classifiers
    (``(x, y)`` batches whose model output are logits: accuracies and the error curve)."""

    collate_fn: Callable[[list[Any]], Any] | None = None
    batch_statistics: bool = True
    metrics: Mapping[str, Metric] = field(default_factory=dict)
    predict: Predict = inputs_and_targets
    classifier: bool = True

    def score(
        self, model: L.LightningModule, data: Dataset, device: torch.device, batch_statistics: bool, hook: _OutputHook
    ) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
        """``(mean loss, accuracy or None, {metric: value})`` of ``model`` on ``data``, all in one pass, with no
        gradients; scoring with batch statistics leaves the running statistics as training left them."""
        with torch.no_grad(), muted_logging(model):
            model.train(batch_statistics)
            buffers = [buffer.clone() for buffer in model.buffers()] if batch_statistics else []
            size = dataset_length(data)
            chunk = min(size, SCORING_BATCH) if batch_statistics else 256
            batches = BatchSampler(SequentialSampler(range(size)), chunk, drop_last=False)
            loader = DataLoader(data, batch_sampler=batches, collate_fn=self.collate_fn or default_collate)
            metrics = {name: metric.clone().to(device) for name, metric in self.metrics.items()}
            loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device)
            for indices, batch in zip(batches, loader):
                batch = move_data_to_device(batch, device)
                loss_sum += training_loss(model.training_step(batch, 0)).float() * len(indices)
                if self.classifier and hook.output is not None:
                    correct += (hook.output.argmax(-1) == batch[1]).sum()
                for metric in metrics.values():
                    metric.update(*self.predict(model, batch))
            for buffer, saved in zip(model.buffers(), buffers):
                buffer.copy_(saved)
        accuracy = (correct / size).cpu() if self.classifier else None
        return (loss_sum / size).cpu(), accuracy, {name: m.compute().float().cpu() for name, m in metrics.items()}


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
    scoring: Scoring | None = None,
    split: Split = "test",
) -> HeldOutCurves:
    """Train a copy of ``pl_module`` from ``state`` on each task; the module itself and the global RNG are untouched.

    The held-out data is scored by ``scoring`` (default: :class:`Scoring` with ``batch_statistics``, classifier
    scores when every task has ``num_classes``): the module's loss and the metrics in the module's training mode
    (BatchNorm with the statistics of each scoring batch) when ``batch_statistics``, else in eval mode (running
    statistics after the task's steps); a classifier's accuracy in both modes. Task ``i`` is seeded with
    ``seed + indices[i]`` (default ``indices = range(len(tasks))``), so a task's curve does not depend on which
    other tasks are evaluated with it; a :class:`~lightning_meta.protocols.TaskAware` module is told it starts task
    ``indices[i]`` of ``split``. ``early_stopping``: see
    :class:`~lightning_meta.trainer.early_stopping.HeldOutEarlyStopping`. ``device``: where the copy trains
    (default: the module's; at the end of fit Lightning has already moved the module to the CPU). ``progress`` is
    called after every training step.
    """
    classifier = bool(tasks) and all(task.num_classes is not None for task in tasks)
    scoring = scoring or Scoring(batch_statistics=batch_statistics, classifier=classifier)
    classifier = scoring.classifier
    if not tasks:  # e.g. a process of a DDP run with more processes than tasks
        empty, none = torch.empty(0, inner_steps), torch.empty(0)
        names = ("test_accuracy", "train_accuracy", *(f"test_accuracy_{m}_statistics" for m in ("batch", "running")))
        classified = dict.fromkeys(names, none) | {"error": empty} if classifier else {}
        return HeldOutCurves(empty, none, none, **classified, metrics={name: none for name in scoring.metrics})
    device = device or pl_module.device
    results: dict[str, list[Tensor]] = {}
    metric_values: dict[str, list[Tensor]] = {name: [] for name in scoring.metrics}
    with HeldOutTraining(pl_module, device, progress) as run:
        model = run.model
        hook = _OutputHook(model)
        for index, task in zip(indices if indices is not None else range(len(tasks)), tasks):
            run.start(state, seed + index, TaskInfo(task, split, index))
            fit, validation = early_stopping.split(task, seed + index) if early_stopping else (task, task.test)
            monitor = early_stopping.monitor(model) if early_stopping else None
            task_losses, task_errors = [], []
            path = TrainingPath(model.parameters())
            for step, batch in enumerate(_task_loader(fit, batch_size, inner_steps, seed + index, scoring)):
                batch = move_data_to_device(batch, device)
                task_losses.append(run.step(batch, step))
                path.step(task_losses[-1])
                if classifier:
                    task_errors.append(_step_error(hook.output, batch, device))
                done = step + 1
                if monitor is not None and (monitor.due(done) or done == inner_steps):
                    accuracy = scoring.score(model, validation, device, batch_statistics, hook)[1]
                    assert accuracy is not None, "early stopping is for classifiers (MetaEvaluation checks it)"
                    error = 1 - float(accuracy)
                    model.train()
                    if monitor.should_stop(done, error):
                        break
            _append(results, "path_length", path.length(final_loss=run.loss(batch, step)))
            if monitor is not None:
                monitor.restore_best()
            _append(results, "steps", torch.tensor(float(len(task_losses))))
            _append(results, "loss", _extend(torch.stack(task_losses), inner_steps))
            test_loss, accuracy, metrics = scoring.score(model, task.test, device, batch_statistics, hook)
            _append(results, "test_loss", test_loss)
            for name, value in metrics.items():
                metric_values[name].append(value)
            if classifier:
                _append(results, "error", _extend(torch.stack(task_errors), inner_steps))
                other = scoring.score(model, task.test, device, not batch_statistics, hook)[1]
                by_mode = {batch_statistics: accuracy, not batch_statistics: other}
                _append(results, "test_accuracy_batch_statistics", by_mode[True])
                _append(results, "test_accuracy_running_statistics", by_mode[False])
                _append(results, "test_accuracy", accuracy)
                _append(results, "train_accuracy", scoring.score(model, fit.train, device, batch_statistics, hook)[1])
        hook.handle.remove()
    stacked = {name: torch.stack(values).float().cpu() for name, values in results.items()}
    return HeldOutCurves(**stacked, metrics={name: torch.stack(v).cpu() for name, v in metric_values.items()})


def _task_loader(task: Task, batch_size: int, steps: int, seed: int, scoring: Scoring) -> DataLoader:
    """The ``steps`` training batches of a held-out task, drawn as the task stream draws a task's batches."""
    sampler = TaskBatchSampler(lambda _: dataset_length(task.train), 1, batch_size, steps, 1, seed)
    return DataLoader(
        TaskStreamDataset(lambda _: task), batch_sampler=sampler, collate_fn=TaskCollate(scoring.collate_fn)
    )


def _append(results: dict[str, list[Tensor]], name: str, value: Tensor | None) -> None:
    assert value is not None
    results.setdefault(name, []).append(value.to("cpu"))


def _step_error(output: Tensor | None, batch: Any, device: torch.device) -> Tensor:
    """The error of a classifier's training step: its logits (the last forward output) against ``y`` of ``(x, y)``."""
    if output is None or not isinstance(batch, Sequence) or len(batch) < 2:
        return torch.tensor(float("nan"), device=device)
    return (output.argmax(-1) != batch[1]).float().mean()


def _extend(curve: Tensor, length: int) -> Tensor:
    """A curve cut short by early stopping, held at its last value up to ``length`` steps."""
    return torch.cat([curve, curve[-1:].expand(length - len(curve))])


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
        metrics: torchmetrics scored on every held-out task's held-out data after training, logged as
            ``test_<name>`` (e.g. ``{"mse": MeanSquaredError()}``); each task gets a fresh copy.
        predict: ``(model, batch) -> (predictions, targets)`` that the metrics are updated with (default:
            ``(model(x), y)`` of a batch ``(x, y, ...)``; needed for batches of another structure).
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
        metrics: Mapping[str, Metric] | None = None,
        predict: Predict | None = None,
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
        self.metrics = dict(metrics or {})
        self.predict = predict or inputs_and_targets
        self.sound_at = 0  # the global step of the last evaluation that found theta_0 no worse than the start
        self.history: list[tuple[int, HeldOutCurves]] = []  # (meta-step, curves) of every evaluation
        self.initial: HeldOutCurves | None = None
        self.figure: Path | None = None  # the PNG, once written
        self._initial_state: dict[str, Tensor] | None = None
        self._tasks: list[Task] = []
        self._datamodule: HeldOutTasks | None = None  # where the held-out tasks and the default sizes come from
        self._meta: MetaInit | None = None  # the Trainer's meta-learner, if any
        self._counter: CountsMetaSteps | None = None  # a module that is its own meta-learner (MAML), if any

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(split=self.split)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if isinstance(trainer.strategy, ModelParallelStrategy):
            raise MisconfigurationException(
                "MetaEvaluation trains copies of the module on held-out tasks spread over the processes, which a model "
                "sharded over them (ModelParallelStrategy) cannot do: evaluate theta_0 from final.ckpt in a run of its "
                "own, or leave MetaEvaluation out."
            )
        datamodule: Any = getattr(trainer, "datamodule", None)  # Lightning sets it without declaring it
        try:
            require(datamodule, HeldOutTasks, "MetaEvaluation (held-out tasks come from the data module)")
        except TypeError as error:
            raise MisconfigurationException(str(error)) from None
        self._tasks = datamodule.tasks(self.split)[: self.max_tasks]
        if not self._tasks:
            raise MisconfigurationException(f"the task family has no {self.split!r} tasks to evaluate on")
        if self.early_stopping is not None and not self._classifier:
            raise MisconfigurationException(
                "MetaEvaluation(early_stopping=...) stops on the error of classifier tasks; these tasks have no "
                "num_classes: leave early_stopping unset"
            )
        self._datamodule = datamodule
        self._meta = next((c for c in trainer.callbacks if isinstance(c, MetaInit)), None)  # type: ignore[attr-defined]
        self._counter = pl_module if implements(pl_module, CountsMetaSteps, "MetaEvaluation") else None
        use_meta_progress_bar(trainer, pl_module, stage)  # in place of Lightning's default bar, one per epoch

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
    def steps_per_task(self) -> int:
        """Steps each held-out task trains: ``inner_steps``, else the data module's (its task schedule's)."""
        return self.inner_steps or (self._datamodule.inner_steps if self._datamodule is not None else 0)

    @property
    def _batch_size(self) -> int:
        assert self._datamodule is not None, "setup() reads the data module"
        return self.batch_size or self._datamodule.batch_size

    @property
    def _classifier(self) -> bool:
        """Whether the held-out tasks are classifiers (all have ``num_classes``): accuracies and error curves too."""
        return all(task.num_classes is not None for task in self._tasks)

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

    def _last_meta_step(self, trainer: L.Trainer) -> int:
        """The meta-step (the step, without a meta-learner) at which fit ends: ``max_steps``'."""
        if self._meta is not None:
            return self._meta.schedule.meta_steps_done(trainer.max_steps)
        return self._counter.meta_steps_done(trainer.max_steps) if self._counter else trainer.max_steps

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = self._meta_step(trainer)
        due = self.every_n_meta_steps and step and step % self.every_n_meta_steps == 0
        last = 0 < trainer.max_steps <= trainer.global_step  # the final evaluation, while the run's bar is open
        if (due or last) and (not self.history or self.history[-1][0] != step):
            self.evaluate(trainer, pl_module)

    def held_out_steps_left(self, trainer: L.Trainer) -> int:
        """The held-out training steps this process will still take until fit ends: the evaluations due every
        ``every_n_meta_steps`` meta-steps and at the end, and the weights the run started from, if not yet done
        (:class:`~lightning_meta.protocols.PlansHeldOutSteps`, for the progress bar's ETA)."""
        if trainer.max_steps <= 0:
            return 0
        now, last, every = self._meta_step(trainer), self._last_meta_step(trainer), self.every_n_meta_steps
        due = set(range(every * (now // every + 1), last + 1, every)) if every else set()
        if not self.history or self.history[-1][0] != last:
            due.add(last)
        evaluations = len(due) + (self.initial is None and self._initial_state is not None)
        return evaluations * len(range(trainer.global_rank, len(self._tasks), trainer.world_size)) * self.steps_per_task

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
        assert self._datamodule is not None, "setup() reads the data module"
        world_size, rank = trainer.world_size, trainer.global_rank
        indices = list(range(rank, len(self._tasks), world_size))
        steps = self.steps_per_task
        label = f"Held-out evaluation, {weights} ({len(self._tasks)} {self.split} tasks x {steps} steps)"
        scoring = Scoring(
            self._datamodule.collate_fn, self.batch_statistics, self.metrics, self.predict, self._classifier
        )
        with held_out_progress(trainer, label, len(indices) * steps) as advance:
            mine = adapt(
                pl_module,
                state,
                [self._tasks[i] for i in indices],
                steps,
                self._batch_size,
                self.seed,
                self.batch_statistics,
                indices,
                self.early_stopping,
                trainer.strategy.root_device,  # not the module's: Lightning moves it to the CPU before on_fit_end
                advance,
                scoring,
                self.split,
            )
        if world_size == 1:
            return mine
        gathered = {
            part.name: self._gather(trainer, getattr(mine, part.name))
            for part in fields(mine)
            if part.name != "metrics" and getattr(mine, part.name) is not None
        }
        metrics = {name: self._gather(trainer, values) for name, values in mine.metrics.items()}
        return HeldOutCurves(**gathered, metrics=metrics)

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
        the means over the held-out tasks of :meth:`HeldOutCurves.summary`, less ``test_accuracy``, which is one of
        the two named accuracies (the evaluation's BatchNorm mode) and would repeat it."""
        evaluated = [("initial weights", 0, self.initial)] if self.initial is not None else []
        evaluated += [(self._weights(step), step, curves) for step, curves in self.history]
        shared = {"split": self.split, "tasks": len(self._tasks), "steps_per_task": self.steps_per_task}
        rows = [{"weights": name, "step": step, **shared, **curves.summary()} for name, step, curves in evaluated]
        return [{key: value for key, value in row.items() if key != "test_accuracy"} for row in rows]

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
