"""``MetaInit``: the shared machinery of callbacks that meta-learn a model's initialisation theta_0.

A subclass only says how one task's training trajectory turns into a meta-gradient (:class:`Leap`,
:class:`Reptile`); this base finds task boundaries, starts every task from theta_0 with a fresh inner optimizer,
averages the tasks of a meta-batch, steps theta_0 with a meta-optimizer, drops diverged tasks and checkpoints it all.

Examples:
    >>> import lightning as L
    >>> from lightning_meta import Reptile
    >>> callback = Reptile(inner_steps=5, meta_batch_size=2, meta_lr=0.5)
    >>> trainer = L.Trainer(callbacks=[callback], max_steps=20, logger=False, enable_checkpointing=False)

    A rule of your own implements the hooks (and ``rule_state`` / ``load_rule_state`` if it keeps state that a
    resumed run needs). This one moves theta_0 against the sum of the gradients seen along each task's path:

    >>> import torch
    >>> from lightning_meta import MetaInit
    >>> class GradientSum(MetaInit):
    ...     def on_task_start(self, live):
    ...         self.total = [torch.zeros_like(p) for p in live]
    ...     def on_inner_step(self, trainer, live, grads):
    ...         torch._foreach_add_(self.total, grads)
    ...     def task_meta_gradient(self, trainer, pl_module, batch, batch_idx):
    ...         return self.total
    >>> rule = GradientSum(inner_steps=5, meta_batch_size=2, meta_lr=0.01)
"""

from __future__ import annotations

import importlib
import warnings
from copy import deepcopy
from dataclasses import asdict, replace
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torch.optim import Optimizer

from lightning_meta.tasks.datamodule import StreamDataModule, task_datamodule
from lightning_meta.tasks.schedule import Parallel, TaskSchedule
from lightning_meta.tasks.stream import TaskBatch
from lightning_meta.utils import ParamFilter, log_meta_progress, parameter_filter


def optimizer_class(spec: str | type[Optimizer]) -> type[Optimizer]:
    """Resolve ``"SGD"``, ``"torch.optim.Adam"``, ``"my_pkg.MyOptimizer"`` or a class to an optimizer class."""
    if isinstance(spec, str):
        module, _, name = spec.rpartition(".")
        spec = getattr(importlib.import_module(module or "torch.optim"), name, None)  # type: ignore[assignment]
    if not (isinstance(spec, type) and issubclass(spec, Optimizer)):
        raise ValueError(f"meta_optimizer must name a torch.optim.Optimizer class (e.g. 'SGD', 'Adam'), got {spec!r}")
    return spec


def all_finite(tensors: list[Tensor]) -> bool:
    """One host-device synchronisation for the whole list."""
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


