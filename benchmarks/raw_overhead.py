"""Per-step overhead of Lightning + Leap against Leap in a raw PyTorch loop, and where the extra time goes.

What it measures
----------------
One task stream (in-memory random 28x28 images, 20 classes, batch ``--batch-size``, ``--inner-steps`` steps per
task), the Leap paper's conv net (:class:`~lightning_meta.models.ConvClassifier`, ``--channels`` wide, inner SGD
lr 0.1), Leap with ``p=1``, the loss term, the stabilizer, meta SGD lr 0.1 and a meta-step after every task, trained
four ways in one process:

- ``raw``: Leap written here from the published update rule in a plain PyTorch loop (no lightning_meta, no
  Lightning): per step forward, backward, the path segment from the previous point into a per-parameter
  accumulator, SGD; at each task end the last segment (one extra forward for f(theta_K)), the meta-step, and theta_0
  and the BatchNorm statistics back into the model. The batches are collated in memory beforehand.
- ``engine``: the same loop on the same batches with :class:`~lightning_meta.engine.MetaLearner` doing Leap (our
  engine without Lightning).
- ``lightning``: ``Trainer.fit`` of the same module on the same stream through
  :class:`~lightning_meta.data.TaskDataModule`, no callback (Lightning's own floor, plus our data stream).
- ``lightning+leap``: the same with the ``Leap`` callback.

Each run's time is process CPU time per inner step over ``--steps`` steps after ``--warmup`` steps (Lightning runs:
timestamps at ``on_train_batch_start``; raw and engine: at the top of each step). ``--steps`` must be a multiple of
``--inner-steps``. Configurations are interleaved over ``--repeats`` rounds, the order rotating each round; the
table gives the median and range (min-max) over rounds of ms per step, and of the per-round ratio to ``raw``.
Use ``--threads 1``: then process CPU time is the work done, whatever else the machine runs. With ``--device cuda``
the four runs train on the GPU and the time is wall time, the device synchronised at every timestamp (in all four
alike), since process CPU time does not count the GPU's work.

``--profile N`` instead runs ``lightning+leap`` for N steps under ``cProfile`` and prints the most expensive
functions, each marked as ours (``lightning_meta``, this benchmark) or not, the callers of ``inspect.cleandoc`` and
``copy.deepcopy``, and the share of the time spent in our code.

Run it
------
From the repository root, on a quiet machine::

    python benchmarks/raw_overhead.py --threads 1 --repeats 7 --json raw-overhead.json
    python benchmarks/raw_overhead.py --threads 1 --profile 400

A quick check (a minute): ``python benchmarks/raw_overhead.py --threads 1 --channels 8 --inner-steps 5 --steps 10
--warmup 2 --repeats 1``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import pstats
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from memory_tracking import CLASSES, RandomImageFamily  # noqa: E402
from overhead import StepClock, machine  # noqa: E402

from lightning_meta import Leap  # noqa: E402
from lightning_meta.data import TaskDataModule, TaskFamily  # noqa: E402
from lightning_meta.engine import LeapRule, MetaLearner  # noqa: E402
from lightning_meta.models import ConvClassifier  # noqa: E402

CONFIGURATIONS = ("raw", "engine", "lightning", "lightning+leap")
Batches = list[list[tuple[torch.Tensor, torch.Tensor]]]


# ----------------------------------------------------------------------------------------------- raw Leap
class RawLeap:
    """Leap (Flennerhag et al., 2019) from the paper's update rule, p = 1, loss term, stabilizer, one task per
    meta-step, meta SGD: per parameter tensor, in the style of a plain research loop."""

    def __init__(self, model: torch.nn.Module, meta_lr: float) -> None:
        self.model, self.meta_lr = model, meta_lr
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.init = [p.detach().clone() for p in self.params]
        self.buffers = [(b, b.detach().clone()) for b in model.buffers()]

    @torch.no_grad()
    def start(self) -> None:
        for p, p0 in zip(self.params, self.init):
            p.copy_(p0)
        for buffer, value in self.buffers:
            buffer.copy_(value)
        self.total = [torch.zeros_like(p) for p in self.params]
        self.previous: list[torch.Tensor] | None = None

    @torch.no_grad()
    def step(self, loss: torch.Tensor) -> None:
        """After backward, before the optimizer's step: close the segment from the previous point to here."""
        if self.previous is not None:
            self._segment(loss)
        self.previous = [p.detach().clone() for p in self.params]
        self.previous_grads = [p.grad.detach().clone() for p in self.params]  # type: ignore[union-attr]
        self.previous_loss = loss.detach()

    def _segment(self, loss: torch.Tensor) -> None:
        assert self.previous is not None
        steps = [p - q for p, q in zip(self.params, self.previous)]  # dtheta_i
        d_loss = -(loss.detach() - self.previous_loss).abs()  # df_i, stabilised
        length = (sum(d.pow(2).sum() for d in steps) + d_loss**2).sqrt()  # type: ignore[operator]
        for total, d, g in zip(self.total, steps, self.previous_grads):
            total.add_((d + d_loss * g) / length)

    @torch.no_grad()
    def end(self, final_loss: torch.Tensor) -> None:
        """The last segment, then theta_0 <- theta_0 - meta_lr * meta-gradient, with meta-gradient = -total."""
        self._segment(final_loss)
        for p0, total in zip(self.init, self.total):
            p0.add_(total, alpha=self.meta_lr)


