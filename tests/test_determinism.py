"""What docs/reproducibility.md says is bitwise reproducible is: the same run twice in one process (same seed, data,
threads and code) ends with the same theta_0, bit for bit, and the same held-out curves, on CPU. What varies (the
number of threads, tasks trained together in float32) is measured by benchmarks/reproducibility.py, not asserted.
"""

from __future__ import annotations

import lightning as L
import torch
from helpers import TinyClassifier, ToyFamily, make_trainer

from lightning_meta import Leap, MetaEvaluation
from lightning_meta.data import TaskDataModule


def one_run() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    L.seed_everything(0, verbose=False)
    data = TaskDataModule(ToyFamily(held_out=2), inner_steps=3, meta_batch_size=2, max_meta_steps=3, batch_size=4)
    leap, evaluation = Leap(meta_lr=0.1), MetaEvaluation(every_n_meta_steps=1)
    module = TinyClassifier(batch_norm=True)
    start = [p.detach().clone() for p in module.parameters()]
    make_trainer([leap, evaluation], max_steps=-1).fit(module, datamodule=data)
    curves = [c.loss for _, c in evaluation.history] + [c.test_accuracy for _, c in evaluation.history]
    assert not all(torch.equal(a, b) for a, b in zip(start, leap.theta_0))  # meta-training moved theta_0
    return [p.detach().clone() for p in leap.theta_0], curves


def test_the_same_run_twice_ends_bit_for_bit_alike():
    (theta_a, curves_a), (theta_b, curves_b) = one_run(), one_run()
    assert len(theta_a) == len(theta_b) and len(curves_a) == len(curves_b) == 6
    assert all(torch.equal(a, b) for a, b in zip(theta_a, theta_b))
    assert all(torch.equal(a, b) for a, b in zip(curves_a, curves_b))
