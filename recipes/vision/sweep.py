"""The Leap paper's multi-data-set experiment (its Table 1): Leap, multi-headed fine-tuning and no pre-training,
scored on each held-out data set by test error, training error and the AUC of the training-error curve.

Every cell is one ``lightning-meta fit`` run of ``recipes/vision/<method>.yaml``, in two stages
(``lightning_meta.tooling.sweep``): for each seed, every setting of a method's grid (Leap: its meta learning rate; fine-tuning:
its pre-training rate) is trained and scored on the **validation** data sets by the held-out training-error AUC; the
chosen setting is trained again with a fresh run seed and scored on the **test** data sets, once. ``MetaEvaluation``
trains each held-out data set at the end of fit (fresh head, early stopping on a validation split). ``results.csv``
holds one row per cell and held-out data set (resumable: cells already there are skipped); the sweep prints the
table (Markdown, mean ± 95 % t-interval over seeds) and draws the training-error curves, one panel per data set.

Run it (``--quick`` adds ``quick.yaml`` and 3-value grids: 2 CPU cores; without it, paper sizes, for GPUs)::

    OMP_NUM_THREADS=1 python recipes/vision/sweep.py --quick --jobs 2 --out outputs/vision/quick
    python recipes/vision/sweep.py --out outputs/vision/paper -- --config recipes/vision/torchvision.yaml \\
        --data.family.init_args.root=/data
    python recipes/vision/sweep.py --quick --out outputs/vision/quick --report-only   # table + figure again

Extra arguments after ``--`` go to every run (after the method's config and ``quick.yaml``).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from functools import partial
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from lightning_meta import MetaEvaluation
from lightning_meta.cli import main as lightning_meta
from lightning_meta.cli_errors import run_reporting_errors
from lightning_meta.metrics import curve_auc
from lightning_meta.tooling.sweep import Cell, Row, Sweep, fit_arguments, format_interval, grid, number, tuning_table

HERE = Path(__file__).parent
METHODS = ("leap", "finetune", "scratch")
LABELS = {"leap": "Leap", "finetune": "multi-headed fine-tuning", "scratch": "no pre-training"}
METRICS = ("dataset", "train_error_auc", "train_error", "test_error", "test_error_batch_statistics", "steps")
MEASURES = (  # metric, label: the paper's Table 1 (test error: BatchNorm in eval mode, running statistics)
    ("train_error_auc", "train AUC"), ("train_error", "train error"), ("test_error", "test error"),
)
GRIDS = {  # the full grids (GPU)
    "leap": grid(**{"Leap.meta_lr": [0.001, 0.003, 0.01, 0.03, 0.1]}),  # meta-optimizer Adam
    "finetune": grid(**{"model.pretrain_lr": [0.01, 0.03, 0.1, 0.3]}),
    "scratch": [],
}
QUICK_GRIDS = {
    "leap": grid(**{"Leap.meta_lr": [0.003, 0.01, 0.03]}),
    "finetune": grid(**{"model.pretrain_lr": [0.03, 0.1, 0.3]}),
    "scratch": [],
}
GROUP = "all"  # one pool of meta-training data sets


def run_cell(cell: Cell, folder: Path, extra: list[str], quick: bool) -> list[dict[str, object]]:
    """One ``lightning-meta fit`` run; returns one CSV row per held-out data set and saves the test curves."""
    configs = [HERE / f"{cell.method}.yaml", *([HERE / "quick.yaml"] if quick else [])]
    cli = lightning_meta([*fit_arguments(configs, cell, folder), *extra])
    evaluation = next(c for c in cli.trainer.callbacks if isinstance(c, MetaEvaluation))  # type: ignore[attr-defined]
    curves = evaluation.history[-1][1]
    if cell.stage == "test":
        torch.save({"names": evaluation.task_names, "error": curves.error}, folder / "curves.pt")
    aucs = curve_auc(curves.error)
    return [
        {"dataset": name, "train_error_auc": round(float(aucs[i]), 4),
         "train_error": round(1 - float(curves.train_accuracy[i]), 4),
         "test_error": round(1 - float(curves.test_accuracy_running_statistics[i]), 4),
         "test_error_batch_statistics": round(1 - float(curves.test_accuracy_batch_statistics[i]), 4),
         "steps": int(curves.steps[i])}
        for i, name in enumerate(evaluation.task_names)
    ]


def table(rows: list[Row]) -> str:
    """Markdown in the shape of the paper's Table 1: per held-out data set, train AUC / train error / test error
    (in %, mean ± 95 % t-interval over seeds) of each method's test runs, then their averages over the data sets."""
    tests = [r for r in rows if r["stage"] == "test"]
    methods = [m for m in METHODS if any(r["method"] == m for r in tests)]
    datasets = list(dict.fromkeys(r["dataset"] for r in tests))
    lines = [f"| held-out data set | measure | {' | '.join(LABELS[m] for m in methods)} |",
             f"|---|---|{'---:|' * len(methods)}"]
    for dataset in [*datasets, "average"]:
        for key, label in MEASURES:
            cells = []
            for method in methods:
                per_seed: dict[str, list[float]] = defaultdict(list)  # the data set's value, or all data sets'
                for r in tests:
                    if r["method"] == method and dataset in (r["dataset"], "average"):
                        per_seed[r["seed"]].append(number(r, key))
                cells.append(format_interval([sum(v) / len(v) for v in per_seed.values()], 100.0, 1))
            lines.append(f"| {dataset} | {label} | {' | '.join(cells)} |")
    return "\n".join(lines)