# ----------------------------------------------------------------------------------------------- the four runs
def task_batches(family: TaskFamily, tasks: int, args: argparse.Namespace) -> Batches:
    """The batches of the first ``tasks`` tasks of the stream the Trainer runs see, collated in memory."""
    data = TaskDataModule(family, inner_steps=args.inner_steps, batch_size=args.batch_size,
                          tasks_per_epoch=tasks, seed=args.seed)
    batches = [(x, y) for x, y in data.train_dataloader()]  # a glyph task's batch is [images, labels]
    k = args.inner_steps
    return [batches[t * k : (t + 1) * k] for t in range(tasks)]


def fresh_model(args: argparse.Namespace) -> ConvClassifier:
    torch.manual_seed(args.seed)
    return ConvClassifier(num_classes=CLASSES, channels=args.channels, lr=0.1).to(args.device)


def clock(args: argparse.Namespace) -> float:
    """Process CPU seconds on CPU; on CUDA wall seconds once the device has finished its queued work."""
    if args.device == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def plain_loop(name: str, tasks: Batches, args: argparse.Namespace) -> list[float]:
    """``raw`` or ``engine``: timestamps (:func:`clock`) at the top of every step."""
    model = fresh_model(args)
    stamps: list[float] = []
    raw = RawLeap(model, meta_lr=0.1) if name == "raw" else None
    meta = None if raw else MetaLearner(model, LeapRule(p=1, loss=True, stabilizer=True), 1, meta_lr=0.1)
    for batches in tasks:
        raw.start() if raw else meta.start_task()  # type: ignore[union-attr]
        inner = torch.optim.SGD(model.parameters(), lr=0.1)
        for x, y in batches:
            stamps.append(clock(args))
            x, y = x.to(args.device), y.to(args.device)
            loss = F.cross_entropy(model(x), y)
            inner.zero_grad()
            loss.backward()
            raw.step(loss) if raw else meta.update(loss)  # type: ignore[union-attr]
            inner.step()
        with torch.no_grad():
            final = F.cross_entropy(model(x), y)  # f(theta_K) on the last batch
        raw.end(final) if raw else meta.end_task(final_loss=final)  # type: ignore[union-attr]
    stamps.append(clock(args))
    return stamps


