"""Where does Leap win? Scaling curves of the fair Omniglot comparison, one axis at a time from the quick size.

Every point of an axis differs from the quick size of ``sweep.py --quick`` (``BASE``: 20 meta-steps of meta-batch 5,
10 inner steps, a 32-channel net, no augmentation, 25 meta-training alphabets) in one setting, and is a fair sweep of
its own (``lightning_meta.tooling.sweep``): every method tuned on the 5 validation alphabets at that point (so the tuned rate
may move along an axis), the chosen setting trained again with a fresh seed and scored once on the 10 test alphabets,
3 seeds, 95 % t-intervals. Held-out alphabets train as many steps as meta-training's tasks. Each row also holds the
mean length of the held-out tasks' training paths in the joint (theta, loss) space, the quantity Leap minimises
(``lightning_meta.metrics.path_length``; theta: all the network's parameters).

The axes (``--axis``)::

    meta-steps     20, 50, 100, 200   one tuning run per setting and seed to 100 meta-steps, scored on the validation
                                      alphabets at 20, 50 and 100 on the way; the test run of the setting chosen at
                                      100 goes on to 200 (that point uses the rate tuned at 100), 20 and 50 have
                                      test runs of their own
    inner-steps    10, 25, 50, 100    inner steps of meta-training tasks and held-out alphabets alike
    width          32, 64             channels of the conv net
    augmentation   off, on            on: the authors' full-rotation RandomAffine on meta-training images
    alphabets      1, 5, 25           meta-training alphabets, at the point ``--at`` (default: the quick size)

All axes write into one ``results.csv`` in ``--out`` (resumable; a point shared by two axes, such as the quick
size, runs once); ``--report`` prints every axis's tables from it and draws ``scaling_<axis>.png``::

    OMP_NUM_THREADS=1 python recipes/omniglot/scaling.py --axis inner-steps --out outputs/omniglot/scaling
    python recipes/omniglot/scaling.py --axis alphabets --at inner_steps=25 --out outputs/omniglot/scaling
    python recipes/omniglot/scaling.py --report --out outputs/omniglot/scaling

Extra arguments after ``--`` go to every run, e.g. ``-- --data.family=omniglot --data.root=/data``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lightning_meta import MetaEvaluation, MetaInit  # noqa: E402
from lightning_meta.callbacks.meta_evaluation import HeldOutCurves  # noqa: E402
from lightning_meta.cli import main as lightning_meta  # noqa: E402
from lightning_meta.intervals import mean_interval  # noqa: E402
from lightning_meta.tooling.sweep import Cell, Row, Sweep, chosen_counts, fit_arguments, format_interval, grid  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from sweep import EPISODIC, METRICS, QUICK_GRIDS  # noqa: E402  (recipes/omniglot/sweep.py)

HERE = Path(__file__).parent
SCALING_METRICS = (*METRICS, "path_length")
GRIDS = {  # the quick grids, but Leap's 1.0 (validation AUC 0.88 to 0.95 at the quick size) gives way to 0.03
    **QUICK_GRIDS,
    "leap": grid(**{"Leap.meta_lr": [0.03, 0.1, 0.3]}),
}
MAIN_METHODS = ("scratch", "finetune", "reptile", "leap")
META_BATCH = 5


@dataclass(frozen=True)
class Point:
    """One size of the experiment; its ``group`` (the sweep's group) names the settings that differ from ``BASE``."""

    meta_steps: int = 20
    inner_steps: int = 10
    channels: int = 32
    augment: bool = False
    alphabets: int = 25

    @property
    def group(self) -> str:
        changed = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                   if getattr(self, f.name) != getattr(BASE, f.name)]
        return " ".join(changed) or "base"

    @classmethod
    def parse(cls, group: str) -> Point:
        """The point of a group: ``"base"`` or ``"name=value ..."``."""
        if group == "base":
            return BASE
        values: dict[str, Any] = {}
        for pair in group.split():
            name, _, value = pair.partition("=")
            if name not in {f.name for f in dataclasses.fields(cls)}:
                raise ValueError(f"group {group!r}: {name!r} is not one of {[f.name for f in dataclasses.fields(cls)]}")
            values[name] = value == "True" if name == "augment" else int(value)
        return dataclasses.replace(BASE, **values)

    def with_(self, **changes: Any) -> Point:
        return dataclasses.replace(self, **changes)


