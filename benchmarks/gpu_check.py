"""The GPU-sized protocol as one prepared command: throughput, per-step overhead and the authors' Omniglot configs,
on one GPU, within ``--minutes`` (10 by default).

What it runs, in order, each part a subprocess with its own time limit (a part that fails or runs out of time is
marked so in the results; the others still run):

1. ``throughput``: ``benchmarks/throughput.py --device cuda --channels 64``: inner task-steps per second of one
   meta-batch, its tasks one at a time against T at once (``TaskBatchedLearner``), T = 1, 5, 20, with the GPU's
   utilisation and peak memory.
2. ``overhead``: ``benchmarks/raw_overhead.py --device cuda``: wall milliseconds per inner step of Leap written in a
   raw PyTorch loop, our engine in that loop, the Trainer alone and the Trainer with ``Leap`` (64 channels, 100
   steps per task).
3. ``leap`` and ``reptile``: ``lightning-meta fit`` of ``recipes/omniglot/leap.yaml`` and ``reptile.yaml`` (the
   authors' protocol: 64 channels, meta-batch 20, 100 inner steps, their augmentation) with ``--data.task_batch=20``
   on the GPU, for the time that is left, shared between the two (Lightning's ``max_time``); the held-out test
   alphabets are scored once at the end, from the initial weights and from theta_0 (no evaluation every 10
   meta-steps: the time goes to meta-training). Reported: the meta-steps done, their rate, the minutes the authors'
   1000 meta-steps would take at that rate, and the held-out scores.

It writes ``gpu_check.json`` (every figure, the commands, the machine) and ``gpu_check.md`` (the tables) into
``--out``, and prints the markdown. Run it from the repository root::

    python benchmarks/gpu_check.py --out outputs/gpu-check
    python benchmarks/gpu_check.py --device cpu --smoke --out outputs/gpu-check-smoke   # seconds: the CPU test

``--smoke`` shrinks every part to a few steps of an 8-channel net so that the whole path runs on a CPU in about a
minute (``tests/test_gpu_check.py``); its figures measure nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from lightning_meta.tooling.sweep import setting_arguments  # noqa: E402

AUTHORS_META_STEPS = 1000
CONFIGS = ("leap", "reptile")
GLYPHS = "import sys; from lightning_meta.families import GlyphAlphabets as G; G(sys.argv[1] or None).prepare_data()"
EVALUATION_MARGIN_S = 90  # start-up and the two held-out evaluations at the end of each fit, on a GPU


def part_commands(args: argparse.Namespace) -> dict[str, list[str]]:
    """The benchmark scripts' command lines."""
    python = [sys.executable, "-u"]
    if args.smoke:
        throughput = ["--channels", "8", "--tasks", "1", "2", "--inner-steps", "2", "--repeats", "1", "--no-memory"]
        overhead = ["--channels", "8", "--inner-steps", "2", "--steps", "4", "--warmup", "1", "--repeats", "1"]
    else:
        throughput = ["--channels", "64", "--tasks", "1", "5", "20", "--inner-steps", "20", "--repeats", "3"]
        overhead = ["--channels", "64", "--inner-steps", "100", "--steps", "200", "--warmup", "10", "--repeats", "3"]
    out = args.out
    return {
        "throughput": [*python, str(ROOT / "benchmarks" / "throughput.py"), "--device", args.device, *throughput,
                       "--json", str(out / "throughput.json")],
        "overhead": [*python, str(ROOT / "benchmarks" / "raw_overhead.py"), "--device", args.device, *overhead,
                     "--json", str(out / "raw_overhead.json")],
    }


