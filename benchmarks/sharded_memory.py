"""Memory per process of Leap on a transformer: unsharded, DDP, and FSDP2-sharded on 1 and 2 processes; and the cost
of the collectives the sharded learner adds.

What it measures
----------------
A ``torch.nn.TransformerEncoder`` (``--width`` 1024, ``--depth`` 4: 50.4 M parameters, 201 MB in float32) meta-learns
with Leap (``p=1``, the loss term, the stabilizer; SGD inside tasks, SGD meta-optimizer, the runaway guard on) on
random regression tasks (a batch of ``--batch`` sequences of ``--sequence`` random vectors, the target a random
linear map of them; mean squared error), ``--tasks`` tasks of ``--inner-steps`` steps, ``--meta-batch`` tasks per
meta-step, through the plain-PyTorch door (``torch.distributed``, gloo on CPU, NCCL with ``--device cuda``):

- ``unsharded``: one process, :class:`~lightning_meta.engine.MetaLearner`;
- ``ddp``: ``DistributedDataParallel`` on each process, each on its share of every batch, ``MetaLearner(...,
  parallel="data")``;
- ``fsdp``: ``fully_shard`` on each encoder layer and the encoder (built on the ``meta`` device and materialised
  shard by shard, so that no process ever holds the whole model), :class:`~lightning_meta.engine.ShardedMetaLearner`.

For each process it reports:

- ``module MB``: the bytes of its parameters and their gradients (its shards under FSDP);
- ``meta-state MB``: the bytes the learner adds: theta_0, the meta-gradient accumulator, the meta-optimizer's
  state and Leap's buffers (theta_i, g_i and the running sum), counted from the tensors themselves;
- ``peak MB``: what building the model and meta-training added at their peak (all of it: the model, its gradients,
  activations, FSDP's gathered layers, DDP's buckets, the learner's state, the guard's copies at meta-steps): on CPU
  the process's peak resident memory (``VmHWM``) minus its resident memory before the model was built, with
  ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors go back to the system and the peak means what it says; on
  CUDA ``torch.cuda.max_memory_allocated``. (The exact live-tensor tracker of the other benchmarks,
  ``memory_tracking.LiveTensorBytes``, cannot see FSDP2 free its gathered parameters, which it does by resizing
  their storages outside torch's dispatcher, and so overcounts here.)
- ``peak RSS MB``: the process's peak resident memory, the Python interpreter, torch and the libraries included;
- the learner's collectives (its own ``all_reduce`` calls, counted through the function it is given; DDP's bucket
  all-reduces and FSDP's all-gathers and reduce-scatters are not the learner's): in each inner step's ``update``,
  and in all per task (the task ends and meta-steps included); the median wall milliseconds of one (the wait for
  the other process included), against the median wall and CPU seconds of an inner step (forward, backward,
  ``update``, the inner optimizer's step); and, apart from training, the median of ``--latency`` back-to-back sums of
  two numbers (a segment's ``|dtheta_i|^2`` and ``df_i``), what one of the learner's collectives costs when no
  process waits for another's computation.

Timings on a machine other jobs share are inflated: the CPU seconds are the process's own.

Run it
------
From the repository root (about 5 minutes on a 2-core CPU)::

    python benchmarks/sharded_memory.py
    python benchmarks/sharded_memory.py --device cuda --width 2048 --depth 8
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lightning_meta.engine import LeapRule, MetaLearner, ShardedMetaLearner  # noqa: E402

MB = 1e6
SETUPS = {"unsharded": [1], "ddp": [2], "fsdp": [1, 2]}  # setup -> the numbers of processes it runs on


def transformer(width: int, depth: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(width, width // 64, 4 * width, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


def task_batch(task: int, step: int, args: argparse.Namespace, device: torch.device) -> tuple:
    """Task ``task``'s batch of step ``step`` (the same on every process; each takes its rows)."""
    generator = torch.Generator().manual_seed(task)
    teacher = torch.randn(args.width, args.width, generator=generator) / args.width**0.5
    generator.manual_seed(1000 * task + step + 1)
    x = torch.randn(args.batch, args.sequence, args.width, generator=generator)
    return x.to(device), (x @ teacher).to(device)


def build(setup: str, args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """The module the loop calls and the module whose parameters are meta-learned."""
    torch.manual_seed(0)
    if setup != "fsdp":
        model = transformer(args.width, args.depth).to(device)
        if setup == "ddp":
            wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.index else None)
            return wrapped, model
        return model, model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    with torch.device("meta"):
        model = transformer(args.width, args.depth)
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for layer in model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.to_empty(device=device)  # each process allocates its shards only
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.to_local().normal_(0.0, 0.02)  # type: ignore[attr-defined]
    return model, model


