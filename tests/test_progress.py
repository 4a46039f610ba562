"""The progress bar carries the meta-learning counters (meta/task, meta/step) for every kind of meta-learner.

Expected values are counted by hand from the schedule: which task of the stream is trained last, and how many
meta-steps are done when it is logged.
"""

from __future__ import annotations

import torch
from helpers import TinyClassifier, ToyFamily, make_trainer
from test_maml import TinyMAML

from lightning_meta import Leap
from lightning_meta.optim import LearnedOptimizerTraining
from lightning_meta.tasks import EpisodeDataModule, TaskDataModule
from lightning_meta.tasks.quadratics import QuadraticOptimizee, RandomQuadratics


def counters(trainer) -> tuple[float, float]:
    metrics = trainer.progress_bar_metrics
    return metrics["meta/task"], metrics["meta/step"]


def test_leap_shows_the_task_and_the_meta_steps_done_when_it_started():
    # 2 steps a task, 2 tasks a meta-step, 8 steps: tasks 0..3; the meta-step after tasks 0 and 1 is done when
    # task 3 starts, the one after tasks 2 and 3 only at the very end.
    data = TaskDataModule(ToyFamily(), inner_steps=2, meta_batch_size=2, batch_size=4)
    trainer = make_trainer([Leap(meta_lr=0.1)], max_steps=8)
    trainer.fit(TinyClassifier(), datamodule=data)
    assert counters(trainer) == (3.0, 1.0)


def test_maml_shows_the_last_episode_and_the_meta_steps_before_this_one():
    # 2 episodes a batch, 3 batches: the last holds stream tasks 4 and 5; 2 meta-steps are done when it trains.
    data = EpisodeDataModule(ToyFamily(), inner_steps=1, batch_size=4, meta_batch_size=2, query_size=4)
    trainer = make_trainer([], max_steps=3, limit_val_batches=0)
    trainer.fit(TinyMAML(inputs=16, inner_steps=1, inner_lr=0.1), datamodule=data)
    assert counters(trainer) == (5.0, 2.0)


def test_learned_optimizer_training_counts_every_truncation_window_as_a_meta_step():
    # unrolls of 6 steps truncated every 4: 2 meta-steps a batch; 4 meta-steps are 2 batches of 2 tasks (0..3).
    torch.manual_seed(0)
    data = EpisodeDataModule(RandomQuadratics(dim=4, num_train=8), inner_steps=1, batch_size=1, meta_batch_size=2)
    module = LearnedOptimizerTraining(QuadraticOptimizee(4), loss="squared_error", unroll_steps=6, truncation=4)
    trainer = make_trainer([], max_steps=4, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    assert counters(trainer) == (3.0, 4.0)
