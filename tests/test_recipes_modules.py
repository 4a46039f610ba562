"""The recipe modules and the learning-curve metric, against direct computations."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lightning_meta.data import Task, TaskInfo
from lightning_meta.metrics import LearningCurveAUC
from lightning_meta.models import DatasetClassifier, MultiHeadClassifier
from lightning_meta.trainer.held_out import HeldOutTraining, one_optimizer


def test_multi_head_routes_meta_training_batches_to_their_head_and_new_tasks_to_the_fresh_one():
    torch.manual_seed(0)
    model = MultiHeadClassifier(num_heads=3, channels=8)
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 20, (4,))
    task = Task("any", [], [], num_classes=20)
    model.start_task(TaskInfo(task, "train", index=1, position=7))  # what the data module says of the step
    model.training_step((x, y), 0).backward()
    touched = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert {"heads.1.weight", "heads.1.bias"} <= touched
    assert not any(name.startswith(("heads.0", "heads.2", "head.")) for name in touched)
    model.zero_grad(set_to_none=True)
    model.start_task(TaskInfo(task, "test", index=1))  # a held-out task: the fresh head
    model.training_step((x, y), 0).backward()
    touched = {name for name, p in model.named_parameters() if p.grad is not None}
    assert "head.weight" in touched and not any(name.startswith("heads.") for name in touched)
    with pytest.raises(IndexError, match="num_heads=3"):
        model.start_task(TaskInfo(task, "train", index=3, position=0))
        model.training_step((x, y), 0)


def fine_tuning(cls, **kwargs):
    if cls is MultiHeadClassifier:
        return cls(num_heads=2, channels=8, **kwargs)
    return cls(multi_head=True, channels=8, max_classes=5, cosine_steps=10, **kwargs)


@pytest.mark.parametrize("cls", [MultiHeadClassifier, DatasetClassifier])
def test_fine_tuning_pre_trains_at_pretrain_lr_and_held_out_tasks_train_at_lr(cls):
    """Tuning the multi-headed pre-training rate leaves held-out training at the rate every method uses."""
    model = fine_tuning(cls, lr=0.1, pretrain_lr=0.3)
    optimizer, schedulers = one_optimizer(model.configure_optimizers())  # what the Trainer steps in fit
    assert optimizer.param_groups[0]["lr"] == 0.3
    with HeldOutTraining(model, torch.device("cpu")) as run:
        run.start(model.state_dict(), seed=0, task=TaskInfo(Task("held out", [], [], num_classes=5), "test", 0))
        assert run.optimizer.param_groups[0]["lr"] == 0.1
        assert len(run.schedulers) == len(schedulers)  # DatasetClassifier's cosine schedule on held-out tasks too
    default, _ = one_optimizer(fine_tuning(cls, lr=0.2).configure_optimizers())
    assert default.param_groups[0]["lr"] == 0.2  # pretrain_lr defaults to lr


@pytest.mark.parametrize("steps", [1, 2, 5, 17])
def test_auc_is_numpys_trapezoid_divided_by_the_steps(steps):
    generator = np.random.default_rng(steps)
    curves = [generator.random(steps + 1) for _ in range(4)]
    metric = LearningCurveAUC()
    metric.update(torch.tensor(np.stack(curves[:3])))
    metric.update(torch.tensor(curves[3]))
    expected = np.mean([np.trapezoid(c) / steps for c in curves])
    assert metric.compute().item() == pytest.approx(expected, rel=1e-6)


def test_auc_of_hand_made_curves():
    metric = LearningCurveAUC()
    metric.update(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]]))  # areas 0.5/3 and 1.5/3
    assert metric.compute().item() == pytest.approx((0.5 / 3 + 0.5) / 2)


def test_episode_data_of_maml_configs_follows_the_shared_protocol():
    """episodes.yaml repeats data.yaml as an EpisodeDataModule: the protocol values must not drift apart."""
    recipes = Path(__file__).parents[1] / "recipes" / "omniglot"
    shared = yaml.safe_load(open(recipes / "data.yaml"))
    episodes = yaml.safe_load(open(recipes / "episodes.yaml"))
    assert episodes["class_path"] == "lightning_meta.data.EpisodeDataModule"
    assert {k: v for k, v in episodes["init_args"].items() if k != "query_size"} == shared
