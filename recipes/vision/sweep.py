"""The Leap paper's multi-data-set experiment (its Table 1): Leap, multi-headed fine-tuning and no pre-training,
scored on each held-out data set by test error, training error and the AUC of the training-error curve.

Every method is one ``lightning-meta fit`` run of ``recipes/vision/<method>.yaml``; ``MetaEvaluation`` trains each
held-out data set at the end of fit (fresh head, early stopping on a validation split) and the sweep writes one CSV
row per method and data set, prints the table (Markdown) and draws the training-error curves, one panel per data set.

Run it (``--quick`` adds ``quick.yaml``: about 10 minutes on 2 CPU cores; without it, paper sizes, for GPUs)::

    python recipes/vision/sweep.py --quick --out outputs/vision/quick
    python recipes/vision/sweep.py --out outputs/vision/paper -- --config recipes/vision/torchvision.yaml \\
        --data.family.init_args.root=/data
    python recipes/vision/sweep.py --quick --out outputs/vision/quick --report-only   # table + figure again

Extra arguments after ``--`` go to every run (after the method's config and ``quick.yaml``).
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from lightning_meta import MetaEvaluation
from lightning_meta.cli import main as lightning_meta
from lightning_meta.metrics import curve_auc

HERE = Path(__file__).parent
METHODS = ("leap", "finetune", "scratch")
LABELS = {"leap": "Leap", "finetune": "multi-headed fine-tuning", "scratch": "no pre-training"}
FIELDS = ("method", "dataset", "seed", "train_error_auc", "train_error", "test_error", "steps", "seconds")
METRICS = (("train_error_auc", "train AUC"), ("train_error", "train error"), ("test_error", "test error"))


def run_method(method: str, seed: int, out: Path, extra: list[str], quick: bool) -> list[dict[str, object]]:
    """One ``lightning-meta fit`` run; returns one CSV row per held-out data set and saves its curves."""
    folder = out / "runs" / method
    args = [
        "fit", "--config", str(HERE / f"{method}.yaml"), *(["--config", str(HERE / "quick.yaml")] if quick else []),
        f"--seed_everything={seed}", f"--data.seed={seed}",
        f"--trainer.default_root_dir={folder}", f"--trainer.logger.init_args.save_dir={folder}",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", *extra,
    ]
    start = time.perf_counter()
    cli = lightning_meta(args)
    seconds = round(time.perf_counter() - start, 1)
    evaluation = next(c for c in cli.trainer.callbacks if isinstance(c, MetaEvaluation))  # type: ignore[attr-defined]
    curves = evaluation.history[-1][1]
    torch.save({"names": evaluation.task_names, "error": curves.error}, folder / "curves.pt")
    aucs = curve_auc(curves.error)
    return [
        {"method": method, "dataset": name, "seed": seed, "train_error_auc": round(float(aucs[i]), 4),
         "train_error": round(1 - float(curves.train_accuracy[i]), 4), "test_error": round(1 - float(curves.test_accuracy[i]), 4),
         "steps": int(curves.steps[i]), "seconds": seconds}
        for i, name in enumerate(evaluation.task_names)
    ]


def table(rows: list[dict[str, str]]) -> str:
    """Markdown in the shape of the paper's Table 1: per held-out data set, train AUC / train error / test error
    (in %) of each method, then their averages over the data sets."""
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    value = {(r["method"], r["dataset"], key): 100 * float(r[key]) for r in rows for key, _ in METRICS}
    lines = [f"| held-out data set | measure | {' | '.join(LABELS[m] for m in methods)} |",
             f"|---|---|{'---:|' * len(methods)}"]
    for dataset in [*datasets, "average"]:
        for key, label in METRICS:
            cells = []
            for method in methods:
                numbers = [value[method, d, key] for d in datasets] if dataset == "average" else [value[method, dataset, key]]
                cells.append(f"{sum(numbers) / len(numbers):.1f}")
            lines.append(f"| {dataset} | {label} | {' | '.join(cells)} |")
    return "\n".join(lines)


def figure(out: Path, methods: list[str]) -> Path:
    """Held-out training-error curves of every method, one panel per data set (moving average over ~5% of the steps:
    each point is the error on one batch)."""
    runs = {m: torch.load(out / "runs" / m / "curves.pt") for m in methods if (out / "runs" / m / "curves.pt").exists()}
    names = next(iter(runs.values()))["names"]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.5), constrained_layout=True, squeeze=False)
    for axis, (index, name) in zip(axes[0], enumerate(names)):
        for method, run in runs.items():
            curve = run["error"][index]
            window = max(1, len(curve) // 20)
            smooth = torch.nn.functional.avg_pool1d(curve.view(1, 1, -1), window, stride=1).flatten()
            axis.plot(range(window, len(curve) + 1), smooth, label=LABELS[method])
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="add quick.yaml: sizes for 2 CPU cores")
    parser.add_argument("--out", type=Path, default=Path("outputs/vision/sweep"))
    parser.add_argument("--report-only", action="store_true", help="only print the table and draw the figure")
    args, extra = parser.parse_known_args()
    extra = extra[1:] if extra and extra[0] == "--" else extra
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.csv"
    if not args.report_only:
        rows = [row for method in args.methods for row in run_method(method, args.seed, args.out, extra, args.quick)]
        with open(results, "w", newline="") as handle:
            writer = csv.DictWriter(handle, FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        for method in args.methods:
            seconds = next(r["seconds"] for r in rows if r["method"] == method)
            print(f"{method}: {seconds} s")
    with open(results) as handle:
        print(table(list(csv.DictReader(handle))))
    print(f"figure: {figure(args.out, args.methods)}")


if __name__ == "__main__":
    main()
