"""Overhead of the Leap and Reptile callbacks: wall time per optimizer step and extra memory.

What it measures
----------------
The same LightningModule (:class:`~lightning_meta.models.ConvClassifier`: the Leap paper's 4 x 64-channel conv
net, 20 classes, 28x28 grey input, SGD lr 0.1) is trained on the same tasks (an in-memory family of random 28x28
``uint8`` images with 20 classes, streamed by :class:`~lightning_meta.data.TaskDataModule`, ``inner_steps``
batches per task) three ways, in one process: with no callback (the baseline), with ``Leap(...)`` and with
``Reptile(...)``.

1. Time. A small callback, placed first in the callback list, timestamps every ``on_train_batch_start``. The time
   of a run is the interval from the start of step ``--warmup`` to the start of step ``--warmup + --steps`` (the
   run trains one step more so that this last timestamp exists), divided by ``--steps``: it covers everything the
   trainer does for those steps (data loading, forward, backward, optimizer step, every hook, the callbacks' task
   starts, task ends and meta-steps) and nothing of the set-up or the first warm-up steps. ``--steps`` must be a
   multiple of ``inner_steps x meta_batch_size`` so that every window holds the same number of task ends and
   meta-steps as the steady state. Configurations are interleaved and rotated across ``--repeats`` (repeat r
   runs them in order shifted by r) to cancel drift; the table gives the median over repeats of ms/step and the
   median of the per-repeat ratios to the baseline of the same repeat. One untimed run warms the process up first.
   The same window is also timed in process CPU time (``time.process_time``); its ratio ("CPU ratio") is less
   sensitive to other processes competing for the cores, and with ``--threads 1`` it is the work done per step
   (with more threads it also counts OpenMP workers spinning). Use ``--threads 1`` on a shared machine: with
   more torch threads than free cores, OpenMP barriers stretch steps by an order of magnitude at random.

2. Memory. The extra memory a callback holds is the peak of live tensor bytes during ``fit`` with the callback
   minus the same peak without it, in units of the bytes of the meta-learned parameters, for each of
   ``--memory-inner-steps`` (default 10, 100, 1000: one full task plus two steps of the next). On CPU torch keeps no
   allocator statistics, so :class:`LiveTensorBytes` (a ``TorchDispatchMode``) tracks every tensor storage: the
   storages alive when it is entered (found through ``gc``) and every storage an operator takes or returns while
   it is active, each counted once (torch keeps one Python object per storage), with a ``weakref.finalize`` that
   subtracts its bytes when the storage is freed; a resize updates the count. It records the current and the
   peak bytes after every operator. Its blind spots: scratch memory that a kernel allocates and frees inside
   itself (e.g. oneDNN workspaces) and allocator fragmentation; both are the same with and without a callback, so
   the difference of peaks is exact for the tensors a callback creates. The script verifies the tracker on a
   hand-made example (allocate, view, free, allocate, resize, pre-existing tensor) before using it, and
   cross-checks it during training against a ``gc`` scan of all live tensors between steps. With
   ``--device cuda`` it uses ``torch.cuda.max_memory_allocated`` instead.

3. Output: a Markdown table (configuration, ms/step, ratio to baseline, extra peak memory / parameter size at each
   inner_steps), the command line and the machine; ``--json PATH`` also writes every figure as JSON.

Run it
------
From the repository root (a few minutes on a 2-core CPU)::

    python benchmarks/overhead.py --inner-steps 100 --steps 200 --repeats 5 --threads 1 --json overhead.json

``python benchmarks/overhead.py --help`` lists the options; ``--skip-memory`` / ``--skip-time`` run one half.
Run it on a quiet machine: the ratios cancel slow drift, not a competing process that comes and goes.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from memory_tracking import (  # noqa: E402
    CLASSES,
    LiveTensorBytes,
    RandomImageFamily,
    gc_live_tensor_bytes,
    verify_tracker,
)

from lightning_meta import Leap, Reptile  # noqa: E402
from lightning_meta.data import TaskDataModule, TaskFamily  # noqa: E402
from lightning_meta.models import ConvClassifier  # noqa: E402

CONFIGURATIONS = ("baseline", "leap", "leap-no-loss", "reptile")


# ----------------------------------------------------------------------------------------------- the workload
def make_callback(name: str, meta_batch_size: int, meta_lr: float) -> L.Callback | None:
    if name == "leap":
        return Leap(meta_batch_size=meta_batch_size, meta_lr=meta_lr)
    if name == "leap-no-loss":
        return Leap(loss=False, meta_batch_size=meta_batch_size, meta_lr=meta_lr)
    if name == "reptile":
        return Reptile(meta_batch_size=meta_batch_size, meta_lr=meta_lr)
    return None


def train(
    name: str,
    family: TaskFamily,
    inner_steps: int,
    max_steps: int,
    args: argparse.Namespace,
    probes: list[L.Callback],
    fit: Callable[[Callable[[], None]], None] = lambda run: run(),
) -> ConvClassifier:
    """Train a fresh, identically seeded ConvClassifier for ``max_steps`` steps with the named meta callback."""
    torch.manual_seed(args.seed)
    model = ConvClassifier(num_classes=CLASSES, lr=args.lr)
    data = TaskDataModule(
        family, inner_steps=inner_steps, batch_size=args.batch_size,
        tasks_per_epoch=max_steps // inner_steps + 2, seed=args.seed,
    )
    callback = make_callback(name, args.meta_batch_size, args.meta_lr)
    callbacks = probes + ([callback] if callback is not None else [])
    trainer = L.Trainer(
        accelerator=args.device, devices=1, max_steps=max_steps, callbacks=callbacks, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    gc.collect()
    fit(lambda: trainer.fit(model, datamodule=data))
    return model


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of the meta-learned parameters (Leap and Reptile meta-learn all of them by default)."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------------------- time
class StepClock(L.Callback):
    """Timestamps every ``on_train_batch_start``; first in the callback list, so it runs before the meta callback."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.stamps: list[float] = []
        self.cpu_stamps: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())
        self.cpu_stamps.append(time.process_time())


