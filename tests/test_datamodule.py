"""The task stream: deterministic, worker-independent, resumable at any batch, one task at a time."""

import itertools

import torch
from helpers import ToyFamily
from lightning.fabric.utilities.apply_func import move_data_to_device

from lightning_meta.data import TaskDataModule
from lightning_meta.data.stream import TaskBatchSampler

INNER_STEPS = 3


def data_module(**kwargs):
    options = dict(inner_steps=INNER_STEPS, batch_size=5, tasks_per_epoch=4, seed=0)
    options.update(kwargs)
    data = TaskDataModule(ToyFamily(), **options)
    data.setup("fit")
    return data


def stream(**kwargs):
    return list(data_module(**kwargs).train_dataloader())


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


def test_tasks_come_in_runs_of_inner_steps_and_cover_the_split():
    data = data_module()
    batches = list(data.train_dataloader())
    assert len(batches) == 4 * INNER_STEPS
    names = [data.task_info(position).task.name for position in range(4)]
    assert sorted(names) == ["toy-0", "toy-1", "toy-2", "toy-3"]  # one pass visits every meta-training task once
    assert all(isinstance(b, list) and b[0].shape == (5, 1, 4, 4) and b[1].shape == (5,) for b in batches)


def test_labels_are_those_of_the_task_the_schedule_names():
    data = data_module()
    for step, (inputs, targets) in enumerate(data.train_dataloader()):
        task = data.task_info(data.schedule.task(step)).task.train
        images = (task.images.float() / 255).flatten(1)
        for x, y in zip(inputs, targets):
            index = (images == x.flatten()).all(1).nonzero()[0, 0]
            assert task.labels[index] == y


def test_same_seed_same_stream_other_seed_other_stream():
    assert same(stream(), stream())
    assert not same(stream(), stream(seed=1))


def test_workers_change_nothing():
    assert same(stream(), stream(num_workers=2))
    assert same(stream(augment=True), stream(augment=True, num_workers=2))


def test_augmentation_is_seeded_per_sample():
    plain, augmented = stream(), stream(augment=True)
    assert all(torch.equal(p[1], a[1]) for p, a in zip(plain, augmented))
    assert not torch.equal(plain[0][0], augmented[0][0])


def test_sampler_resumes_at_any_position_with_a_constant_length():
    sizes = [7, 11, 5].__getitem__
    full = list(itertools.islice(TaskBatchSampler(sizes, 3, 4, 3, tasks_per_epoch=100, seed=3), 40))
    for start in (0, 1, 5, 9, 13):
        sampler = TaskBatchSampler(sizes, 3, 4, 3, tasks_per_epoch=2, seed=3, position=lambda: start)
        assert len(sampler) == 6
        epoch_end = (start // 6 + 1) * 6
        assert list(sampler) == full[start:epoch_end]


def test_later_passes_reorder_tasks():
    sampler = TaskBatchSampler(lambda index: 3, 5, 1, 1, tasks_per_epoch=1, seed=0)
    passes = [[sampler.task_index(n) for n in range(5 * k, 5 * k + 5)] for k in range(4)]
    assert all(sorted(p) == list(range(5)) for p in passes)
    assert len({tuple(p) for p in passes}) > 1


def test_a_batch_is_what_the_samples_collate_to_and_survives_device_transfer():
    batch = stream()[4]
    x, y = batch
    assert torch.equal(batch[0], x) and len(batch) == 2
    moved = move_data_to_device(batch, torch.device("cpu"))
    assert type(moved) is list and torch.equal(moved[0], x) and torch.equal(moved[1], y)


def test_a_batch_is_fetched_at_once_with_the_samples_one_by_one_would_give():
    task = ToyFamily().tasks("train")[0]
    indices = [5, 0, 5, 17]
    batch = task.train.__getitems__(indices)
    for (x, y), i in zip(batch, indices):
        assert torch.equal(x, task.train.images[i].float() / 255) and y == int(task.train.labels[i])
    assert stream(augment=True)[0][0].shape == (5, 1, 4, 4)  # augmentation still applies sample by sample
