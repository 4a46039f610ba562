"""``DynamicalLanguageModel``: an LSTM language model whose chosen weights a learned optimizer updates as it reads
(Wolf, Chaumond & Delangue 2018, "Meta-Learning a Dynamical Language Model").

Three levels of memory: the LSTM's hidden state (short term), the weights that the coordinate-wise LSTM optimizer
updates after every segment of the document (medium term: what this document is about) and the weights every
document starts from (long term). Training has two phases on the same stream of document crops:

1. ``pretrain_batches`` batches of ordinary language-model training (truncated back-propagation through
   ``truncation`` segments, hidden state carried on, Adam at ``lr``): the static model.
2. Meta-training: after each segment the chosen weights (``dynamic``) take the learned optimizer's step on that
   segment's loss; the mean loss over the segments (the first one read at the init, every later one at the weights
   the updates reached) is back-propagated through the updates into the optimizer's network (Adam at ``meta_lr``)
   and, with ``learn_init``, into the initial weights (Adam at ``lr``), truncated every ``truncation`` segments
   (:func:`~lightning_meta.optim.unroll_steps`).

At the end of fit the held-out documents are read by the LM as it was when meta-training began and by the
meta-learned one, each static and with SGD dynamic evaluation (its learning rate chosen on the validation
documents), and the meta-learned one also with the learned optimizer: bits per byte overall and against the
position in the document, written as a table (CSV, JSON) and a figure beside the logs and sent to every logger.

Examples:
    >>> import lightning as L
    >>> from lightning_meta.families import DocumentDataModule
    >>> from lightning_meta.families import TextDocuments
    >>> model = DynamicalLanguageModel(hidden_size=16, num_layers=1, pretrain_batches=1, truncation=2,
    ...                                evaluate=False)
    >>> data = DocumentDataModule(TextDocuments(), segment=16, inner_steps=4)
    >>> trainer = L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
    ...                     enable_model_summary=False)
    >>> trainer.fit(model, datamodule=data)
    >>> trainer.global_step  # 2 batches (one static, one meta-training) of 2 truncation windows
    4
    >>> bool(model.net.head.weight.grad.abs().sum() > 0)  # the learned optimizer was trained
    True
"""

from __future__ import annotations

import copy
import csv
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torch.func import functional_call

from lightning_meta.callbacks.progress import held_out_progress, use_meta_progress_bar
from lightning_meta.checkpoint_files import ChecksCheckpointClass
from lightning_meta.data.datamodule import task_datamodule
from lightning_meta.families.document_data import DocumentBatch, DocumentDataModule
from lightning_meta.models.byte_lstm import ByteLSTM, select_parameters
from lightning_meta.models.dynamic_evaluation import (
    OptimizerFactory,
    choose_sgd_lr,
    document_bits_per_byte,
    position_curve,
    read_document,
    read_documents,
    sgd,
)
from lightning_meta.models.reading_report import plot_reading, position_curves, table_rows
from lightning_meta.optim.learned import LearnedOptimizer
from lightning_meta.optim.lstm import CoordinatewiseLSTM
from lightning_meta.optim.unroll import Carry, UnrollState, unroll_steps
from lightning_meta.plotting import log_image
from lightning_meta.text_heatmap import plot_text_heatmap, write_text_heatmap_html
from lightning_meta.utils import log_meta_progress, run_dir

Truncation = int | list[int]
"""Segments per truncation window: one length for all, or the lengths in order (the last one repeats)."""

SMOOTHING = 8  # segments averaged in the figure (the table and the JSON hold every segment)


