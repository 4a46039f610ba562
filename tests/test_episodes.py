"""EpisodeDataModule: what an episode holds, where its images come from, and that the stream resumes exactly."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers import ToyFamily

from lightning_meta.data import EpisodeDataModule, ImageTensorDataset, Task, TaskFamily


class TrainBlackTestWhite(TaskFamily):
    """Training images are all 0, held-out images all 255; labels are the sample index (to count distinct samples)."""

    def tasks(self, split):
        def task(i: int) -> Task:
            train = ImageTensorDataset(torch.zeros(12, 1, 2, 2, dtype=torch.uint8), torch.arange(12))
            test = ImageTensorDataset(torch.full((5, 1, 2, 2), 255, dtype=torch.uint8), torch.arange(5))
            return Task(f"{split}-{i}", train, test, 12)

        return [task(i) for i in range({"train": 4, "val": 3, "test": 2}[split])]


def test_support_comes_from_training_images_and_query_from_held_out_images():
    data = EpisodeDataModule(TrainBlackTestWhite(), inner_steps=3, batch_size=4, query_size=5, meta_batch_size=2)
    batch = next(iter(data.train_dataloader()))
    assert batch.support_inputs.shape == (2, 3, 4, 1, 2, 2)
    assert batch.support_inputs.max() == 0 and batch.query_inputs.min() == 1
    for t in range(2):  # 3 batches x 4 = all 12 training images once, 5 held-out images once
        assert sorted(batch.support_targets[t].flatten().tolist()) == list(range(12))
        assert sorted(batch.query_targets[t].tolist()) == list(range(5))


def test_stream_is_seeded_and_resumes_at_the_consumed_position():
    def batches(seed, position=0):
        data = EpisodeDataModule(ToyFamily(), inner_steps=2, batch_size=5, meta_batch_size=2, tasks_per_epoch=8, seed=seed)
        data._consumed_batches = lambda: position
        return list(data.train_dataloader())

    full, again, other, resumed = batches(0), batches(0), batches(1), batches(0, position=2)
    assert len(full) == 4 and [b.tasks for b in full][:2] == [[0, 1], [2, 3]]
    assert all(torch.equal(a.support_inputs, b.support_inputs) for a, b in zip(full, again))
    assert not torch.equal(full[0].support_inputs, other[0].support_inputs)
    assert len(resumed) == 2 and resumed[0].tasks == [4, 5]
    assert torch.equal(resumed[0].support_inputs, full[2].support_inputs)
    assert torch.equal(resumed[0].query_targets, full[2].query_targets)


def test_evaluation_loaders_hold_one_episode_of_every_task_of_their_split():
    data = EpisodeDataModule(TrainBlackTestWhite(), inner_steps=1, batch_size=4, query_size=3, meta_batch_size=2)
    names = [name for batch in data.val_dataloader() for name in batch.task_names]
    assert sorted(names) == ["val-0", "val-1", "val-2"]
    first, second = list(data.test_dataloader()), list(data.test_dataloader())
    assert sorted(first[0].task_names) == ["test-0", "test-1"]
    assert torch.equal(first[0].support_targets, second[0].support_targets)


def test_support_batches_follow_the_maml_module_else_inner_steps_and_bad_sizes_are_named():
    assert EpisodeDataModule(ToyFamily(), inner_steps=7).resolved_support_batches() == 7
    assert EpisodeDataModule(ToyFamily(), inner_steps=7, support_batches=1).resolved_support_batches() == 1
    data = EpisodeDataModule(ToyFamily(), inner_steps=7)
    data.trainer = SimpleNamespace(lightning_module=SimpleNamespace(fixed_inner_steps=5))  # a FixedInnerSteps module
    assert data.resolved_support_batches() == 5
    data.trainer.lightning_module.fixed_inner_steps = None  # the module takes one step per support batch
    assert data.resolved_support_batches() == 7
    for name in ("query_size", "support_batches"):
        with pytest.raises(ValueError, match=name):
            EpisodeDataModule(ToyFamily(), **{name: 0})
