"""The sweep machinery: Student's t quantile and intervals against known values, the tuning choice, the resumable CSV,
cells in worker processes, and the seeds a cell's arguments plumb into the run."""

import math
import os
from pathlib import Path

import pytest

from lightning_meta import MetaEvaluation
from lightning_meta.cli import main
from lightning_meta.engine import MetaTrainingDiverged
from lightning_meta.intervals import mean_interval, t_quantile
from lightning_meta.tooling.sweep import Cell, ResultsFile, Sweep, chosen_setting, fit_arguments, grid

RECIPES = Path(__file__).parents[1] / "recipes"

# Student's t quantiles from printed tables (e.g. NIST/SEMATECH e-Handbook, Table 1.3.6.7.2), to 3 decimals
TABLE = {(0.975, 1): 12.706, (0.975, 2): 4.303, (0.975, 3): 3.182, (0.975, 4): 2.776, (0.975, 5): 2.571,
         (0.975, 10): 2.228, (0.975, 30): 2.042, (0.975, 100): 1.984, (0.95, 2): 2.920, (0.995, 4): 4.604}


@pytest.mark.parametrize(("p", "df"), sorted(TABLE))
def test_t_quantile_matches_printed_tables(p, df):
    assert round(t_quantile(p, df), 3) == TABLE[p, df]


@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995, 0.9995])
def test_t_quantile_matches_the_closed_forms_for_one_and_two_degrees_of_freedom(p):
    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)  # Cauchy
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
    assert t_quantile(1 - p, 3) == pytest.approx(-t_quantile(p, 3), rel=1e-12)  # symmetric


