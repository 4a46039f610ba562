"""Tasks trained together (TaskBatchedLearner: stacked parameters, vmap over tasks) give what the same tasks trained
one after another give: the same theta_0, the same buffers, the same dropped tasks. The sequential reference is the
plain loop of the reference Leap code, written here. Float64 throughout, so that a tolerance of 1e-10 separates
reordered sums from a wrong formula (in float32, Adam turns the rounding of reordered sums into 1e-6)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import TinyClassifier, ToyFamily, flat, make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_meta import Leap, Reptile
from lightning_meta.data import StreamDataModule, TaskDataModule
from lightning_meta.engine import LeapRule, MetaLearner, ReptileRule, TaskBatchedLearner
from lightning_meta.trainer.task_batched import TaskBatchedTraining

K, T, META_BATCH, TASKS, LR = 3, 2, 4, 8, 0.3
RULES = {
    "leap-length-loss": lambda: LeapRule(p=1, loss=True),
    "leap-length": lambda: LeapRule(p=1, loss=False),
    "leap-energy-loss": lambda: LeapRule(p=2, loss=True),
    "leap-energy": lambda: LeapRule(p=2, loss=False),
    "reptile": ReptileRule,
}
OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=LR, momentum=0.9, nesterov=True, weight_decay=1e-2),
    "adam": lambda params: torch.optim.Adam(params, lr=0.05, weight_decay=1e-2),
    "adamw": lambda params: torch.optim.AdamW(params, lr=0.05, weight_decay=1e-2),
}


CLOSE = dict(rtol=1e-10, atol=1e-12)


def task_batches(tasks: int = TASKS) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    data = TaskDataModule(ToyFamily(), inner_steps=K, batch_size=8)
    return [[(x.double(), y) for x, y in data.task_batches(position)] for position in range(tasks)]


def loss_of(model):
    return lambda x, y: F.cross_entropy(model(x), y)


def sequential(model, meta: MetaLearner, tasks, optimizer) -> None:
    """One task after another: a fresh inner optimizer per task, ``update`` after backward, f(theta_K) at the end."""
    loss = loss_of(model)
    for index, batches in enumerate(tasks):
        meta.start_task()
        inner = optimizer(model.parameters())
        for x, y in batches:
            value = loss(x, y)
            inner.zero_grad()
            value.backward()
            meta.update(value)
            inner.step()
        meta.end_task(final_loss=lambda: loss(*batches[-1]), task=index)  # noqa: B023 (called right here)


def together(model, meta: TaskBatchedLearner, tasks, optimizer) -> None:
    """T tasks at a time: their batches stacked, one inner optimizer over the stacked parameters."""
    loss = loss_of(model)
    for first in range(0, len(tasks), meta.tasks):
        group = tasks[first : first + meta.tasks]
        stacked = [tuple(torch.stack(parts) for parts in zip(*steps)) for steps in zip(*group)]
        meta.start_task()
        inner = optimizer(meta.live)
        for x, y in stacked:
            losses = meta.map(loss, x, y)
            inner.zero_grad()
            losses.sum().backward()
            meta.update(losses)
            inner.step()
        labels = list(range(first, first + meta.tasks))
        meta.end_task(final_loss=lambda: meta.map(loss, *stacked[-1]), task=labels)  # noqa: B023


def both(rule, optimizer, batch_norm=False, tasks=None, model_class=TinyClassifier, **kwargs):
    torch.manual_seed(0)
    start = model_class(batch_norm=batch_norm).double()
    if batch_norm:
        # BatchNorm cancels the bias before it: its gradient is rounding noise, which Adam scales up to steps of lr,
        # and two orders of summation then give different noise. Nets with BatchNorm drop that bias; so do we.
        start.net[1].bias = None
    tasks = tasks or task_batches()
    one_by_one, at_once = copy.deepcopy(start), copy.deepcopy(start)
    reference = MetaLearner(one_by_one, rule(), META_BATCH, meta_lr=0.5, **kwargs)
    sequential(one_by_one, reference, tasks, optimizer)
    batched = TaskBatchedLearner(at_once, rule(), T, META_BATCH, meta_lr=0.5, **kwargs)
    together(at_once, batched, tasks, optimizer)
    return start, reference, batched


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "batchnorm"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("rule", RULES)
def test_tasks_trained_together_give_the_sequential_theta_0(rule, optimizer, batch_norm):
    start, reference, batched = both(RULES[rule], OPTIMIZERS[optimizer], batch_norm)
    assert reference.meta_steps == batched.meta_steps == TASKS // META_BATCH
    assert (flat(reference.theta_0) - flat(start.parameters())).norm() > 1e-3  # theta_0 did move
    torch.testing.assert_close(flat(batched.theta_0), flat(reference.theta_0), **CLOSE)
    # the last group's trained weights are the last tasks' own
    torch.testing.assert_close(flat(p[-1] for p in batched.live), flat(reference.live), **CLOSE)
    if batch_norm:  # each task kept its own running statistics: the last task's are the sequential run's
        for name, buffer in reference.live_buffers.items():
            torch.testing.assert_close(batched.live_buffers[name][-1], buffer, **CLOSE)
    if isinstance(reference.rule, LeapRule):  # the same path lengths, task by task, for the last group
        lengths = batched.rule.metrics()["path_length"][-1], reference.rule.metrics()["path_length"]
        torch.testing.assert_close(*lengths, **CLOSE)


def test_a_diverged_task_is_dropped_alone():
    tasks = task_batches()
    tasks[5] = [(x * float("nan"), y) for x, y in tasks[5]]  # the second task of the third group
    with pytest.warns(UserWarning, match="task 5 diverged"):
        start, reference, batched = both(RULES["leap-length-loss"], OPTIMIZERS["sgd"], tasks=tasks)
    assert torch.isfinite(flat(batched.theta_0)).all()
    torch.testing.assert_close(flat(batched.theta_0), flat(reference.theta_0), **CLOSE)


def test_state_dict_resumes_a_group_mid_way():
    """Save after the first step of the second group, load into a fresh learner (stacked weights, optimizer and
    rule restored), finish: the same theta_0 as without the interruption."""
    torch.manual_seed(0)
    start = TinyClassifier(batch_norm=True).double()
    start.net[1].bias = None  # as in both()
    tasks = task_batches(4)
    _, _, straight = both(RULES["leap-length-loss"], OPTIMIZERS["adam"], batch_norm=True, tasks=tasks)

    model = copy.deepcopy(start)
    meta = TaskBatchedLearner(model, LeapRule(p=1, loss=True), T, META_BATCH, meta_lr=0.5)
    together(model, meta, tasks[:2], OPTIMIZERS["adam"])
    group = [tuple(torch.stack(parts) for parts in zip(*steps)) for steps in zip(*tasks[2:])]
    meta.start_task()
    inner = OPTIMIZERS["adam"](meta.live)
    losses = meta.map(loss_of(model), *group[0])
    inner.zero_grad()
    losses.sum().backward()
    meta.update(losses)
    inner.step()
    saved = copy.deepcopy(
        (meta.state_dict(), [p.detach() for p in meta.live], meta.live_buffers, inner.state_dict())
    )

    resumed_model = copy.deepcopy(start)
    resumed = TaskBatchedLearner(resumed_model, LeapRule(p=1, loss=True), T, META_BATCH, meta_lr=0.5)
    state, live, buffers, optimizer_state = saved
    resumed.load_state_dict(state)
    with torch.no_grad():
        torch._foreach_copy_(resumed.live, live)
        for name, buffer in buffers.items():
            resumed.live_buffers[name].copy_(buffer)
    inner = OPTIMIZERS["adam"](resumed.live)
    inner.load_state_dict(optimizer_state)
    loss = loss_of(resumed_model)
    for x, y in group[1:]:
        losses = resumed.map(loss, x, y)
        inner.zero_grad()
        losses.sum().backward()
        resumed.update(losses)
        inner.step()
    resumed.end_task(final_loss=lambda: resumed.map(loss, *group[-1]))
    assert resumed.meta_steps == 1
    assert torch.equal(flat(resumed.theta_0), flat(straight.theta_0))


def test_what_cannot_be_batched_is_refused():
    model = TinyClassifier()
    with pytest.raises(ValueError, match="trainable parameters outside include"):
        TaskBatchedLearner(model, ReptileRule(), tasks=2, include=r"^net\.1\.")
    with pytest.raises(ValueError, match="divide meta_batch_size=3"):
        TaskBatchedLearner(model, ReptileRule(), tasks=2, meta_batch_size=3)
    with pytest.raises(ValueError, match="buffers='keep' hands each task"):
        TaskBatchedLearner(model, ReptileRule(), tasks=2, buffers="keep")
    with pytest.raises(ValueError, match="parallel='data' is not supported"):
        TaskBatchedLearner(model, ReptileRule(), tasks=2, parallel="data")
    model.net[1].requires_grad_(False)  # frozen parameters are shared by the tasks: fine
    TaskBatchedLearner(model, ReptileRule(), tasks=2, include=r"^net\.3\.")


# ----------------------------------------------------------------------------------------------- through the Trainer
def fit(task_batch, callback, model=None, max_tasks=TASKS, ckpt_path=None, callbacks=(), **trainer_kwargs):
    """Fit a fresh ``model(**model)`` (default: Adam and BatchNorm) on the toy stream in float64
    (``precision="64-true"``), tasks one at a time or ``task_batch`` at once."""
    torch.manual_seed(0)
    model = TinyClassifier(**(model or dict(optimizer="adam", lr=0.05, batch_norm=True)))
    if isinstance(model.net[2], torch.nn.BatchNorm1d):
        model.net[1].bias = None  # see both()
    data = TaskDataModule(ToyFamily(), inner_steps=K, batch_size=8, meta_batch_size=META_BATCH, task_batch=task_batch)
    trainer = make_trainer(
        [callback, *callbacks], max_steps=max_tasks * K // (task_batch or 1), precision="64-true", **trainer_kwargs
    )
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return model, trainer


TRAINER_CASES = {
    "leap-adam-batchnorm": (lambda: Leap(meta_lr=0.5), dict(optimizer="adam", lr=0.05, batch_norm=True)),
    "leap-energy-sgd": (lambda: Leap(p=2, loss=False, meta_lr=0.5), dict(optimizer="sgd", lr=0.3)),
    "reptile-sgd-batchnorm": (lambda: Reptile(meta_lr=0.5), dict(optimizer="sgd", lr=0.3, batch_norm=True)),
}


@pytest.mark.parametrize("case", TRAINER_CASES)
def test_the_trainer_with_task_batch_learns_the_sequential_theta_0(case):
    callback, model = TRAINER_CASES[case]
    one_at_a_time, _ = fit(None, callback(), model)
    meta = callback()
    together_, trainer = fit(T, meta, model)
    assert trainer.global_step == TASKS * K // T and meta.meta_steps == TASKS // META_BATCH
    assert meta.learner.live[0].shape[0] == T  # really trained stacked
    torch.testing.assert_close(flat(together_.parameters()), flat(one_at_a_time.parameters()), **CLOSE)
    for a, b in zip(together_.buffers(), one_at_a_time.buffers(), strict=True):  # theta_0's buffers: the start ones
        torch.testing.assert_close(a, b, **CLOSE)


class LoggedLoss(L.Callback):
    """After each step: what the module logged as ``train_loss``, and the mean of the tasks' own losses."""

    def __init__(self, meta):
        self.meta, self.pairs = meta, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.pairs.append((trainer.callback_metrics["train_loss"], self.meta.loop.batched.losses.mean()))


