"""Where the held-out training paths of the scaling curves are long: their loss dimension, read from the test runs.

For each test run of ``scaling.py`` at the given points (``--groups``), the held-out curves its ``MetaEvaluation``
kept in the run's ``final.ckpt`` (Leap, Reptile; no pre-training is rebuilt from its seed, since it trains nothing
and writes no checkpoint): per method, mean ± 95 % t-interval over seeds of the loss of the first held-out batch at
theta_0, of the last step's loss, of the loss dimension's part of the path (``sum_i |f_{i+1} - f_i|`` over the
recorded steps, all but the last segment) and of the whole path length. A path whose length is mostly loss is long
because training *learns* a lot, which the AUC rewards and Leap's objective penalises::

    python recipes/omniglot/path_parts.py --out outputs/omniglot/scaling --groups base inner_steps=25
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch
from scaling import BASE, HERE, TUNED_UP_TO, Point, point_arguments

from lightning_meta.callbacks.meta_evaluation import HeldOutCurves, adapt
from lightning_meta.cli import main as lightning_meta
from lightning_meta.tooling.sweep import Cell, fit_arguments, format_interval

EVALUATION = "MetaEvaluation{'split': 'test'}"
METHODS = ("scratch", "reptile", "leap")


def saved_curves(folder: Path, meta_steps: int) -> HeldOutCurves:
    """The test curves a run's ``MetaEvaluation`` recorded at ``meta_steps``, from its ``final.ckpt``."""
    (checkpoint,) = folder.glob("lightning_logs/version_*/checkpoints/final.ckpt")
    history = torch.load(checkpoint, map_location="cpu", weights_only=False)["callbacks"][EVALUATION]["history"]
    return HeldOutCurves(**next(curves for step, curves in history if step == meta_steps))


def scratch_curves(cell: Cell, folder: Path, extra: list[str]) -> HeldOutCurves:
    """No pre-training's test curves again: the random init its seed draws, trained as its run trained it."""
    point = Point.parse(cell.group)
    arguments = fit_arguments([HERE / "scratch.yaml"], cell, folder)[1:]
    cli = lightning_meta([*arguments, *point_arguments("scratch", point), *extra], run=False)
    data = cli.datamodule
    data.prepare_data()
    data.setup("fit")
    state = {k: v.clone() for k, v in cli.model.state_dict().items()}
    return adapt(cli.model, state, data.tasks("test"), point.inner_steps, data.batch_size, seed=cell.run_seed)


def parts(curves: HeldOutCurves) -> dict[str, float]:
    loss = curves.loss
    return {"first loss": float(loss[:, 0].mean()), "last step's loss": float(loss[:, -1].mean()),
            "loss part of the path": float(loss.diff(dim=-1).abs().sum(-1).mean()),
            "path length": float(curves.path_length.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/omniglot/scaling"))
    parser.add_argument("--groups", nargs="+", default=["base"])
    args, extra = parser.parse_known_args()
    rows = list(csv.DictReader(open(args.out / "results.csv")))
    table: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    for row in rows:
        if row["stage"] != "test" or row["group"] not in args.groups or row["method"] not in METHODS:
            continue
        setting = tuple((name, float(value)) for name, value in
                        (pair.split("=") for pair in row["setting"].split() if row["setting"] != "-"))
        cell = Cell("test", row["method"], row["group"], int(row["seed"]), setting)
        point = Point.parse(row["group"])
        if row["method"] == "scratch":
            curves = scratch_curves(cell, args.out / "path_parts" / cell.name, extra)
        else:  # a test run beyond the tuned meta-steps is the run of the last tuned point, gone on
            folder = args.out / "runs" / cell.name
            if not folder.exists():
                folder = args.out / "runs" / replace(cell, group=BASE.with_(meta_steps=TUNED_UP_TO).group).name
            curves = saved_curves(folder, point.meta_steps)
        torch.testing.assert_close(float(curves.path_length.mean()), float(row["path_length"]))  # the run's own
        table[row["method"], row["group"]].append(parts(curves))
    names = list(next(iter(table.values()))[0])
    print(f"| method | point | {' | '.join(names)} |\n|---|---|{'---:|' * len(names)}")
    for (method, group), values in sorted(table.items(), key=lambda item: (item[0][1], item[0][0])):
        cells = [format_interval([v[name] for v in values], digits=2) for name in names]
        print(f"| {method} | {group} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
