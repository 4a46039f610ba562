"""Behaviour of the MetaInit machinery shared by Leap and Reptile, checked against plain loops and invariants."""

import gc
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import TinyClassifier, ToyFamily, flat, make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_meta import Leap, Reptile
from lightning_meta.data import TaskDataModule

K = 4


def toy_data(tasks_per_epoch=3, inner_steps=K, **kwargs):
    data = TaskDataModule(ToyFamily(), inner_steps=inner_steps, batch_size=8, tasks_per_epoch=tasks_per_epoch, **kwargs)
    data.setup("fit")
    return data


class TaskEndProbe(L.Callback):
    """Placed after the meta-learner: records the optimizer state at task starts and the weights at task ends."""

    def __init__(self, steps):
        self.steps, self.start_states, self.ends, self.start_buffers, self.end_buffers = steps, [], [], [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step % self.steps == 0:
            self.start_states.append(dict(trainer.optimizers[0].state))
            self.start_buffers.append([b.clone() for b in pl_module.buffers()])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step % self.steps == 0:
            self.ends.append(flat(pl_module.parameters()))
            self.end_buffers.append([b.clone() for b in pl_module.buffers()])


def plain_adam_with_step_lr(model, batches, lr):
    """A fresh run: new Adam, StepLR(2, 0.5), from the given weights."""
    model = TinyClassifier(lr=lr)
    model.load_state_dict(theta_0_state)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    for x, y in batches:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        scheduler.step()
    return flat(model.parameters())


def test_each_task_starts_with_fresh_adam_and_schedule():
    global theta_0_state
    torch.manual_seed(0)
    model = TinyClassifier(lr=0.05, optimizer="adam", step_lr=True)
    theta_0_state = {k: v.clone() for k, v in model.state_dict().items()}
    data = toy_data(meta_batch_size=3)
    batches = [tuple(b) for b in data.train_dataloader()]
    probe = TaskEndProbe(K)
    make_trainer([Reptile(), probe], max_steps=3 * K).fit(model, datamodule=data)
    assert [len(state) for state in probe.start_states] == [0, 0, 0]  # Adam moments and step counts gone
    for task in range(3):
        expected = plain_adam_with_step_lr(model, batches[task * K : (task + 1) * K], 0.05)
        torch.testing.assert_close(probe.ends[task], expected)


def test_buffers_reset_at_every_task_start_by_default():
    torch.manual_seed(0)
    model = TinyClassifier(batch_norm=True)
    initial = [b.clone() for b in model.buffers()]
    probe = TaskEndProbe(K)
    make_trainer([Leap(), probe], max_steps=3 * K).fit(model, datamodule=toy_data(meta_batch_size=2))
    for buffers in probe.start_buffers:
        for buffer, start in zip(buffers, initial):
            assert torch.equal(buffer, start)
    assert not torch.equal(probe.end_buffers[0][0], initial[0])  # training did move them
    for buffer, start in zip(model.buffers(), initial):  # and fit ends with theta_0's buffers in the module
        assert torch.equal(buffer, start)


def test_include_filter_meta_learns_only_the_matching_tensors():
    torch.manual_seed(0)
    model = TinyClassifier()
    head_before = model.net[3].weight.detach().clone()
    leap = Leap(include=r"^net\.1\.")
    probe = TaskEndProbe(K)
    make_trainer([leap, probe], max_steps=2 * K).fit(model, datamodule=toy_data(meta_batch_size=1))
    assert leap.names == ["net.1.weight", "net.1.bias"]
    # the head is not reset between tasks: it carries its trained value, never the value it started with
    assert not torch.equal(model.net[3].weight, head_before)
    torch.testing.assert_close(model.net[1].weight, leap.theta_0[0].detach())


def test_gradient_accumulation_acts_once_per_optimizer_step():
    from test_leap import reference_leap  # noqa: PLC0415

    torch.manual_seed(0)
    model = TinyClassifier(lr=0.5)
    data = toy_data(tasks_per_epoch=1, inner_steps=3)
    trainer = make_trainer([Leap(meta_lr=1.0)], max_steps=3, accumulate_grad_batches=2)
    data.trainer = trainer  # under accumulation the data module streams inner_steps x 2 batches per task
    micro = [tuple(b) for b in data.train_dataloader()]
    data.trainer = None
    assert len(micro) == 6
    # two equal micro-batches per step are one batch of 16: mean loss, mean gradient; f_K on the last micro-batch
    merged = [tuple(torch.cat(pair) for pair in zip(micro[2 * i], micro[2 * i + 1])) for i in range(3)]
    expected, _ = reference_leap(model, merged, 0.5, 1, True, True, final_batch=micro[-1])
    theta_0 = flat(model.parameters()).double()
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 3
    torch.testing.assert_close(theta_0 - flat(model.parameters()).double(), expected, rtol=2e-4, atol=2e-6)


def test_diverged_task_is_dropped_and_theta_0_stays_finite():
    class Diverges(TinyClassifier):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            task = self.trainer.datamodule.current_task().position  # the schedule says, not the batch
            return loss * float("nan") if task == 1 and batch_idx % K == 2 else loss

    torch.manual_seed(0)
    model = Diverges()
    theta_0 = flat(model.parameters())
    probe = TaskEndProbe(K)
    with pytest.warns(UserWarning, match="task 1 diverged"):
        make_trainer([Reptile(meta_lr=0.5), probe], max_steps=2 * K).fit(model, datamodule=toy_data(meta_batch_size=2))
    assert torch.isfinite(flat(model.parameters())).all()
    torch.testing.assert_close(flat(model.parameters()), theta_0 + 0.5 * (probe.ends[0] - theta_0))


@pytest.mark.parametrize("rule", [Leap, Reptile])
def test_resume_mid_meta_batch_is_bit_exact(tmp_path, rule):
    def run(max_steps, ckpt_path=None, callbacks=()):
        torch.manual_seed(0)
        model = TinyClassifier(lr=0.05, optimizer="adam", batch_norm=True)
        meta = rule(meta_optimizer="Adam", meta_lr=0.01)
        trainer = make_trainer([meta, *callbacks], max_steps=max_steps, enable_checkpointing=bool(callbacks))
        trainer.fit(model, datamodule=toy_data(tasks_per_epoch=2, meta_batch_size=2), ckpt_path=ckpt_path)
        return model, meta

    uninterrupted, meta = run(5 * K)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=K + 2, save_top_k=-1)
    run(K + 2, callbacks=[checkpoint])  # stops mid-task 1, in the middle of the first meta-batch
    saved = tmp_path / f"epoch=0-step={K + 2}.ckpt"
    state = torch.load(saved, weights_only=False)
    assert state["callbacks"][next(iter(state["callbacks"]))]["counters"]["tasks_in_batch"] == 1
    resumed, meta_resumed = run(5 * K, ckpt_path=saved)
    assert meta.meta_steps == meta_resumed.meta_steps == 2
    for a, b in zip(uninterrupted.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_weights_are_theta_0(tmp_path):
    torch.manual_seed(0)
    model = TinyClassifier()
    leap = Leap()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=K + 1, save_top_k=-1)
    data = toy_data(meta_batch_size=1)
    make_trainer([leap, checkpoint], max_steps=K + 1, enable_checkpointing=True).fit(model, datamodule=data)
    state = torch.load(tmp_path / f"epoch=0-step={K + 1}.ckpt", weights_only=False)["state_dict"]
    torch.testing.assert_close(flat(state[n] for n in leap.names), flat(leap.theta_0))
    restored = TinyClassifier()
    restored.load_state_dict(state)
    torch.testing.assert_close(flat(restored.parameters()), flat(leap.theta_0))


