"""DatasetClassifier: a fresh head per task of the task's size, per-task heads for fine-tuning, a cosine schedule
that restarts with every task, and the held-out evaluation starting each data set with a fresh head."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import make_trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_meta import Leap
from lightning_meta.callbacks.meta_evaluation import adapt
from lightning_meta.data import ImageTensorDataset, Task, TaskDataModule, TaskFamily, TaskInfo
from lightning_meta.models import DatasetClassifier

CLASSES = {"train": [2, 3, 4], "val": [2], "test": [3]}


class Sizes(TaskFamily):
    """Tasks of 8x8 grey images with 2, 3 or 4 classes (label = brightest quadrant of four, folded)."""

    def tasks(self, split):
        self._check_split(split)
        generator = torch.Generator().manual_seed(len(split))
        tasks = []
        for index, classes in enumerate(CLASSES[split]):
            images = torch.randint(0, 256, (40, 1, 8, 8), generator=generator, dtype=torch.uint8)
            labels = images.float().view(40, 2, 4, 2, 4).mean((2, 4)).flatten(1).argmax(1) % classes
            data = ImageTensorDataset(images, labels)
            tasks.append(Task(f"{split}-{index}", data, data, classes))
        return tasks


def small(**kwargs) -> DatasetClassifier:
    return DatasetClassifier(**{"max_classes": 4, "channels": 4, "blocks": 2, "lr": 0.1, **kwargs})


class Recording(DatasetClassifier):
    """Records, before every training step, the task, the head's weights and the classes in use."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.steps: list[tuple[int, int, torch.Tensor, int]] = []

    def on_train_batch_start(self, batch, batch_idx):
        super().on_train_batch_start(batch, batch_idx)
        task = self.trainer.datamodule.current_task()  # the schedule's task of this step
        self.steps.append((task.position, task.index, self.head.weight.detach().clone(), self.active_classes))


class LearningRates(L.Callback):
    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.rates.append(optimizer.param_groups[0]["lr"])


def data(inner_steps: int, meta_batch_size: int | None = None) -> TaskDataModule:
    return TaskDataModule(Sizes(), inner_steps=inner_steps, meta_batch_size=meta_batch_size, batch_size=8)


def test_every_task_starts_a_fresh_head_of_its_own_size():
    torch.manual_seed(0)
    model = Recording(max_classes=4, channels=4, blocks=2)
    leap = Leap(p=2, include=r"^encoder\.", meta_optimizer="Adam", meta_lr=0.01)
    make_trainer([leap], max_steps=5 * 3).fit(model, datamodule=data(3, meta_batch_size=5))
    assert leap.names and all(name.startswith("encoder.") for name in leap.names)
    for step, (task, index, head, width) in enumerate(model.steps):
        assert width == CLASSES["train"][index]
        if step % 3 == 0 and step:  # a task start: not the head the previous task trained
            assert not torch.allclose(head, model.steps[step - 1][2])
        elif step:  # inside a task: the same head, trained on
            assert model.steps[step - 1][0] == task


@pytest.mark.parametrize("meta", [True, False])
def test_cosine_schedule_restarts_with_every_task(meta: bool):
    """Under Leap (which rewinds the schedule at task starts) with a period longer than a task, and without a
    meta-learner with the period equal to a task: the learning rate of step s is 0.1 (1 + cos(pi (s mod 4) / T)) / 2."""
    period = 6 if meta else 4
    rates = LearningRates()
    callbacks = [Leap(include=r"^encoder\."), rates] if meta else [rates]
    make_trainer(callbacks, max_steps=12).fit(small(cosine_steps=period), datamodule=data(4, meta_batch_size=1))
    expected = [0.05 * (1 + math.cos(math.pi * (step % 4) / period)) for step in range(12)]
    assert rates.rates == pytest.approx(expected)


class InitialWeights(L.Callback):
    def on_fit_start(self, trainer, pl_module) -> None:
        self.weights = {name: p.detach().clone() for name, p in pl_module.named_parameters()}


