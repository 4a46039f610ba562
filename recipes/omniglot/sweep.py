"""The Leap paper's Omniglot sweep, fairly: methods x meta-training alphabets x seeds (its Figure 3, right).

Every cell is one ``lightning-meta fit`` run of ``recipes/omniglot/<method>.yaml`` with ``num_train`` meta-training
alphabets, in two stages (``lightning_meta.tooling.sweep``):

1. tuning: for each method, number of alphabets and seed, every setting of the method's grid (the meta learning
   rate; fine-tuning: its pre-training rate; MAML: meta and inner rates, jointly) is trained and scored on the 5
   **validation** alphabets by the held-out training-error AUC;
2. test: the chosen setting is trained again with a fresh run seed and scored on the 10 **test** alphabets, once.

Every method gets the same meta-steps, inner steps and held-out steps. The sweep seed drives the alphabet split
(and, for the embedded glyphs, the drawers' jitter), the init, the task order and the evaluation batches. One CSV
row per cell (``results.csv``, resumable: cells already there are skipped); the table gives mean ± 95 %
t-interval over seeds of the test runs, the figure held-out training-error AUC against the number of alphabets.

Run it (``--quick``: sizes for 2 CPU cores, 3 values per grid axis; without it, the authors' sizes and the full
grids, a GPU job)::

    OMP_NUM_THREADS=1 python recipes/omniglot/sweep.py --quick --jobs 2 --out outputs/omniglot/sweep-quick
    python recipes/omniglot/sweep.py --methods leap reptile --alphabets 1 5 25 --seeds 0 1 2 --out outputs/sweep
    python recipes/omniglot/sweep.py --quick --out outputs/omniglot/sweep-quick --report-only   # table + figure

Extra arguments after ``--`` go to every run, e.g. ``-- --data.family=omniglot --data.root=/data``.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lightning_meta import MetaEvaluation, MetaInit  # noqa: E402
from lightning_meta.cli import main as lightning_meta  # noqa: E402
from lightning_meta.cli_errors import run_reporting_errors  # noqa: E402
from lightning_meta.intervals import mean_interval  # noqa: E402
from lightning_meta.tooling.sweep import (  # noqa: E402
    Cell,
    Row,
    Sweep,
    chosen_counts,
    fit_arguments,
    format_interval,
    grid,
    number,
    tuning_table,
)

HERE = Path(__file__).parent
METHODS = ("scratch", "finetune", "fomaml", "maml", "reptile", "leap")
EPISODIC = ("fomaml", "maml")  # one training step is one meta-step
METRICS = ("train_error_auc", "train_loss_auc", "final_train_loss", "final_train_error",
           "test_accuracy_batch_statistics", "test_accuracy_running_statistics", "meta_steps")
META_LRS = [0.03, 0.1, 0.3, 0.5, 1.0]  # contains the authors' 0.1 (Leap, Reptile) and 0.5 (MAML, FOMAML)
GRIDS = {  # the full grids (GPU)
    "scratch": [],
    "finetune": grid(**{"model.pretrain_lr": [0.01, 0.03, 0.1, 0.3]}),
    "fomaml": grid(**{"model.lr": META_LRS}),
    "maml": grid(**{"model.lr": META_LRS, "model.inner_lr": [0.03, 0.1, 0.3]}),
    "reptile": grid(**{"Reptile.meta_lr": META_LRS}),
    "leap": grid(**{"Leap.meta_lr": META_LRS}),
}
QUICK_GRIDS = {  # 3 values per axis
    "scratch": [],
    "finetune": grid(**{"model.pretrain_lr": [0.03, 0.1, 0.3]}),
    "fomaml": grid(**{"model.lr": [0.1, 0.3, 1.0]}),
    "maml": grid(**{"model.lr": [0.1, 0.3, 1.0], "model.inner_lr": [0.1, 0.3]}),
    "reptile": grid(**{"Reptile.meta_lr": [0.1, 0.3, 1.0]}),
    "leap": grid(**{"Leap.meta_lr": [0.1, 0.3, 1.0]}),
}
QUICK = [  # 2 CPU cores: a narrower net, 10 inner steps, meta-batch 5, 20 meta-steps, no augmentation
    "--model.init_args.channels=32", "--data.inner_steps=10", "--data.meta_batch_size=5", "--data.max_meta_steps=20",
    "--data.augment=false",
]
QUICK_EPISODIC = ["--trainer.limit_val_batches=0"]
ANY = "any"  # the group of no pre-training: it does not depend on the meta-training alphabets
COLUMNS = (  # header, metric, scale, digits
    ("held-out training-error AUC", "train_error_auc", 1.0, 3),
    ("final training error (%)", "final_train_error", 100.0, 1),
    ("held-out accuracy, batch statistics (%)", "test_accuracy_batch_statistics", 100.0, 1),
    ("held-out accuracy, running statistics (%)", "test_accuracy_running_statistics", 100.0, 1),
)


def run_cell(cell: Cell, folder: Path, extra: list[str], quick: bool) -> list[dict[str, object]]:
    """One ``lightning-meta fit`` run; returns its CSV row (means over the scored alphabets)."""
    args = [
        *fit_arguments([HERE / f"{cell.method}.yaml"], cell, folder),
        *([] if cell.group == ANY else [f"--data.family.init_args.num_train={cell.group}"]),
        *([f"--model.init_args.num_heads={cell.group}"] if cell.method == "finetune" else []),
        *(QUICK if quick else []),
        *(QUICK_EPISODIC if quick and cell.method in EPISODIC else []),
        *extra,
    ]
    cli = lightning_meta(args)
    callbacks = cli.trainer.callbacks  # type: ignore[attr-defined]
    evaluation = next(c for c in callbacks if isinstance(c, MetaEvaluation))
    meta = next((c for c in callbacks if isinstance(c, MetaInit)), None)
    summary = evaluation.history[-1][1].summary()
    meta_steps = meta.meta_steps if meta else cli.trainer.global_step if cell.method in EPISODIC else 0
    return [{**{key: summary[key] for key in METRICS[:-1]}, "meta_steps": meta_steps}]


def report(rows: list[Row], out: Path) -> str:
    """Markdown tables of the test runs (mean ± 95 % t-interval over seeds) and of the tuning stage, and the figure
    of held-out training-error AUC against the number of meta-training alphabets (bars: the 95 % intervals)."""
    cells: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for row in rows:
        if row["stage"] == "test":
            cells[row["method"], row["group"]].append(row)
    lines = [f"| method | alphabets | seeds | chosen setting (seeds) | {' | '.join(c[0] for c in COLUMNS)} |",
             f"|---|---:|---:|---|{'---:|' * len(COLUMNS)}"]
    figure, axis = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for method in METHODS:
        groups = sorted((g for m, g in cells if m == method), key=lambda g: -1 if g == ANY else int(g))
        for group in groups:
            group_rows = cells[method, group]
            values = [format_interval([number(r, key) for r in group_rows], scale, digits)
                      for _, key, scale, digits in COLUMNS]
            lines.append(f"| {method} | {group} | {len(group_rows)} | {chosen_counts(group_rows)} | "
                         f"{' | '.join(values)} |")
        intervals = [mean_interval([number(r, "train_error_auc") for r in cells[method, g]]) for g in groups]
        if groups == [ANY]:  # no pre-training: the same at every number of alphabets
            (mean, half), = intervals
            axis.axhline(mean, color="grey", linestyle="--", label=method)
            axis.axhspan(mean - half, mean + half, color="grey", alpha=0.15)
        elif groups:
            axis.errorbar([int(g) for g in groups], [m for m, _ in intervals], yerr=[h for _, h in intervals],
                          marker="o", capsize=3, label=method)
    axis.set_xlabel("meta-training alphabets")
    axis.set_ylabel("held-out training-error AUC (lower is faster)")
    axis.set_title("test alphabets; bars: 95 % t-interval over seeds", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.savefig(out / "auc_vs_alphabets.png", dpi=120)
    plt.close(figure)
    tuning = tuning_table(rows, "train_error_auc", "alphabets")
    return "\n".join(lines) + "\n\nTuning stage (validation alphabets):\n\n" + tuning


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--alphabets", nargs="+", type=int, default=None,
                        help="numbers of meta-training alphabets (default 1 3 5 10 15 20 25; --quick: 1 5 25)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="sizes for 2 CPU cores, 3 values per grid axis")
    parser.add_argument("--jobs", type=int, default=1, help="cells run at once, in worker processes")
    parser.add_argument("--out", type=Path, default=Path("outputs/omniglot/sweep"))
    parser.add_argument("--report-only", action="store_true", help="only print the tables and draw the figure")
    args, extra = parser.parse_known_args()
    if extra and extra[0] == "--":
        extra = extra[1:]
    if args.alphabets is None:
        args.alphabets = [1, 5, 25] if args.quick else [1, 3, 5, 10, 15, 20, 25]
    return args, extra


def main() -> None:
    args, extra = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    grids = QUICK_GRIDS if args.quick else GRIDS
    sweep = Sweep(args.out, partial(run_cell, extra=extra, quick=args.quick), grids, METRICS, "alphabets")
    plan = {m: [ANY] if m == "scratch" else [str(n) for n in args.alphabets] for m in args.methods}
    rows = sweep.results.rows() if args.report_only else sweep.run(plan, args.seeds, args.jobs)
    print(report(rows, args.out))
    print(f"figure: {args.out / 'auc_vs_alphabets.png'}")


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, sys.argv))  # a bad value or CSV: one line, status 1; a stop signal: 128 + it
