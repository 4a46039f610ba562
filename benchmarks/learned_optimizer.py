"""Learned optimizers: (1) memory and time of one meta-step against unroll length, plain vs checkpointed;
(2) quality on held-out random quadratics against SGD and Adam with tuned learning rates.

What it measures
----------------
1. ``--memory``: one unroll of ``K`` steps (``--unrolls``, default 20 100 400) of a :class:`CoordinatewiseLSTM`
   (2 x 20) training a ``--dim``-dimensional random quadratic, second order, then the backward pass: peak live tensor
   bytes above the resting state (:class:`memory_tracking.LiveTensorBytes`, exact on CPU) and wall time of an
   untracked repeat, for the plain unroll and for ``ceil(K / --segment-length)`` checkpointed segments.
2. ``--quality``: meta-trains the LSTM with :class:`~lightning_meta.optim.training.LearnedOptimizerTraining` on
   ``RandomQuadratics(dim=10)`` (200 training functions; unrolls of ``--train-unroll`` steps, truncation 5,
   ``--meta-batches`` batches of 4), then trains each of the 20 test functions from the same random init for
   1000 steps with it, with SGD and with Adam. SGD's and Adam's learning rates are tuned on those test functions
   themselves (the best of a grid by mean loss after 100 steps; generous to them). Prints the mean loss at the
   meta-training horizon, after 100 and after 1000 steps, and writes the mean curves to ``--figure``.

Run it (about 4 minutes on 2 CPU cores)::

    python benchmarks/learned_optimizer.py --memory --quality --figure docs/images/learned_optimizer_quadratics.png
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
import matplotlib
import torch

matplotlib.use("Agg")  # a script that only writes files
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from memory_tracking import LiveTensorBytes, verify_tracker  # noqa: E402

from lightning_meta.data import EpisodeDataModule  # noqa: E402
from lightning_meta.families.quadratics import QuadraticOptimizee, RandomQuadratics, squared_error  # noqa: E402
from lightning_meta.optim import CoordinatewiseLSTM, LearnedOptimizer, UnrollState, unroll  # noqa: E402
from lightning_meta.optim.training import LearnedOptimizerTraining  # noqa: E402

MIB = 2**20


def one_meta_step(dim: int, steps: int, segments: int) -> None:
    torch.manual_seed(0)
    family = RandomQuadratics(dim=dim, num_train=1)
    w, y = family.tasks("train")[0].train[0]
    model, net = QuadraticOptimizee(dim), CoordinatewiseLSTM()
    _, meta_loss = unroll(net, model, squared_error, UnrollState.start(model, net), w[None, None], y[None, None],
                          0, steps, segments=segments)
    meta_loss.backward()


def memory(args: argparse.Namespace) -> list[str]:
    verify_tracker()
    lines = ["| unroll steps | plain: peak MiB | checkpointed: peak MiB | ratio | plain: s | checkpointed: s | time ratio |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for steps in args.unrolls:
        peaks, seconds = {}, {}
        for segments in (0, math.ceil(steps / args.segment_length)):
            gc.collect()
            tracker = LiveTensorBytes()
            with tracker:
                start = tracker.current
                one_meta_step(args.dim, steps, segments)
            peaks[segments] = (tracker.peak - start) / MIB
            begin = time.perf_counter()
            one_meta_step(args.dim, steps, segments)
            seconds[segments] = time.perf_counter() - begin
        plain_peak, checkpointed_peak = peaks[0], list(peaks.values())[1]
        plain_time, checkpointed_time = seconds[0], list(seconds.values())[1]
        lines.append(f"| {steps} | {plain_peak:.1f} | {checkpointed_peak:.1f} | {checkpointed_peak / plain_peak:.2f} | "
                     f"{plain_time:.2f} | {checkpointed_time:.2f} | {checkpointed_time / plain_time:.2f} |")
        print(lines[-1], file=sys.stderr, flush=True)
    return lines


def curves(family: RandomQuadratics, make_optimizer, steps: int) -> torch.Tensor:
    """Mean loss of the test functions at steps 0..steps, each trained from its own seeded init."""
    losses = torch.zeros(steps + 1)
    tasks = family.tasks("test")
    for index, task in enumerate(tasks):
        w, y = (t[None] for t in task.train[0])
        torch.manual_seed(1000 + index)
        model = QuadraticOptimizee(family.dim)
        optimizer = make_optimizer(model.parameters())
        for step in range(steps + 1):
            loss = squared_error(model(w), y)
            losses[step] += loss.item() / len(tasks)
            if step < steps:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return losses


def quality(args: argparse.Namespace) -> list[str]:
    torch.manual_seed(0)
    family = RandomQuadratics(dim=10, num_train=200, num_test=20)
    module = LearnedOptimizerTraining(QuadraticOptimizee(10), loss="squared_error", unroll_steps=args.train_unroll,
                                      truncation=5, meta_lr=3e-3)
    data = EpisodeDataModule(family, inner_steps=1, batch_size=1, meta_batch_size=4)
    begin = time.perf_counter()
    L.Trainer(max_steps=args.meta_batches * module.optimizer_steps_per_batch, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0).fit(module, datamodule=data)
    trained_in = time.perf_counter() - begin
    grid = {"SGD": [0.001, 0.003, 0.01, 0.03], "Adam": [0.01, 0.03, 0.1, 0.3, 1.0]}
    results = {"learned (LSTM)": curves(family, lambda p: LearnedOptimizer(p, net=module.net), 1000)}
    for name, rates in grid.items():
        cls = getattr(torch.optim, name)
        short = {lr: curves(family, lambda p, lr=lr, cls=cls: cls(p, lr=lr), 100)[-1] for lr in rates}
        best = min(short, key=lambda lr: short[lr] if math.isfinite(short[lr]) else math.inf)
        results[f"{name} (lr {best})"] = curves(family, lambda p, lr=best, cls=cls: cls(p, lr=lr), 1000)
    lines = [f"Meta-training: {args.meta_batches} batches of 4 quadratics, unrolls of {args.train_unroll} steps, "
             f"{trained_in:.0f} s.", "",
             f"| optimizer | loss after {args.train_unroll} steps | after 100 steps | after 1000 steps |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {c[args.train_unroll]:.3g} | {c[100]:.3g} | {c[1000]:.3g} |" for name, c in results.items()]
    if args.figure:
        figure, axis = plt.subplots(figsize=(6, 4), constrained_layout=True)
        for name, c in results.items():
            axis.plot(c.numpy(), label=name)
        axis.axvline(args.train_unroll, color="grey", linestyle=":", label="meta-training horizon")
        axis.set_yscale("log")
        axis.set_xlabel("step")
        axis.set_ylabel("mean loss on 20 held-out quadratics")
        axis.legend()
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(args.figure, dpi=120)
        plt.close(figure)
        lines.append(f"\nfigure: {args.figure}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--quality", action="store_true")
    parser.add_argument("--unrolls", nargs="+", type=int, default=[20, 100, 400])
    parser.add_argument("--dim", type=int, default=200, help="dimension of the quadratic in the memory benchmark")
    parser.add_argument("--segment-length", type=int, default=20)
    parser.add_argument("--train-unroll", type=int, default=20)
    parser.add_argument("--meta-batches", type=int, default=150)
    parser.add_argument("--figure", default=None)
    args = parser.parse_args()
    lines = (memory(args) + [""] if args.memory else []) + (quality(args) if args.quality else [])
    lines += ["", f"torch {torch.__version__}, lightning {L.__version__}, Python {platform.python_version()}, "
              f"{torch.get_num_threads()} threads", f"`python benchmarks/learned_optimizer.py {shlex.join(sys.argv[1:])}`"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