def test_what_training_step_logs_is_averaged_over_the_tasks():
    meta = Leap(meta_lr=0.5)
    probe = LoggedLoss(meta)
    fit(T, meta, callbacks=[probe])
    assert len(probe.pairs) == TASKS * K // T
    for logged, mean in probe.pairs:
        torch.testing.assert_close(logged, mean.detach())


def test_resume_mid_group_is_bit_exact(tmp_path):
    straight, _ = fit(T, Leap(meta_lr=0.5))
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=K + 1, save_top_k=-1)
    fit(T, Leap(meta_lr=0.5), max_tasks=2 * T, callbacks=[checkpoint], enable_checkpointing=True)
    saved = tmp_path / f"epoch=0-step={K + 1}.ckpt"  # one step into the second group of the first meta-batch
    resumed, _ = fit(T, Leap(meta_lr=0.5), ckpt_path=saved)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_a_sequential_run_resumes_task_batched_at_a_meta_step_boundary(tmp_path):
    straight, _ = fit(None, Leap(meta_lr=0.5))
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=META_BATCH * K, save_top_k=-1)
    fit(None, Leap(meta_lr=0.5), max_tasks=META_BATCH, callbacks=[checkpoint], enable_checkpointing=True)
    saved = tmp_path / f"epoch=0-step={META_BATCH * K}.ckpt"
    data = TaskDataModule(ToyFamily(), inner_steps=K, batch_size=8, meta_batch_size=META_BATCH, task_batch=T)
    torch.manual_seed(0)
    resumed = TinyClassifier(lr=0.05, optimizer="adam", batch_norm=True)
    resumed.net[1].bias = None
    leap = Leap(meta_lr=0.5)
    trainer = make_trainer([leap], max_steps=META_BATCH * K + META_BATCH * K // T, precision="64-true")
    trainer.fit(resumed, datamodule=data, ckpt_path=saved)  # the second meta-batch: 2 groups of 2 tasks
    assert leap.meta_steps == 2
    torch.testing.assert_close(flat(resumed.parameters()), flat(straight.parameters()), **CLOSE)


def test_bf16_mixed_precision_trains_tasks_together():
    torch.manual_seed(0)
    model = TinyClassifier(batch_norm=True)
    theta_0 = flat(model.parameters())
    data = TaskDataModule(ToyFamily(), inner_steps=K, batch_size=8, meta_batch_size=META_BATCH, task_batch=T)
    make_trainer([Leap(meta_lr=0.5)], max_steps=META_BATCH * K // T, precision="bf16-mixed").fit(model, datamodule=data)
    moved = flat(model.parameters()) - theta_0
    assert torch.isfinite(moved).all() and moved.norm() > 0


class Item(TinyClassifier):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("loss_value", loss.item())
        return loss


class Plateau(TinyClassifier):
    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "train_loss"}}