BASE = Point()
META_STEPS = (20, 50, 100, 200)
TUNED_UP_TO = 100  # the meta-steps axis tunes at 20, 50 and 100; beyond, the rate tuned at 100 is used
AXES: dict[str, tuple[str, tuple[Any, ...]]] = {  # axis: (the Point field it varies, its values)
    "meta-steps": ("meta_steps", META_STEPS),
    "inner-steps": ("inner_steps", (10, 25, 50, 100)),
    "width": ("channels", (32, 64)),
    "augmentation": ("augment", (False, True)),
    "alphabets": ("alphabets", (1, 5, 25)),
}


def scored_points(cell: Cell) -> list[Point]:
    """The points a cell's run is scored at, in order; it trains up to the last. A run is scored at its own point,
    except on the meta-steps axis: a tuning run to ``TUNED_UP_TO`` meta-steps is scored on the validation alphabets
    at every tuned point on the way but the quick size (which has runs of its own, shared with the other axes), and
    the test run chosen at ``TUNED_UP_TO`` goes on to the axis's end."""
    point = Point.parse(cell.group)
    if point.group != BASE.with_(meta_steps=TUNED_UP_TO).group:
        return [point]
    on_the_way = [m for m in META_STEPS if BASE.meta_steps < m <= TUNED_UP_TO]
    beyond = [m for m in META_STEPS if m >= TUNED_UP_TO]
    return [point.with_(meta_steps=m) for m in (on_the_way if cell.stage == "tune" else beyond)]


def point_arguments(method: str, point: Point) -> list[str]:
    """The run's sizes: ``point`` on top of the method's config."""
    arguments = [
        f"--model.init_args.channels={point.channels}", f"--data.inner_steps={point.inner_steps}",
        f"--data.meta_batch_size={META_BATCH}", f"--data.augment={str(point.augment).lower()}",
        f"--data.family.init_args.num_train={point.alphabets}",
        f"--data.max_meta_steps={point.meta_steps}",
    ]
    if method == "finetune":
        arguments.append(f"--model.init_args.num_heads={point.alphabets}")
    if method in EPISODIC:
        arguments.append("--trainer.limit_val_batches=0")
    return arguments


class EvaluateAt(L.Callback):
    """Scores theta_0 with ``evaluation`` when training reaches the global step of each of ``points`` (after that
    step's meta-update: place it after the meta-learning callback)."""

    def __init__(self, evaluation: MetaEvaluation, points: dict[int, Point]) -> None:
        self.evaluation = evaluation
        self.points = points
        self.curves: dict[Point, HeldOutCurves] = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        point = self.points.get(trainer.global_step)
        if point is None or point in self.curves:
            return
        meta = next((c for c in trainer.callbacks if isinstance(c, MetaInit)), None)  # type: ignore[attr-defined]
        if meta is not None and meta.meta_steps != point.meta_steps:
            raise RuntimeError(f"at step {trainer.global_step} the meta-learner has taken {meta.meta_steps} "
                               f"meta-steps, not the {point.meta_steps} of {point.group}")
        self.curves[point] = self.evaluation.evaluate(trainer, pl_module)