def measure_time(args: argparse.Namespace, family: TaskFamily) -> dict[str, Any]:
    configurations = list(CONFIGURATIONS)
    total = args.warmup + args.steps + 1
    train("baseline", family, args.inner_steps, args.warmup + 1, args, [])  # warm the process up (not timed)
    per_repeat: dict[str, list[float]] = {name: [] for name in configurations}
    step_medians: dict[str, list[float]] = {name: [] for name in configurations}
    cpu: dict[str, list[float]] = {name: [] for name in configurations}
    for repeat in range(args.repeats):
        order = configurations[repeat % 3 :] + configurations[: repeat % 3]
        for name in order:
            clock = StepClock(args.device == "cuda")
            train(name, family, args.inner_steps, total, args, [clock])
            stamps = clock.stamps[args.warmup : args.warmup + args.steps + 1]
            assert len(stamps) == args.steps + 1, len(clock.stamps)
            per_repeat[name].append((stamps[-1] - stamps[0]) / args.steps * 1e3)
            step_medians[name].append(statistics.median(b - a for a, b in zip(stamps, stamps[1:])) * 1e3)
            cpu_stamps = clock.cpu_stamps[args.warmup : args.warmup + args.steps + 1]
            cpu[name].append((cpu_stamps[-1] - cpu_stamps[0]) / args.steps * 1e3)
            print(f"  repeat {repeat}: {name:8s} {per_repeat[name][-1]:8.3f} ms/step wall, "
                  f"{cpu[name][-1]:8.3f} ms/step process CPU", flush=True)
    result: dict[str, Any] = {}
    for name in configurations:
        ratios = [t / b for t, b in zip(per_repeat[name], per_repeat["baseline"])]
        cpu_ratios = [t / b for t, b in zip(cpu[name], cpu["baseline"])]
        result[name] = {
            "ms_per_step": statistics.median(per_repeat[name]),
            "ms_per_step_repeats": per_repeat[name],
            "ratio": statistics.median(ratios),
            "ratio_repeats": ratios,
            "median_single_step_ms": statistics.median(step_medians[name]),
            "cpu_ms_per_step": statistics.median(cpu[name]),
            "cpu_ms_per_step_repeats": cpu[name],
            "cpu_ratio": statistics.median(cpu_ratios),
            "cpu_ratio_repeats": cpu_ratios,
        }
    return result


# ----------------------------------------------------------------------------------------------- memory
class CrossCheck(L.Callback):
    """Between steps (no autograd graph alive) compare the tracker with a gc scan of all live tensors."""

    def __init__(self, tracker: LiveTensorBytes, every: int) -> None:
        self.tracker, self.every = tracker, every
        self.worst = 0
        self.checked = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 1:
            with torch.utils._python_dispatch._disable_current_modes():
                scanned = gc_live_tensor_bytes()
            self.worst = max(self.worst, abs(scanned - self.tracker.current))
            self.checked += 1