def trainer_run(name: str, family: TaskFamily, steps: int, args: argparse.Namespace) -> list[float]:
    model = fresh_model(args)
    data = TaskDataModule(family, inner_steps=args.inner_steps, meta_batch_size=1, batch_size=args.batch_size,
                          tasks_per_epoch=steps // args.inner_steps + 2, seed=args.seed)
    cuda = args.device == "cuda"
    stamps = StepClock(cuda=cuda)
    leap = [Leap(meta_lr=0.1)] if name == "lightning+leap" else []
    callbacks: list[L.Callback] = [stamps, *leap]
    trainer = L.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, max_steps=steps, callbacks=callbacks,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    trainer.fit(model, datamodule=data)
    return stamps.stamps if cuda else stamps.cpu_stamps


def per_step_ms(name: str, family: TaskFamily, tasks: Batches, args: argparse.Namespace) -> float:
    total = args.warmup + args.steps + 1
    if name in ("raw", "engine"):
        stamps = plain_loop(name, tasks, args)
    else:
        stamps = trainer_run(name, family, total, args)
    window = stamps[args.warmup : args.warmup + args.steps + 1]
    assert len(window) == args.steps + 1, (name, len(stamps))
    return (window[-1] - window[0]) / args.steps * 1e3


def measure(args: argparse.Namespace, family: TaskFamily) -> dict[str, Any]:
    steps = args.warmup + args.steps + 1
    tasks = task_batches(family, -(-steps // args.inner_steps), args)
    for name in CONFIGURATIONS:  # untimed warm-up
        per_step_ms(name, family, tasks, argparse.Namespace(**{**vars(args), "steps": 1, "warmup": 0}))
    ms: dict[str, list[float]] = {name: [] for name in CONFIGURATIONS}
    for repeat in range(args.repeats):
        shift = repeat % len(CONFIGURATIONS)
        for name in CONFIGURATIONS[shift:] + CONFIGURATIONS[:shift]:
            ms[name].append(per_step_ms(name, family, tasks, args))
            print(f"  round {repeat}: {name:15s} {ms[name][-1]:8.3f} ms {time_kind(args)} per step", flush=True)
    result = {}
    for name in CONFIGURATIONS:
        ratios = [t / r for t, r in zip(ms[name], ms["raw"])]
        result[name] = {"ms_per_step": ms[name], "time": time_kind(args), "median_ms": statistics.median(ms[name]),
                        "ratio_to_raw": ratios, "median_ratio": statistics.median(ratios)}
    return result


def time_kind(args: argparse.Namespace) -> str:
    return "wall" if args.device == "cuda" else "CPU"


def markdown(result: dict[str, Any]) -> str:
    kind = result["raw"]["time"]
    lines = [f"| configuration | {kind} ms / inner step, median [range] | ratio to raw, median [range] |",
             "|---|---:|---:|"]
    for name in CONFIGURATIONS:
        entry = result[name]
        ms, ratios = entry["ms_per_step"], entry["ratio_to_raw"]
        lines.append(f"| {name} | {entry['median_ms']:.2f} [{min(ms):.2f}-{max(ms):.2f}] | "
                     f"{entry['median_ratio']:.3f} [{min(ratios):.3f}-{max(ratios):.3f}] |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- profile
def ours(filename: str) -> bool:
    return "lightning_meta" in filename or filename.startswith(str(Path(__file__).parent))


def profile(args: argparse.Namespace, family: TaskFamily) -> None:
    trainer_run("lightning+leap", family, args.inner_steps + 1, args)  # warm-up, not profiled
    profiler = cProfile.Profile()
    profiler.enable()
    trainer_run("lightning+leap", family, args.profile, args)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt  # type: ignore[attr-defined]
    entries = stats.stats  # type: ignore[attr-defined]
    own = sum(tt for (filename, _, _), (_, _, tt, _, _) in entries.items() if ours(filename))
    print(f"{args.profile} steps of lightning+leap under cProfile: {total:.2f} s; {own:.2f} s "
          f"({own / total:.1%}) inside functions of lightning_meta or this benchmark (own time, not children)")
    print("\nmost own time, ours marked *:")
    ranked = sorted(entries.items(), key=lambda item: -item[1][2])[:args.top]
    for (filename, line, function), (_, calls, tt, ct, _) in ranked:
        mark = "*" if ours(filename) else " "
        print(f" {mark} {tt:7.3f} s own {ct:7.3f} s cum {calls:8d} calls  {Path(filename).name}:{line}({function})")
    for name in ("cleandoc", "deepcopy"):
        called = {key: value for key, value in entries.items() if key[2] == name}
        calls = sum(value[1] for value in called.values())
        print(f"\n{name}: {calls} calls ({calls / args.profile:.1f} per step); callers:")
        for value in called.values():
            for (filename, line, function), caller in value[4].items():
                mark = "*" if ours(filename) else " "
                print(f" {mark} {caller[1]:8d} calls from {filename}:{line}({function})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--channels", type=int, default=64, help="channels of the conv net (the paper's: 64)")
    parser.add_argument("--inner-steps", type=int, default=100, help="steps per task (a meta-step after each task)")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per run, a multiple of --inner-steps")
    parser.add_argument("--warmup", type=int, default=10, help="steps before the timed window")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (use 1 on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the four runs train")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="profile N steps of lightning+leap instead")
    parser.add_argument("--top", type=int, default=30, help="rows of the profile")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.steps % args.inner_steps or args.warmup < 0:
        parser.error("--steps must be a positive multiple of --inner-steps, --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    family = RandomImageFamily(seed=args.seed)
    command = "python " + shlex.join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    info = machine()
    print(f"command: {command}\nmachine: {info}", flush=True)
    if args.profile:
        profile(args, family)
        return
    result = measure(args, family)
    table = markdown(result)
    print(f"\n{table}\n\nConvClassifier({args.channels} channels), batch {args.batch_size}, {args.inner_steps} inner "
          f"steps per task, Leap p=1 with loss and stabilizer, a meta-step per task; "
          f"{'wall time on ' + str(info.get('gpu')) if args.device == 'cuda' else 'process CPU time'}, "
          f"{info['torch_threads']} torch thread(s), {info['cpu_count']} CPUs, torch {info['torch']}, lightning "
          f"{info['lightning']}; median [min-max] of {args.repeats} interleaved rounds\n`{command}`")
    if args.json is not None:
        args.json.write_text(json.dumps({"command": command, "machine": info, "result": result, "markdown": table},
                                        indent=2))


if __name__ == "__main__":
    main()
