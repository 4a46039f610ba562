"""Leap's meta-gradient against the paper's formula, computed by a separate plain training loop."""

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import TinyClassifier, ToyFamily, flat, make_trainer

from lightning_meta import Leap, Reptile
from lightning_meta.data import TaskDataModule

K = 4  # inner steps


def reference_leap(model, batches, lr, p, use_loss, stabilizer, final_batch=None):
    """Train a copy with plain SGD, record (theta_i, f_i, g_i), return the formula's meta-gradient (float64).

    f_K is the loss at theta_K on ``final_batch`` (default: the last batch).
    """
    final_x, final_y = final_batch or batches[-1]
    model = copy.deepcopy(model).double()
    params = list(model.parameters())
    points, losses, grads = [], [], []
    for x, y in batches:
        loss = F.cross_entropy(model(x.double()), y)
        grad = torch.autograd.grad(loss, params)
        points.append(flat(params).clone())
        losses.append(loss.item())
        grads.append(flat(grad))
        with torch.no_grad():
            for param, g in zip(params, grad):
                param -= lr * g
    points.append(flat(params).clone())
    with torch.no_grad():
        losses.append(F.cross_entropy(model(final_x.double()), final_y).item())
    total = torch.zeros_like(points[0])
    for i in range(len(batches)):
        d_theta = points[i + 1] - points[i]
        d_loss = losses[i + 1] - losses[i] if use_loss else 0.0
        if stabilizer and use_loss:
            d_loss = -abs(d_loss)
        length = math.sqrt(d_theta.dot(d_theta).item() + d_loss**2)
        increment = d_theta + d_loss * grads[i]
        total += increment / length if p == 1 else 2 * increment
    return -total, points[-1] - points[0]


def task_batches(data, task, steps):
    batches = [tuple(b) for b in itertools.islice(data.train_dataloader(), task * steps, (task + 1) * steps)]
    assert len(batches) == steps
    return batches


@pytest.mark.parametrize("p,use_loss,stabilizer", list(itertools.product([1, 2], [True, False], [True, False])))
def test_meta_gradient_matches_formula(p, use_loss, stabilizer):
    torch.manual_seed(0)
    model = TinyClassifier(lr=0.5)
    data = TaskDataModule(ToyFamily(), inner_steps=K, meta_batch_size=2, batch_size=8)
    data.setup("fit")
    expected = [reference_leap(model, task_batches(data, t, K), 0.5, p, use_loss, stabilizer)[0] for t in range(2)]
    theta_0 = flat(model.parameters()).double()

    leap = Leap(p=p, loss=use_loss, stabilizer=stabilizer, meta_lr=1.0)
    make_trainer([leap], max_steps=2 * K).fit(model, datamodule=data)

    meta_gradient = theta_0 - flat(model.parameters()).double()  # SGD with lr 1 on the mean meta-gradient
    torch.testing.assert_close(meta_gradient, (expected[0] + expected[1]) / 2, rtol=2e-4, atol=2e-6)


def test_without_loss_and_length_is_reptile_direction():
    torch.manual_seed(1)
    model = TinyClassifier(lr=0.5)
    data = TaskDataModule(ToyFamily(), inner_steps=K, batch_size=8, tasks_per_epoch=1)
    data.setup("fit")
    _, displacement = reference_leap(model, task_batches(data, 0, K), 0.5, 2, False, False)
    theta_0 = flat(model.parameters()).double()
    make_trainer([Leap(p=2, loss=False, meta_lr=1.0)], max_steps=K).fit(model, datamodule=data)
    torch.testing.assert_close(theta_0 - flat(model.parameters()).double(), -2 * displacement, rtol=1e-4, atol=1e-6)


def test_norm_is_the_reference_name_for_p():
    assert Leap(norm=False).rule.p == 2 and Leap(norm=True).rule.p == 1
    with pytest.raises(ValueError, match="contradicts"):
        Leap(p=2, norm=True)
    with pytest.raises(ValueError, match="p must be 1"):
        Leap(p=3)


def test_reptile_update_on_two_tasks():
    torch.manual_seed(2)
    model = TinyClassifier(lr=0.5)
    data = TaskDataModule(ToyFamily(), inner_steps=K, meta_batch_size=2, batch_size=8)
    data.setup("fit")
    ends = [reference_leap(model, task_batches(data, t, K), 0.5, 1, True, True)[1] for t in range(2)]
    theta_0 = flat(model.parameters()).double()
    make_trainer([Reptile(meta_lr=0.3)], max_steps=2 * K).fit(model, datamodule=data)
    torch.testing.assert_close(flat(model.parameters()).double(), theta_0 + 0.3 * (ends[0] + ends[1]) / 2, rtol=1e-4, atol=1e-6)


class Float64Classifier(TinyClassifier):
    def forward(self, x):
        return self.net(x.double())


def test_float64_model_gets_a_float64_meta_gradient():
    torch.manual_seed(3)
    model = Float64Classifier(lr=0.5).double()
    data = TaskDataModule(ToyFamily(), inner_steps=K, batch_size=8, tasks_per_epoch=1)
    data.setup("fit")
    expected, _ = reference_leap(model, task_batches(data, 0, K), 0.5, 1, True, True)
    theta_0 = flat(model.parameters())
    make_trainer([Leap(p=1, meta_lr=1.0)], max_steps=K).fit(model, datamodule=data)
    assert model.net[1].weight.dtype == torch.float64
    torch.testing.assert_close(theta_0 - flat(model.parameters()), expected, rtol=1e-9, atol=1e-12)