def peak_memory(name: str, family: TaskFamily, inner_steps: int, args: argparse.Namespace) -> dict[str, int]:
    """Peak bytes during fit (one task of ``inner_steps`` steps plus two steps of the next)."""
    steps = inner_steps + 2
    if args.device == "cuda":
        result: dict[str, int] = {}

        def fit(run: Callable[[], None]) -> None:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            run()
            torch.cuda.synchronize()
            result["peak"] = torch.cuda.max_memory_allocated()

        model = train(name, family, inner_steps, steps, args, [], fit)
        result["parameter_bytes"] = parameter_bytes(model)
        return result
    tracker = LiveTensorBytes()
    check = CrossCheck(tracker, every=max(1, steps // 4))

    def fit(run: Callable[[], None]) -> None:
        with tracker:
            run()

    model = train(name, family, inner_steps, steps, args, [check], fit)
    return {
        "peak": tracker.peak,
        "parameter_bytes": parameter_bytes(model),
        "gc_check_max_abs_diff": check.worst,
        "gc_checks": check.checked,
    }


def measure_memory(args: argparse.Namespace, family: TaskFamily) -> dict[str, Any]:
    if args.device == "cpu":
        verify_tracker()
        print("  tracker verified on the hand-made example", flush=True)
    result: dict[str, Any] = {}
    for inner_steps in args.memory_inner_steps:
        peaks = {name: peak_memory(name, family, inner_steps, args) for name in CONFIGURATIONS}
        unit = peaks["baseline"]["parameter_bytes"]
        for name in CONFIGURATIONS:
            extra = peaks[name]["peak"] - peaks["baseline"]["peak"]
            entry = {**peaks[name], "extra_bytes": extra, "extra_in_parameter_sizes": extra / unit}
            result.setdefault(name, {})[str(inner_steps)] = entry
            print(f"  inner_steps {inner_steps:5d}: {name:8s} peak {peaks[name]['peak'] / 2**20:8.2f} MiB, "
                  f"extra {extra / unit:6.3f} x parameters", flush=True)
    return result


# ----------------------------------------------------------------------------------------------- report
def markdown(args: argparse.Namespace, times: dict[str, Any] | None, memory: dict[str, Any] | None) -> str:
    labels = {
        "baseline": "no callback",
        "leap": f"Leap(meta_batch_size={args.meta_batch_size})",
        "leap-no-loss": f"Leap(loss=False, meta_batch_size={args.meta_batch_size})",
        "reptile": f"Reptile(meta_batch_size={args.meta_batch_size})",
    }
    head = ["configuration"]
    if times:
        head += [f"ms/step (inner_steps={args.inner_steps})", "ratio", "CPU ratio"]
    if memory:
        head += [f"extra memory / parameters, inner_steps={k}" for k in args.memory_inner_steps]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for name in CONFIGURATIONS:
        row = [labels[name]]
        if times:
            row += [f"{times[name]['ms_per_step']:.2f}", f"{times[name]['ratio']:.3f}", f"{times[name]['cpu_ratio']:.3f}"]
        if memory:
            row += [f"{memory[name][str(k)]['extra_in_parameter_sizes']:.2f}" for k in args.memory_inner_steps]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = os.getloadavg()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="See the module docstring (top of this file) for the method.",
    )
    parser.add_argument("--inner-steps", type=int, default=100, help="optimizer steps per task for the timing runs")
    parser.add_argument("--steps", type=int, default=200,
                        help="timed steps per run (a multiple of inner-steps x meta-batch-size)")
    parser.add_argument("--warmup", type=int, default=10, help="steps before the timed window")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each configuration (interleaved)")
    parser.add_argument("--batch-size", type=int, default=20, help="samples per batch")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--meta-batch-size", type=int, default=1, help="tasks per meta-step of Leap and Reptile")
    parser.add_argument("--meta-lr", type=float, default=0.1, help="meta learning rate of Leap and Reptile")
    parser.add_argument("--lr", type=float, default=0.1, help="inner SGD learning rate")
    parser.add_argument("--memory-inner-steps", type=int, nargs="+", default=[10, 100, 1000],
                        help="inner_steps values of the memory runs (one task + 2 steps each)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: peak memory from torch.cuda.max_memory_allocated")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model, the tasks and the task stream")
    parser.add_argument("--skip-time", action="store_true", help="only measure memory")
    parser.add_argument("--skip-memory", action="store_true", help="only measure time")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    period = args.inner_steps * args.meta_batch_size
    if args.steps < 1 or args.steps % period:
        parser.error(f"--steps must be a positive multiple of inner-steps x meta-batch-size = {period}")
    if min(args.inner_steps, args.repeats, args.batch_size, args.meta_batch_size, *args.memory_inner_steps) < 1:
        parser.error("counts must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if args.meta_batch_size > 1 and not args.skip_memory:
        print("note: memory runs train one task, so meta-steps with meta-batch-size > 1 do not happen in them")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*GPU available but not used.*")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    family = RandomImageFamily(seed=args.seed)
    command = "python " + " ".join(shlex.quote(a) for a in ([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])))
    info = machine()
    print(f"command: {command}\nmachine: {info}", flush=True)
    times = memory = None
    if not args.skip_time:
        print("time:", flush=True)
        times = measure_time(args, family)
    if not args.skip_memory:
        print("memory:", flush=True)
        memory = measure_memory(args, family)
    info["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    table = markdown(args, times, memory)
    unit = None if memory is None else memory["baseline"][str(args.memory_inner_steps[0])]["parameter_bytes"]
    print()
    print(table)
    print()
    print(f"ConvClassifier(20 classes), 28x28 grey input, batch {args.batch_size}, SGD lr {args.lr}; "
          f"{info['cpu_count']} CPUs, {info['torch_threads']} torch threads, torch {info['torch']}, "
          f"lightning {info['lightning']}, {args.device}"
          + (f"; parameter size {unit / 2**20:.3f} MiB" if unit else ""))
    print(f"`{command}`")
    report = {"command": command, "machine": info, "args": {k: str(v) if isinstance(v, Path) else v
                                                           for k, v in vars(args).items()},
              "time": times, "memory": memory, "markdown": table}
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
