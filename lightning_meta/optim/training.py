"""``LearnedOptimizerTraining``: meta-train a :class:`CoordinatewiseLSTM` (and optionally the init) on a task family.

Every batch is an :class:`~lightning_meta.data.EpisodeBatch`: for each of its tasks the optimizee starts from its
init and is trained by the LSTM for ``unroll_steps`` steps on the episode's support batches (reused in turn). The
meta-loss is the mean optimizee loss along the unroll; truncated back-propagation steps the meta-optimizer every
``truncation`` steps, carrying parameters and LSTM states across and cutting the graph.

Examples:
    >>> import lightning as L
    >>> from lightning_meta.optim.training import LearnedOptimizerTraining
    >>> from lightning_meta.data import EpisodeDataModule
    >>> from lightning_meta.families.quadratics import QuadraticOptimizee, RandomQuadratics
    >>> module = LearnedOptimizerTraining(QuadraticOptimizee(dim=4), loss="squared_error", unroll_steps=4, truncation=2)
    >>> data = EpisodeDataModule(RandomQuadratics(dim=4, num_train=8), inner_steps=1, batch_size=1, meta_batch_size=2)
    >>> trainer = L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
    ...                     enable_model_summary=False, limit_val_batches=0)
    >>> trainer.fit(module, datamodule=data)
    >>> trainer.global_step  # 2 batches x 2 truncated windows
    4
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta.data.episodes import EpisodeBatch
from lightning_meta.families.quadratics import squared_error
from lightning_meta.optim.learned import LearnedOptimizer
from lightning_meta.optim.lstm import CoordinatewiseLSTM
from lightning_meta.optim.unroll import UnrollState, unroll
from lightning_meta.utils import log_meta_progress
from lightning_meta.validation import check_range

LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": F.cross_entropy,
    "squared_error": squared_error,
}


class LearnedOptimizerTraining(L.LightningModule):
    """Meta-trains ``net`` (and, with ``learn_init``, the optimizee's initial parameters) by unrolled training.

    Args:
        optimizee: the model the learned optimizer trains; its parameters are the init (``learn_init``) or a
            template re-initialised for every task (``reset_parameters`` of its layers).
        net: the learned optimizer (default: ``CoordinatewiseLSTM()``, the paper's 2 x 20 LSTM).
        loss: the optimizee's loss: ``"cross_entropy"``, ``"squared_error"`` or a callable ``(outputs, targets)``.
        unroll_steps: optimizee steps per task.
        truncation: steps between meta-updates (truncated back-propagation); ``None``: the whole unroll.
        first_order: feed the LSTM detached gradients (no second derivatives).
        checkpoint_segments: checkpointed segments per truncation window (0: none).
        learn_init: meta-learn the optimizee's init jointly with the optimizer.
        meta_lr: Adam learning rate of the meta-optimizer.
        objective: the meta-loss is the mean of the optimizee's losses along the unroll (``"loss"``) or of their
            logarithms (``"log_loss"``: every step's relative progress weighs alike, so that the late steps of a long
            unroll, where the loss is small, still count).
    """

    def __init__(
        self,
        optimizee: nn.Module,
        net: CoordinatewiseLSTM | None = None,
        loss: Literal["cross_entropy", "squared_error"] | Callable[[Tensor, Tensor], Tensor] = "cross_entropy",
        unroll_steps: int = 20,
        truncation: int | None = 5,
        first_order: bool = False,
        checkpoint_segments: int = 0,
        learn_init: bool = False,
        meta_lr: float = 1e-3,
        objective: Literal["loss", "log_loss"] = "loss",
    ) -> None:
        super().__init__()
        if objective not in ("loss", "log_loss"):
            raise ValueError(f"objective must be 'loss' or 'log_loss', got {objective!r}")
        check_range(type(self).__name__, 1, unroll_steps=unroll_steps, truncation=truncation)
        if isinstance(loss, str) and loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)} or a callable, got {loss!r}")
        self.save_hyperparameters(ignore=["optimizee", "net", "loss"])
        self.optimizee = optimizee.requires_grad_(learn_init)
        self.net = net or CoordinatewiseLSTM()
        self.loss_fn = LOSSES[loss] if isinstance(loss, str) else loss
        self.automatic_optimization = False

    @property
    def optimizer_steps_per_batch(self) -> int:
        """Meta-optimizer steps per batch (one per truncation window); the task stream counts batches with it."""
        window = self.hparams["truncation"] or self.hparams["unroll_steps"]
        return -(-self.hparams["unroll_steps"] // window)

    def meta_steps_done(self, optimizer_steps: int) -> int:
        """Every truncation window is a meta-step (:class:`~lightning_meta.protocols.CountsMetaSteps`)."""
        return optimizer_steps

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.hparams["meta_lr"])

    def learned_optimizer(self, params) -> LearnedOptimizer:
        """The trained LSTM as a ``torch.optim`` optimizer of ``params``."""
        return LearnedOptimizer(params, net=copy.deepcopy(self.net))

    def _start(self) -> UnrollState:
        """The optimizee's init: its own parameters when learned, else a fresh initialisation of a copy."""
        if self.hparams["learn_init"]:
            return UnrollState.start(self.optimizee, self.net)
        fresh = copy.deepcopy(self.optimizee)
        layers = [layer for layer in fresh.modules() if hasattr(layer, "reset_parameters")]
        with torch.no_grad():
            for layer in layers:
                layer.reset_parameters()  # type: ignore[operator]
            if not layers:  # bare parameters, e.g. QuadraticOptimizee.theta: N(0, 1)
                for p in fresh.parameters():
                    p.normal_()
        params = {n: p.detach().requires_grad_() for n, p in fresh.named_parameters()}
        return UnrollState.start(self.optimizee, self.net, params)

    def training_step(self, batch: EpisodeBatch, batch_idx: int) -> None:
        optimizer = self.optimizers()
        assert not isinstance(optimizer, list), "configure_optimizers returns one optimizer"
        steps = self.hparams["unroll_steps"]
        window = self.hparams["truncation"] or steps
        states = [self._start() for _ in range(len(batch))]
        for start in range(0, steps, window):
            stop = min(start + window, steps)
            total = torch.zeros((), device=self.device)
            for t, state in enumerate(states):
                states[t], meta_loss = unroll(
                    self.net,
                    self.optimizee,
                    self.loss_fn,
                    state,
                    batch.support_inputs[t],
                    batch.support_targets[t],
                    start,
                    stop,
                    first_order=self.hparams["first_order"],
                    segments=self.hparams["checkpoint_segments"],
                    score=torch.log if self.hparams["objective"] == "log_loss" else None,
                )
                total = total + meta_loss / len(batch)
            optimizer.zero_grad()
            self.manual_backward(total)
            optimizer.step()
            states = [state.detached() for state in states]
            self.log("meta_loss", total.detach(), prog_bar=True)
        log_meta_progress(self, batch.tasks, self.meta_steps_done(self.global_step))
        self.log("final_optimizee_loss", self._final_loss(states, batch))

    def _final_loss(self, states: list[UnrollState], batch: EpisodeBatch) -> Tensor:
        """The mean optimizee loss at the end of the unroll, on each episode's last support batch."""
        final = [
            self.loss_fn(
                torch.func.functional_call(self.optimizee, s.params, (batch.support_inputs[t, -1],)),
                batch.support_targets[t, -1],
            ).detach()
            for t, s in enumerate(states)
        ]
        return torch.stack(final).mean()

    @torch.inference_mode(False)
    @torch.enable_grad()
    def validation_step(self, batch: EpisodeBatch, batch_idx: int) -> Tensor:
        """The learned optimizer trains the optimizees of held-out episodes for ``unroll_steps`` steps (first order,
        no meta-update; the optimizee inits drawn without touching the training run's RNG): ``val/meta_loss``, the
        mean loss along the unroll, and ``val/final_optimizee_loss``. Runs under the Trainer's ``inference_mode``."""
        # tensors made under inference mode cannot enter autograd: clone them out of it
        inputs, targets = batch.support_inputs.clone(), batch.support_targets.clone()
        batch = replace(batch, support_inputs=inputs, support_targets=targets)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            states = [self._start() for _ in range(len(batch))]
        losses = []
        steps = self.hparams["unroll_steps"]
        for t, state in enumerate(states):
            states[t], loss = unroll(
                self.net, self.optimizee, self.loss_fn, state, inputs[t], targets[t], 0, steps, first_order=True
            )
            losses.append(loss.detach())
        meta_loss = torch.stack(losses).mean()
        self.log("val/meta_loss", meta_loss, prog_bar=True, batch_size=len(batch))
        self.log("val/final_optimizee_loss", self._final_loss(states, batch), batch_size=len(batch))
        return meta_loss
