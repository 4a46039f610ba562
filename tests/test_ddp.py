"""Meta-learning under Lightning's DDP with 2 CPU processes (gloo) equals the single-process run on the same tasks."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from lightning_meta.callbacks.meta_evaluation import HeldOutCurves

WORKER = Path(__file__).parent / "ddp_worker.py"
RECIPES = Path(__file__).parents[1] / "recipes" / "omniglot"
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


def fresh_environment() -> dict[str, str]:
    """This process's environment without the variables of a process group an earlier test in it may have set up
    (a stale MASTER_PORT makes the workers' rendezvous fail with "address already in use")."""
    inherited = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE")
    return {**{k: v for k, v in os.environ.items() if k not in inherited}, "OMP_NUM_THREADS": "1"}


def run(tmp_path: Path, name: str, returncode: int = 0, **spec) -> dict:
    """Run the worker with ``spec``; its result, and its standard error as ``log`` (a killed run has no result)."""
    out = tmp_path / name
    out.mkdir()
    spec = {"parallel": "tasks", "inner_steps": 3, "meta_batch_size": 4, "meta_steps": 2, "batch_size": 6,
            "nan_task": None, **spec, "out": str(out)}
    (out / "spec.json").write_text(json.dumps(spec))
    environment = fresh_environment()
    process = subprocess.run([sys.executable, str(WORKER), str(out / "spec.json")], capture_output=True, text=True,
                             env=environment, timeout=300)
    assert process.returncode == returncode, process.stderr[-3000:]
    if returncode:
        return {"log": process.stderr}
    result = torch.load(out / "result.pt", weights_only=False)
    result["log"] = process.stderr
    return result


def assert_same_init(two: dict, one: dict) -> None:
    assert len(set(two["checksums"])) == 1, f"theta_0 differs between the processes: {two['checksums']}"
    assert two["meta_steps"] == one["meta_steps"]
    torch.testing.assert_close(two["init"], one["init"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["leap", "reptile"])
def test_task_parallel_two_processes_equal_one_process_on_the_same_tasks(method, tmp_path):
    two = run(tmp_path, "two", method=method, devices=2)
    one = run(tmp_path, "one", method=method, devices=1)
    assert two["global_step"] == 2 * 3 * 2 and one["global_step"] == 2 * 3 * 4  # each process: half the tasks
    assert_same_init(two, one)


def test_two_processes_training_their_tasks_together_equal_one_process_one_task_at_a_time(tmp_path):
    two = run(tmp_path, "two", method="leap", devices=2, task_batch=2)
    one = run(tmp_path, "one", method="leap", devices=1)
    assert two["global_step"] == 2 * 3 and one["global_step"] == 2 * 3 * 4  # each process: one group of 2 tasks
    assert_same_init(two, one)


@pytest.mark.parametrize("task_batch", [None, 2])
def test_dict_batches_task_parallel_on_two_processes_equal_one_process(tmp_path, task_batch):
    """A module whose batches are dicts, unchanged, with tasks one at a time and two trained together."""
    two = run(tmp_path, "two", method="leap", devices=2, batch="dict", task_batch=task_batch)
    one = run(tmp_path, "one", method="leap", devices=1, batch="dict")
    assert_same_init(two, one)


def test_data_parallel_leap_shards_batches_and_equals_one_process(tmp_path):
    two = run(tmp_path, "two", method="leap", parallel="data", devices=2, meta_batch_size=2)
    one = run(tmp_path, "one", method="leap", parallel="data", devices=1, meta_batch_size=2)
    assert two["global_step"] == one["global_step"] == 2 * 3 * 2
    assert_same_init(two, one)


def test_maml_tasks_spread_over_processes_give_the_single_process_gradient(tmp_path):
    two = run(tmp_path, "two", method="maml", devices=2)
    one = run(tmp_path, "one", method="maml", devices=1)
    assert_same_init(two, one)


def test_a_nan_task_on_one_process_is_dropped_on_all(tmp_path):
    two = run(tmp_path, "two", method="leap", devices=2, nan_task=1)  # task 1 is process 1's first task
    one = run(tmp_path, "one", method="leap", devices=1, nan_task=1)
    assert "task 1 diverged" in two["log"] and "task 1 diverged" in one["log"]
    assert_same_init(two, one)
    clean = run(tmp_path, "clean", method="leap", devices=1)
    assert not torch.allclose(clean["init"], one["init"])


def test_meta_evaluation_splits_tasks_over_processes_and_gathers_them(tmp_path):
    two = run(tmp_path, "two", method="reptile", devices=2, meta_steps=1, evaluate=True)
    one = run(tmp_path, "one", method="reptile", devices=1, meta_steps=1, evaluate=True)
    for part in fields(HeldOutCurves):  # the held-out accuracy in both BatchNorm modes included
        torch.testing.assert_close(getattr(two["evaluation"], part.name), getattr(one["evaluation"], part.name), rtol=1e-4, atol=1e-5)


def test_checkpoint_of_two_processes_resumes_on_one(tmp_path):
    """Save at the first meta-step boundary on 2 processes, resume on 1: the same init as 1 process throughout."""
    two = run(tmp_path, "two", method="leap", devices=2, meta_steps=1, checkpoint_every=6)
    checkpoint = next((tmp_path / "two" / "checkpoints").glob("*step=6.ckpt"))
    resumed = run(tmp_path, "resumed", method="leap", devices=1, meta_steps=2, resume=str(checkpoint))
    straight = run(tmp_path, "straight", method="leap", devices=1, meta_steps=2)
    assert two["meta_steps"] == 1 and resumed["meta_steps"] == straight["meta_steps"] == 2
    torch.testing.assert_close(resumed["init"], straight["init"], rtol=1e-5, atol=1e-6)


def test_the_recipe_runs_on_two_processes_from_the_command_line(tmp_path, glyph_root):
    """`lightning-meta fit ... --trainer.devices=2 --trainer.strategy=ddp`: Lightning relaunches the command."""
    command = [
        str(Path(sys.executable).with_name("lightning-meta")), "fit",
        "--config", str(RECIPES / "leap.yaml"), "--config", str(RECIPES / "quick.yaml"),
        "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
        f"--data.family.init_args.root={glyph_root}", "--data.family.init_args.num_train=4",
        "--data.inner_steps=2", "--data.meta_batch_size=2", "--data.max_meta_steps=2", "--model.init_args.channels=8",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
    ]
    environment = fresh_environment()
    process = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    assert "Starting with 2 processes" in process.stderr + process.stdout
    run_folder = tmp_path / "lightning_logs" / "version_0"
    header = next(csv.reader(open(run_folder / "metrics.csv")))
    assert "meta_eval/test/meta_init/train_error_auc" in header
    assert (run_folder / "meta_evaluation_test.png").exists()