class RMSprop(TinyClassifier):
    def configure_optimizers(self):
        return torch.optim.RMSprop(self.parameters(), lr=0.01)


@pytest.mark.parametrize(
    "model,callback,trainer_kwargs,error,message",
    [
        (Item, Leap, {}, RuntimeError, r"\.item\(\).*train one task at a time"),
        (RMSprop, Leap, {}, MisconfigurationException, "one optimizer per task only for SGD, Adam, AdamW"),
        (Plateau, Reptile, {}, MisconfigurationException, "ReduceLROnPlateau would change the learning rate"),
        (TinyClassifier, Reptile, {"gradient_clip_val": 1.0}, MisconfigurationException, "clips gradients by"),
        (TinyClassifier, Reptile, {"accumulate_grad_batches": 2}, MisconfigurationException, "accumulates gradients"),
        (TinyClassifier, lambda: Reptile(include="net.1"), {}, MisconfigurationException, "outside include"),
        (TinyClassifier, lambda: Leap(buffers="keep"), {}, MisconfigurationException, "buffers='keep'"),
    ],
)
def test_what_task_batched_training_cannot_do_is_refused_before_any_step(
    model, callback, trainer_kwargs, error, message
):
    torch.manual_seed(0)
    start = model()
    theta = flat(start.parameters())
    data = TaskDataModule(ToyFamily(), inner_steps=K, batch_size=8, meta_batch_size=META_BATCH, task_batch=T)
    with pytest.raises(error, match=message):
        make_trainer([callback()], max_steps=K, **trainer_kwargs).fit(start, datamodule=data)
    assert torch.equal(flat(start.parameters()), theta)  # refused before any weight moved


def test_a_stream_that_cannot_stack_tasks_is_refused():
    with pytest.raises(ValueError, match="serves one task at a time: it takes no task_batch"):
        StreamDataModule(inner_steps=2, task_batch=2)
    trainer = SimpleNamespace(
        datamodule=StreamDataModule(inner_steps=2), accumulate_grad_batches=1, gradient_clip_val=None,
        gradient_clip_algorithm=None, precision_plugin=None,
    )
    with pytest.raises(MisconfigurationException, match="streams StreamDataModule, which serves one task per batch"):
        TaskBatchedTraining.check_setup(trainer, 2, "Leap")
