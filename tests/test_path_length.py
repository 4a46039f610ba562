"""The length of a training path in the joint (theta, loss) space (Leap's objective): a hand-worked example, Leap's
own rule, and held-out training measured against a plain loop that keeps every point."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import TinyClassifier, ToyFamily, flat

from lightning_meta.callbacks.meta_evaluation import adapt
from lightning_meta.engine import LeapRule
from lightning_meta.metrics import TrainingPath, path_length
from lightning_meta.data.stream import TaskBatchSampler, TaskCollate, TaskStreamDataset


def test_path_length_worked_by_hand_for_a_batch_of_paths():
    # path 1: steps of length 1 and 2 (in theta), losses 3 -> 3 -> 2 -> 4: sqrt(1 + 0) + sqrt(4 + 1) + sqrt(0 + 4)
    # path 2: theta still, losses 1 -> 0 -> 0 -> 0.5: 1 + 0 + 0.5
    step_sizes = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    losses = torch.tensor([[3.0, 3.0, 2.0, 4.0], [1.0, 0.0, 0.0, 0.5]])
    torch.testing.assert_close(path_length(step_sizes, losses), torch.tensor([1 + math.sqrt(5) + 2, 1.5]))
    with pytest.raises(ValueError, match="one loss more than steps, got 3 losses for 3 steps"):
        path_length(step_sizes, losses[:, :3])


def test_training_path_measures_the_length_leaps_rule_walks():
    """Random points and losses through TrainingPath and through LeapRule (p=1, loss term, stabilizer): the same
    length, and the same as the formula applied to every stored point."""
    generator = torch.Generator().manual_seed(3)
    points = [[torch.randn(4, 3, generator=generator), torch.randn(5, generator=generator)] for _ in range(6)]
    losses = torch.rand(6, generator=generator) * 3
    live = [p.clone() for p in points[0]]
    path, rule = TrainingPath(live), LeapRule(p=1, loss=True, stabilizer=True)
    rule.start(points[0], live)
    for i in range(5):
        rule.step(live, [torch.zeros_like(p) for p in live], losses[i])
        for tensor, value in zip(live, points[i + 1]):
            tensor.copy_(value)
        path.step(losses[i])
    rule.end(live, losses[5])
    by_hand = sum(
        math.sqrt(float((flat(points[i + 1]) - flat(points[i])).pow(2).sum()) + float(losses[i + 1] - losses[i]) ** 2)
        for i in range(5)
    )
    assert float(path.length(final_loss=losses[5])) == pytest.approx(by_hand, rel=1e-6)
    assert float(rule.metrics()["path_length"]) == pytest.approx(by_hand, rel=1e-6)


def test_held_out_training_measures_each_tasks_path_from_theta_0_to_theta_k():
    """adapt's path length against a plain SGD loop on the same batches that keeps every point theta_i and takes
    f(theta_K) on the last batch; BatchNorm's running statistics are not moved by that extra loss."""
    torch.manual_seed(0)
    model = TinyClassifier(lr=0.5, batch_norm=True)
    tasks = ToyFamily(held_out=2).tasks("test")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    steps = 4
    curves = adapt(model, state, tasks, inner_steps=steps, batch_size=8, seed=11)
    for index, task in enumerate(tasks):
        reference = TinyClassifier(lr=0.5, batch_norm=True)
        reference.load_state_dict(state)
        reference.train()
        optimizer = torch.optim.SGD(reference.parameters(), lr=0.5)
        dataset, collate = TaskStreamDataset(lambda _, task=task: task), TaskCollate()
        points, losses = [flat(reference.parameters())], []
        for keys in TaskBatchSampler(lambda _, task=task: len(task.train), 1, 8, steps, 1, seed=11 + index):
            x, y = collate([dataset[key] for key in keys])
            loss = F.cross_entropy(reference(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            points.append(flat(reference.parameters()))
            losses.append(float(loss))
        with torch.no_grad():
            losses.append(float(F.cross_entropy(reference(x), y)))
        expected = sum(math.sqrt(float((points[i + 1] - points[i]).pow(2).sum()) + (losses[i + 1] - losses[i]) ** 2)
                       for i in range(steps))
        assert float(curves.path_length[index]) == pytest.approx(expected, rel=1e-5)
    assert curves.summary()["path_length"] == pytest.approx(float(curves.path_length.mean()))