class MetaInit(L.Callback):
    """Base callback that meta-learns the initialisation theta_0 of a LightningModule's parameters.

    Task ``t`` covers optimizer steps ``[t * inner_steps, (t + 1) * inner_steps)`` (gradient accumulation counts
    one optimizer step per window). At each task start the callback loads theta_0 into the meta-learned parameters,
    resets buffers (see ``buffers``), clears the inner optimizer's state and rewinds its LR schedulers, so the task
    trains exactly as a fresh run from theta_0 would. After ``meta_batch_size`` tasks it averages their
    meta-gradients into ``theta_0.grad`` and steps the meta-optimizer. When fit ends the module holds theta_0.

    Args:
        inner_steps: optimizer steps per task. ``None`` reads it from the :class:`TaskDataModule`; a value that
            disagrees with the data module is an error at ``setup``.
        meta_batch_size: tasks averaged into one meta-step; ``None`` reads it from the :class:`TaskDataModule`
            (1 when it has none either); a value that disagrees with the data module is an error at ``setup``.
        meta_lr: learning rate of the meta-optimizer.
        meta_optimizer: a ``torch.optim`` class or its name (``"SGD"``, ``"Adam"``, ``"pkg.module.Class"``).
        meta_optimizer_kwargs: further keyword arguments of the meta-optimizer (e.g. ``{"momentum": 0.9}``).
        include: which trainable parameters are meta-learned: a regular expression searched in the parameter
            name, or a predicate ``(name, parameter) -> bool``; ``None`` selects all. The others (e.g. per-task
            heads) train freely inside each task and are left alone at task starts.
        buffers: ``"reset"``: buffers (BatchNorm statistics) return to their value at the start of meta-training at
            every task start; ``"keep"``: they carry over from the last task that finished without diverging.
        save_init_as_weights: checkpoints store theta_0 as the model's ``state_dict`` (so ``load_from_checkpoint``
            returns the meta-learned init); the live weights of the running task go into the callback's state and
            are restored on resume. Applies to full checkpoints (not ``save_weights_only``).
        parallel: under DDP, ``"tasks"`` (task-parallel): each process trains its own tasks of the meta-batch
            (``meta_batch_size`` must be a multiple of the number of processes) with no gradient synchronisation
            inside tasks, and the meta-gradients are summed over processes once per meta-step; ``"data"``
            (data-parallel): all processes train the same task on shards of each batch (ordinary DDP) and compute
            the same meta-step. Either way theta_0 is identical on every process. Needs
            ``Trainer(use_distributed_sampler=False)`` with a :class:`TaskDataModule`, which then streams each
            process its tasks or shards.
    """

    def __init__(
        self,
        inner_steps: int | None = None,
        meta_batch_size: int | None = None,
        meta_lr: float = 0.1,
        meta_optimizer: str | type[Optimizer] = "SGD",
        meta_optimizer_kwargs: dict[str, Any] | None = None,
        include: str | ParamFilter | None = None,
        buffers: Literal["reset", "keep"] = "reset",
        save_init_as_weights: bool = True,
        parallel: Parallel = "tasks",
    ) -> None:
        if inner_steps is not None and inner_steps < 1:
            raise ValueError(f"inner_steps must be >= 1, got {inner_steps}")
        if meta_batch_size is not None and meta_batch_size < 1:
            raise ValueError(f"meta_batch_size must be >= 1, got {meta_batch_size}")
        if buffers not in ("reset", "keep"):
            raise ValueError(f"buffers must be 'reset' or 'keep', got {buffers!r}")
        if parallel not in ("tasks", "data"):
            raise ValueError(f"parallel must be 'tasks' or 'data', got {parallel!r}")
        self.inner_steps = inner_steps
        self.meta_batch_size = meta_batch_size
        self.meta_lr = meta_lr
        self.meta_optimizer_class = optimizer_class(meta_optimizer)
        self.meta_optimizer_kwargs = dict(meta_optimizer_kwargs or {})
        self.include = include
        self.buffers = buffers
        self.save_init_as_weights = save_init_as_weights
        self.parallel: Parallel = parallel
        self.schedule = TaskSchedule(inner_steps or 1)  # where tasks start and end on this process; built in setup

        self.names: list[str] = []
        self.init: list[torch.nn.Parameter] = []  # theta_0; its .grad accumulates the meta-batch's meta-gradient
        self.meta_optimizer: Optimizer | None = None
        self.meta_steps = 0
        self.tasks_in_batch = 0  # tasks of the current meta-batch that have ended
        self.tasks_kept = 0  # of those, the ones that stayed finite
        self.active_task = -1  # position in the task stream of the task being trained
        self._live: list[Tensor] = []
        self._live_buffers: dict[str, Tensor] = {}
        self._buffer_start: dict[str, Tensor] = {}
        self._fresh_optimizer: list[list[dict[str, Any]]] = []
        self._fresh_schedulers: list[dict[str, Any]] = []
        self._stepped = False
        self._pending: dict[str, Any] | None = None
        self._saved_schedule: tuple[TaskSchedule, dict[str, int]] | None = None  # of a checkpoint being resumed
        self._suspended: list[Tensor] | None = None  # weights of a task cut short by the end of fit

    # ----------------------------------------------------------------- what a rule implements
    def on_task_start(self, live: list[Tensor]) -> None:
        """Called after theta_0 was loaded into ``live``."""

    def on_inner_step(self, trainer: L.Trainer, live: list[Tensor], grads: list[Tensor]) -> None:
        """Called before each inner optimizer step with the parameters and their (unscaled) gradients."""

    def task_meta_gradient(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> list[Tensor]:
        """The meta-gradient of the task that just ended; the module holds theta_K."""
        raise NotImplementedError

    def rule_state(self) -> dict[str, Any]:
        """Per-task tensors and counters of the rule that a checkpoint must carry."""
        return {}

    def load_rule_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`rule_state`."""

    # ----------------------------------------------------------------- set-up
    def _select(self, pl_module: L.LightningModule) -> list[tuple[str, torch.nn.Parameter]]:
        chosen = parameter_filter(self.include)
        return [(n, p) for n, p in pl_module.named_parameters() if p.requires_grad and chosen(n, p)]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        name = type(self).__name__
        if not pl_module.automatic_optimization:
            raise MisconfigurationException(
                f"{name} hooks Lightning's automatic optimisation; {type(pl_module).__name__} uses manual "
                "optimisation. Set `self.automatic_optimization = True` or use the MAML mixin instead."
            )
        if not isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy)):
            raise MisconfigurationException(
                f"{name} supports a single device and DDP (strategy='ddp' or 'ddp_spawn'), not "
                f"{type(trainer.strategy).__name__}."
            )
        datamodule = task_datamodule(trainer)
        self.inner_steps = self._agree("inner_steps", datamodule)
        if self.inner_steps is None:
            raise MisconfigurationException(
                f"{name} needs to know where tasks end: pass `inner_steps=` or train with a TaskDataModule."
            )
        self.meta_batch_size = self._agree("meta_batch_size", datamodule) or 1
        try:
            self.schedule = TaskSchedule(
                self.inner_steps, self.meta_batch_size, trainer.world_size, trainer.global_rank, self.parallel
            )
        except ValueError as error:
            raise MisconfigurationException(f"{name}: {error}") from None
        if datamodule is not None:
            datamodule.schedule = self.schedule
        selected = self._select(pl_module)
        if not selected:
            raise MisconfigurationException(
                f"{name}(include={self.include!r}) matched no trainable parameter of {type(pl_module).__name__}; "
                f"its parameters are: {[n for n, _ in pl_module.named_parameters()][:20]}"
            )
        self.names = [n for n, _ in selected]
        self._live = [p for _, p in selected]
        self.init = [torch.nn.Parameter(p.detach().clone()) for p in self._live]
        for p in self.init:
            p.grad = torch.zeros_like(p)
        self._buffer_start = {n: b.detach().clone() for n, b in pl_module.named_buffers()}

    def _agree(self, name: str, datamodule: StreamDataModule | None) -> int | None:
        """The callback's value of a size, or the data module's; both given and different is an error."""
        mine, theirs = getattr(self, name), getattr(datamodule, name, None)
        if mine is not None and theirs is not None and mine != theirs:
            raise MisconfigurationException(
                f"{type(self).__name__}({name}={mine}) disagrees with {type(datamodule).__name__}({name}={theirs}): "
                "tasks would be cut or grouped at the wrong steps. Pass the same value, or leave the callback's as "
                "None."
            )
        return mine if mine is not None else theirs

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        params = dict(pl_module.named_parameters())
        self._live = [params[n] for n in self.names]
        self._live_buffers = dict(pl_module.named_buffers())
        device = self._live[0].device
        for p in self.init:
            p.data = p.data.to(device)
            p.grad = p.grad.to(device)  # type: ignore[union-attr]
        self._buffer_start = {n: b.to(device) for n, b in self._buffer_start.items()}
        # every torch.optim class takes lr; the base class's signature does not say so
        self.meta_optimizer = self.meta_optimizer_class(
            self.init,
            lr=self.meta_lr,
            **self.meta_optimizer_kwargs,  # type: ignore[call-arg]
        )
        self._suspended = None
        self._fresh_optimizer = [
            [{k: deepcopy(v) for k, v in g.items() if k != "params"} for g in o.param_groups]
            for o in trainer.optimizers
        ]
        self._fresh_schedulers = [deepcopy(config.scheduler.state_dict()) for config in trainer.lr_scheduler_configs]
        if self._pending is not None:
            self._apply_state(self._pending)
            self._pending = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._saved_schedule is not None:  # the loops' progress (global_step) is restored only now
            self._resume_schedule(*self._saved_schedule, trainer.global_step)
            self._saved_schedule = None
            datamodule = task_datamodule(trainer)
            if datamodule is not None:
                datamodule.schedule = self.schedule
        if self.schedule.task_parallel:
            # Each process trains its own task: DDP must not average gradients inside tasks. (With this flag off,
            # DDP also stops broadcasting rank 0's buffers at each forward, so each task keeps its own statistics.)
            trainer.strategy.model.require_backward_grad_sync = False  # type: ignore[union-attr]

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = task_datamodule(trainer)
        if datamodule is not None:
            datamodule.schedule = None  # the data module may be reused without this callback

    # ----------------------------------------------------------------- the loop
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        task = self.schedule.task(trainer.global_step)
        if isinstance(batch, TaskBatch) and batch.task != task:
            raise RuntimeError(
                f"The batch belongs to task {batch.task} of the stream but optimizer step {trainer.global_step} "
                f"with inner_steps={self.inner_steps} is in task {task}: the data and the callback disagree on "
                "where tasks end (check inner_steps and accumulate_grad_batches)."
            )
        if task != self.active_task:
            self._start_task(trainer, pl_module, task)
            # once per task: a log call costs about as much as Leap's whole per-step update
            log_meta_progress(pl_module, task, self.meta_steps)

    @torch.no_grad()
    def _load_init(self, pl_module: L.LightningModule) -> None:
        torch._foreach_copy_(self._live, [p.detach() for p in self.init])
        for name, buffer in self._live_buffers.items():
            if name in self._buffer_start:
                buffer.copy_(self._buffer_start[name])

    @torch.no_grad()
    def _start_task(self, trainer: L.Trainer, pl_module: L.LightningModule, task: int) -> None:
        self._load_init(pl_module)
        for optimizer, groups in zip(trainer.optimizers, self._fresh_optimizer):
            optimizer.state.clear()
            for group, fresh in zip(optimizer.param_groups, groups):
                group.update(deepcopy(fresh))
        for config, fresh_state in zip(trainer.lr_scheduler_configs, self._fresh_schedulers):
            config.scheduler.load_state_dict(deepcopy(fresh_state))
        self.active_task = task
        self._suspended = None
        self.on_task_start(self._live)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Optimizer) -> None:
        self._stepped = True
        grads = [p.grad.detach() if p.grad is not None else torch.zeros_like(p) for p in self._live]
        with torch.no_grad():
            self.on_inner_step(trainer, self._live, grads)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._stepped:  # a micro-batch inside a gradient-accumulation window
            return
        self._stepped = False
        if self.schedule.ends_task(trainer.global_step):
            self._end_task(trainer, pl_module, batch, batch_idx)

    @torch.no_grad()
    def _end_task(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        meta_gradient = self.task_meta_gradient(trainer, pl_module, batch, batch_idx)
        self.tasks_in_batch += 1
        if all_finite(meta_gradient):
            torch._foreach_add_(self.meta_grads(), meta_gradient)
            self.tasks_kept += 1
            if self.buffers == "keep":
                self._buffer_start = {n: b.detach().clone() for n, b in self._live_buffers.items()}
        else:
            message = (
                f"{type(self).__name__}: task {self.active_task} diverged (non-finite loss or parameters); it is "
                "dropped from the meta-batch and theta_0 is not affected by it."
            )
            if self.schedule.task_parallel:  # each process warns of its own tasks
                warnings.warn(message, stacklevel=2)
            else:
                rank_zero_warn(message)
        if self.tasks_in_batch == self.schedule.tasks_per_process:
            self._meta_step(trainer, pl_module)

    def meta_grads(self) -> list[Tensor]:
        """theta_0's gradients: the meta-batch's summed meta-gradients (allocated in ``setup``)."""
        grads = [p.grad for p in self.init]
        if any(g is None for g in grads):
            raise RuntimeError(f"{type(self).__name__}: theta_0 has no gradient buffer; was setup() called?")
        return grads  # type: ignore[return-value]

    def _meta_step(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert self.meta_optimizer is not None
        grads = self.meta_grads()
        kept, tasks = self.tasks_kept, self.tasks_in_batch
        if self.schedule.task_parallel:  # one all-reduce: every process's meta-gradient sum and count of kept tasks
            flat = torch.cat([g.flatten() for g in grads] + [torch.tensor([float(kept)], device=grads[0].device)])
            flat = trainer.strategy.reduce(flat, reduce_op="sum")
            torch._foreach_copy_(
                grads, [v.view_as(g) for v, g in zip(flat[:-1].split([g.numel() for g in grads]), grads)]
            )
            kept, tasks = int(flat[-1].item()), self.schedule.meta_batch_size
        if kept:
            torch._foreach_div_(grads, float(kept))
            self.meta_optimizer.step()
            self.meta_steps += 1
        else:
            rank_zero_warn(f"{type(self).__name__}: every task of the meta-batch diverged; theta_0 is unchanged.")
        torch._foreach_zero_(grads)
        pl_module.log("meta/tasks_dropped", float(tasks - kept), on_step=True, on_epoch=False)
        self.tasks_in_batch = self.tasks_kept = 0

    def global_loss(self, trainer: L.Trainer, loss: Tensor) -> Tensor:
        """A step's loss as the whole batch sees it: the mean over processes under data-parallel DDP."""
        if self.schedule.parallel == "data" and self.schedule.world_size > 1:
            return trainer.strategy.reduce(loss.clone(), reduce_op="mean")
        return loss

    @torch.no_grad()
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Leave theta_0 and its buffers, the product of meta-training, in the module.

        The weights of a task cut short by the end of fit are kept for checkpoints saved after this point.
        """
        self._suspended = [p.detach().clone() for p in self._live]
        self._load_init(pl_module)

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "names": self.names,
            "init": [p.detach().clone() for p in self.init],
            "meta_grad": [g.clone() for g in self.meta_grads()],
            "meta_optimizer": None if self.meta_optimizer is None else self.meta_optimizer.state_dict(),
            "buffer_start": self._buffer_start,
            "task_params": self._suspended or [p.detach().clone() for p in self._live],
            "task_buffers": {n: b.detach().clone() for n, b in self._live_buffers.items()},
            "schedule": asdict(self.schedule),  # plain types: checkpoints load with weights_only=True
            "counters": {
                "meta_steps": self.meta_steps,
                "tasks_in_batch": self.tasks_in_batch,
                "tasks_kept": self.tasks_kept,
                "active_task": self.active_task,
            },
            "rule": self.rule_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict["names"] != self.names:
            raise MisconfigurationException(
                f"{type(self).__name__}: the checkpoint meta-learns {len(state_dict['names'])} tensors that differ "
                f"from the {len(self.names)} selected now (include={self.include!r}); resume with the same model "
                "and include filter."
            )
        self._pending = state_dict

    def _resume_schedule(self, saved: TaskSchedule, counters: dict[str, int], step: int) -> None:
        """Continue the stream where the saved run stopped, on any number of processes.

        A task-parallel run on several processes keeps a partial meta-batch per process, but only rank 0's is in
        the checkpoint: such a run resumes from checkpoints at meta-step boundaries only.
        """
        at_boundary = counters["tasks_in_batch"] == 0 and saved.ends_task(step)
        if saved.task_parallel and not at_boundary:
            raise MisconfigurationException(
                f"{type(self).__name__}: this checkpoint was saved in the middle of a meta-batch by a task-parallel "
                f"run on {saved.world_size} processes, whose other processes' partial tasks it does not hold. Resume "
                f"from a checkpoint at a meta-step boundary (ModelCheckpoint(every_n_train_steps=a multiple of "
                f"{saved.inner_steps * saved.tasks_per_process}))."
            )
        same = (saved.world_size, saved.parallel) == (self.schedule.world_size, self.schedule.parallel)
        if same or not (saved.task_parallel or self.schedule.task_parallel):
            origin = (saved.origin_step, saved.origin_task)
        elif at_boundary:
            origin = (step, replace(saved, rank=0).task(step))  # rank 0's next task opens the next meta-batch
        else:
            raise MisconfigurationException(
                f"{type(self).__name__}: a run saved in the middle of a meta-batch resumes on the same number of "
                f"processes only ({saved.world_size}, now {self.schedule.world_size}); resume from a checkpoint at "
                "a meta-step boundary."
            )
        self.schedule = replace(self.schedule, origin_step=origin[0], origin_task=origin[1])

    @torch.no_grad()
    def _apply_state(self, state: dict[str, Any]) -> None:
        assert self.meta_optimizer is not None
        # checkpoints of version 0.1.0 have no schedule: they come from one process
        saved = state.get("schedule") or asdict(TaskSchedule(self.schedule.inner_steps, self.schedule.meta_batch_size))
        self._saved_schedule = (TaskSchedule(**saved), state["counters"])
        torch._foreach_copy_([p.data for p in self.init], state["init"])
        torch._foreach_copy_(self.meta_grads(), state["meta_grad"])
        torch._foreach_copy_(self._live, state["task_params"])
        for name, buffer in state["task_buffers"].items():
            self._live_buffers[name].copy_(buffer)
        if state["meta_optimizer"] is not None:
            self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        device = self._live[0].device
        self._buffer_start = {n: b.to(device) for n, b in state["buffer_start"].items()}
        counters = state["counters"]
        self.meta_steps = counters["meta_steps"]
        self.tasks_in_batch = counters["tasks_in_batch"]
        self.tasks_kept = counters["tasks_kept"]
        self.active_task = counters["active_task"]
        self.load_rule_state(state["rule"])

    def init_state_dict(self, pl_module: L.LightningModule) -> dict[str, Tensor]:
        """The module's ``state_dict`` with theta_0 and the buffers a task starts with in place of the live ones."""
        init_of = {id(live): init for live, init in zip(self._live, self.init)}
        state = {}
        for name, tensor in pl_module.state_dict(keep_vars=True).items():
            start = init_of.get(id(tensor), self._buffer_start.get(name, tensor))
            state[name] = start.detach().clone()
        return state

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.save_init_as_weights:
            checkpoint["state_dict"].update(
                (name, tensor)
                for name, tensor in self.init_state_dict(pl_module).items()
                if name in checkpoint["state_dict"]
            )
