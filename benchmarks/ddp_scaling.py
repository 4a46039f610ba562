"""Meta-steps per second of Leap on the Omniglot recipe with 1 and more DDP processes.

What it measures
----------------
For each entry of ``--devices`` a fresh ``python benchmarks/ddp_scaling.py --worker ...`` process trains Leap
(``p=1``, loss term, stabilizer) on the embedded glyph alphabets with the recipe's network (``--channels`` wide),
``--inner-steps`` SGD steps per task and a meta-batch of ``--meta-batch-size`` tasks (over all processes), under
Lightning's DDP (gloo on CPU, NCCL on GPU; Lightning's own launcher starts the other processes; ``--num-nodes`` for
several machines). Rank 0 timestamps every meta-step; the rate is ``(meta-steps - warm-up) / time`` from the end of
meta-step ``--warmup`` to the last one, so start-up, data building and the first steps do not count. With
``--parallel tasks`` each process trains ``meta_batch_size / devices`` tasks per meta-step (ideal speed-up: the
number of processes); with ``--parallel data`` every process trains each task on a shard of every batch.

Each process uses ``--threads`` torch threads (default: the machine's cores divided by the processes), so that
runs with more processes do not oversubscribe the cores. That default compares 1 process of N threads with N
processes of 1 thread, which mixes thread scaling with process scaling. ``--fixed-threads`` compares like for like:
every process has 1 torch thread (and ``OMP_NUM_THREADS=1``), so N processes on N free cores should give N x the
meta-steps per second of 1 process. To say where the rest goes, every process also records, over the timed
meta-steps: its process CPU time per meta-step (more than the 1-process run's per task: the processes slow each
other down, e.g. through shared caches or other load), the wall time inside ``torch.distributed`` collectives (each
includes waiting for the slowest process): Leap's all-reduce, one per meta-step, and Lightning's broadcast of a
SIGTERM flag from rank 0, which Lightning 2.x makes at every training step under DDP and which runs the processes in
lock step; and the start-up (process start to the end of the first meta-step, not in the rate).

Run it
------
From the repository root (about 5 minutes on a 2-core CPU)::

    python benchmarks/ddp_scaling.py --devices 1 2 --meta-steps 6
    python benchmarks/ddp_scaling.py --fixed-threads --devices 1 2 --meta-steps 12 --warmup 2
    python benchmarks/ddp_scaling.py --accelerator gpu --devices 1 2 4 8 --channels 64 --inner-steps 100 --meta-batch-size 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lightning_meta import Leap  # noqa: E402
from lightning_meta.data import TaskDataModule  # noqa: E402
from lightning_meta.data.schedule import TaskSchedule  # noqa: E402
from lightning_meta.families import GlyphAlphabets  # noqa: E402
from lightning_meta.models import ConvClassifier  # noqa: E402

COLLECTIVES = ("all_reduce", "broadcast", "barrier")


class MetaStepClock(L.Callback):
    """Wall and process CPU time at the end of every meta-step (after the Leap callback, which comes first in the
    list), and the wall time spent in ``torch.distributed`` collectives: Leap's all-reduce (one per meta-step) and
    Lightning's own (Lightning 2.x broadcasts a SIGTERM flag from rank 0 at every training step under DDP)."""

    def __init__(self, leap: Leap) -> None:
        self.leap = leap
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.in_collectives: list[dict[str, float]] = []  # cumulative, read at the end of each meta-step
        self._seconds = dict.fromkeys(COLLECTIVES, 0.0)

    def setup(self, trainer, pl_module, stage) -> None:
        for name in COLLECTIVES:  # this benchmark's probe only: time each call, including the wait for the others
            collective: Callable[..., Any] = getattr(torch.distributed, name)

            def timed(*args: Any, _name: str = name, _call: Callable[..., Any] = collective, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return _call(*args, **kwargs)
                finally:
                    self._seconds[_name] += time.perf_counter() - start

            setattr(torch.distributed, name, timed)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.leap.meta_steps > len(self.times):
            if trainer.strategy.root_device.type == "cuda":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())
            self.cpu_times.append(time.process_time())
            self.in_collectives.append(dict(self._seconds))


