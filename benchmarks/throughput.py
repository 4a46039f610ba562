"""Throughput of task-batched meta-training: inner task-steps per second and peak memory, one task at a time vs T
tasks at once (``TaskBatchedLearner``: stacked parameters, ``torch.func.vmap`` over tasks).

What it measures
----------------
The Leap paper's Omniglot net (:class:`~lightning_meta.models.ConvClassifier`: 4 x [conv 3x3, max-pool, BatchNorm,
ReLU] + linear, 20 classes, 28x28 grey input) at each of ``--channels``, batch ``--batch-size``, inner SGD, Leap
(``p=1``, loss term, stabilizer). For each T of ``--tasks`` one meta-batch of T tasks of ``--inner-steps`` steps
each is trained two ways, ``sequential`` (one task after the other, a fresh SGD per task) and ``batched`` (all T
tasks together, one SGD over the stacked parameters), through one of two doors (``--door``):

- ``plain``: a plain PyTorch loop (the engine's third front door, no Lightning) with
  :class:`~lightning_meta.engine.MetaLearner` or :class:`~lightning_meta.engine.TaskBatchedLearner`. The data are
  random tensors already on the device (a pool of 4 batches per task, cycled), so that the loop, not data loading,
  is timed.
- ``trainer``: ``Trainer.fit`` with ``Leap`` and a :class:`~lightning_meta.data.TaskDataModule` of in-memory random
  images (``task_batch=T`` for ``batched``): what a user runs, with Lightning's loop and the task stream (loaded in
  the main process, moved to the device each step). Each fit trains 2 meta-batches; the second one is timed, from
  the start of its first step to the end of its last.

Both include everything of a meta-batch: task starts, every step (forward, backward, Leap's update, SGD), the loss
at theta_K of each task, the meta-step.

1. Rate: task-steps per second, T x inner-steps / the time of the meta-batch (wall time; on CPU also process CPU
   time; CUDA is synchronised before each clock reading). Every configuration runs once untimed, then ``--repeats``
   rounds each time every (channels, T, path) once, the order of the paths alternating between rounds; the table
   gives the median over rounds, the range (min-max), and the median of the per-round speed-ups batched/sequential.
   With ``--device cuda`` the GPU's utilisation is sampled every 50 ms during the timed runs (``torch.cuda.
   utilization()``, else ``nvidia-smi``) and its mean is reported.
2. Peak memory: the peak of live tensor bytes above the resting state (model, theta_0 and data in place) during one
   extra meta-batch (``--door trainer``: during one extra fit, above the state before it): on CPU with
   :class:`memory_tracking.LiveTensorBytes` (exact at operator granularity, verified first), on CUDA with
   ``torch.cuda.max_memory_allocated``.

Run it
------
From the repository root; use ``--threads 1`` on a shared CPU, and run it on a quiet machine::

    python benchmarks/throughput.py --threads 1 --repeats 5 --json throughput-cpu.json
    python benchmarks/throughput.py --threads 1 --repeats 3 --door trainer --json throughput-cpu-trainer.json
    python benchmarks/throughput.py --device cuda --repeats 5 --inner-steps 20 --json throughput-cuda.json
    python benchmarks/throughput.py --device cuda --repeats 5 --inner-steps 20 --door trainer

A small check that it works (seconds): ``python benchmarks/throughput.py --tasks 1 2 --channels 8 --inner-steps 2
--repeats 1``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from memory_tracking import LiveTensorBytes, RandomImageFamily, verify_tracker  # noqa: E402

from lightning_meta import Leap  # noqa: E402
from lightning_meta.data import TaskDataModule  # noqa: E402
from lightning_meta.engine import LeapRule, MetaLearner, TaskBatchedLearner  # noqa: E402
from lightning_meta.models import ConvClassifier  # noqa: E402

PATHS = ("sequential", "batched")
POOL = 4  # batches per task, cycled


# ----------------------------------------------------------------------------------------------- the two loops
def make_data(tasks: int, args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """``POOL`` batches of each of ``tasks`` tasks: inputs ``(POOL, T, B, 1, 28, 28)``, targets ``(POOL, T, B)``."""
    generator = torch.Generator().manual_seed(args.seed)
    inputs = torch.rand(POOL, tasks, args.batch_size, 1, 28, 28, generator=generator)
    targets = torch.randint(0, 20, (POOL, tasks, args.batch_size), generator=generator)
    return inputs.to(args.device), targets.to(args.device)


def sequential(model: ConvClassifier, meta: MetaLearner, data: tuple[torch.Tensor, torch.Tensor], steps: int,
               lr: float) -> None:
    """One meta-batch, its tasks one after the other (the reference Leap code's loop)."""
    inputs, targets = data
    for task in range(inputs.shape[1]):
        meta.start_task()
        inner = torch.optim.SGD(model.parameters(), lr=lr)
        for step in range(steps):
            x, y = inputs[step % POOL, task], targets[step % POOL, task]
            loss = F.cross_entropy(model(x), y)
            inner.zero_grad()
            loss.backward()
            meta.update(loss)
            inner.step()
        meta.end_task(final_loss=lambda: F.cross_entropy(model(x), y))  # noqa: B023 (called right here)


def batched(model: ConvClassifier, meta: TaskBatchedLearner, data: tuple[torch.Tensor, torch.Tensor], steps: int,
            lr: float) -> None:
    """One meta-batch, all its tasks together."""
    inputs, targets = data

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    meta.start_task()
    inner = torch.optim.SGD(meta.live, lr=lr)
    for step in range(steps):
        x, y = inputs[step % POOL], targets[step % POOL]
        losses = meta.map(loss_of, x, y)
        inner.zero_grad()
        losses.sum().backward()
        meta.update(losses)
        inner.step()
    meta.end_task(final_loss=lambda: meta.map(loss_of, x, y))  # noqa: B023 (called right here)


class Workload:
    """A model, its learner and its data for one (channels, T, path) in a plain loop; ``run()`` trains one
    meta-batch and returns its (wall, process CPU) seconds."""

    def __init__(self, channels: int, tasks: int, path: str, args: argparse.Namespace) -> None:
        torch.manual_seed(args.seed)
        self.model = ConvClassifier(num_classes=20, channels=channels).to(args.device)
        if path == "sequential":
            self.meta: MetaLearner = MetaLearner(self.model, LeapRule(), meta_batch_size=tasks, meta_lr=0.1)
        else:
            self.meta = TaskBatchedLearner(self.model, LeapRule(), tasks=tasks, meta_lr=0.1)
        self.data = make_data(tasks, args)
        self.loop: Callable[..., None] = sequential if path == "sequential" else batched  # type: ignore[assignment]
        self.steps, self.lr, self.cuda = args.inner_steps, args.lr, args.device == "cuda"

    def run(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        self.loop(self.model, self.meta, self.data, self.steps, self.lr)
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - wall, time.process_time() - cpu


class WindowClock(L.Callback):
    """Wall and CPU stamps at the start of optimizer step ``first`` and at the end of the last step of the fit."""

    def __init__(self, first: int, cuda: bool) -> None:
        self.first, self.cuda = first, cuda
        self.start: tuple[float, float] = (0.0, 0.0)
        self.end: tuple[float, float] = (0.0, 0.0)

    def _stamp(self) -> tuple[float, float]:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter(), time.process_time()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.first:
            self.start = self._stamp()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == trainer.max_steps:
            self.end = self._stamp()


class TrainerWorkload:
    """The same meta-batch through ``Trainer.fit`` with ``Leap``: each ``run()`` fits a fresh model for 2
    meta-batches and returns the (wall, process CPU) seconds of the second."""

    def __init__(self, channels: int, tasks: int, path: str, args: argparse.Namespace) -> None:
        self.channels, self.tasks, self.args = channels, tasks, args
        self.task_batch = tasks if path == "batched" else None
        self.family = RandomImageFamily(num_tasks=2 * tasks, per_class=args.batch_size, seed=args.seed)
        self.steps_per_meta_batch = args.inner_steps * (1 if self.task_batch else tasks)

    def run(self) -> tuple[float, float]:
        args = self.args
        torch.manual_seed(args.seed)
        model = ConvClassifier(num_classes=20, channels=self.channels, lr=args.lr)
        data = TaskDataModule(self.family, inner_steps=args.inner_steps, meta_batch_size=self.tasks,
                              task_batch=self.task_batch, batch_size=args.batch_size, seed=args.seed)
        clock = WindowClock(self.steps_per_meta_batch, args.device == "cuda")
        trainer = L.Trainer(accelerator="gpu" if args.device == "cuda" else "cpu", devices=1,
                            max_steps=2 * self.steps_per_meta_batch, callbacks=[Leap(meta_lr=0.1), clock],
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0)
        trainer.fit(model, datamodule=data)
        return clock.end[0] - clock.start[0], clock.end[1] - clock.start[1]


# ----------------------------------------------------------------------------------------------- measurements
class Utilisation:
    """Samples the GPU's utilisation (%) every ``period`` seconds in a thread, while active."""

    def __init__(self, period: float = 0.05) -> None:
        self.period = period
        self.samples: list[float] = []
        self._read = self._reader()

    @staticmethod
    def _reader() -> Callable[[], float] | None:
        try:
            torch.cuda.utilization()
            return lambda: float(torch.cuda.utilization())
        except Exception:  # needs pynvml; fall back to nvidia-smi
            pass
        smi = shutil.which("nvidia-smi")
        if smi is None:
            return None
        index = str(torch.cuda.current_device())
        command = [smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", index]
        return lambda: float(subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip())

    @contextmanager
    def active(self) -> Iterator[None]:
        if self._read is None:
            yield
            return
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(self.period):
                self.samples.append(self._read())  # type: ignore[misc]

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None


def timed(work: Workload | TrainerWorkload, cuda: bool,
          utilisation: Utilisation | None) -> tuple[float, float, float | None]:
    """(wall seconds, process CPU seconds, mean GPU utilisation) of one meta-batch."""
    if cuda:
        torch.cuda.synchronize()
    if utilisation is not None:
        utilisation.samples = []
    with utilisation.active() if utilisation is not None else _nothing():
        wall, cpu = work.run()
    return wall, cpu, utilisation.mean if utilisation is not None else None


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def peak_memory(work: Workload | TrainerWorkload, cuda: bool) -> int:
    """Peak live tensor bytes above the resting state during one ``run()`` (plain: one meta-batch; trainer: the
    whole fit, data module included)."""
    if cuda:
        torch.cuda.synchronize()
        rest = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        work.run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - rest
    tracker = LiveTensorBytes()
    with tracker:
        rest = tracker.current
        work.run()
    return tracker.peak - rest


def measure(args: argparse.Namespace) -> dict[str, Any]:
    cuda = args.device == "cuda"
    configs = [(c, t) for c in args.channels for t in args.tasks]
    kind = Workload if args.door == "plain" else TrainerWorkload
    works = {(c, t, p): kind(c, t, p, args) for c, t in configs for p in PATHS}
    utilisation = Utilisation() if cuda else None
    for work in works.values():  # untimed: warm-up (allocator, kernels' first calls)
        work.run()
    rounds: dict[tuple[int, int, str], list[tuple[float, float, float | None]]] = {key: [] for key in works}
    for repeat in range(args.repeats):
        for c, t in configs:
            for path in PATHS if repeat % 2 == 0 else PATHS[::-1]:
                rounds[c, t, path].append(timed(works[c, t, path], cuda, utilisation))
                wall, cpu, gpu = rounds[c, t, path][-1]
                rate = t * args.inner_steps / wall
                print(f"  round {repeat}: {c:3d} channels, T={t:3d}, {path:10s} {rate:9.1f} task-steps/s "
                      f"({wall:.3f} s wall, {cpu:.3f} s CPU" + (f", GPU {gpu:.0f} %" if gpu is not None else "") + ")",
                      flush=True)
    if args.memory:
        if not cuda:
            verify_tracker()
        memory = {key: peak_memory(work, cuda) for key, work in works.items()}
    result: dict[str, Any] = {}
    for c, t in configs:
        steps = t * args.inner_steps
        entry: dict[str, Any] = {}
        for path in PATHS:
            walls = [w for w, _, _ in rounds[c, t, path]]
            cpus = [u for _, u, _ in rounds[c, t, path]]
            gpus = [g for _, _, g in rounds[c, t, path] if g is not None]
            entry[path] = {
                "task_steps_per_s": statistics.median(steps / w for w in walls),
                "task_steps_per_s_range": [steps / max(walls), steps / min(walls)],
                "task_steps_per_cpu_s": statistics.median(steps / u for u in cpus),
                "gpu_utilisation": statistics.median(gpus) if gpus else None,
                "peak_mib": memory[c, t, path] / 2**20 if args.memory else None,
                "wall_s": walls,
                "cpu_s": cpus,
            }
        pairs = zip(rounds[c, t, "sequential"], rounds[c, t, "batched"])
        entry["speedup"] = statistics.median(s[0] / b[0] for s, b in pairs)
        result[f"{c}/{t}"] = entry
    return result


# ----------------------------------------------------------------------------------------------- report
def markdown(args: argparse.Namespace, result: dict[str, Any]) -> str:
    gpu = args.device == "cuda"
    head = ["channels", "T", "sequential: task-steps/s", "batched: task-steps/s", "speed-up"]
    head += ["sequential: peak MiB", "batched: peak MiB"] if args.memory else []
    head += ["sequential: GPU %", "batched: GPU %"] if gpu else []
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---:"] * len(head)) + "|"]
    for c in args.channels:
        for t in args.tasks:
            entry = result[f"{c}/{t}"]
            row = [str(c), str(t)]
            for path in PATHS:
                low, high = entry[path]["task_steps_per_s_range"]
                row.append(f"{entry[path]['task_steps_per_s']:.1f} [{low:.1f}-{high:.1f}]")
            row.append(f"{entry['speedup']:.2f} x")
            if args.memory:
                row += [f"{entry[path]['peak_mib']:.1f}" for path in PATHS]
            if gpu:
                row += [f"{entry[path]['gpu_utilisation']:.0f}" if entry[path]["gpu_utilisation"] is not None
                        else "n/a" for path in PATHS]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def machine(args: argparse.Namespace) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
    }
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = os.getloadavg()
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 5, 20], help="values of T, tasks per meta-batch")
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64], help="channels of the conv net")
    parser.add_argument("--batch-size", type=int, default=20, help="samples per batch of each task")
    parser.add_argument("--inner-steps", type=int, default=10, help="inner steps of each task")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (interleaved)")
    parser.add_argument("--lr", type=float, default=0.1, help="inner SGD learning rate")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--door", choices=["plain", "trainer"], default="plain",
                        help="a plain PyTorch loop on device-resident data, or Trainer.fit with the task stream")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--profile", action="store_true",
                        help="instead: torch.profiler tables of one meta-batch of each path (the first --channels and "
                             "the last --tasks; plain door), the operators with the most own time")
    args = parser.parse_args(argv)
    if min(*args.tasks, *args.channels, args.batch_size, args.inner_steps, args.repeats) < 1:
        parser.error("counts must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    return args


def profile(args: argparse.Namespace) -> None:
    """Where a meta-batch's time goes, one task at a time vs together: ``torch.profiler``'s operator table of one
    (untimed-run-warmed) meta-batch of each path."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiled

    channels, tasks = args.channels[0], args.tasks[-1]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    for path in ("sequential", "batched"):
        work = Workload(channels, tasks, path, args)
        work.run()
        with profiled(activities=activities) as recorded:
            work.run()
        print(f"\n{path}: {channels} channels, T={tasks}, {tasks * args.inner_steps} task-steps; operators by own time")
        print(recorded.key_averages().table(sort_by="self_cpu_time_total", row_limit=10, max_name_column_width=45))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.profile:
        profile(args)
        return {}
    command = "python " + shlex.join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    info = machine(args)
    print(f"command: {command}\nmachine: {info}", flush=True)
    result = measure(args)
    info["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    table = markdown(args, result)
    print()
    print(table)
    print()
    print(f"ConvClassifier (20 classes, 28x28), batch {args.batch_size}, {args.inner_steps} inner SGD steps per task, "
          f"Leap p=1, {args.door} door; {args.device} ({info['device']}), {info['cpu_count']} CPUs, "
          f"{info['torch_threads']} torch threads, torch {info['torch']}; median [min-max] of {args.repeats} "
          "interleaved rounds")
    print(f"`{command}`")
    report = {"command": command, "machine": info, "args": {k: str(v) if isinstance(v, Path) else v
                                                           for k, v in vars(args).items()},
              "result": result, "markdown": table}
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