def run_cell(cell: Cell, folder: Path, extra: list[str]) -> list[dict[str, object]]:
    """One ``lightning-meta fit`` run; one row per scored point (means over the scored alphabets), each naming its
    point as its group."""
    points = scored_points(cell)
    arguments = fit_arguments([HERE / f"{cell.method}.yaml"], cell, folder)[1:]  # without "fit": run=False
    cli = lightning_meta([*arguments, *point_arguments(cell.method, points[-1]), *extra], run=False)
    trainer = cli.trainer
    evaluation = next(c for c in trainer.callbacks if isinstance(c, MetaEvaluation))  # type: ignore[attr-defined]
    at = EvaluateAt(evaluation, {cli.datamodule.optimizer_steps(p.meta_steps): p for p in points})
    trainer.callbacks.append(at)  # type: ignore[attr-defined]
    trainer.fit(cli.model, datamodule=cli.datamodule)
    if cell.method == "scratch":  # nothing trains: fit's end scored the random init
        at.curves[points[0]] = evaluation.history[-1][1]
    missing = [p.group for p in points if p not in at.curves]
    if missing:
        raise RuntimeError(f"{cell.key}: no evaluation at {missing}")
    rows = []
    for point in points:
        summary = at.curves[point].summary()
        meta_steps = 0 if cell.method == "scratch" else point.meta_steps
        rows.append({"group": point.group, **{k: summary[k] for k in SCALING_METRICS if k != "meta_steps"},
                     "meta_steps": meta_steps})
    return rows


def plan_of(axis: str, at: Point, methods: list[str], values: list[Any] | None = None) -> list[dict[str, list[str]]]:
    """The sweeps an axis runs, in order, ``{method: groups}``: one point after the other (each tuned and tested
    before the next starts), ``values`` (default: all of the axis's). No pre-training depends only on how held-out
    alphabets train (inner steps, width): it runs at the points that differ in those."""
    name, every = AXES[axis]
    trained = [m for m in methods if m != "scratch"]
    scratch = ["scratch"] if "scratch" in methods else []
    if axis == "meta-steps":
        tuned = [BASE.with_(meta_steps=m).group for m in META_STEPS if m < TUNED_UP_TO]
        plans = [{m: [BASE.with_(meta_steps=TUNED_UP_TO).group] for m in trained}, {m: tuned for m in trained}]
        return [*plans, *({m: [BASE.group]} for m in scratch)]
    points = [at.with_(**{name: value}) for value in (every if values is None else values)]
    return [{**{m: [point.group] for m in trained}, **{m: [scratch_point(point).group] for m in scratch}}
            for point in points]


def scratch_point(point: Point) -> Point:
    """The point whose no-pre-training run stands for ``point``'s: the same held-out training."""
    return BASE.with_(inner_steps=point.inner_steps, channels=point.channels)


# ----------------------------------------------------------------------------------------------- report
COLUMNS = (  # header, metric, scale, digits
    ("held-out training-error AUC", "train_error_auc", 1.0, 3),
    ("final training error (%)", "final_train_error", 100.0, 1),
    ("path length", "path_length", 1.0, 2),
    ("held-out accuracy, batch statistics (%)", "test_accuracy_batch_statistics", 100.0, 1),
)


