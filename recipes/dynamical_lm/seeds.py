"""The dynamical language model's quick recipe over several seeds: 95 % intervals over seeds beside those over
documents.

Each seed is one ``lightning-meta fit --config recipes/dynamical_lm/quick.yaml`` run (in its own process) with
``--seed_everything`` and ``--data.seed`` set to the seed, so the seed changes the LM's and the updater's initial
weights and the order and crops of the training documents (the validation and test documents are fixed by their
names). The SGD learning rates are chosen inside each run on the validation documents; the test documents are read
once per run. ``seeds.csv`` gets one row per seed, init and updater (with the run's CPU and wall seconds); a seed
whose table is already there is not run again. The script prints, for every init and updater, the mean over seeds of
the bits per byte of the whole test documents with its 95 % t-interval, and the same for the difference to SGD
from the same init, seed by seed.

Run it (about 3 x the quick recipe's time on 2 CPU cores)::

    OMP_NUM_THREADS=1 python recipes/dynamical_lm/seeds.py --seeds 0 1 2 --out outputs/dynamical_lm/seeds
    python recipes/dynamical_lm/seeds.py --seeds 0 1 2 --out outputs/dynamical_lm/seeds --report-only

Extra arguments after ``--`` go to every run (e.g. ``-- --trainer.max_steps=400``).
"""

from __future__ import annotations

import argparse
import csv
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from lightning_meta.tooling.sweep import format_interval

HERE = Path(__file__).parent
COLUMNS = ["seed", "init", "updater", "sgd_lr", "bits_per_byte", "trained_horizon_bits_per_byte", "document_mean",
           "document_ci95", "minus_sgd_mean", "minus_sgd_ci95", "documents", "cpu_seconds", "wall_seconds"]


def run_seed(seed: int, out: Path, extra: list[str]) -> list[dict[str, str]]:
    """One run of the quick recipe; its table's rows with the seed and the run's CPU and wall seconds."""
    folder = out / f"seed_{seed}"
    command = [sys.executable, "-m", "lightning_meta.cli", "fit", "--config", str(HERE / "quick.yaml"),
               f"--seed_everything={seed}", f"--data.seed={seed}", f"--trainer.default_root_dir={folder}",
               f"--trainer.logger.init_args.save_dir={folder}", "--trainer.enable_progress_bar=false", *extra]
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(command, check=True)
    after, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter() - start
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    table = max(folder.glob("lightning_logs/version_*/dynamical_lm.csv"), key=lambda p: p.stat().st_mtime)
    with table.open() as f:
        return [{**row, "seed": str(seed), "cpu_seconds": f"{cpu:.0f}", "wall_seconds": f"{wall:.0f}"}
                for row in csv.DictReader(f)]


def report(rows: list[dict[str, str]]) -> str:
    """A Markdown table: per init and updater, the mean over seeds and its 95 % interval of the bits per byte and of
    the difference to SGD from the same init."""
    by_key: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    sgd = {(r["seed"], r["init"]): float(r["bits_per_byte"]) for r in rows if r["updater"] == "sgd"}
    for r in rows:
        values = by_key[(r["init"], r["updater"])]
        values["bits_per_byte"].append(float(r["bits_per_byte"]))
        values["trained_horizon"].append(float(r["trained_horizon_bits_per_byte"]))
        values["minus_sgd"].append(float(r["bits_per_byte"]) - sgd[(r["seed"], r["init"])])
    seeds = sorted({r["seed"] for r in rows}, key=int)
    lines = [f"Whole test documents, mean over {len(seeds)} seeds ({', '.join(seeds)}) with the 95 % t-interval:", "",
             "| init | updater | bits per byte | minus SGD (same init, same seed) | over a training crop's segments |",
             "|---|---|---:|---:|---:|"]
    for (init, updater), values in by_key.items():
        cells = [format_interval(values[k]) for k in ("bits_per_byte", "minus_sgd", "trained_horizon")]
        lines.append(f"| {init} | {updater} | {' | '.join(cells)} |")
    cpu = [float(r["cpu_seconds"]) for r in rows if r["updater"] == "static" and r["init"] == "meta_init"]
    wall = [float(r["wall_seconds"]) for r in rows if r["updater"] == "static" and r["init"] == "meta_init"]
    lines += ["", f"Per run: {format_interval(cpu, digits=0)} CPU seconds, {format_interval(wall, digits=0)} wall "
              "seconds."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("outputs/dynamical_lm/seeds"))
    parser.add_argument("--report-only", action="store_true", help="print the table of the runs already done")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    path = args.out / "seeds.csv"
    rows = list(csv.DictReader(path.open())) if path.exists() else []
    if not args.report_only:
        for seed in args.seeds:
            if any(r["seed"] == str(seed) for r in rows):
                continue
            rows += run_seed(seed, args.out, extra)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".csv.tmp")
            with partial.open("w", newline="") as f:
                writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
            partial.replace(path)  # atomic: a killed sweep leaves the last complete table
    print(report([r for r in rows if int(r["seed"]) in args.seeds]))


if __name__ == "__main__":
    main()
