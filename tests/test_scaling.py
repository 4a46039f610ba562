"""The scaling curves' sweep (recipes/omniglot/scaling.py) at a tiny size: the points a run is scored at, the
meta-steps axis's tuning along one run and its test runs, and the rows it writes."""

import importlib.util
import sys
from pathlib import Path

import pytest

from lightning_meta.tooling.sweep import Sweep, grid

ROOT = Path(__file__).parents[1]
SCRIPTS = ("sweep", "scaling", "path_parts", "scaling_costs")  # the recipe scripts these tests import as modules


def load(path, name):
    """A recipe script as a module (registered, so that scripts importing it get this one)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def scaling(monkeypatch):
    """The script as a module, shrunk: 1, 2, 3 meta-steps of 2 inner steps, an 8-channel net, 2 alphabets."""
    monkeypatch.syspath_prepend(str(ROOT / "recipes" / "omniglot"))
    saved = {name: sys.modules.pop(name, None) for name in SCRIPTS}  # recipes/omniglot's, not another recipe's
    module = load(ROOT / "recipes" / "omniglot" / "scaling.py", "scaling")
    monkeypatch.setattr(module, "BASE", module.Point(meta_steps=1, inner_steps=2, channels=8, alphabets=2))
    monkeypatch.setattr(module, "META_STEPS", (1, 2, 3))
    monkeypatch.setattr(module, "TUNED_UP_TO", 2)
    monkeypatch.setitem(module.AXES, "meta-steps", ("meta_steps", (1, 2, 3)))
    yield module
    for name, original in saved.items():
        sys.modules.pop(name, None)
        if original is not None:
            sys.modules[name] = original


def test_points_name_what_differs_from_the_quick_size(scaling):
    point = scaling.BASE.with_(inner_steps=25, augment=True)
    assert point.group == "inner_steps=25 augment=True" and scaling.Point.parse(point.group) == point
    assert scaling.Point.parse("base") == scaling.BASE
    with pytest.raises(ValueError, match="'width' is not one of"):
        scaling.Point.parse("width=64")
    plans = scaling.plan_of("width", scaling.BASE, ["leap", "scratch"])  # one point after the other
    assert plans == [{"leap": ["channels=32"], "scratch": ["channels=32"]},
                     {"leap": ["channels=64"], "scratch": ["channels=64"]}]
    plans = scaling.plan_of("augmentation", scaling.BASE.with_(inner_steps=3), ["leap", "scratch"], [True])
    assert plans == [{"leap": ["inner_steps=3 augment=True"], "scratch": ["inner_steps=3"]}]  # scratch: no augmentation


@pytest.mark.slow  # lightning-meta runs (in this process)
def test_the_meta_steps_axis_tunes_along_one_run_and_tests_each_point_once(scaling, tmp_path, glyph_root):
    monkeypatch_grids = {"leap": grid(**{"Leap.meta_lr": [0.1, 0.3]}), "finetune": [], "scratch": []}
    extra = [f"--data.family.init_args.root={glyph_root}", "--data.family.init_args.num_test=2"]
    run = scaling.partial(scaling.run_cell, extra=extra)
    sweep = Sweep(tmp_path, run, monkeypatch_grids, scaling.SCALING_METRICS, "point", log=lambda line: None)
    for plan in scaling.plan_of("meta-steps", scaling.BASE, ["leap", "finetune", "scratch"]):
        sweep.run(plan, [0])
    rows = sweep.results.rows()
    tuning = sorted((r["group"], r["setting"], r["meta_steps"]) for r in rows if r["stage"] == "tune")
    assert tuning == [(g, s, m) for g, m in (("base", "1"), ("meta_steps=2", "2"))
                      for s in ("Leap.meta_lr=0.1", "Leap.meta_lr=0.3")]
    folders = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert [f for f in folders if f.startswith("tune-leap")] == [  # the quick size has its own runs
        "tune-leap-base-0-Leap.meta_lr=0.1", "tune-leap-base-0-Leap.meta_lr=0.3",
        "tune-leap-meta_steps=2-0-Leap.meta_lr=0.1", "tune-leap-meta_steps=2-0-Leap.meta_lr=0.3"]
    tests = {(r["method"], r["group"]): r for r in rows if r["stage"] == "test"}
    assert sorted(tests) == [("finetune", "base"), ("finetune", "meta_steps=2"), ("finetune", "meta_steps=3"),
                             ("leap", "base"), ("leap", "meta_steps=2"), ("leap", "meta_steps=3"), ("scratch", "base")]
    for group in ("base", "meta_steps=2"):  # each tuned point's test run uses the setting chosen at that point
        candidates = [r for r in rows if r["stage"] == "tune" and r["group"] == group]
        assert tests["leap", group]["setting"] == min(candidates, key=lambda r: float(r["train_error_auc"]))["setting"]
    assert tests["leap", "meta_steps=3"]["setting"] == tests["leap", "meta_steps=2"]["setting"]  # beyond: tuned at 2
    assert tests["leap", "meta_steps=3"]["cpu_seconds"] == tests["leap", "meta_steps=2"]["cpu_seconds"]  # one run
    assert [tests["finetune", g]["meta_steps"] for g in ("base", "meta_steps=2", "meta_steps=3")] == ["1", "2", "3"]
    assert all(float(r["path_length"]) > 0 for r in rows)
    assert tests["scratch", "base"]["meta_steps"] == "0"
    path_parts = load(ROOT / "recipes" / "omniglot" / "path_parts.py", "path_parts")
    beyond = tests["leap", "meta_steps=3"]  # its run is the test run of the last tuned point, gone on
    run = tmp_path / "runs" / f"test-leap-meta_steps=2-0-{beyond['setting']}"
    curves = path_parts.saved_curves(run, 3)
    assert float(curves.path_length.mean()) == pytest.approx(float(beyond["path_length"]), rel=1e-6)
    scratch = tests["scratch", "base"]
    rebuilt = path_parts.scratch_curves(scaling.Cell("test", "scratch", "base", 0), tmp_path / "again", extra)
    assert float(rebuilt.path_length.mean()) == pytest.approx(float(scratch["path_length"]), rel=1e-6)
    assert path_parts.parts(rebuilt)["first loss"] == pytest.approx(float(rebuilt.loss[:, 0].mean()))
    report = scaling.axis_report("meta-steps", rows, scaling.BASE, tmp_path)
    assert "| leap | 3 | 1 | Leap.meta_lr=" in report and (tmp_path / "scaling_meta-steps.png").exists()


@pytest.mark.slow
def test_a_run_scored_on_its_way_matches_a_run_that_stops_there(scaling, tmp_path, glyph_root, monkeypatch):
    """Tuning along one run is tuning at each point: theta_0 after 2 of 3 meta-steps scores as a run of 2."""
    monkeypatch.setattr(scaling, "TUNED_UP_TO", 3)
    extra = [f"--data.family.init_args.root={glyph_root}", "--data.family.init_args.num_test=2"]
    setting = (("Leap.meta_lr", 0.3),)
    (short,) = scaling.run_cell(scaling.Cell("tune", "leap", "meta_steps=2", 0, setting), tmp_path / "short", extra)
    long = scaling.Cell("tune", "leap", "meta_steps=3", 0, setting)
    on_the_way, last = scaling.run_cell(long, tmp_path / "long", extra)
    assert (on_the_way["group"], last["group"]) == ("meta_steps=2", "meta_steps=3")
    assert on_the_way == short and last["train_error_auc"] != short["train_error_auc"]


def test_costs_count_a_run_scored_at_several_points_once(scaling, monkeypatch):
    """Seconds worked by hand: the tuning run to 3 meta-steps scores 2 and 3 (two rows, one run), the quick size's
    runs lie on every axis, a run of another axis on none but its own."""
    monkeypatch.setattr(scaling, "TUNED_UP_TO", 3)
    costs = load(ROOT / "recipes" / "omniglot" / "scaling_costs.py", "scaling_costs")

    def row(stage, group, seed, wall, cpu):
        return {"stage": stage, "method": "leap", "group": group, "seed": str(seed), "setting": "Leap.meta_lr=0.1",
                "wall_seconds": str(wall), "cpu_seconds": str(cpu)}

    rows = [row("tune", "base", 0, 10, 5), row("tune", "base", 1, 20, 7), row("test", "base", 0, 30, 9),
            row("tune", "meta_steps=2", 0, 50, 20), row("tune", "meta_steps=3", 0, 50, 20),
            row("test", "meta_steps=2", 0, 15, 6), row("test", "meta_steps=3", 0, 25, 8),
            row("tune", "inner_steps=25", 0, 1000, 1000)]
    every_run = costs.runs(rows)
    assert len(every_run) == 7
    table = costs.axis_costs("meta-steps", every_run)
    assert "| 1 | leap | 2 | 15 [10, 20] | 6 [5, 7] | 1 | 30 [30, 30] | 9 [9, 9] |" in table
    assert "| 2 | leap | 0 | - | - | 1 | 15 [15, 15] | 6 [6, 6] |" in table
    assert "| 3 | leap | 1 | 50 [50, 50] | 20 [20, 20] | 1 | 25 [25, 25] | 8 [8, 8] |" in table
    assert table.endswith("meta-steps: 6 runs, 150 wall seconds, 55 CPU seconds in all (each run once, base included).")
    assert "inner-steps: 4 runs, 1,060 wall seconds, 1,021 CPU seconds" in costs.axis_costs("inner-steps", every_run)
    at_25 = costs.axis_costs("alphabets", every_run, scaling.Point.parse("inner_steps=25"))  # the axis elsewhere
    assert "| 2 | leap | 1 | 1000 [1000, 1000] |" in at_25 and "alphabets: 1 runs," in at_25
