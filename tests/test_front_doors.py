"""One engine, three front doors: the same tasks through the Trainer callback, a Lightning Fabric loop and a plain
PyTorch loop give the same theta_0; a plain loop on 2 processes (torch.distributed, gloo) equals 1 process."""

from __future__ import annotations

import copy
import os
import socket

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import TinyClassifier, ToyFamily, flat, make_trainer

from lightning_meta import Leap, Reptile
from lightning_meta.data import TaskDataModule
from lightning_meta.engine import LeapRule, MetaLearner, ReptileRule, distributed_sum
from lightning_meta.fabric import fabric_meta_learner

K, TASKS, META_BATCH, LR = 4, 4, 2, 0.5
RULES = {
    "leap": (lambda: LeapRule(p=1, loss=True), lambda: Leap(meta_lr=0.3)),
    "leap-energy": (lambda: LeapRule(p=2, loss=False), lambda: Leap(p=2, loss=False, meta_lr=0.3)),
    "reptile": (ReptileRule, lambda: Reptile(meta_lr=0.3)),
}


def task_batches() -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """The first TASKS tasks of the stream the Trainer sees, K batches each."""
    data = TaskDataModule(ToyFamily(), inner_steps=K, batch_size=8)
    return [[tuple(batch) for batch in data.task_batches(position)] for position in range(TASKS)]


def plain_loop(model: torch.nn.Module, meta: MetaLearner, tasks, backward=lambda loss: loss.backward()) -> None:
    """The reference code's loop: a fresh SGD per task, ``update`` after backward, the loss at theta_K at the end."""
    for batches in tasks:
        meta.start_task()
        inner = torch.optim.SGD(model.parameters(), lr=LR)
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            inner.zero_grad()
            backward(loss)
            meta.update(loss)
            inner.step()
        x, y = batches[-1]
        meta.end_task(final_loss=lambda: F.cross_entropy(model(x), y))  # noqa: B023 (called right here)
    meta.load_init()


@pytest.mark.parametrize("name", RULES)
def test_trainer_fabric_and_plain_loop_learn_the_same_theta_0(name):
    rule, callback = RULES[name]
    torch.manual_seed(0)
    start = TinyClassifier(lr=LR)
    tasks = task_batches()

    trainer_model = copy.deepcopy(start)
    data = TaskDataModule(ToyFamily(), inner_steps=K, meta_batch_size=META_BATCH, max_meta_steps=TASKS // META_BATCH, batch_size=8)
    make_trainer([callback()], max_steps=-1).fit(trainer_model, datamodule=data)

    plain_model = copy.deepcopy(start)
    plain = MetaLearner(plain_model, rule(), meta_batch_size=META_BATCH, meta_lr=0.3)
    plain_loop(plain_model, plain, tasks)

    fabric = L.Fabric(accelerator="cpu", devices=1)
    fabric_model = fabric.setup_module(copy.deepcopy(start))
    meta = fabric_meta_learner(fabric, fabric_model, rule(), meta_batch_size=META_BATCH, meta_lr=0.3)
    plain_loop(fabric_model, meta, tasks, backward=fabric.backward)

    assert plain.meta_steps == meta.meta_steps == TASKS // META_BATCH
    moved = flat(trainer_model.parameters()) - flat(start.parameters())
    assert moved.norm() > 1e-3  # the three did learn something, the same thing
    torch.testing.assert_close(flat(plain_model.parameters()), flat(trainer_model.parameters()))
    torch.testing.assert_close(flat(fabric_model.parameters()), flat(trainer_model.parameters()))


def test_meta_learner_names_what_is_missing():
    model = torch.nn.Linear(4, 2)
    meta = MetaLearner(model, LeapRule(loss=True))
    meta.start_task()
    with pytest.raises(ValueError, match="needs the loss at the task's last weights"):
        meta.end_task()
    with pytest.raises(ValueError, match="matched no trainable parameter of Linear"):
        MetaLearner(model, ReptileRule(), include="decoder")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distributed_worker(rank: int, port: int, start: dict, tasks, out: str) -> None:
    """Process ``rank`` of 2 trains the tasks ``rank, rank + 2, ...`` of every meta-batch (task-parallel)."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    model = TinyClassifier(lr=LR)
    model.load_state_dict(start)
    meta = MetaLearner(model, LeapRule(), meta_batch_size=META_BATCH // 2, meta_lr=0.3, all_reduce=distributed_sum)
    plain_loop(model, meta, tasks[rank::2])
    torch.save(flat(model.parameters()), f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_plain_loop_on_two_processes_equals_one_process(tmp_path):
    torch.manual_seed(0)
    start = TinyClassifier(lr=LR)
    tasks = task_batches()
    one = copy.deepcopy(start)
    plain_loop(one, MetaLearner(one, LeapRule(), meta_batch_size=META_BATCH, meta_lr=0.3), tasks)
    torch.multiprocessing.spawn(
        distributed_worker, args=(free_port(), start.state_dict(), tasks, str(tmp_path)), nprocs=2, join=True
    )
    zero, first = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(zero, first)
    torch.testing.assert_close(zero, flat(one.parameters()), rtol=1e-5, atol=1e-6)
