"""Held-out training with early stopping: the validation split, the stopping rule, the curves of a stopped task, and
held-out training with a per-step LR schedule (checked against a plain loop)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import TinyClassifier, ToyFamily

from lightning_meta.callbacks.meta_evaluation import adapt
from lightning_meta.data import ImageTensorDataset, Task
from lightning_meta.data.stream import TaskBatchSampler, TaskCollate, TaskStreamDataset
from lightning_meta.trainer.early_stopping import HeldOutEarlyStopping


def test_validation_split_takes_a_seeded_share_of_every_class():
    labels = torch.tensor([0] * 10 + [1] * 20 + [2] * 3)
    data = ImageTensorDataset(torch.arange(33, dtype=torch.uint8).view(33, 1, 1, 1), labels)
    task = Task("t", data, data, 3)
    rule = HeldOutEarlyStopping(fraction=0.2)
    fit, validation = rule.split(task, seed=0)
    fit_ids = sorted(int(fit.train[i][0] * 255) for i in range(len(fit.train)))
    validation_ids = sorted(int(validation[i][0] * 255) for i in range(len(validation)))
    assert sorted(fit_ids + validation_ids) == list(range(33))  # disjoint and complete
    assert torch.bincount(labels[validation_ids]).tolist() == [2, 4, 1]  # round(0.2 n), at least one
    assert fit.test is data and fit.num_classes == 3
    assert rule.split(task, seed=1)[1].indices != validation.indices
    assert rule.split(task, seed=0)[1].indices == validation.indices


def test_monitor_restores_the_weights_of_the_lowest_validation_error():
    model = torch.nn.Linear(2, 1)
    monitor = HeldOutEarlyStopping(patience=2, every=5).monitor(model)
    assert [monitor.due(step) for step in (4, 5, 10)] == [False, True, True]
    history = {}
    for step, error in ((5, 0.6), (10, 0.3), (15, 0.35), (20, 0.3)):
        with torch.no_grad():
            model.weight.fill_(step)
        history[step] = model.weight.detach().clone()
        stop = monitor.should_stop(step, error)
    assert stop and monitor.best_step == 10 and monitor.best_error == 0.3
    monitor.restore_best()
    torch.testing.assert_close(model.weight, history[10])


def test_a_task_whose_validation_error_never_improves_stops_after_patience_checks():
    """Learning rate 0: the validation error stays at its first value, which is the only improvement."""
    torch.manual_seed(0)
    model = TinyClassifier(lr=0.0)
    tasks = ToyFamily(samples=60).tasks("test")
    rule = HeldOutEarlyStopping(patience=3, every=4, fraction=0.25)
    curves = adapt(model, model.state_dict(), tasks, inner_steps=40, batch_size=8, seed=0, early_stopping=rule)
    assert curves.steps.tolist() == [4 * (3 + 1)]
    assert curves.loss.shape == (1, 40)
    assert torch.equal(curves.loss[0, 16:], curves.loss[0, 15].expand(24))  # held at the last trained step
    fit, _ = rule.split(tasks[0], seed=0)
    with torch.no_grad():
        images = torch.stack([fit.train[i][0] for i in range(len(fit.train))])
        labels = torch.tensor([fit.train[i][1] for i in range(len(fit.train))])
        accuracy = (model(images).argmax(1) == labels).float().mean()
    torch.testing.assert_close(curves.train_accuracy[0], accuracy)  # scored on the images it trained on


def test_without_early_stopping_every_task_trains_all_steps_with_its_lr_schedule():
    """A per-step StepLR (halving every 2 steps) in held-out training matches a plain loop over the same batches."""
    torch.manual_seed(0)
    model = TinyClassifier(lr=0.5, step_lr=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    task = ToyFamily().tasks("test")[0]
    curves = adapt(model, state, [task], inner_steps=6, batch_size=8, seed=3)
    assert curves.steps.tolist() == [6]
    reference = TinyClassifier()
    reference.load_state_dict(state)
    sampler = TaskBatchSampler(lambda _: len(task.train), 1, 8, 6, 1, seed=3)
    dataset = TaskStreamDataset(lambda _: task)
    losses = []
    for step, keys in enumerate(sampler):
        x, y = TaskCollate()([dataset[key] for key in keys])
        loss = F.cross_entropy(reference(x), y)
        losses.append(loss.detach())
        reference.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in reference.parameters():
                p -= 0.5 * 0.5 ** (step // 2) * p.grad
    torch.testing.assert_close(curves.loss[0], torch.stack(losses))


def test_bad_rules_are_clear_errors():
    with pytest.raises(ValueError, match="patience >= 1"):
        HeldOutEarlyStopping(patience=0)
    with pytest.raises(ValueError, match="0 < fraction < 1"):
        HeldOutEarlyStopping(fraction=1.0)
