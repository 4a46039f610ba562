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
runs with more processes do not oversubscribe the cores.

Run it
------
From the repository root (about 5 minutes on a 2-core CPU)::

    python benchmarks/ddp_scaling.py --devices 1 2 --meta-steps 6
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
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lightning_meta import Leap  # noqa: E402
from lightning_meta.recipes import ConvClassifier  # noqa: E402
from lightning_meta.tasks import GlyphAlphabets, TaskDataModule  # noqa: E402
from lightning_meta.tasks.schedule import TaskSchedule  # noqa: E402


class MetaStepClock(L.Callback):
    """Wall time at the end of every meta-step (after the Leap callback, which comes first in the list)."""

    def __init__(self, leap: Leap) -> None:
        self.leap = leap
        self.times: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.leap.meta_steps > len(self.times):
            if trainer.strategy.root_device.type == "cuda":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())


def worker(args: argparse.Namespace) -> None:
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
    if trainer.is_global_zero:
        times = clock.times[args.warmup - 1 :]
        rate = (len(times) - 1) / (times[-1] - times[0])
        Path(args.result).write_text(json.dumps({"meta_steps_per_second": rate, "meta_steps": len(clock.times)}))


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
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.meta_steps < args.warmup + 2:
        parser.error("need --warmup >= 1 and --meta-steps >= --warmup + 2")
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        args.devices = args.devices[0]
        worker(args)
        return
    rates = {}
    for devices in args.devices:
        threads = args.threads or max(1, (os.cpu_count() or 1) // devices)
        with tempfile.TemporaryDirectory() as folder:
            result = Path(folder) / "result.json"
            command = [sys.executable, __file__, "--worker", "--result", str(result), "--devices", str(devices),
                       "--threads", str(threads), *without(sys.argv[1:], "--devices", "--threads")]
            subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            rates[devices] = json.loads(result.read_text())["meta_steps_per_second"]
        print(f"{devices} process(es): {rates[devices]:.3f} meta-steps/s", file=sys.stderr, flush=True)
    base = rates[args.devices[0]]
    lines = ["| processes | meta-steps / s | speed-up |", "|---:|---:|---:|"]
    lines += [f"| {d * args.num_nodes} | {r:.3f} | {r / base:.2f} x |" for d, r in rates.items()]
    lines += [
        "",
        f"Leap ({'task' if args.parallel == 'tasks' else 'data'}-parallel), ConvClassifier({args.channels} channels), {args.inner_steps} inner steps, "
        f"meta-batch {args.meta_batch_size}, batch 20, {args.meta_steps} meta-steps ({args.warmup} untimed); "
        f"{args.accelerator}, {os.cpu_count()} cores, torch {torch.__version__}, lightning {L.__version__}, "
        f"Python {platform.python_version()}",
        f"`python benchmarks/ddp_scaling.py {shlex.join(sys.argv[1:])}`",
    ]
    print("\n".join(lines))


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