def test_mean_interval_is_the_t_interval_worked_by_hand():
    mean, half = mean_interval([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and half == pytest.approx(3.182446 * math.sqrt(5 / 3) / 2, rel=1e-6)  # s^2 = 5/3, n = 4
    assert math.isnan(mean_interval([0.7])[1])
    with pytest.raises(ValueError, match="0 < p < 1"):
        t_quantile(1.0, 3)


def tuning_row(setting, auc, seed="0", group="5"):
    return {"stage": "tune", "method": "leap", "group": group, "seed": seed, "setting": setting, "auc": auc}


def test_the_tuning_stage_chooses_the_lowest_score_of_the_cell_with_nan_worst_and_ties_to_the_first():
    settings = grid(**{"Leap.meta_lr": [0.1, 0.3, 1.0]})
    cell = Cell("test", "leap", "5", 0)
    rows = [tuning_row("Leap.meta_lr=0.1", "0.6"), tuning_row("Leap.meta_lr=0.3", "0.5"),
            tuning_row("Leap.meta_lr=1", "nan"), tuning_row("Leap.meta_lr=1", "0.1", seed="1"),  # another seed's
            tuning_row("Leap.meta_lr=0.1", "0.1", group="25")]  # another group's
    assert chosen_setting(rows, cell, settings, "auc") == {"Leap.meta_lr": 0.3}
    tied = [tuning_row("Leap.meta_lr=0.1", "0.5"), tuning_row("Leap.meta_lr=0.3", "0.5"), tuning_row("Leap.meta_lr=1", "0.5")]
    assert chosen_setting(tied, cell, settings, "auc") == {"Leap.meta_lr": 0.1}
    with pytest.raises(ValueError, match="no tuning row for leap, 5, seed 0, Leap.meta_lr=1"):
        chosen_setting(rows[:2], cell, settings, "auc")


def test_a_row_cut_short_by_a_kill_is_dropped_and_another_format_is_refused(tmp_path):
    path = tmp_path / "results.csv"
    results = ResultsFile(path, ["stage", "method", "group", "seed", "setting", "auc"])
    results.append([{"stage": "tune", "method": "leap", "group": "5", "seed": 0, "setting": "-", "auc": 0.5}])
    with open(path, "a") as handle:
        handle.write("tune,leap,5,1,-")  # the process died in the middle of this row
    again = ResultsFile(path, results.fields)
    assert again.keys() == {"tune/leap/5/0/-"}
    again.append([{"stage": "tune", "method": "leap", "group": "5", "seed": 1, "setting": "-", "auc": 0.4}])
    assert [row["auc"] for row in again.rows()] == ["0.5", "0.4"]
    with pytest.raises(ValueError, match="use another --out"):
        ResultsFile(path, ["stage", "method", "auc"])


def remember_process(cell, folder):
    """A stand-in run: the worker's process id, and a score that prefers the middle setting."""
    value = dict(cell.setting).get("model.lr", 0.0)
    return [{"auc": abs(value - 0.3), "pid": os.getpid()}]


def test_cells_run_in_worker_processes_with_their_cpu_seconds_and_each_stage_once(tmp_path):
    grids = {"finetune": grid(**{"model.lr": [0.1, 0.3, 1.0]}), "scratch": []}
    sweep = Sweep(tmp_path, remember_process, grids, ["auc", "pid"], score="auc", log=lambda line: None)
    rows = sweep.run({"finetune": ["1", "2"], "scratch": ["any"]}, seeds=[0, 1], jobs=2)
    assert len(rows) == 2 * 2 * 3 + 2 * 2 + 2  # tuning, test, no pre-training
    assert {row["pid"] for row in rows} - {str(os.getpid())}  # not in this process
    assert all(float(row["cpu_seconds"]) >= 0 and float(row["wall_seconds"]) >= 0 for row in rows)
    tests = [row for row in rows if row["stage"] == "test" and row["method"] == "finetune"]
    assert {row["setting"] for row in tests} == {"model.lr=0.3"}
    assert {(row["seed"], row["run_seed"]) for row in tests} == {("0", "1000"), ("1", "1001")}
    assert all(row["grid"] == "model.lr=0.1 | model.lr=0.3 | model.lr=1" for row in tests)
    assert len(sweep.run({"finetune": ["1", "2"], "scratch": ["any"]}, seeds=[0, 1])) == len(rows)  # all done


def diverge_at_high_lr(cell, folder):
    """A stand-in run that the runaway guards stop at ``model.lr=1`` (the lowest made-up score otherwise)."""
    value = dict(cell.setting)["model.lr"]
    if value == 1.0:
        raise MetaTrainingDiverged("meta-training diverged: made up", "meta_lr")
    return [{"auc": value}]


def test_a_diverged_cell_is_a_nan_row_never_chosen_and_the_sweep_goes_on(tmp_path):
    sweep = Sweep(tmp_path, diverge_at_high_lr, {"maml": grid(**{"model.lr": [1.0, 0.3, 0.1]})}, ["auc"],
                  score="auc", log=lambda line: None)
    rows = sweep.run({"maml": ["1"]}, seeds=[0])
    assert [(row["stage"], row["setting"], row["auc"]) for row in rows] == [
        ("tune", "model.lr=1", "nan"), ("tune", "model.lr=0.3", "0.3"), ("tune", "model.lr=0.1", "0.1"),
        ("test", "model.lr=0.1", "0.1"),
    ]


@pytest.mark.parametrize("stage", ["tune", "test"])
def test_the_sweep_seed_drives_the_split_and_the_run_seed_the_init_the_order_and_the_evaluation(tmp_path, stage):
    cell = Cell(stage, "leap", "5", 7, (("Leap.meta_lr", 0.3),))
    arguments = fit_arguments([RECIPES / "omniglot" / "leap.yaml"], cell, tmp_path)
    cli = main(arguments[1:], run=False)  # without the "fit" subcommand
    run_seed = 7 if stage == "tune" else 1007
    assert cli.datamodule.family.seed == 7  # the alphabet split (and the glyphs' drawers)
    assert (cli.config["seed_everything"], cli.datamodule.seed) == (run_seed, run_seed)  # init; order, batches
    (evaluation,) = [c for c in cli.trainer.callbacks if isinstance(c, MetaEvaluation)]
    assert (evaluation.split, evaluation.seed, evaluation.baseline) == ("val" if stage == "tune" else "test", run_seed, False)
    assert next(c for c in cli.trainer.callbacks if type(c).__name__ == "Leap").meta_lr == 0.3


def scored_on_the_way(cell, folder):
    """A stand-in run scored at two sizes on its way: a row for group "1" and one for the cell's own group "2"."""
    value = dict(cell.setting)["model.lr"]
    return [{"group": "1", "auc": abs(value - 0.1)}, {"group": "2", "auc": abs(value - 0.3)}]


def test_a_run_scored_at_several_groups_on_its_way_writes_a_row_for_each_and_runs_once(tmp_path):
    calls = []
    sweep = Sweep(tmp_path, scored_on_the_way, {"leap": grid(**{"model.lr": [0.1, 0.3]})}, ["auc"], score="auc",
                  log=calls.append)
    rows = sweep.run({"leap": ["2"]}, seeds=[0])
    assert [(r["stage"], r["group"], r["setting"]) for r in rows] == [
        ("tune", "1", "model.lr=0.1"), ("tune", "2", "model.lr=0.1"), ("tune", "1", "model.lr=0.3"),
        ("tune", "2", "model.lr=0.3"), ("test", "1", "model.lr=0.3"), ("test", "2", "model.lr=0.3"),  # chosen at 2
    ]
    again = sweep.run({"leap": ["2"]}, seeds=[0])  # resumed: every cell has a row of its own group
    assert len(again) == len(rows) and calls[-2:] == [
        f"sweep, tuning (validation tasks): 2 cells, 2 already in {sweep.results.path}, 0 to run",
        f"sweep, test (test tasks, fresh run seeds): 1 cells, 1 already in {sweep.results.path}, 0 to run"]
    assert chosen_setting(rows, Cell("test", "leap", "1", 0), grid(**{"model.lr": [0.1, 0.3]}), "auc") == {
        "model.lr": 0.1}  # the tuning rows of group "1" choose for that group