def worker(args: argparse.Namespace) -> None:
    started = time.perf_counter() - args.launched_ago()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = TaskDataModule(
        GlyphAlphabets(), inner_steps=args.inner_steps, meta_batch_size=args.meta_batch_size, batch_size=20
    )
    leap = Leap(meta_lr=0.1, parallel=args.parallel)
    clock = MetaStepClock(leap)
    schedule = TaskSchedule(args.inner_steps, args.meta_batch_size, args.devices * args.num_nodes, 0, args.parallel)
    per_process = schedule.tasks_per_process
    trainer = L.Trainer(
        accelerator=args.accelerator, devices=args.devices, num_nodes=args.num_nodes,
        strategy="ddp" if args.devices * args.num_nodes > 1 else "auto", use_distributed_sampler=False,
        max_steps=args.meta_steps * args.inner_steps * per_process, callbacks=[leap, clock], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(ConvClassifier(num_classes=20, channels=args.channels), datamodule=data)
    first, timed = args.warmup - 1, len(clock.times) - args.warmup
    result = {
        "meta_steps": len(clock.times),
        "meta_steps_per_second": timed / (clock.times[-1] - clock.times[first]),
        "cpu_seconds_per_meta_step": (clock.cpu_times[-1] - clock.cpu_times[first]) / timed,
        "collective_seconds_per_meta_step": {
            name: (clock.in_collectives[-1][name] - clock.in_collectives[first][name]) / timed for name in COLLECTIVES
        },
        "start_up_seconds": clock.times[0] - started,
        "tasks_per_process": per_process,
    }
    Path(f"{args.result}.rank{trainer.global_rank}").write_text(json.dumps(result))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", nargs="+", type=int, default=[1, 2], help="processes per node to compare")
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--parallel", choices=("tasks", "data"), default="tasks")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--inner-steps", type=int, default=10)
    parser.add_argument("--meta-batch-size", type=int, default=4)
    parser.add_argument("--meta-steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1, help="meta-steps not timed")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process")
    parser.add_argument("--fixed-threads", action="store_true",
                        help="like for like: 1 torch thread in every process, whatever the number of processes")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.meta_steps < args.warmup + 2:
        parser.error("need --warmup >= 1 and --meta-steps >= --warmup + 2")
    if args.fixed_threads and args.threads not in (None, 1):
        parser.error("--fixed-threads is 1 thread per process: leave --threads out")
    launch = float(os.environ.get("DDP_SCALING_LAUNCHED", time.time()))
    args.launched_ago = lambda: time.time() - launch
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        args.devices = args.devices[0]
        worker(args)
        return
    runs: dict[int, list[dict[str, Any]]] = {}
    for devices in args.devices:
        threads = 1 if args.fixed_threads else args.threads or max(1, (os.cpu_count() or 1) // devices)
        with tempfile.TemporaryDirectory() as folder:
            result = Path(folder) / "result.json"
            command = [sys.executable, __file__, "--worker", "--result", str(result), "--devices", str(devices),
                       "--threads", str(threads), *without(sys.argv[1:], "--devices", "--threads", "--fixed-threads")]
            environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "DDP_SCALING_LAUNCHED": str(time.time())}
            subprocess.run(command, check=True, env=environment)
            runs[devices] = [json.loads(path.read_text()) for path in sorted(Path(folder).glob("result.json.rank*"))]
        print(f"{devices} process(es): {runs[devices][0]['meta_steps_per_second']:.3f} meta-steps/s",
              file=sys.stderr, flush=True)
    print("\n".join(table(args, runs)))


def table(args: argparse.Namespace, runs: dict[int, list[dict[str, Any]]]) -> list[str]:
    """Rank 0's rate; per meta-step: wall time, CPU time and time in each collective, means over the processes."""
    base = runs[args.devices[0]][0]["meta_steps_per_second"]
    lines = ["| processes | meta-steps / s | speed-up | wall s / meta-step | CPU s / meta-step / process | CPU s / "
             "task | all-reduce ms / meta-step | broadcast ms / meta-step | start-up s |", "|" + "---:|" * 9]
    for devices, ranks in runs.items():
        rate = ranks[0]["meta_steps_per_second"]
        cpu = sum(r["cpu_seconds_per_meta_step"] for r in ranks) / len(ranks)
        waits = {n: sum(r["collective_seconds_per_meta_step"][n] for r in ranks) / len(ranks) for n in COLLECTIVES}
        start = max(r["start_up_seconds"] for r in ranks)
        lines.append(f"| {devices * args.num_nodes} | {rate:.3f} | {rate / base:.2f} x | {1 / rate:.3f} | {cpu:.3f} | "
                     f"{cpu / ranks[0]['tasks_per_process']:.3f} | {waits['all_reduce'] * 1e3:.1f} | "
                     f"{waits['broadcast'] * 1e3:.1f} | {start:.1f} |")
    threads = "1 torch thread per process" if args.fixed_threads else (
        f"{args.threads} torch threads per process" if args.threads else "the cores divided among the processes")
    return lines + [
        "",
        f"Leap ({'task' if args.parallel == 'tasks' else 'data'}-parallel), ConvClassifier({args.channels} channels), "
        f"{args.inner_steps} inner steps, meta-batch {args.meta_batch_size}, batch 20, {args.meta_steps} meta-steps "
        f"({args.warmup} untimed); {threads}; {args.accelerator}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"lightning {L.__version__}, Python {platform.python_version()}",
        f"`python benchmarks/ddp_scaling.py {shlex.join(sys.argv[1:])}`",
    ]


def without(words: list[str], *flags: str) -> list[str]:
    """Command-line ``words`` with ``flags`` and their values removed (a worker gets its own)."""
    kept, skipping = [], False
    for word in words:
        if word.startswith("--"):
            skipping = word.split("=")[0] in flags
        if not skipping:
            kept.append(word)
    return kept


if __name__ == "__main__":
    main()
