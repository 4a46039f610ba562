"""What the scaling curves cost: wall and CPU seconds of every run of ``scaling.py``, per axis point and method.

Read from the sweep's ``results.csv`` (its ``wall_seconds`` and ``cpu_seconds``: the whole run, in the process that
ran it). A run scored at several points, on the meta-steps axis, has one row per point, each with the whole run's
seconds: it is counted once, under the point it was launched as (``scored_points``: the tuning runs to 100
meta-steps also score 50, the test runs chosen at 100 go on to 200). Per axis, the total counts each run of its
points once, the quick size's included. ``--at``: the point the alphabets axis was taken at, as for ``scaling.py``::

    python recipes/omniglot/scaling_costs.py --out outputs/omniglot/scaling --at meta_steps=50
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections import defaultdict
from pathlib import Path

from scaling import AXES, BASE, TUNED_UP_TO, Point, scored_points

from lightning_meta.tooling.sweep import Cell

Run = tuple[str, str, str, str, str]  # stage, method, group launched as, seed, setting


def launched_as(row: dict[str, str]) -> Run:
    """The run a row comes from: its own point's, or the meta-steps axis's run that scored it on its way."""
    shared = BASE.with_(meta_steps=TUNED_UP_TO).group
    cell = Cell("tune" if row["stage"] == "tune" else "test", row["method"], shared, int(row["seed"]))
    group = shared if row["group"] in {p.group for p in scored_points(cell)} else row["group"]
    return row["stage"], row["method"], group, row["seed"], row["setting"]


def runs(rows: list[dict[str, str]]) -> dict[Run, tuple[float, float]]:
    """Every run once: its wall and CPU seconds."""
    return {launched_as(r): (float(r["wall_seconds"]), float(r["cpu_seconds"])) for r in rows}


def on_axis(group: str, axis: str, at: Point) -> bool:
    """Whether a point lies on ``axis`` taken at ``at``."""
    name, _ = AXES[axis]
    point = Point.parse(group)
    return point == at.with_(**{name: getattr(point, name)})


def spread(values: list[float]) -> str:
    """``median [min, max]``, rounded to seconds."""
    return f"{statistics.median(values):.0f} [{min(values):.0f}, {max(values):.0f}]"


def axis_costs(axis: str, every_run: dict[Run, tuple[float, float]], at: Point = BASE) -> str:
    """Markdown: per point of ``axis`` taken at ``at`` and method, the runs of each stage with their median
    [min, max] wall and CPU seconds; then the axis's total."""
    name, _ = AXES[axis]
    cells: dict[tuple[str, str], dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for (stage, method, group, _, _), seconds in every_run.items():
        if on_axis(group, axis, at):
            cells[getattr(Point.parse(group), name), method][stage].append(seconds)
    lines = [f"| {name} | method | tuning runs | wall s per tuning run | CPU s per tuning run | test runs | "
             "wall s per test run | CPU s per test run |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for value in sorted({value for value, _ in cells}):
        for method in ("scratch", "finetune", "reptile", "leap", "fomaml", "maml"):
            stages = cells.get((value, method))
            if not stages:
                continue
            columns = []
            for stage in ("tune", "test"):
                found = stages.get(stage, [])
                columns += [str(len(found)), *((spread([s[i] for s in found]) if found else "-") for i in (0, 1))]
            lines.append(f"| {value} | {method} | {' | '.join(columns)} |")
    total = [seconds for stages in cells.values() for found in stages.values() for seconds in found]
    lines += ["", f"{axis}: {len(total)} runs, {sum(s[0] for s in total):,.0f} wall seconds, "
              f"{sum(s[1] for s in total):,.0f} CPU seconds in all (each run once, {at.group} included)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/omniglot/scaling"))
    parser.add_argument("--at", default="base", help="the point the alphabets axis was taken at, e.g. meta_steps=50")
    args = parser.parse_args()
    with open(args.out / "results.csv", newline="") as handle:
        every_run = runs(list(csv.DictReader(handle)))
    for axis in AXES:
        at = Point.parse(args.at) if axis == "alphabets" else BASE
        print(f"\n## {axis}{f' at {at.group}' if at != BASE else ''}\n\n{axis_costs(axis, every_run, at)}")


if __name__ == "__main__":
    main()