def test_multi_head_keeps_one_head_per_training_data_set():
    torch.manual_seed(0)
    model = Recording(max_classes=4, channels=4, blocks=2, multi_head=True)
    initial = InitialWeights()
    make_trainer([initial], max_steps=3).fit(model, datamodule=data(3))  # one task: three steps on one data set
    assert len(model.heads) == 3 and all(h.out_features == 4 for h in model.heads)
    index = model.steps[0][1]
    assert {step[1] for step in model.steps} == {index}
    for i, head in enumerate(model.heads):
        assert torch.equal(head.weight, initial.weights[f"heads.{i}.weight"]) == (i != index)
    assert torch.equal(model.head.weight, initial.weights["head.weight"])  # the held-out head is never trained here


def test_too_many_classes_is_a_clear_error():
    with pytest.raises(MisconfigurationException, match="raise max_classes"):
        make_trainer([], max_steps=1).fit(small(max_classes=3), datamodule=data(2))


def test_held_out_tasks_start_from_a_fresh_head_of_their_size():
    torch.manual_seed(0)
    model = small()
    state = {name: torch.zeros_like(t) if name.startswith("head.") else t.clone() for name, t in model.state_dict().items()}
    task = Sizes().tasks("test")[0]
    curves = adapt(model, state, [task], inner_steps=1, batch_size=8, seed=0)
    # a zero head would give uniform logits over the task's 3 classes: a loss of exactly log 3
    assert abs(float(curves.loss[0, 0]) - math.log(3)) > 1e-3
    model.load_state_dict(state)
    with torch.no_grad():
        loss = F.cross_entropy(model(task.train.images[:8].float() / 255)[:, :3], task.train.labels[:8])
    assert float(loss) == pytest.approx(math.log(3))  # the premise: the state's own head is the zero head


def start(model: DatasetClassifier, position: int, index: int) -> None:
    """Meta-training task ``index`` of the split starts at ``position`` of the stream (what MetaInit calls)."""
    model.start_task(TaskInfo(Sizes().tasks("train")[index], "train", index, position))


def test_a_resumed_run_keeps_the_head_of_the_task_it_was_training():
    torch.manual_seed(0)
    model = small()
    start(model, position=7, index=1)
    assert model.active_classes == 3
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    resumed = small()
    resumed.load_state_dict(checkpoint["state_dict"])
    resumed.on_load_checkpoint(checkpoint)
    assert resumed._task == 7  # the task going on: no new head until the stream reaches another position
    assert resumed.active_classes == 3 and torch.equal(resumed.head.weight, model.head.weight)
    start(resumed, position=8, index=2)
    assert resumed.active_classes == 4 and not torch.equal(resumed.head.weight, model.head.weight)


def test_the_head_of_a_task_depends_on_its_position_in_the_stream_not_on_the_global_rng():
    """So that data-parallel DDP processes, whose RNGs may have drifted apart, draw the same head."""
    heads = []
    for global_seed in (1, 2):
        model = small()
        torch.manual_seed(global_seed)
        start(model, position=5, index=0)
        heads.append(model.head.weight.detach().clone())
        assert torch.equal(torch.random.get_rng_state(), torch.manual_seed(global_seed).get_state())  # untouched
    assert torch.equal(heads[0], heads[1])


@pytest.mark.parametrize("multi_head", [False, True])
def test_load_from_checkpoint_rebuilds_the_module_with_its_weights(tmp_path, multi_head: bool):
    torch.manual_seed(0)
    model = small(multi_head=multi_head)
    trainer = make_trainer([], max_steps=2)
    trainer.fit(model, datamodule=data(2))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = DatasetClassifier.load_from_checkpoint(path)  # strict: every key of the checkpoint has a home
    assert (loaded.max_classes, loaded.multi_head, len(loaded.heads)) == (4, multi_head, 3 if multi_head else 0)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    with pytest.raises(ValueError, match="max_classes"):
        small(num_classes=3)
