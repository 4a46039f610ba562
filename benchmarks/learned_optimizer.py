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
from lightning_meta.optim import (  # noqa: E402
    CoordinatewiseLSTM,
    LearnedOptimizer,
    SGDAnchoredLSTM,
    UnrollState,
    unroll,
)
from lightning_meta.optim.training import LearnedOptimizerTraining  # noqa: E402
from lightning_meta.tooling.sweep import format_interval  # noqa: E402

MIB = 2**20
GRID = {"SGD": [0.001, 0.003, 0.01, 0.03], "Adam": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]}
"""Learning rates tried for the hand-designed optimizers."""


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


def curves(family: RandomQuadratics, split: str, make_optimizer, steps: int) -> torch.Tensor:
    """Mean loss of the functions of ``split`` at steps 0..steps, each trained from its own seeded init."""
    losses = torch.zeros(steps + 1)
    tasks = family.tasks(split)
    for index, task in enumerate(tasks):
        w, y = (t[None] for t in task.train[0])
        torch.manual_seed({"val": 5000, "test": 1000}[split] + index)
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


def tuned_rates(family: RandomQuadratics, name: str, horizons: list[int]) -> dict[int, float]:
    """The learning rate of ``torch.optim.<name>`` with the lowest mean validation loss at each horizon."""
    cls = getattr(torch.optim, name)
    val = {lr: curves(family, "val", lambda p, lr=lr: cls(p, lr=lr), max(horizons)) for lr in GRID[name]}
    finite = {lr: torch.nan_to_num(c, nan=math.inf) for lr, c in val.items()}
    return {h: min(GRID[name], key=lambda lr: float(finite[lr][h])) for h in horizons}


def meta_train(family: RandomQuadratics, net: CoordinatewiseLSTM, unroll_steps: int, truncation: int, objective: str,
               batches: int, seed: int) -> tuple[CoordinatewiseLSTM, float, float]:
    """The network meta-trained on the family's training functions; CPU and wall seconds."""
    torch.manual_seed(seed)
    module = LearnedOptimizerTraining(QuadraticOptimizee(10), net=net, loss="squared_error", unroll_steps=unroll_steps,
                                      truncation=truncation, meta_lr=3e-3, objective=objective)
    data = EpisodeDataModule(family, inner_steps=1, batch_size=1, meta_batch_size=4, seed=seed)
    cpu, wall = time.process_time(), time.perf_counter()
    L.Trainer(max_steps=batches * module.optimizer_steps_per_batch, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0).fit(module, datamodule=data)
    return module.net, time.process_time() - cpu, time.perf_counter() - wall


def quality(args: argparse.Namespace) -> list[str]:
    family = RandomQuadratics(dim=10, num_train=200, num_val=20, num_test=20)
    horizons = [20, 200, 1000]
    rates = {name: tuned_rates(family, name, horizons) for name in GRID}
    anchor = tuned_rates(family, "SGD", [args.long_unroll])[args.long_unroll]  # SGD tuned for the trained horizon
    variants = {
        f"learned, free-form LSTM, unrolls of {args.train_unroll} (the paper's)":
            (lambda: CoordinatewiseLSTM(), args.train_unroll, 5, "loss"),
        f"learned, SGD (lr {anchor}) + LSTM correction, unrolls of {args.long_unroll}, log loss":
            (lambda: SGDAnchoredLSTM(lr=anchor), args.long_unroll, 20, "log_loss"),
        f"learned, free-form LSTM, unrolls of {args.long_unroll}, log loss":
            (lambda: CoordinatewiseLSTM(), args.long_unroll, 20, "log_loss"),
    }
    lines = [f"Test loss (mean over the 20 test functions; learned: mean over meta-training seeds {args.seeds} and "
             "the 95 % interval). SGD's and Adam's learning rates: the best of a grid by the mean loss of the 20 "
             "validation functions at each horizon.", "",
             "| optimizer | meta-training CPU s (wall s) | after 20 steps | after 200 steps | after 1000 steps |",
             "|---|---:|---:|---:|---:|"]
    mean_curves = {}
    for label, (make_net, unroll_steps, truncation, objective) in variants.items():
        runs, cpu, wall = [], [], []
        for seed in args.seeds:
            net, seconds, elapsed = meta_train(family, make_net(), unroll_steps, truncation, objective,
                                               args.meta_batches, seed)
            runs.append(curves(family, "test", lambda p, net=net: LearnedOptimizer(p, net=net), max(horizons)))
            cpu.append(seconds)
            wall.append(elapsed)
            print(label, seed, [round(float(runs[-1][h]), 3) for h in horizons], file=sys.stderr, flush=True)
        cells = [format_interval([float(r[h]) for r in runs]) for h in horizons]
        lines.append(f"| {label} | {sum(cpu) / len(cpu):.0f} ({sum(wall) / len(wall):.0f}) | {' | '.join(cells)} |")
        mean_curves[label] = torch.stack(runs).mean(0)
    for name, chosen in rates.items():
        cls = getattr(torch.optim, name)
        at = [float(curves(family, "test", lambda p, lr=chosen[h], cls=cls: cls(p, lr=lr), h)[h]) for h in horizons]
        lines.append(f"| {name} (lr {' / '.join(str(chosen[h]) for h in horizons)}) | | "
                     + " | ".join(f"{v:.3f}" for v in at) + " |")
        longest = chosen[max(horizons)]
        mean_curves[f"{name} (lr {longest})"] = curves(family, "test", lambda p, cls=cls, lr=longest: cls(p, lr=lr),
                                                       max(horizons))
    if args.figure:
        figure, axis = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
        for name, c in mean_curves.items():
            axis.plot(c.numpy(), label=name)
        axis.axvline(args.train_unroll, color="grey", linestyle=":")
        axis.axvline(args.long_unroll, color="grey", linestyle="--")
        axis.set_yscale("log")
        axis.set_xlabel("step (dotted, dashed: the meta-training horizons)")
        axis.set_ylabel("mean loss on 20 test quadratics")
        axis.legend(fontsize="small")
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
    parser.add_argument("--train-unroll", type=int, default=20, help="the paper's meta-training horizon")
    parser.add_argument("--long-unroll", type=int, default=200, help="the meta-training horizon of the horizon fix")
    parser.add_argument("--meta-batches", type=int, default=150)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="meta-training seeds")
    parser.add_argument("--figure", default=None)
    args = parser.parse_args()
    lines = (memory(args) + [""] if args.memory else []) + (quality(args) if args.quality else [])
    lines += ["", f"torch {torch.__version__}, lightning {L.__version__}, Python {platform.python_version()}, "
              f"{torch.get_num_threads()} threads", f"`python benchmarks/learned_optimizer.py {shlex.join(sys.argv[1:])}`"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