def fit_command(name: str, seconds: int, args: argparse.Namespace) -> list[str]:
    """``lightning-meta fit`` of the authors' config ``name`` with all 20 tasks of a meta-batch trained together,
    for ``seconds`` of training, scored on the test alphabets at the end only."""
    config = ROOT / "recipes" / "omniglot" / f"{name}.yaml"
    callbacks = (yaml.safe_load(config.read_text())["trainer"] or {})["callbacks"]
    _, callbacks = setting_arguments([("MetaEvaluation.every_n_meta_steps", 0)], callbacks)
    folder = args.out / name
    folder.mkdir(parents=True, exist_ok=True)
    overlay = folder / "gpu_check.yaml"
    overlay.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}, sort_keys=False))
    meta_batch, inner_steps, meta_steps = (2, 2, 2) if args.smoke else (20, 100, AUTHORS_META_STEPS)
    hours, rest = divmod(seconds, 3600)
    sizes = [f"--data.meta_batch_size={meta_batch}", f"--data.inner_steps={inner_steps}",
             "--model.init_args.channels=8", "--data.family.init_args.num_test=2"] if args.smoke else []
    return [
        sys.executable, "-u", "-m", "lightning_meta.cli", "fit", "--config", str(config), "--config", str(overlay),
        *sizes, f"--data.task_batch={meta_batch}",
        f"--data.max_meta_steps={meta_steps}",
        f"--trainer.max_time=00:{hours:02d}:{rest // 60:02d}:{rest % 60:02d}",
        f"--trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}", "--trainer.devices=1",
        f"--trainer.default_root_dir={folder}", f"--trainer.logger.init_args.save_dir={folder}",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        *([f"--data.family.init_args.root={args.glyph_root}"] if args.glyph_root else []),
    ]


def run_part(command: list[str], limit: float, log: Path) -> dict[str, Any]:
    """Run ``command`` with a time limit, its output into ``log``; returns its status and wall seconds."""
    start = time.perf_counter()
    with open(log, "w") as handle:
        try:
            code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, timeout=max(limit, 1),
                                  cwd=ROOT).returncode
            status = "ok" if code == 0 else f"failed (exit status {code}; see {log.name})"
        except subprocess.TimeoutExpired:
            status = f"stopped after its limit of {limit:.0f} s (see {log.name})"
    return {"status": status, "seconds": round(time.perf_counter() - start, 1), "command": shlex.join(command),
            "log": str(log)}


def fit_results(folder: Path) -> dict[str, Any]:
    """The meta-steps a fit reached and its held-out scores (its ``summary.csv``), and its training time (the time
    Lightning's ``Timer`` counted in the train stage, from the checkpoint written at the end of fit)."""
    summaries = sorted(folder.glob("lightning_logs/version_*/summary.csv"))
    checkpoints = sorted(folder.glob("lightning_logs/version_*/checkpoints/final.ckpt"))
    if not summaries or not checkpoints:
        return {}
    callbacks = torch.load(checkpoints[-1], map_location="cpu", weights_only=False)["callbacks"]
    trained_seconds = round(next(v for k, v in callbacks.items() if k == "Timer")["time_elapsed"]["train"], 1)
    rows = list(csv.DictReader(open(summaries[-1])))
    evaluated = [row for row in rows if row.get("source") == "MetaEvaluation"]
    final = [row for row in evaluated if row["weights"].startswith("meta-step")]
    if not final:
        return {}
    meta_steps = int(final[-1]["step"])
    rate = meta_steps / trained_seconds * 60
    keys = ("train_error_auc", "final_train_error", "test_accuracy_batch_statistics", "path_length")
    return {
        "meta_steps": meta_steps, "trained_seconds": trained_seconds, "meta_steps_per_minute": round(rate, 3),
        "minutes_for_authors_meta_steps": round(AUTHORS_META_STEPS / rate, 1) if rate else None,
        "held_out": {row["weights"]: {k: float(row[k]) for k in keys if row.get(k)} for row in evaluated},
    }


