"""The task stream: deterministic, worker-independent, resumable at any batch, one task at a time."""

import itertools

import torch
from helpers import ToyFamily
from lightning.fabric.utilities.apply_func import move_data_to_device

from lightning_meta.tasks import TaskBatch, TaskDataModule
from lightning_meta.tasks.stream import TaskBatchSampler


def stream(**kwargs):
    options = dict(inner_steps=3, batch_size=5, tasks_per_epoch=4, seed=0)
    options.update(kwargs)
    data = TaskDataModule(ToyFamily(), **options)
    data.setup("fit")
    return list(data.train_dataloader())


def same(a, b):
    return len(a) == len(b) and all(
        x.task == y.task and torch.equal(x.inputs, y.inputs) and torch.equal(x.targets, y.targets) for x, y in zip(a, b)
    )


def test_tasks_come_in_runs_of_inner_steps_and_cover_the_split():
    batches = stream()
    assert [b.task for b in batches] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    names = [batches[3 * t].task_name for t in range(4)]
    assert sorted(names) == ["toy-0", "toy-1", "toy-2", "toy-3"]  # one pass visits every meta-training task once
    assert all(b.task_name == names[b.task] for b in batches)
    assert all(b.inputs.shape == (5, 1, 4, 4) and b.targets.shape == (5,) for b in batches)


def test_labels_are_those_of_the_named_task():
    family = ToyFamily()
    by_name = {task.name: task for task in family.tasks("train")}
    for batch in stream():
        data = by_name[batch.task_name].train
        images = (data.images.float() / 255).flatten(1)
        for x, y in zip(batch.inputs, batch.targets):
            index = (images == x.flatten()).all(1).nonzero()[0, 0]
            assert data.labels[index] == y


def test_same_seed_same_stream_other_seed_other_stream():
    assert same(stream(), stream())
    assert not same(stream(), stream(seed=1))


def test_workers_change_nothing():
    assert same(stream(), stream(num_workers=2))
    assert same(stream(augment=True), stream(augment=True, num_workers=2))


def test_augmentation_is_seeded_per_sample():
    plain, augmented = stream(), stream(augment=True)
    assert [b.task for b in plain] == [b.task for b in augmented]
    assert all(torch.equal(p.targets, a.targets) for p, a in zip(plain, augmented))
    assert not torch.equal(plain[0].inputs, augmented[0].inputs)


def test_sampler_resumes_at_any_position_with_a_constant_length():
    sizes = [7, 11, 5]
    full = list(itertools.islice(TaskBatchSampler(sizes, 4, 3, tasks_per_epoch=100, seed=3), 40))
    for start in (0, 1, 5, 9, 13):
        sampler = TaskBatchSampler(sizes, 4, 3, tasks_per_epoch=2, seed=3, position=lambda: start)
        assert len(sampler) == 6
        epoch_end = (start // 6 + 1) * 6
        assert list(sampler) == full[start:epoch_end]


def test_later_passes_reorder_tasks():
    sampler = TaskBatchSampler([3] * 5, 1, 1, tasks_per_epoch=1, seed=0)
    passes = [[sampler.task_index(n) for n in range(5 * k, 5 * k + 5)] for k in range(4)]
    assert all(sorted(p) == list(range(5)) for p in passes)
    assert len({tuple(p) for p in passes}) > 1


def test_task_batch_unpacks_and_survives_device_transfer():
    batch = stream()[4]
    x, y = batch
    assert x is batch.inputs and y is batch[1] and len(batch) == 2
    moved = move_data_to_device(batch, torch.device("cpu"))
    assert isinstance(moved, TaskBatch) and moved.task == 1 and torch.equal(moved.inputs, x)


def test_a_batch_is_fetched_at_once_with_the_samples_one_by_one_would_give():
    task = ToyFamily().tasks("train")[0]
    indices = [5, 0, 5, 17]
    batch = task.train.__getitems__(indices)
    for (x, y), i in zip(batch, indices):
        assert torch.equal(x, task.train.images[i].float() / 255) and y == int(task.train.labels[i])
    assert stream(augment=True)[0].inputs.shape == (5, 1, 4, 4)  # augmentation still applies sample by sample