def live_tensor_bytes():
    gc.collect()
    storages = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and not obj.is_meta:
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


class PeakProbe(L.Callback):
    def __init__(self):
        self.peak = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step in (1, trainer.max_steps // 2, trainer.max_steps - 1):
            self.peak = max(self.peak, live_tensor_bytes())


def test_leap_memory_does_not_grow_with_inner_steps():
    peaks = {}
    for steps in (10, 500):
        torch.manual_seed(0)
        probe = PeakProbe()
        data = toy_data(tasks_per_epoch=1, inner_steps=steps, meta_batch_size=1)
        make_trainer([Leap(), probe], max_steps=steps).fit(TinyClassifier(), datamodule=data)
        peaks[steps] = probe.peak
    parameter_bytes = sum(p.numel() * 4 for p in TinyClassifier().parameters())
    assert abs(peaks[500] - peaks[10]) <= parameter_bytes, peaks


class Manual(TinyClassifier):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False


class TwoOptimizers(TinyClassifier):
    def configure_optimizers(self):
        return [torch.optim.SGD(self.net[1].parameters(), lr=0.1), torch.optim.SGD(self.net[3].parameters(), lr=0.1)]


@pytest.mark.parametrize(
    "model,callback,data,message",
    [
        (TinyClassifier, lambda: Leap(include="decoder"), toy_data, "matched no trainable parameter"),
        (Manual, lambda: Reptile(), toy_data, "manual"),
        (TwoOptimizers, lambda: Reptile(), toy_data, "multiple optimizers is only supported with manual"),
    ],
)
def test_misconfiguration_fails_with_a_message(model, callback, data, message):
    # Lightning itself refuses several optimizers under automatic optimisation, with a RuntimeError
    with pytest.raises((MisconfigurationException, RuntimeError), match=message):
        make_trainer([callback()], max_steps=2).fit(model(), datamodule=data())


def test_unsupported_strategy_fails_at_setup():
    trainer = SimpleNamespace(strategy=object(), datamodule=None)
    with pytest.raises(MisconfigurationException, match="supports a single device, DDP .* and ModelParallelStrategy"):
        Leap().setup(trainer, TinyClassifier(), "fit")


def test_ddp_without_use_distributed_sampler_false_is_named():
    trainer = make_trainer([Leap()], max_steps=2, strategy="ddp")
    with pytest.raises(MisconfigurationException, match="use_distributed_sampler=False"):
        trainer.fit(TinyClassifier(), datamodule=toy_data())


def test_bad_arguments():
    with pytest.raises(ValueError, match="TaskDataModule: inner_steps must be >= 1, got 0"):
        TaskDataModule(ToyFamily(), inner_steps=0)
    with pytest.raises(TypeError, match=r"Leap\(meta_batch_size=5\): the task schedule belongs to the data module"):
        Leap(meta_batch_size=5)
    with pytest.raises(ValueError, match="meta_optimizer must name"):
        Reptile(meta_optimizer="NoSuchOptimizer")
    with pytest.raises(ValueError, match="buffers"):
        Reptile(buffers="average")
    with pytest.raises(MisconfigurationException, match="trains a stream of tasks: fit with a task data module"):
        loader = torch.utils.data.DataLoader([(torch.rand(1, 4, 4), 0)] * 4, batch_size=2)
        make_trainer([Leap()], max_steps=2).fit(TinyClassifier(), train_dataloaders=loader)


def test_bf16_mixed_precision_trains_theta_0():
    torch.manual_seed(0)
    model = TinyClassifier()
    theta_0 = flat(model.parameters())
    data = toy_data(meta_batch_size=2)
    make_trainer([Leap()], max_steps=2 * K, precision="bf16-mixed").fit(model, datamodule=data)
    moved = flat(model.parameters()) - theta_0
    assert torch.isfinite(moved).all() and moved.norm() > 0