def axis_report(axis: str, rows: list[Row], at: Point, out: Path) -> str:
    """Markdown: the test runs of every method at every point of the axis (mean ± 95 % t-interval over seeds),
    the settings chosen, the tuning stage, CPU seconds; and ``scaling_<axis>.png``."""
    name, _ = AXES[axis]
    points = [at.with_(**{name: value}) for value in AXES[axis][1]]
    tests: dict[tuple[str, str], list[Row]] = defaultdict(list)
    tuning: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for row in rows:
        if row["stage"] == "test":
            tests[row["method"], row["group"]].append(row)
        else:
            tuning[row["method"], row["group"], row["setting"]].append(float(row["train_error_auc"]))
    methods = [m for m in (*MAIN_METHODS, "fomaml", "maml") if any(key[0] == m for key in tests)]
    headers = " | ".join(c[0] for c in COLUMNS)
    lines = [f"| method | {name} | seeds | chosen setting (seeds) | {headers} | CPU s per run |",
             f"|---|---:|---:|---|{'---:|' * (len(COLUMNS) + 1)}"]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
    for method in methods:
        found = []
        for point in points:
            group = scratch_point(point).group if method == "scratch" else point.group
            cell_rows = tests.get((method, group), [])
            if not cell_rows:
                continue
            found.append((point, cell_rows))
            values = [format_interval([float(r[key]) for r in cell_rows], scale, digits)
                      for _, key, scale, digits in COLUMNS]
            cpu = sum(float(r["cpu_seconds"]) for r in cell_rows) / len(cell_rows)
            lines.append(f"| {method} | {getattr(point, name)} | {len(cell_rows)} | {chosen_counts(cell_rows)} | "
                         f"{' | '.join(values)} | {cpu:.0f} |")
        for panel, (title, key, scale, _) in zip(axes, [COLUMNS[0], COLUMNS[1], COLUMNS[2]]):
            if not found:
                continue
            xs = [float(getattr(p, name)) for p, _ in found]
            intervals = [mean_interval([float(r[key]) * scale for r in cell_rows]) for _, cell_rows in found]
            panel.errorbar(xs, [m for m, _ in intervals], yerr=[h for _, h in intervals], marker="o", capsize=3,
                           label=method, linestyle="--" if method == "scratch" else "-")
            panel.set_title(title, fontsize=9)
    for panel in axes:
        panel.set_xlabel(name.replace("_", " "))
        if name in ("meta_steps", "inner_steps", "alphabets"):
            panel.set_xscale("log")
        panel.grid(alpha=0.3)
    if methods:
        axes[0].legend(fontsize=8)
    figure.suptitle(f"scaling along {axis} (test alphabets; bars: 95 % t-interval over seeds)", fontsize=10)
    figure.savefig(out / f"scaling_{axis}.png", dpi=110)
    plt.close(figure)
    lines += ["", f"Leap minus Reptile, paired by seed (the same split of alphabets; below 0: Leap lower), {axis}:",
              "", f"| {name} | seeds | training-error AUC | final training error (%) | path length |",
              "|---:|---:|---:|---:|---:|"]
    for point in points:
        by_seed = {m: {r["seed"]: r for r in tests.get((m, point.group), [])} for m in ("leap", "reptile")}
        seeds = sorted(set(by_seed["leap"]) & set(by_seed["reptile"]))
        if seeds:
            differences = [format_interval([float(by_seed["leap"][s][key]) - float(by_seed["reptile"][s][key])
                                            for s in seeds], scale, digits) for _, key, scale, digits in COLUMNS[:3]]
            lines.append(f"| {getattr(point, name)} | {len(seeds)} | {' | '.join(differences)} |")
    lines += ["", f"Tuning stage, {axis} (validation alphabets; mean ± 95 % t-interval over seeds):", "",
              f"| method | {name} | setting | validation training-error AUC |", "|---|---:|---|---:|"]
    for method in methods:
        for point in points:
            for (m, group, setting), values in tuning.items():
                if m == method and group == point.group:
                    lines.append(f"| {method} | {getattr(point, name)} | {setting} | {format_interval(values)} |")
    return "\n".join(lines)


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--axis", choices=list(AXES), help="the axis to run")
    parser.add_argument("--values", nargs="+", default=None, help="run only these points of the axis, e.g. 25 50")
    parser.add_argument("--at", default="base", help="the point the alphabets axis is taken at, e.g. inner_steps=25")
    parser.add_argument("--methods", nargs="+", choices=list(GRIDS), default=list(MAIN_METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="cells run at once, in worker processes")
    parser.add_argument("--out", type=Path, default=Path("outputs/omniglot/scaling"))
    parser.add_argument("--report", action="store_true", help="only print the tables and draw the figures")
    args, extra = parser.parse_known_args()
    if extra and extra[0] == "--":
        extra = extra[1:]
    if not args.report and args.axis is None:
        parser.error("name an --axis to run, or --report")
    return args, extra


def main() -> None:
    args, extra = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sweep = Sweep(args.out, partial(run_cell, extra=extra), GRIDS, SCALING_METRICS, "point")
    at = Point.parse(args.at)
    if not args.report:
        name = AXES[args.axis][0]
        values = None if args.values is None else [getattr(Point.parse(f"{name}={v}"), name) for v in args.values]
        for plan in plan_of(args.axis, at, args.methods, values):
            sweep.run(plan, args.seeds, args.jobs)
    rows = sweep.results.rows()
    for axis in [args.axis] if args.axis else list(AXES):
        print(f"\n## {axis}\n\n{axis_report(axis, rows, at, args.out)}")


if __name__ == "__main__":
    main()