def window_bounds(steps: int, truncation: Truncation) -> list[tuple[int, int]]:
    """Updates ``0 ... steps - 1`` cut into truncation windows ``(start, stop)``: all of ``truncation`` updates, or
    of the lengths ``truncation`` lists in order, the last one repeated (e.g. growing windows ``[4, 8, 16, 32]``).

    Examples:
        >>> window_bounds(10, 4)
        [(0, 4), (4, 8), (8, 10)]
        >>> window_bounds(40, [2, 4, 8, 16])
        [(0, 2), (2, 6), (6, 14), (14, 30), (30, 40)]
    """
    lengths = [truncation] if isinstance(truncation, int) else list(truncation)
    bounds: list[tuple[int, int]] = []
    start = 0
    while start < steps:
        stop = min(start + lengths[min(len(bounds), len(lengths) - 1)], steps)
        bounds.append((start, stop))
        start = stop
    return bounds


class DynamicalLanguageModel(ChecksCheckpointClass, L.LightningModule):
    """A :class:`~lightning_meta.models.byte_lstm.ByteLSTM` and a
    :class:`~lightning_meta.optim.CoordinatewiseLSTM` that updates its ``dynamic`` weights as it reads.

    Args:
        hidden_size: units per LSTM layer of the language model (also its embedding size).
        num_layers: LSTM layers of the language model.
        tie_weights: the decoder shares the embedding's weight (it stays shared through every update).
        dynamic: regular expression searched in the language model's parameter names: the weights updated while
            reading (``"decoder"``: the output layer, tied to the embedding; ``"decoder|lstm\\..*_l1$"``: also the
            top layer of two; ``"."``: all).
        net: the learned optimizer (default: ``CoordinatewiseLSTM()``, the paper's 2 x 20 LSTM); one network for
            every coordinate, each coordinate with its own state.
        pretrain_batches: batches of static language-model training before meta-training starts.
        truncation: segments between two optimizer steps (truncated back-propagation): one number, or the window
            lengths in order, the last repeated (:func:`window_bounds`; e.g. growing windows ``[4, 8, 16, 32]``).
        pretrain_truncation: segments per window while the LM pretrains (``None``: ``truncation``). The LM then
            reads the crop's first ``windows x pretrain_truncation`` segments, ``windows`` being the number of
            meta-training windows per crop: short windows and many optimizer steps for the LM, long crops (whole
            documents) for the updater, the same number of optimizer steps in every batch.
        first_order: feed the learned optimizer detached gradients (no second derivatives).
        checkpoint_segments: checkpointed stretches per truncation window (0: none), to fit long windows.
        learn_init: meta-train the initial weights jointly with the optimizer.
        lr: Adam learning rate of the language model's weights (both phases).
        meta_lr: Adam learning rate of the learned optimizer.
        gradient_clip: clip the gradient norm of each optimizer step to this (``None``: no clipping).
        sgd_lrs: learning rates tried for SGD dynamic evaluation on the validation documents.
        tune_anchor: an updater anchored on SGD (:class:`~lightning_meta.optim.SGDAnchoredLSTM`) starts
            meta-training as SGD at the learning rate among ``sgd_lrs`` that reads the validation documents best.
        evaluate: read the held-out documents at the end of fit (table, figure, logged metrics).
    """

    def __init__(
        self,
        hidden_size: int = 128,
        num_layers: int = 2,
        tie_weights: bool = True,
        dynamic: str = "decoder",
        net: CoordinatewiseLSTM | None = None,
        pretrain_batches: int = 0,
        truncation: Truncation = 4,
        pretrain_truncation: int | None = None,
        first_order: bool = False,
        checkpoint_segments: int = 0,
        learn_init: bool = True,
        lr: float = 3e-3,
        meta_lr: float = 1e-3,
        gradient_clip: float | None = 1.0,
        sgd_lrs: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0),
        tune_anchor: bool = True,
        evaluate: bool = True,
    ) -> None:
        super().__init__()
        windows = [truncation] if isinstance(truncation, int) else list(truncation)
        windows += [] if pretrain_truncation is None else [pretrain_truncation]
        if not windows or min(windows) < 1 or pretrain_batches < 0 or checkpoint_segments < 0:
            raise ValueError(
                "DynamicalLanguageModel: truncation (every window) and pretrain_truncation must be >= 1, "
                "pretrain_batches and checkpoint_segments >= 0; got "
                f"{truncation}, {pretrain_truncation}, {pretrain_batches} and {checkpoint_segments}"
            )
        if not sgd_lrs or min(lr, meta_lr, *sgd_lrs) <= 0 or (gradient_clip is not None and gradient_clip <= 0):
            raise ValueError(
                "DynamicalLanguageModel: lr, meta_lr, gradient_clip and the sgd_lrs (at least one) must be positive; "
                f"got {lr}, {meta_lr}, {gradient_clip} and {list(sgd_lrs)}"
            )
        self.save_hyperparameters(ignore=["net"])
        self.lm = ByteLSTM(hidden_size, num_layers, tie_weights)
        if not select_parameters(self.lm, dynamic):
            names = [name for name, _ in self.lm.named_parameters(remove_duplicate=False)]
            raise ValueError(f"DynamicalLanguageModel: dynamic={dynamic!r} matches none of the parameters {names}")
        self.pretrained = copy.deepcopy(self.lm).requires_grad_(False)  # the LM when meta-training began
        self.net = net or CoordinatewiseLSTM()
        self.initial_net = copy.deepcopy(self.net).requires_grad_(False)  # the updater when meta-training began
        self.automatic_optimization = False
        self.figure: Path | None = None  # the figure of the held-out reading, once written
        self.anchor_scores: dict[str, Any] = {}  # the anchor's tuning on validation, once done
        self._results: list[dict[str, Any]] = []

    @property
    def optimizer_steps_per_batch(self) -> int:
        """Optimizer steps per batch, one per truncation window; the document stream counts batches with it."""
        data = task_datamodule(self.trainer)
        if data is None:
            raise MisconfigurationException("DynamicalLanguageModel reads documents: fit it with a DocumentDataModule")
        return len(window_bounds(data.inner_steps, self.hparams["truncation"]))

    def meta_steps_done(self, optimizer_steps: int) -> int:
        """Meta-steps (optimizer steps of meta-training) done after ``optimizer_steps``: none while the LM pretrains."""
        return max(0, optimizer_steps - self.pretraining_steps)

    @property
    def pretraining_steps(self) -> int:
        """Optimizer steps of pretraining, before meta-training begins (:class:`~lightning_meta.protocols.Pretrains`:
        the progress bar labels them so)."""
        return self.hparams["pretrain_batches"] * self.optimizer_steps_per_batch

    def setup(self, stage: str) -> None:
        if self.trainer.world_size > 1:
            raise MisconfigurationException(
                "DynamicalLanguageModel runs one process: it takes several optimizer steps per batch outside a "
                "DDP-wrapped forward. Use devices=1."
            )
        if not isinstance(task_datamodule(self.trainer), DocumentDataModule):
            raise MisconfigurationException("DynamicalLanguageModel reads documents: fit it with a DocumentDataModule")
        use_meta_progress_bar(self.trainer, self, stage)  # in place of Lightning's default bar, one per epoch

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            [
                {"params": list(self.lm.parameters()), "lr": self.hparams["lr"]},
                {"params": list(self.net.parameters()), "lr": self.hparams["meta_lr"]},
            ]
        )

    def _segment_loss(
        self, inputs: Tensor, targets: Tensor, params: dict[str, Tensor], carry: Carry, t: int
    ) -> tuple[Tensor, Carry]:
        """The mean loss (nats per byte) of segment ``t`` of one document at ``params``; the LSTM state after it."""
        logits, h, c = functional_call(self.lm, params, (inputs[t][None], *carry))
        return F.cross_entropy(logits[0], targets[t]), (h, c)

    @contextmanager
    def _without_cudnn_if_second_order(self) -> Iterator[None]:
        """cuDNN's LSTM has no double backward: second-order meta-gradients run PyTorch's own LSTM kernels."""
        cudnn = torch.backends.cudnn
        enabled = cudnn.enabled
        cudnn.enabled = enabled and bool(self.hparams["first_order"])
        try:
            yield
        finally:
            cudnn.enabled = enabled

    def training_step(self, batch: DocumentBatch, batch_idx: int) -> None:
        optimizer = self.optimizers()
        assert not isinstance(optimizer, list), "configure_optimizers returns one optimizer"
        batches_done = self.global_step // self.optimizer_steps_per_batch
        meta = batches_done >= self.hparams["pretrain_batches"]
        if batches_done == self.hparams["pretrain_batches"]:
            self.pretrained.load_state_dict(self.lm.state_dict())
            self._tune_anchor()
            self.initial_net.load_state_dict(self.net.state_dict())
        learn_init = self.hparams["learn_init"] or not meta
        dynamic = select_parameters(self.lm, self.hparams["dynamic"]) if meta else {}
        fixed = {n: p if learn_init else p.detach() for n, p in self.lm.named_parameters() if n not in dynamic}
        init = {n: p if learn_init else p.detach().requires_grad_() for n, p in dynamic.items()}
        carry = self.lm.initial_state(1, like=self.lm.decoder.bias)
        states = [UnrollState.start(self.lm, self.net, init, carry) for _ in range(len(batch))]
        windows = self._windows(batch, meta)
        for start, stop in windows:
            reading = [d for d in range(len(batch)) if start < batch.segments[d] - 1]  # documents not yet ended
            optimizer.zero_grad()  # to None: a window past the end of every document moves nothing
            if reading:
                total = torch.zeros((), device=self.device)
                with self._without_cudnn_if_second_order():
                    for d in reading:
                        read = partial(self._segment_loss, batch.inputs[d], batch.targets[d])
                        states[d], loss = unroll_steps(
                            self.net,
                            read,
                            states[d],
                            start,
                            min(stop, batch.segments[d] - 1),
                            first_order=self.hparams["first_order"],
                            segments=self.hparams["checkpoint_segments"],
                            score_start=start == windows[0][0],
                            fixed=fixed,
                        )
                        total = total + loss / len(reading)
                    self.manual_backward(total)
                self.log("train/bits_per_byte", total.detach() / math.log(2), prog_bar=True)
            if self.hparams["gradient_clip"] is not None:
                parameters = [p for group in optimizer.param_groups for p in group["params"]]
                torch.nn.utils.clip_grad_norm_(parameters, self.hparams["gradient_clip"])
            optimizer.step()
            states = [state.detached() for state in states]
        log_meta_progress(self, batch.tasks, self.meta_steps_done(self.global_step))

    def _windows(self, batch: DocumentBatch, meta: bool) -> list[tuple[int, int]]:
        """The truncation windows of a batch's crop: of ``truncation`` segments while meta-training; while the LM
        pretrains, as many windows of ``pretrain_truncation`` over a stretch of the crop at a seeded random place
        (the same for every document of the batch; a function of the batch's place in the stream), so that every
        batch takes the same number of optimizer steps."""
        steps = batch.inputs.shape[1] - 1
        windows = window_bounds(steps, self.hparams["truncation"])
        short = self.hparams["pretrain_truncation"]
        if meta or short is None:
            return windows
        span = len(windows) * short
        room = min(batch.segments) - 1 - span
        offset = int(np.random.default_rng([5, batch.tasks[0]]).integers(room + 1)) if room > 0 else 0
        stretch = [(offset + a, offset + b) for a, b in window_bounds(min(steps, span), short)]
        return stretch + [(steps, steps)] * (len(windows) - len(stretch))  # empty windows move nothing

    def _tune_anchor(self) -> None:
        """An updater anchored on SGD (``set_lr``, e.g. :class:`~lightning_meta.optim.SGDAnchoredLSTM`) starts
        meta-training at SGD's learning rate chosen on the validation documents (``tune_anchor``)."""
        set_lr = getattr(self.net, "set_lr", None)
        if not self.hparams["tune_anchor"] or set_lr is None:
            return
        data = task_datamodule(self.trainer)
        assert isinstance(data, DocumentDataModule), "checked in setup"
        val = [(name, x.to(self.device), y.to(self.device)) for name, x, y in data.held_out("val")]
        lr, scores = choose_sgd_lr(self.lm, val, data.segment, self.hparams["dynamic"], self.hparams["sgd_lrs"])
        set_lr(lr)
        self.anchor_scores = {"sgd_lr": lr, "val_bits_per_byte_by_lr": scores}
        rank_zero_info(f"DynamicalLanguageModel: the updater starts as SGD at lr {lr} (validation: {scores})")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["anchor_scores"] = self.anchor_scores  # the anchor's tuning, for the report of a resumed run

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.anchor_scores = checkpoint.get("anchor_scores", {})

    def on_fit_end(self) -> None:
        folder = run_dir(self.trainer)  # on every process: a collective under DDP
        if self.hparams["evaluate"] and self.trainer.is_global_zero:
            self.evaluate_held_out(folder / "dynamical_lm.png")

    @torch.inference_mode(False)
    def evaluate_held_out(self, path: Path) -> list[dict[str, Any]]:
        """Read the test documents with every updater, from the LM and updater as they were when meta-training began
        and from the meta-trained ones (SGD's learning rate chosen on the validation documents for each LM); write
        ``path`` (figure of bits per byte against the position in the document), the table beside it (``.csv``: one
        row per init and updater, bits per byte over the whole documents and over a training crop's ``inner_steps +
        1`` segments, the documents' mean and 95 % interval, the paired difference to SGD; ``.json``: also the
        validation scores, every document's bits per byte and the curves) and the longest test document coloured by
        the bits the meta-trained updater saved against static reading (``_saved_bits.html``, ``.png``); log the bits
        per byte and the figures; return the rows."""
        data = task_datamodule(self.trainer)
        assert isinstance(data, DocumentDataModule), "checked in setup"
        if self.global_step // self.optimizer_steps_per_batch <= self.hparams["pretrain_batches"]:
            self.pretrained.load_state_dict(self.lm.state_dict())  # meta-training never began
            self.initial_net.load_state_dict(self.net.state_dict())
        device = self.trainer.strategy.root_device  # Lightning moved the module to the CPU before on_fit_end
        held_out = {
            split: [(name, x.to(device), y.to(device)) for name, x, y in data.held_out(split)]
            for split in ("val", "test")
        }
        pattern, segment = self.hparams["dynamic"], data.segment
        reads, extras = {}, {}
        lrs, val, test = self.hparams["sgd_lrs"], held_out["val"], held_out["test"]
        label = f"Reading the held-out documents ({len(val)} validation, {len(test)} test)"
        reads_to_do = 2 * len(lrs) * len(val) + 6 * len(test) + 2  # SGD rates on validation, 2 x 3 updaters on test
        with held_out_progress(self.trainer, label, reads_to_do) as advance:
            starts = (("before_meta", self.pretrained, self.initial_net), ("meta_init", self.lm, self.net))
            for key, model, net in starts:
                model = copy.deepcopy(model).to(device)
                lr, scores = choose_sgd_lr(model, val, segment, pattern, lrs, advance)
                updaters: dict[str, OptimizerFactory | None] = {
                    "static": None,
                    "sgd": sgd(lr),
                    "learned": partial(LearnedOptimizer, net=copy.deepcopy(net).to(device)),
                }
                for updater, factory in updaters.items():
                    reads[f"{key}/{updater}"] = read_documents(model, test, segment, pattern, factory, advance)
                extras[f"{key}/sgd"] = {"sgd_lr": lr, "val_bits_per_byte_by_lr": scores}
            name, inputs, targets = max(test, key=lambda document: len(document[2]))
            saved = [read_document(model, inputs, targets, segment, pattern, updaters[u], per_byte=True) for u in
                     ("static", "learned")]
            advance()
            advance()
        rows = [{**row, **extras.get(f"{row['init']}/{row['updater']}", {})}
                for row in table_rows(reads, data.inner_steps + 1)]
        self._report(rows, reads, segment, data.inner_steps + 1, path)
        self._saved_bits_figures(name, bytes(targets.tolist()), saved[0] - saved[1], path)
        self._results = rows
        return rows

    def results(self) -> list[dict[str, str | int | float]]:
        """The rows of the held-out reading's table (see :meth:`evaluate_held_out`) for the run's summary: bits per
        byte of each init and updater, overall and over the trained horizon, and the documents' mean with its 95 %
        interval (empty before the reading)."""
        columns = ("init", "updater", "sgd_lr", "bits_per_byte", "trained_horizon_bits_per_byte", "document_mean",
                   "document_ci95", "documents")
        return [{c: row[c] for c in columns if c in row} for row in self._results]

    def _report(
        self, rows: list[dict[str, Any]], reads: dict[str, tuple[Tensor, Tensor]], segment: int, horizon: int,
        path: Path,
    ) -> None:
        settings = {"dynamic": self.hparams["dynamic"], "segment": segment, "global_step": self.global_step}
        documents = next(iter(reads.values()))[1]
        window = min(SMOOTHING, documents.shape[1])
        curves = position_curves(reads, window)
        table = {**settings, "rows": rows, "anchor": self.anchor_scores, "smoothing_segments": window}
        table["documents_at_position"] = (documents > 0).sum(0).tolist()
        table["bits_per_byte_at_position"] = {name: position_curve(*read)[0].tolist() for name, read in reads.items()}
        table["document_bits_per_byte"] = {name: document_bits_per_byte(*read).tolist() for name, read in reads.items()}
        table["windowed_curves"] = {name: {k: v.tolist() for k, v in c.items()} for name, c in curves.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".json").write_text(json.dumps(table, indent=1))
        with path.with_suffix(".csv").open("w", newline="") as f:
            columns = ["init", "updater", "sgd_lr", "bits_per_byte", "trained_horizon_bits_per_byte", "document_mean",
                       "document_ci95", "minus_sgd_mean", "minus_sgd_ci95", "bytes", "documents"]
            writer = csv.DictWriter(f, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        metrics = {f"test/{r['init']}/{r['updater']}/bits_per_byte": r["bits_per_byte"] for r in rows}
        for logger in self.trainer.loggers:
            logger.log_metrics(metrics, step=self.global_step)
        self.figure = plot_reading(curves, segment, window, horizon * segment, path)
        log_image(self.trainer.loggers, "test/bits_per_byte_by_position", path, self.global_step)
        rank_zero_info(f"DynamicalLanguageModel: table {path.with_suffix('.csv')}, figure {path}")

    def _saved_bits_figures(self, name: str, text: bytes, saved: Tensor, path: Path) -> None:
        """The document coloured by the bits the meta-trained updater saved against static reading, byte by byte:
        the whole document as HTML, its start as a PNG (also sent to the loggers that take images)."""
        stem = path.with_name(path.stem + "_saved_bits")
        title = (f"{name}: bits the meta-trained updater saved (blue) or lost (red) against static reading, "
                 f"{float(saved.sum()):+.0f} bits over {len(text)} bytes")
        write_text_heatmap_html(text, saved, stem.with_suffix(".html"), title)
        plot_text_heatmap(text, saved, stem.with_suffix(".png"), title + " (its start)")
        log_image(self.trainer.loggers, "test/saved_bits_by_byte", stem.with_suffix(".png"), self.global_step)
