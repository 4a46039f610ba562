"""The Leap paper's Omniglot sweep: methods x number of meta-training alphabets x seeds (its Figure 3, right).

Every cell is one ``lightning-meta fit`` run of ``recipes/omniglot/<method>.yaml`` with ``num_train`` meta-training
alphabets; the held-out result (from ``MetaEvaluation`` at the end of fit) is appended as one row of a CSV. The
sweep is resumable: a cell already in the CSV is not run again. At the end it prints a Markdown table (mean +- std
over seeds) and draws held-out training-error AUC against the number of meta-training alphabets.

Run it (``--quick`` finishes on 2 CPU cores in about 15 minutes; without it, paper sizes, for GPUs)::

    python recipes/omniglot/sweep.py --quick --out outputs/omniglot/sweep-quick
    python recipes/omniglot/sweep.py --methods leap reptile --alphabets 1 5 25 --seeds 0 1 2 --out outputs/sweep
    python recipes/omniglot/sweep.py --quick --out outputs/omniglot/sweep-quick --report-only   # table + figure

Extra arguments after ``--`` go to every run, e.g. ``-- --data.family=omniglot --data.root=/data``.
"""

from __future__ import annotations

import argparse
import csv
import time
from collections import defaultdict
from pathlib import Path
from statistics import mean, stdev

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lightning_meta import MetaEvaluation, MetaInit  # noqa: E402
from lightning_meta.cli import main as lightning_meta  # noqa: E402

HERE = Path(__file__).parent
METHODS = ("scratch", "finetune", "fomaml", "maml", "reptile", "leap")
EPISODIC = ("fomaml", "maml")  # one training step is one meta-step
FIELDS = ("method", "alphabets", "seed", "train_error_auc", "train_loss_auc", "final_train_loss", "test_accuracy",
          "meta_steps", "seconds")
QUICK = [  # 2 CPU cores: a narrower net, 10 inner steps, meta-batch 5, 20 meta-steps, no augmentation
    "--model.init_args.channels=32", "--data.inner_steps=10", "--data.meta_batch_size=5", "--trainer.max_steps=1000",
    "--data.augment=false",
]
QUICK_EPISODIC = ["--trainer.max_steps=20", "--trainer.limit_val_batches=0"]  # the same 20 meta-steps


def run_cell(method: str, alphabets: int, seed: int, out: Path, extra: list[str], quick: bool) -> dict[str, object]:
    """One ``lightning-meta fit`` run; returns its CSV row."""
    folder = out / "runs" / f"{method}-{alphabets}-{seed}"
    args = [
        "fit", "--config", str(HERE / f"{method}.yaml"), f"--seed_everything={seed}",
        f"--data.family.init_args.num_train={alphabets}", f"--data.seed={seed}",
        f"--trainer.default_root_dir={folder}", f"--trainer.logger.init_args.save_dir={folder}",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        *([f"--model.init_args.num_heads={alphabets}"] if method == "finetune" else []),
        *(QUICK if quick else []),
        *(QUICK_EPISODIC if quick and method in EPISODIC else []),
        *extra,
    ]
    start = time.perf_counter()
    cli = lightning_meta(args)
    evaluation = next(c for c in cli.trainer.callbacks if isinstance(c, MetaEvaluation))  # type: ignore[attr-defined]
    meta = next((c for c in cli.trainer.callbacks if isinstance(c, MetaInit)), None)  # type: ignore[attr-defined]
    summary = evaluation.history[-1][1].summary()
    meta_steps = meta.meta_steps if meta else cli.trainer.global_step if method in EPISODIC else 0
    return {"method": method, "alphabets": alphabets, "seed": seed, **summary,
            "meta_steps": meta_steps, "seconds": round(time.perf_counter() - start, 1)}


def read_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(path))) if path.exists() else []


def report(rows: list[dict[str, str]], out: Path) -> str:
    """Markdown table (mean +- std over seeds) and the figure of training-error AUC against alphabets."""
    cells: dict[tuple[str, int], list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        cells[row["method"], int(row["alphabets"])].append(row)

    def stat(group: list[dict[str, str]], key: str, scale: float = 1.0) -> tuple[float, float]:
        values = [float(r[key]) * scale for r in group]
        return mean(values), stdev(values) if len(values) > 1 else 0.0

    lines = ["| method | alphabets | seeds | held-out training-error AUC | held-out accuracy (%) |", "|---|---:|---:|---:|---:|"]
    figure, axis = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for method in METHODS:
        counts = sorted(n for m, n in cells if m == method)
        if not counts:
            continue
        aucs = [stat(cells[method, n], "train_error_auc") for n in counts]
        for n, (auc, auc_std) in zip(counts, aucs):
            accuracy, accuracy_std = stat(cells[method, n], "test_accuracy", 100.0)
            lines.append(f"| {method} | {n} | {len(cells[method, n])} | {auc:.3f} +- {auc_std:.3f} | "
                         f"{accuracy:.1f} +- {accuracy_std:.1f} |")
        axis.errorbar(counts, [a for a, _ in aucs], yerr=[s for _, s in aucs], marker="o", capsize=3, label=method)
    axis.set_xlabel("meta-training alphabets")
    axis.set_ylabel("held-out training-error AUC (lower is faster)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.savefig(out / "auc_vs_alphabets.png", dpi=120)
    plt.close(figure)
    return "\n".join(lines)


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--alphabets", nargs="+", type=int, default=None,
                        help="numbers of meta-training alphabets (default 1 3 5 10 15 20 25; --quick: 1 5 25)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--quick", action="store_true", help="sizes for 2 CPU cores (about 15 minutes)")
    parser.add_argument("--out", type=Path, default=Path("outputs/omniglot/sweep"))
    parser.add_argument("--report-only", action="store_true", help="only print the table and draw the figure")
    args, extra = parser.parse_known_args()
    if extra and extra[0] == "--":
        extra = extra[1:]
    if args.alphabets is None:
        args.alphabets = [1, 5, 25] if args.quick else [1, 3, 5, 10, 15, 20, 25]
    return args, extra


def main() -> None:
    args, extra = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.csv"
    done = {(r["method"], int(r["alphabets"]), int(r["seed"])) for r in read_rows(results)}
    cells = [(m, n, s) for m in args.methods for n in args.alphabets for s in args.seeds]
    todo = [] if args.report_only else [cell for cell in cells if cell not in done]
    print(f"sweep: {len(cells)} cells, {len(cells) - len(todo)} already in {results}, {len(todo)} to run")
    for index, (method, alphabets, seed) in enumerate(todo, 1):
        row = run_cell(method, alphabets, seed, args.out, extra, args.quick)
        new_file = not results.exists()
        with open(results, "a", newline="") as handle:
            writer = csv.DictWriter(handle, FIELDS)
            if new_file:
                writer.writeheader()
            writer.writerow(row)
        print(f"[{index}/{len(todo)}] {method} alphabets={alphabets} seed={seed}: "
              f"error AUC {row['train_error_auc']:.3f}, accuracy {row['test_accuracy']:.3f}, {row['seconds']} s")
    print(report(read_rows(results), args.out))
    print(f"figure: {args.out / 'auc_vs_alphabets.png'}")


if __name__ == "__main__":
    main()
