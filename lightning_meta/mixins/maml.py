"""``MAMLMixin``: MAML, first-order MAML, learned per-step inner learning rates and ANIL for any LightningModule.

The inner loop adapts a ``{name: tensor}`` copy of the module's parameters with ``torch.func.functional_call``; the
module's real parameters stay ordinary ``nn.Parameter`` objects, so Lightning's optimizer, gradient accumulation,
DDP, checkpoints and every other callback work unchanged. ``training_step`` on an
:class:`~lightning_meta.data.EpisodeBatch` returns the mean query loss at the adapted parameters, whose gradient
is the (first- or second-order) MAML meta-gradient; any other batch goes to the module's own ``training_step``.

Examples:
    >>> import lightning as L, torch
    >>> import torch.nn.functional as F
    >>> from torch import nn
    >>> from lightning_meta.mixins import MAMLMixin
    >>> from lightning_meta.data import EpisodeBatch
    >>> class FewShot(MAMLMixin, L.LightningModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.body, self.head = nn.Linear(4, 8), nn.Linear(8, 3)
    ...         self.configure_maml(inner_steps=2, inner_lr=0.5, first_order=False)
    ...     def forward(self, x):
    ...         return self.head(self.body(x).tanh())
    ...     def configure_optimizers(self):
    ...         return torch.optim.Adam(self.parameters(), lr=1e-3)
    >>> model = FewShot()
    >>> batch = EpisodeBatch(torch.randn(2, 1, 5, 4), torch.randint(0, 3, (2, 1, 5)),
    ...                      torch.randn(2, 7, 4), torch.randint(0, 3, (2, 7)), tasks=[0, 1], task_names=["a", "b"])
    >>> result = model.maml_loss(batch)
    >>> result.loss.backward()
    >>> model.body.weight.grad.shape
    torch.Size([8, 4])
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_meta.checkpointing import CheckpointedSegment, segment_bounds
from lightning_meta.data.episodes import EpisodeBatch
from lightning_meta.utils import ParamFilter, log_meta_progress, parameter_filter
from lightning_meta.validation import check_range

BatchNormMode = Literal["batch", "task", "frozen"]
LEARNED_LRS = "maml_inner_lrs"


@dataclass
class MAMLSettings:
    """What :meth:`MAMLMixin.configure_maml` chose; ``adapted`` names the parameters the inner loop changes."""

    inner_steps: int | None
    inner_lr: float
    first_order: bool
    learn_inner_lr: bool
    batch_norm: BatchNormMode
    checkpoint_segments: int
    adapted: list[str]


@dataclass
class MAMLResult:
    """Mean over the episodes of a batch: query loss (differentiable), query accuracy, support loss before adapting."""

    loss: Tensor
    accuracy: Tensor | None
    support_loss: Tensor


class MAMLMixin:
    """Mix into a LightningModule (before ``L.LightningModule`` or your base class) and call :meth:`configure_maml`
    at the end of ``__init__``.

    ``configure_optimizers`` is the meta-optimizer's (it steps the init, and the learned learning rates when there
    are any). The inner loop is plain SGD at ``inner_lr``; :meth:`configure_inner_optimizer` gives the same SGD as a
    ``torch.optim`` optimizer, which :class:`~lightning_meta.MetaEvaluation` uses to train held-out tasks.

    Override :meth:`task_loss` for a loss other than cross-entropy. If your class defines ``training_step`` itself,
    call ``self.maml_loss(batch).loss`` in it for episode batches.
    """

    maml: MAMLSettings

    def configure_maml(
        self,
        inner_steps: int | None = None,
        inner_lr: float = 0.1,
        first_order: bool = False,
        learn_inner_lr: bool = False,
        adapt: str | ParamFilter | None = None,
        batch_norm: BatchNormMode = "batch",
        checkpoint_segments: int = 0,
    ) -> None:
        """Choose the inner loop. Call after the module's layers exist.

        Args:
            inner_steps: SGD steps on the support data per task; ``None``: one per support batch of the episode.
            inner_lr: learning rate of the inner SGD (the initial value when ``learn_inner_lr``).
            first_order: FOMAML: the gradients of the inner loop are constants, no second derivatives.
            learn_inner_lr: one learned learning rate per inner step and adapted tensor (Meta-SGD / MAML++ style),
                a parameter named ``maml_inner_lrs`` that the meta-optimizer trains.
            adapt: which parameters the inner loop adapts: a regular expression searched in the name or a
                predicate ``(name, parameter) -> bool`` (e.g. ``"^head"`` for ANIL); ``None`` adapts all. The
                others are used as they are, and still meta-learned.
            batch_norm: BatchNorm in the inner loop and on the query set: ``"batch"`` (MAML's choice) normalises
                with each batch's own statistics and never touches running statistics; ``"task"`` starts fresh
                running statistics for every task, updates them on the support batches and scores the query set
                with them; ``"frozen"`` uses the module's running statistics throughout and never updates them.
            checkpoint_segments: cut the second-order unroll into this many gradient-checkpointed segments
                (:class:`CheckpointedSegment`): memory holds one segment's graph plus each segment's inputs instead
                of the whole unroll's graph, at the cost of running every inner step twice. 0 or 1: none.
        """
        check_range("configure_maml", 1, inner_steps=inner_steps)
        check_range("configure_maml", 0, checkpoint_segments=checkpoint_segments)
        check_range("configure_maml", 0, strict=True, inner_lr=inner_lr)
        if batch_norm not in ("batch", "task", "frozen"):
            raise ValueError(f"configure_maml: batch_norm must be 'batch', 'task' or 'frozen', got {batch_norm!r}")
        if batch_norm == "task" and checkpoint_segments > 1:
            raise ValueError(
                "configure_maml: batch_norm='task' updates running statistics in place, which a checkpointed "
                "segment would apply twice; use batch_norm='batch' or 'frozen' with checkpoint_segments"
            )
        if learn_inner_lr and inner_steps is None:
            raise ValueError("configure_maml: learn_inner_lr=True learns one rate per step and needs inner_steps")
        module = self._as_module()
        chosen = parameter_filter(adapt)
        adapted = [n for n, p in module.named_parameters() if p.requires_grad and n != LEARNED_LRS and chosen(n, p)]
        if not adapted:
            names = [n for n, _ in module.named_parameters()][:20]
            raise ValueError(
                f"configure_maml(adapt={adapt!r}) matched no trainable parameter; the parameters are {names}"
            )
        self.maml = MAMLSettings(
            inner_steps, inner_lr, first_order, learn_inner_lr, batch_norm, checkpoint_segments, adapted
        )
        if learn_inner_lr:
            assert inner_steps is not None
            module.register_parameter(LEARNED_LRS, nn.Parameter(torch.full((inner_steps, len(adapted)), inner_lr)))

    def _as_module(self) -> L.LightningModule:
        if not isinstance(self, L.LightningModule):
            raise TypeError(
                f"MAMLMixin must be mixed into a LightningModule; {type(self).__name__} is not a LightningModule"
            )
        return self

    # ----------------------------------------------------------------- what a user may override
    def task_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """The loss of the inner loop and of the query set. Default: cross-entropy."""
        return F.cross_entropy(outputs, targets)

    @property
    def fixed_inner_steps(self) -> int | None:
        """The inner steps :meth:`configure_maml` fixed (``None``: one per support batch of the episode); episodes
        carry that many support batches by default (:class:`~lightning_meta.protocols.FixedInnerSteps`)."""
        return self.maml.inner_steps

    def meta_steps_done(self, optimizer_steps: int) -> int:
        """One training step is one meta-step (:class:`~lightning_meta.protocols.CountsMetaSteps`)."""
        return optimizer_steps

    def configure_inner_optimizer(self) -> torch.optim.Optimizer:
        """The inner loop as a ``torch.optim`` optimizer (SGD at ``inner_lr`` over the adapted parameters)."""
        params = dict(self._as_module().named_parameters())
        return torch.optim.SGD([params[n] for n in self.maml.adapted], lr=self.maml.inner_lr)

    # ----------------------------------------------------------------- the inner loop
    def adapt(
        self, support_inputs: Tensor, support_targets: Tensor, create_graph: bool | None = None
    ) -> dict[str, Tensor]:
        """The adapted parameters of one task: SGD on support batches ``[batches, batch_size, ...]``, batch
        ``i % batches`` at step ``i``. ``create_graph`` (default: ``not first_order``) keeps the second-order terms.

        Use them with ``torch.func.functional_call(model, model.adapt(x, y), (inputs,))``.
        """
        return self._adapt(support_inputs, support_targets, create_graph, self._task_buffers())[0]

    def _adapt(
        self, support_inputs: Tensor, support_targets: Tensor, create_graph: bool | None, buffers: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], Tensor]:
        settings = self.maml
        steps = settings.inner_steps or support_inputs.shape[0]
        if support_inputs.shape[0] > steps:
            raise ValueError(
                f"the episode has {support_inputs.shape[0]} support batches but the inner loop takes {steps} steps: "
                "set the data module's support_batches to at most inner_steps"
            )
        second_order = (not settings.first_order) if create_graph is None else create_graph
        module = self._as_module()
        names = settings.adapted
        params = dict(module.named_parameters())
        # Everything else the inner loop depends on differentiably: the other parameters and the learned rates.
        other_names = [n for n, p in params.items() if p.requires_grad and n not in names]
        first_loss: list[Tensor] = []

        def run(start: int, stop: int, graph: bool, *tensors: Tensor) -> tuple[Tensor, ...]:
            """Inner steps ``start..stop-1`` from ``tensors`` = adapted tensors, then the other names' tensors."""
            adapted, others = tensors[: len(names)], dict(zip(other_names, tensors[len(names) :]))
            lrs = others.get(LEARNED_LRS)
            with self._batch_norm(training=True):
                for step in range(start, stop):
                    batch = step % support_inputs.shape[0]
                    weights = {**buffers, **others, **dict(zip(names, adapted))}
                    loss = self.task_loss(
                        functional_call(module, weights, (support_inputs[batch],)), support_targets[batch]
                    )
                    if step == 0 and not first_loss:
                        first_loss.append(loss.detach())
                    grads = torch.autograd.grad(loss, adapted, create_graph=graph, allow_unused=True)
                    adapted = tuple(
                        t if g is None else t - (settings.inner_lr if lrs is None else lrs[step, i]) * g
                        for i, (t, g) in enumerate(zip(adapted, grads))
                    )
            return adapted

        tensors: tuple[Tensor, ...] = tuple(params[n] for n in names)
        others = tuple(params[n] for n in other_names)
        segments = segment_bounds(0, steps, settings.checkpoint_segments)
        for start, stop in segments:
            if len(segments) > 1 and second_order:
                tensors = CheckpointedSegment.apply(partial(run, start, stop), *tensors, *others)
            else:
                tensors = run(start, stop, second_order, *tensors, *others)
        return dict(zip(names, tensors)), first_loss[0]

    def _task_buffers(self) -> dict[str, Tensor]:
        """Fresh running statistics for one task (``batch_norm="task"``); nothing to replace otherwise."""
        if self.maml.batch_norm != "task":
            return {}
        fresh: dict[str, Tensor] = {}
        for prefix, layer in self._as_module().named_modules():
            if isinstance(layer, _BatchNorm) and layer.running_mean is not None:
                assert layer.running_var is not None and layer.num_batches_tracked is not None
                fresh[f"{prefix}.running_mean"] = torch.zeros_like(layer.running_mean)
                fresh[f"{prefix}.running_var"] = torch.ones_like(layer.running_var)
                fresh[f"{prefix}.num_batches_tracked"] = torch.zeros_like(layer.num_batches_tracked)
        return fresh

    @contextmanager
    def _batch_norm(self, training: bool) -> Iterator[None]:
        """Put every BatchNorm layer in the mode ``batch_norm`` prescribes for the support (``training``) or the
        query set."""
        mode = self.maml.batch_norm
        layers = [m for m in self._as_module().modules() if isinstance(m, _BatchNorm)]
        saved = [(m.training, m.track_running_stats) for m in layers]
        for layer in layers:
            if mode == "batch":
                layer.train(True)
                layer.track_running_stats = False  # batch statistics, running statistics neither read nor written
            else:
                layer.train(training and mode == "task")
        try:
            yield
        finally:
            for layer, (was_training, tracked) in zip(layers, saved):
                layer.train(was_training)
                layer.track_running_stats = tracked

    # ----------------------------------------------------------------- episodes
    def maml_loss(self, batch: EpisodeBatch, create_graph: bool | None = None) -> MAMLResult:
        """Adapt to every episode of ``batch`` and score the adapted parameters on its query set."""
        module = self._as_module()
        losses, correct, support = [], [], []
        for t in range(len(batch)):
            buffers = self._task_buffers()
            adapted, support_loss = self._adapt(
                batch.support_inputs[t], batch.support_targets[t], create_graph, buffers
            )
            with self._batch_norm(training=False):
                outputs = functional_call(module, {**buffers, **adapted}, (batch.query_inputs[t],))
            targets = batch.query_targets[t]
            losses.append(self.task_loss(outputs, targets))
            support.append(support_loss)
            if outputs.ndim == 2 and not targets.is_floating_point():
                correct.append((outputs.argmax(-1) == targets).float().mean())
        accuracy = torch.stack(correct).mean().detach() if correct else None
        return MAMLResult(torch.stack(losses).mean(), accuracy, torch.stack(support).mean())

    def _log_result(self, stage: str, result: MAMLResult, batch: EpisodeBatch) -> None:
        log = self._as_module().log
        size = len(batch)
        log(f"{stage}/query_loss", result.loss.detach(), prog_bar=True, batch_size=size)
        log(f"{stage}/support_loss", result.support_loss, batch_size=size)
        if result.accuracy is not None:
            log(f"{stage}/query_accuracy", result.accuracy, prog_bar=stage != "train", batch_size=size)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if not isinstance(batch, EpisodeBatch):
            return super().training_step(batch, batch_idx)  # type: ignore[misc]
        result = self.maml_loss(batch)
        self._log_result("train", result, batch)
        module = self._as_module()
        log_meta_progress(module, batch.tasks, self.meta_steps_done(module.global_step))
        return result.loss

    @torch.inference_mode(False)
    @torch.enable_grad()
    def _evaluation_step(self, stage: str, batch: EpisodeBatch) -> MAMLResult:
        """Adapt on held-out episodes even under the Trainer's ``inference_mode=True``: a grad-enabled context, and
        inputs cloned out of inference mode (tensors created under it cannot enter autograd)."""
        fields = ("support_inputs", "support_targets", "query_inputs", "query_targets")
        batch = replace(batch, **{f: getattr(batch, f).clone() for f in fields})
        result = self.maml_loss(batch, create_graph=False)
        result = MAMLResult(result.loss.detach(), result.accuracy, result.support_loss)
        self._log_result(stage, result, batch)
        return result

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        if not isinstance(batch, EpisodeBatch):
            return super().validation_step(batch, batch_idx)  # type: ignore[misc]
        return self._evaluation_step("val", batch).loss

    def test_step(self, batch: Any, batch_idx: int) -> Any:
        if not isinstance(batch, EpisodeBatch):
            return super().test_step(batch, batch_idx)  # type: ignore[misc]
        return self._evaluation_step("test", batch).loss
