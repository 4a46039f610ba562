"""Peak memory of one meta-step against the number of inner steps: FOMAML, MAML, checkpointed MAML and Leap.

What it measures
----------------
The Leap paper's Omniglot net (:class:`~lightning_meta.models.ConvClassifier` /
:class:`~lightning_meta.models.MAMLClassifier`: 4 x 64-channel conv blocks, 20 classes, 28x28 grey input, batch
20, inner SGD lr 0.1) meta-learns on in-memory random 20-way tasks. For each number of inner steps K:

- ``fomaml`` / ``maml`` / ``maml-checkpointed``: one ``Trainer.fit`` step of a MAMLClassifier on an
  :class:`~lightning_meta.data.EpisodeDataModule` episode (1 task, K support batches of 20 images, query 20):
  the K-step inner loop, the query loss, the backward pass and the meta-optimizer step. ``maml-checkpointed`` cuts
  the unroll into ``ceil(K / --segment-length)`` checkpointed segments.
- ``leap``: ``Trainer.fit`` of a ConvClassifier with ``Leap(meta_batch_size=1)`` on a
  :class:`~lightning_meta.data.TaskDataModule` stream for K + 2 steps (one whole task with its meta-step, and two
  steps of the next); ``baseline`` is the same without the callback (ordinary training).

Memory is the peak of live tensor bytes during ``fit`` minus the live bytes just before it (the model, the task
data and the process's other tensors), tracked exactly by :class:`memory_tracking.LiveTensorBytes` on CPU (checked
on a hand-made example first) or ``torch.cuda.max_memory_allocated`` with ``--device cuda``. It includes each
method's input data: an episode holds all K support batches at once (the "episode data" column), the stream one
batch at a time. ``--time`` also reports the wall seconds of an untracked ``fit`` of each cell (set-up included).

Run it
------
From the repository root (about 10 minutes on a 2-core CPU)::

    python benchmarks/maml_memory.py --inner-steps 1 5 10 25 50 100 --segment-length 5
"""

from __future__ import annotations

import argparse
import gc
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from memory_tracking import CLASSES, LiveTensorBytes, RandomImageFamily, verify_tracker  # noqa: E402

from lightning_meta import Leap  # noqa: E402
from lightning_meta.data import EpisodeDataModule, TaskDataModule  # noqa: E402
from lightning_meta.models import ConvClassifier, MAMLClassifier  # noqa: E402

CONFIGURATIONS = ("baseline", "leap", "fomaml", "maml", "maml-checkpointed")
BATCH = 20
MIB = 2**20


def fit_run(name: str, steps: int, args: argparse.Namespace) -> tuple[L.Trainer, L.LightningModule, L.LightningDataModule]:
    """The Trainer, module and data of one configuration at ``steps`` inner steps (nothing run yet)."""
    torch.manual_seed(0)
    family = RandomImageFamily(num_tasks=4)
    callbacks: list[L.Callback] = []
    if name in ("baseline", "leap"):
        model: L.LightningModule = ConvClassifier(num_classes=CLASSES, lr=0.1)
        data: L.LightningDataModule = TaskDataModule(family, inner_steps=steps, batch_size=BATCH, tasks_per_epoch=4)
        max_steps = steps + 2
        if name == "leap":
            callbacks.append(Leap(meta_batch_size=1))
    else:
        segments = math.ceil(steps / args.segment_length) if name == "maml-checkpointed" else 0
        model = MAMLClassifier(
            num_classes=CLASSES, inner_steps=steps, inner_lr=0.1, first_order=name == "fomaml",
            checkpoint_segments=segments, lr=0.5,
        )
        data = EpisodeDataModule(family, inner_steps=steps, batch_size=BATCH, query_size=BATCH, meta_batch_size=1)
        max_steps = 1
    trainer = L.Trainer(
        accelerator=args.device, devices=1, max_steps=max_steps, callbacks=callbacks, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0,
    )
    return trainer, model, data


def peak_bytes(name: str, steps: int, args: argparse.Namespace) -> int:
    trainer, model, data = fit_run(name, steps, args)
    data.setup("fit")
    gc.collect()
    if args.device == "cuda":
        model.cuda()
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        trainer.fit(model, datamodule=data)
        return torch.cuda.max_memory_allocated() - start
    tracker = LiveTensorBytes()
    with tracker:
        start = tracker.current
        trainer.fit(model, datamodule=data)
    return tracker.peak - start


def fit_seconds(name: str, steps: int, args: argparse.Namespace) -> float:
    trainer, model, data = fit_run(name, steps, args)
    begin = time.perf_counter()
    trainer.fit(model, datamodule=data)
    return time.perf_counter() - begin


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inner-steps", nargs="+", type=int, default=[1, 5, 10, 25, 50, 100])
    parser.add_argument("--configurations", nargs="+", choices=CONFIGURATIONS, default=list(CONFIGURATIONS))
    parser.add_argument("--segment-length", type=int, default=5, help="inner steps per checkpointed segment")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--time", action="store_true", help="also time an untracked fit of each cell")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, dict[int, int]]:
    args = parse_args(argv)
    if args.device == "cpu":
        verify_tracker()
    parameter_size = sum(p.numel() * p.element_size() for p in ConvClassifier(num_classes=CLASSES).parameters())
    peaks: dict[str, dict[int, int]] = {name: {} for name in args.configurations}
    seconds: dict[str, dict[int, float]] = {name: {} for name in args.configurations}
    for steps in args.inner_steps:
        for name in args.configurations:
            peaks[name][steps] = peak_bytes(name, steps, args)
            if args.time:
                seconds[name][steps] = fit_seconds(name, steps, args)
            print(f"K={steps:4d} {name:18s} peak {peaks[name][steps] / MIB:9.1f} MiB", file=sys.stderr, flush=True)

    header = "| configuration | " + " | ".join(f"K={k}" for k in args.inner_steps) + " |"
    lines = [
        "Peak memory of one meta-step above the resting state, MiB (x parameter size):", "",
        header, "|---|" + "---:|" * len(args.inner_steps),
    ]
    for name in args.configurations:
        cells = [f"{peaks[name][k] / MIB:.1f} ({peaks[name][k] / parameter_size:.0f}x)" for k in args.inner_steps]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    episode = [f"{k * BATCH * 28 * 28 * 4 / MIB:.1f}" for k in args.inner_steps]
    lines.append("| (episode data, in the MAML rows) | " + " | ".join(episode) + " |")
    if args.time:
        lines += ["", "Wall seconds of the untracked fit (set-up included):", "", header, "|---|" + "---:|" * len(args.inner_steps)]
        for name in args.configurations:
            lines.append(f"| {name} | " + " | ".join(f"{seconds[name][k]:.2f}" for k in args.inner_steps) + " |")
    lines += [
        "",
        f"ConvClassifier(20 classes, 64 channels), batch 20, parameter size {parameter_size / MIB:.3f} MiB; checkpointed "
        f"segments of {args.segment_length} steps; {args.device}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, lightning {L.__version__}, Python {platform.python_version()}",
        f"`python benchmarks/maml_memory.py {shlex.join(argv if argv is not None else sys.argv[1:])}`",
    ]
    print("\n".join(lines))
    return peaks


if __name__ == "__main__":
    main()