def markdown(report: dict[str, Any]) -> str:
    parts = report["parts"]
    lines = [f"# GPU check: {report['machine']['device']}", ""]
    for name, title in (("throughput", "Tasks trained together (benchmarks/throughput.py)"),
                        ("overhead", "Per-step overhead against a raw loop (benchmarks/raw_overhead.py)")):
        part = parts[name]
        lines += [f"## {title}", "", f"`{part['command']}`: {part['status']}, {part['seconds']} s", ""]
        if part.get("markdown"):
            lines += [part["markdown"], ""]
    lines += ["## The authors' Omniglot configs, all 20 tasks of a meta-batch trained together", "",
              "| config | status | meta-steps | training s | meta-steps / min | minutes for 1000 | held-out AUC: "
              "initial -> theta_0 | final training error: initial -> theta_0 | path length: initial -> theta_0 |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in CONFIGS:
        part = parts[name]
        held = part.get("held_out", {})
        start, end = held.get("initial weights", {}), next((v for k, v in held.items() if k != "initial weights"), {})

        def pair(key: str, scale: float = 1.0, end: dict = end, start: dict = start) -> str:
            if key not in start or key not in end:
                return "n/a"
            return f"{start[key] * scale:.3f} -> {end[key] * scale:.3f}"

        figures = [part.get(key, "n/a") for key in ("meta_steps", "trained_seconds", "meta_steps_per_minute",
                                                     "minutes_for_authors_meta_steps")]
        lines.append(f"| {name} | {part['status']} | {' | '.join(map(str, figures))} | {pair('train_error_auc')} | "
                     f"{pair('final_train_error')} | {pair('path_length')} |")
    lines += ["", f"`{report['command']}`; total {report['seconds']} s"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--minutes", type=float, default=10.0, help="the whole check's time budget")
    parser.add_argument("--out", type=Path, default=Path("outputs/gpu-check"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that every part runs (CPU test)")
    parser.add_argument("--glyph-root", default=None, help="where the glyph alphabets are cached (default: theirs)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available (use --device cpu --smoke for the CPU check)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start = time.perf_counter()
    deadline = start + args.minutes * 60
    args.out.mkdir(parents=True, exist_ok=True)
    machine = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__,
               "python": platform.python_version(), "cpu_count": os.cpu_count()}
    command = "python " + shlex.join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    print(f"command: {command}\nmachine: {machine}", flush=True)
    glyphs = [sys.executable, "-c", GLYPHS, args.glyph_root or ""]  # the alphabets' cache, built once, timed
    parts: dict[str, Any] = {"glyphs": run_part(glyphs, deadline - start, args.out / "glyphs.log")}
    limits = {"throughput": 0.22, "overhead": 0.22}  # shares of the budget
    for name, part_command in part_commands(args).items():
        limit = min(limits[name] * args.minutes * 60, deadline - time.perf_counter())
        print(f"{name}: up to {limit:.0f} s", flush=True)
        parts[name] = run_part(part_command, limit, args.out / f"{name}.log")
        result = args.out / ("throughput.json" if name == "throughput" else "raw_overhead.json")
        if result.exists() and parts[name]["status"] == "ok":
            parts[name]["markdown"] = json.loads(result.read_text())["markdown"]
    for index, name in enumerate(CONFIGS):
        left = deadline - time.perf_counter()
        share = left / (len(CONFIGS) - index)  # what is left, shared between the configs still to run
        margin = min(EVALUATION_MARGIN_S, share / 2)
        seconds = max(int(share - margin), 1)
        print(f"{name}: {seconds} s of training, up to {share:.0f} s in all", flush=True)
        parts[name] = run_part(fit_command(name, seconds, args), share, args.out / f"{name}.log")
        parts[name].update(fit_results(args.out / name))
    report = {"command": command, "machine": machine, "parts": parts,
              "seconds": round(time.perf_counter() - start, 1), "smoke": args.smoke}
    report["markdown"] = markdown(report)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (args.out / "gpu_check.md").write_text(report["markdown"] + "\n")
    print(report["markdown"])
    return report


if __name__ == "__main__":
    main()