class Collectives:
    """The learner's sum over processes, timing each call (the wait for the other processes included)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: list[float] = []

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        torch.distributed.all_reduce(tensor)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds.append(time.perf_counter() - start)
        return tensor


def tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor  # type: ignore[operator]


def meta_state_bytes(meta: MetaLearner) -> int:
    """theta_0, the meta-gradient, the meta-optimizer's state and the rule's tensors (Leap's flat buffers)."""
    state = meta.state
    optimizer = [v for s in state.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    rule = [v for v in vars(meta.rule).values() if isinstance(v, torch.Tensor)]
    return tensor_bytes([*state.theta_0, *state.grads, *optimizer, *rule])


def resident_bytes(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (the peak) of this process, from ``/proc/self/status`` (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def worker(rank: int, processes: int, setup: str, args: argparse.Namespace, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device(f"cuda:{rank}") if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, rank=rank, world_size=processes,
                                         timeout=datetime.timedelta(minutes=5))
    try:
        resident_before = resident_bytes("VmRSS")
        module, own = build(setup, args, device)
        collectives = Collectives(device)
        learner = ShardedMetaLearner if setup == "fsdp" else MetaLearner
        options: dict[str, Any] = {} if setup == "unsharded" else {"parallel": "data", "all_reduce": collectives}
        meta = learner(own, LeapRule(), meta_batch_size=args.meta_batch, meta_lr=0.1, **options)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        step_wall, step_cpu, in_updates = [], [], 0
        for task in range(args.tasks):
            meta.start_task()
            inner = torch.optim.SGD(module.parameters(), lr=0.01)
            for step in range(args.inner_steps):
                x, y = (t[rank::processes] for t in task_batch(task, step, args, device))
                wall, cpu = time.perf_counter(), time.process_time()
                loss = F.mse_loss(module(x), y)
                inner.zero_grad()
                loss.backward()
                calls = len(collectives.seconds)
                meta.update(loss)
                in_updates += len(collectives.seconds) - calls
                inner.step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                step_wall.append(time.perf_counter() - wall)
                step_cpu.append(time.process_time() - cpu)
            meta.end_task(final_loss=lambda: F.mse_loss(module(x), y))  # noqa: B023 (called right here)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        latency = Collectives(device)
        if processes > 1:
            torch.distributed.barrier()
            for _ in range(args.latency):
                latency(torch.zeros(2, device=device))
        module_bytes = tensor_bytes(local(p) for p in own.parameters())
        grads = [local(p.grad) for p in own.parameters() if p.grad is not None]
        result = {
            "module": module_bytes + tensor_bytes(grads),
            "meta_state": meta_state_bytes(meta),
            "peak": peak if peak is not None else resident_bytes("VmHWM") - resident_before,
            "peak_rss": resident_bytes("VmHWM"),
            "collectives": len(collectives.seconds),
            "in_updates": in_updates,
            "tasks": args.tasks,
            "collective_ms": 1e3 * statistics.median(collectives.seconds) if collectives.seconds else None,
            "latency_ms": 1e3 * statistics.median(latency.seconds) if latency.seconds else None,
            "steps": len(step_wall),
            "step_wall": statistics.median(step_wall),
            "step_cpu": statistics.median(step_cpu),
            "meta_steps": meta.meta_steps,
        }
        torch.save(result, Path(out) / f"{setup}-{processes}-rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4, help="sequences per batch, over all processes")
    parser.add_argument("--sequence", type=int, default=16)
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--inner-steps", type=int, default=3)
    parser.add_argument("--meta-batch", type=int, default=2)
    parser.add_argument("--setups", nargs="+", choices=list(SETUPS), default=list(SETUPS))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--latency", type=int, default=200, help="back-to-back collectives timed after training")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # the workers' glibc returns freed tensors to the system
    context = torch.multiprocessing.get_context("spawn")
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for setup in args.setups:
            for processes in SETUPS[setup]:
                port = free_port()
                workers = [context.Process(target=worker, args=(r, processes, setup, args, port, out))
                           for r in range(processes)]
                for process in workers:
                    process.start()
                for process in workers:
                    process.join(timeout=1800)
                    if process.exitcode != 0:
                        raise SystemExit(f"{setup} on {processes} process(es): a process exited with "
                                         f"{process.exitcode}")
                results = [torch.load(Path(out) / f"{setup}-{processes}-rank{r}.pt") for r in range(processes)]
                rows.append((setup, processes, results))
                print(f"{setup} on {processes}: done", file=sys.stderr, flush=True)
    print("\n".join(table(args, rows)))


def table(args: argparse.Namespace, rows: list) -> list[str]:
    """One row per setup and number of processes; memory of the largest process, timings of process 0."""
    parameters = sum(p.numel() for p in transformer(args.width, args.depth).parameters())
    lines = [
        "| setup | processes | module MB / process | meta-state MB / process | peak MB / process | peak RSS MB / "
        "process | learner's collectives / inner step | ... / task | ms / collective in training | ms / collective "
        "back to back | wall s / inner step | CPU s / inner step |",
        "|---|" + "---:|" * 11,
    ]
    for setup, processes, results in rows:
        largest = {key: max(r[key] for r in results) for key in ("module", "meta_state", "peak", "peak_rss")}
        first = results[0]
        milliseconds = "-" if first["collective_ms"] is None else f"{first['collective_ms']:.2f}"
        latency = "-" if first["latency_ms"] is None else f"{first['latency_ms']:.3f}"
        lines.append(
            f"| {setup} | {processes} | {largest['module'] / MB:.0f} | {largest['meta_state'] / MB:.0f} | "
            f"{largest['peak'] / MB:.0f} | {largest['peak_rss'] / MB:.0f} | "
            f"{first['in_updates'] / first['steps']:.2f} | {first['collectives'] / first['tasks']:.2f} | "
            f"{milliseconds} | {latency} | {first['step_wall']:.2f} | "
            f"{first['step_cpu']:.2f} |"
        )
    size = f"{parameters / 1e6:.1f} M parameters, {4 * parameters / MB:.0f} MB in float32"
    return lines + [
        "",
        f"Leap (p=1, loss term) on a TransformerEncoder of width {args.width}, depth {args.depth} ({size}), "
        f"{args.tasks} tasks of {args.inner_steps} steps, meta-batch {args.meta_batch}, batch {args.batch} x "
        f"{args.sequence}; {args.device}, 1 torch thread per process, torch {torch.__version__}, Python "
        f"{platform.python_version()}, {os.cpu_count()} cores",
        f"`python benchmarks/sharded_memory.py {shlex.join(sys.argv[1:])}`",
    ]


if __name__ == "__main__":
    main()