def figure(out: Path, methods: list[str]) -> Path:
    """Held-out training-error curves of every method's test runs (mean over seeds), one panel per data set (moving
    average over ~5% of the steps: each point is the error on one batch)."""
    runs = {m: [torch.load(path) for path in sorted((out / "runs").glob(f"test-{m}-*/curves.pt"))] for m in methods}
    runs = {m: r for m, r in runs.items() if r}
    names = next(iter(runs.values()))[0]["names"]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.5), constrained_layout=True, squeeze=False)
    for axis, (index, name) in zip(axes[0], enumerate(names)):
        for method, seeds in runs.items():
            curve = torch.stack([run["error"][index] for run in seeds]).mean(0)
            window = max(1, len(curve) // 20)
            smooth = torch.nn.functional.avg_pool1d(curve.view(1, 1, -1), window, stride=1).flatten()
            axis.plot(range(window, len(curve) + 1), smooth, label=f"{LABELS[method]} ({len(seeds)} seeds)")
        axis.set_title(name)
        axis.set_xlabel("step on the held-out data set")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("training error (moving average)")
    axes[0][0].legend()
    path = out / "held_out_curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="add quick.yaml (2 CPU cores), 3-value grids")
    parser.add_argument("--jobs", type=int, default=1, help="cells run at once, in worker processes")
    parser.add_argument("--out", type=Path, default=Path("outputs/vision/sweep"))
    parser.add_argument("--report-only", action="store_true", help="only print the tables and draw the figure")
    args, extra = parser.parse_known_args()
    extra = extra[1:] if extra and extra[0] == "--" else extra
    args.out.mkdir(parents=True, exist_ok=True)
    grids = QUICK_GRIDS if args.quick else GRIDS
    sweep = Sweep(args.out, partial(run_cell, extra=extra, quick=args.quick), grids, METRICS, "data sets")
    plan = {method: [GROUP] for method in args.methods}
    rows = sweep.results.rows() if args.report_only else sweep.run(plan, args.seeds, args.jobs)
    print(table(rows))
    print("\nTuning stage (validation data sets):\n")
    print(tuning_table(rows, "train_error_auc", "data sets"))
    print(f"figure: {figure(args.out, args.methods)}")


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, sys.argv))  # a bad value or CSV: one line, status 1; a stop signal: 128 + it
