"""The drop-in promise: modules nobody here wrote, batches of any structure, tasks of any kind, families built from
what users have, evaluation by the module's own loss, runs counted in meta-steps, strategies refused in one line.

References are written here independently: plain loops over the same batches, a hand-made Reptile, losses computed
by hand on the held-out data."""

from __future__ import annotations

import copy
import math
import warnings
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import DictRegression, DictSamples, flat, make_trainer, regression_data
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
from lightning.pytorch.demos.transformer import LightningTransformer
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import TensorDataset, default_collate
from torchmetrics.regression import MeanSquaredError
from torchmetrics.text import Perplexity

from lightning_meta import Leap, MetaEvaluation, MetaInit, Reptile
from lightning_meta.data import Task, TaskDataModule, TaskInfo
from lightning_meta.data.schedule import TaskSchedule
from lightning_meta.data.stream import TaskBatchSampler, TaskCollate, TaskStreamDataset
from lightning_meta.engine import LeapRule, MetaLearner, TrajectoryRule
from lightning_meta.fabric import fabric_meta_learner
from lightning_meta.families import DatasetTasks, FewShotTasks, SeededTasks

K, META_BATCH, META_STEPS, LR = 3, 2, 2, 0.1


# ---------------------------------------------------------------------------------------------- modules and data
class WeightedTriples(L.LightningModule):
    """A module whose batches are 3-tuples ``(x, y, weight)``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y, weight = batch
        return (weight * (self.net(x).squeeze(-1) - y) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)


KINDS = {  # batch structure -> (module, one task's data set of that structure)
    "tensor": (BoringModel, lambda seed: RandomDataset(32, 24)),
    "dict": (DictRegression, lambda seed: DictSamples(regression_data(seed))),
    "triple": (
        WeightedTriples,
        lambda seed: TensorDataset(*regression_data(seed).tensors, torch.rand(24, generator=torch.Generator().manual_seed(seed))),
    ),
}


def family(kind: str) -> DatasetTasks:
    """Five data sets of one kind, each a task; the last one held out (a family in one line)."""
    torch.manual_seed(0)  # RandomDataset draws from the global RNG
    return DatasetTasks([KINDS[kind][1](seed) for seed in range(5)], test=[4])


def plain_loop(model: torch.nn.Module, meta: MetaLearner, data: TaskDataModule, backward=None) -> None:
    """The reference code's loop over the stream's first META_STEPS meta-batches, with the module's own loss."""
    for position in range(META_STEPS * META_BATCH):
        meta.start_task()
        inner = torch.optim.SGD(model.parameters(), lr=LR)
        for index, batch in enumerate(data.task_batches(position)):
            loss = model.training_step(batch, index)
            loss = loss["loss"] if isinstance(loss, dict) else loss
            inner.zero_grad()
            (backward or torch.Tensor.backward)(loss)
            meta.update(loss)
            inner.step()
        meta.end_task(final_loss=lambda: torch.as_tensor(0.0))  # noqa: B023 (Reptile, Leap(loss=False): unused)
    meta.load_init()


# ---------------------------------------------------------------------------------------------- batch structures
@pytest.mark.parametrize("kind", KINDS)
def test_batches_reach_training_step_unchanged_and_the_three_doors_agree(kind):
    module, _ = KINDS[kind]
    data = TaskDataModule(family(kind), inner_steps=K, meta_batch_size=META_BATCH, max_meta_steps=META_STEPS, batch_size=6)
    torch.manual_seed(1)
    start = module()
    batch = next(iter(data.task_batches(0)))
    expected = {"tensor": torch.Tensor, "dict": dict, "triple": list}[kind]
    assert type(batch) is expected and (kind != "triple" or len(batch) == 3)

    trainer_model = copy.deepcopy(start)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BoringModel's own train_dataloader: the data module's is used
        make_trainer([Leap(p=2, loss=False, meta_lr=0.5)], max_steps=-1, limit_val_batches=0).fit(
            trainer_model, datamodule=data
        )

    plain_model = copy.deepcopy(start)
    plain_loop(plain_model, MetaLearner(plain_model, LeapRule(p=2, loss=False), META_BATCH, meta_lr=0.5), data)
    fabric = L.Fabric(accelerator="cpu", devices=1)
    fabric_model = fabric.setup_module(copy.deepcopy(start))
    meta = fabric_meta_learner(fabric, fabric_model, LeapRule(p=2, loss=False), meta_batch_size=META_BATCH, meta_lr=0.5)
    plain_loop(fabric_model, meta, data, backward=fabric.backward)

    assert (flat(trainer_model.parameters()) - flat(start.parameters())).norm() > 1e-4
    torch.testing.assert_close(flat(plain_model.parameters()), flat(trainer_model.parameters()))
    torch.testing.assert_close(flat(fabric_model.parameters()), flat(trainer_model.parameters()))
    if kind == "dict":
        assert set(trainer_model.seen) == {dict}


def test_reptile_on_an_unchanged_boring_model_is_the_hand_written_update():
    """theta_0 <- theta_0 + eps * mean over tasks of (theta_K - theta_0), each task plain SGD from theta_0."""
    data = TaskDataModule(family("tensor"), inner_steps=K, meta_batch_size=META_BATCH, max_meta_steps=1, batch_size=6)
    torch.manual_seed(2)
    model = BoringModel()
    theta_0 = flat(model.parameters())
    ends = []
    for position in range(META_BATCH):
        task = copy.deepcopy(model)
        for batch in data.task_batches(position):
            loss = F.mse_loss(task.layer(batch), torch.ones(batch.shape[0], 2))
            grads = torch.autograd.grad(loss, list(task.parameters()))
            with torch.no_grad():
                for parameter, grad in zip(task.parameters(), grads):
                    parameter -= 0.1 * grad  # BoringModel's SGD(lr=0.1); its StepLR steps per epoch, not inside tasks
        ends.append(flat(task.parameters()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer([Reptile(meta_lr=0.3)], max_steps=-1, limit_val_batches=0).fit(model, datamodule=data)
    torch.testing.assert_close(flat(model.parameters()), theta_0 + 0.3 * (sum(ends) / len(ends) - theta_0))


def test_task_batched_training_takes_dict_batches_and_learns_the_sequential_theta_0():
    def run(task_batch):
        data = TaskDataModule(
            family("dict"), inner_steps=K, meta_batch_size=META_BATCH, task_batch=task_batch, max_meta_steps=2, batch_size=6
        )
        torch.manual_seed(3)
        model = DictRegression().double()
        data.collate_fn = lambda samples: {k: v.double() for k, v in default_collate(samples).items()}
        make_trainer([Reptile(meta_lr=0.5)], max_steps=-1, precision="64-true").fit(model, datamodule=data)
        return flat(model.parameters())

    torch.testing.assert_close(run(META_BATCH), run(None), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------- tasks of any kind
class SineNet(L.LightningModule):
    """A sine-wave regressor written for (x, y) batches and nothing else."""

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__()
        self.lr = lr
        self.net = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def sine_wave(seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    amplitude, phase = 0.1 + 4.9 * torch.rand(1, generator=g), math.pi * torch.rand(1, generator=g)
    x = 10 * torch.rand(40, 1, generator=g) - 5
    return TensorDataset(x, amplitude * torch.sin(x + phase))


def reference_held_out(model, state, task: Task, steps, batch_size, seed, loss_fn, make_optimizer):
    """Train a copy on the batches the held-out evaluation draws, then the loss on all held-out data at once."""
    copy_ = copy.deepcopy(model)
    copy_.load_state_dict(state)
    optimizer = make_optimizer(copy_)
    sampler = TaskBatchSampler(lambda _: len(task.train), 1, batch_size, steps, 1, seed)
    dataset = TaskStreamDataset(lambda _: task)
    for keys in sampler:
        loss = loss_fn(copy_, TaskCollate()([dataset[key] for key in keys]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return loss_fn(copy_, default_collate([task.test[i] for i in range(len(task.test))])), copy_


def test_a_regression_is_evaluated_by_its_own_loss_and_your_metrics():
    sines = SeededTasks(sine_wave, val_tasks=2, test_tasks=3)
    data = TaskDataModule(sines, inner_steps=4, meta_batch_size=2, max_meta_steps=3, batch_size=10)
    evaluation = MetaEvaluation(metrics={"mse": MeanSquaredError()}, seed=5, baseline=False)
    torch.manual_seed(4)
    model = SineNet()
    make_trainer([Leap(meta_lr=0.1), evaluation], max_steps=-1).fit(model, datamodule=data)
    curves = evaluation.history[-1][1]
    assert curves.error is None and curves.test_accuracy is None  # not a classifier: no accuracy, no crash
    summary = curves.summary()
    assert {"train_loss_auc", "final_train_loss", "test_loss", "test_mse"} <= summary.keys()
    assert "test_accuracy" not in summary
    state = {k: v.clone() for k, v in model.state_dict().items()}  # the module holds theta_0 after fit
    for index, task in enumerate(sines.tasks("test")):
        expected, _ = reference_held_out(
            model, state, task, 4, 10, 5 + index, lambda m, b: F.mse_loss(m.net(b[0]), b[1]),
            lambda m: torch.optim.SGD(m.parameters(), lr=0.01),
        )
        torch.testing.assert_close(curves.test_loss[index], expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(curves.metrics["mse"][index], expected, rtol=1e-5, atol=1e-6)


class OfflineTransformer(LightningTransformer):
    """Lightning's demo language model, unchanged but for its data: its ``prepare_data`` downloads WikiText2."""

    def prepare_data(self) -> None:
        pass


def token_task(seed: int) -> tuple[TensorDataset, TensorDataset]:
    """Sequences of a seeded repeating pattern of 5 tokens (of 12): (inputs, next tokens), 16 to train, 4 held out."""
    g = torch.Generator().manual_seed(seed)
    pattern = torch.randperm(12, generator=g)[:5]
    starts = torch.randint(0, 5, (20,), generator=g)
    tokens = torch.stack([pattern[(start + torch.arange(9)) % 5] for start in starts])
    data = TensorDataset(tokens[:, :-1], tokens[:, 1:])
    return TensorDataset(*data[:16]), TensorDataset(*data[16:])


def test_a_language_model_nobody_here_wrote_is_meta_trained_and_evaluated():
    torch.manual_seed(5)
    model = OfflineTransformer(vocab_size=12)
    for module in model.modules():  # deterministic for the reference below: no dropout
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(module, torch.nn.MultiheadAttention):
            module.dropout = 0.0
    languages = SeededTasks(token_task, train_tasks=4, val_tasks=1, test_tasks=2)
    data = TaskDataModule(languages, inner_steps=2, meta_batch_size=2, max_meta_steps=1, batch_size=4)

    def predict(module, batch):
        inputs, targets = batch
        return module(inputs, targets).view(*targets.shape, -1), targets

    evaluation = MetaEvaluation(metrics={"perplexity": Perplexity()}, predict=predict, baseline=False)
    make_trainer([Reptile(meta_lr=0.5), evaluation], max_steps=-1).fit(model, datamodule=data)
    curves = evaluation.history[-1][1]
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def nll(module, batch):
        inputs, targets = batch
        return F.nll_loss(module(inputs, targets), targets.reshape(-1))

    for index, task in enumerate(languages.tasks("test")):
        expected, _ = reference_held_out(
            model, state, task, 2, 4, index, nll, lambda m: torch.optim.SGD(m.model.parameters(), lr=0.1)
        )
        torch.testing.assert_close(curves.test_loss[index], expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(curves.metrics["perplexity"][index], expected.exp(), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------- families
def test_dataset_tasks_names_splits_and_refuses_what_it_cannot_do():
    data = [regression_data(seed) for seed in range(4)]
    tasks = DatasetTasks(dict(zip("abcd", data)), val=["b"], test=["d"], held_out=0.25)
    assert [t.name for t in tasks.tasks("train")] == ["a", "c"] and tasks.num_tasks("val") == 1
    train, test = tasks.tasks("train")[0].train, tasks.tasks("train")[0].test
    assert (len(train), len(test)) == (18, 6)
    assert sorted(train.indices + test.indices) == list(range(24))  # disjoint and complete
    pair = DatasetTasks([(data[0], data[1]), Task("named", data[2], data[3], num_classes=7)], test=[1])
    assert pair.tasks("train")[0].test is data[1] and pair.tasks("test")[0].num_classes == 7
    with pytest.raises(ValueError, match=r"not among the data sets \['a', 'b'\]"):
        DatasetTasks({"a": data[0], "b": data[1]}, test=["z"])
    with pytest.raises(ValueError, match="at least one must meta-train"):
        DatasetTasks({"a": data[0]}, test=["a"])


def test_few_shot_tasks_remap_labels_and_keep_splits_of_classes_apart():
    labels = torch.arange(300) % 30  # 30 classes of 10 samples; the sample's value says its class
    dataset = TensorDataset(labels.float().unsqueeze(1), labels)
    tasks = FewShotTasks(dataset, ways=4, shots=2, queries=3, classes=(0.6, 0.2, 0.2), val_tasks=3, test_tasks=5)
    assert tasks.num_tasks("train") is None and tasks.num_tasks("test") == 5
    splits = {split: set(tasks.classes[split]) for split in ("train", "val", "test")}
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (18, 6, 6)
    assert not (splits["train"] & splits["val"]) and not (splits["train"] & splits["test"])
    for split, index in (("train", 0), ("train", 10**6), ("test", 4)):
        task = tasks.task_at(split, index)
        drawn = task.metadata["classes"]
        assert set(drawn) <= splits[split] and task.num_classes == 4
        for part, per_class in ((task.train, 2), (task.test, 3)):
            assert len(part) == 4 * per_class
            for i in range(len(part)):
                x, y = part[i]
                assert drawn[y] == int(x)  # label y is the y-th class drawn
    again = FewShotTasks(dataset, ways=4, shots=2, queries=3, classes=(0.6, 0.2, 0.2))
    assert again.task_at("train", 7).metadata == tasks.task_at("train", 7).metadata  # a pure function of its seed
    with pytest.raises(ValueError, match="fewer than shots \\+ queries = 20"):
        FewShotTasks(dataset, shots=10, queries=10)


def test_seeded_tasks_give_each_split_its_own_seeds_and_a_pool_without_end():
    made: list[int] = []
    tasks = SeededTasks(lambda seed: made.append(seed) or regression_data(seed), train_tasks=None, val_tasks=2, test_tasks=3)
    assert tasks.num_tasks("train") is None and len(tasks.tasks("test")) == 3
    seeds = {split: [tasks.task_seed(split, i) for i in range(50)] for split in ("train", "val", "test")}
    assert not set(seeds["train"]) & set(seeds["test"]) and len(set(seeds["train"])) == 50
    assert tasks.task_at("train", 123).name == "task-train-123" and made[-1] == tasks.task_seed("train", 123)
    with pytest.raises(IndexError, match="3 'test' tasks"):
        tasks.task_at("test", 3)
    data = TaskDataModule(tasks, inner_steps=2, batch_size=4)
    assert [data.task_info(p).index for p in range(4)] == [0, 1, 2, 3]  # every position of the stream a new task


# ---------------------------------------------------------------------------------------------- meta-steps
@pytest.mark.parametrize(
    "trainer_kwargs,data_kwargs",
    [({}, {}), ({"accumulate_grad_batches": 2}, {}), ({}, {"task_batch": 2}), ({}, {"meta_batch_size": 4, "task_batch": 2})],
)
def test_max_meta_steps_ends_the_run_after_that_many_meta_steps(trainer_kwargs, data_kwargs):
    sizes = {"inner_steps": 2, "meta_batch_size": 2, "max_meta_steps": 3, "batch_size": 4, **data_kwargs}
    leap = Leap()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = TaskDataModule(family("dict"), **sizes)
        make_trainer([leap], max_steps=-1, **trainer_kwargs).fit(DictRegression(), datamodule=data)
    assert leap.meta_steps == 3
    assert not [w for w in caught if "max_epochs" in str(w.message)]  # Lightning's "max_epochs was not set" is moot


def test_max_steps_that_disagrees_with_max_meta_steps_is_one_line_naming_both():
    data = TaskDataModule(family("dict"), inner_steps=2, meta_batch_size=2, max_meta_steps=3, batch_size=4)
    with pytest.raises(MisconfigurationException, match=r"max_steps=5\) disagrees with .*max_meta_steps=3\), which is 12"):
        make_trainer([Leap()], max_steps=5).fit(DictRegression(), datamodule=data)
    agreeing = TaskDataModule(family("dict"), inner_steps=2, meta_batch_size=2, max_meta_steps=3, batch_size=4)
    make_trainer([Leap()], max_steps=12).fit(DictRegression(), datamodule=agreeing)  # the same number: fine


@pytest.mark.parametrize("world_size,parallel,task_batch", [(1, "tasks", None), (2, "tasks", None), (2, "tasks", 2),
                                                             (3, "data", None), (1, "tasks", 4)])
def test_steps_for_is_the_first_step_a_walk_along_the_schedule_reaches_the_meta_step(world_size, parallel, task_batch):
    for origin in ((0, 0), (6, 8) if parallel == "tasks" and world_size == 2 else (10, 5)):
        schedule = TaskSchedule(2, 4, world_size, 0, parallel, origin[0], origin[1], task_batch)
        for meta_steps in range(schedule.meta_steps_done(origin[0]) + 1, 9):
            walked = next(s for s in range(origin[0], 10**4) if schedule.meta_steps_done(s) >= meta_steps)
            assert schedule.steps_for(meta_steps) == walked


# ---------------------------------------------------------------------------------------------- strategies, rules
@pytest.mark.parametrize("strategy", [DeepSpeedStrategy, FSDPStrategy, type("MyDDP", (DDPStrategy,), {})])
def test_every_unsupported_strategy_is_refused_in_one_line(strategy):
    trainer = SimpleNamespace(strategy=strategy.__new__(strategy), datamodule=None)
    with pytest.raises(MisconfigurationException, match=rf"supports a single device, DDP .*, not {strategy.__name__}\.$"):
        Leap().setup(trainer, DictRegression(), "fit")


class FinalLossOnly(TrajectoryRule):
    """A rule that needs the loss at theta_K and nothing else: theta_0 moves by that loss times a unit vector."""

    name = "final_loss_only"
    needs_final_loss = True

    def start(self, theta_0, live):
        self.seen: list[float] = []

    def end(self, live, final_loss):
        self.seen.append(float(final_loss))
        return [torch.full_like(p, float(final_loss)) for p in live]


def test_a_rule_that_needs_only_the_final_loss_receives_it_in_every_door():
    data = TaskDataModule(family("dict"), inner_steps=K, meta_batch_size=1, max_meta_steps=1, batch_size=6)
    torch.manual_seed(6)
    model = DictRegression()
    rule = FinalLossOnly()
    reference = copy.deepcopy(model)
    batches = list(data.task_batches(0))
    optimizer = torch.optim.SGD(reference.parameters(), lr=LR)
    for index, batch in enumerate(batches):
        optimizer.zero_grad()
        reference.training_step(batch, index).backward()
        optimizer.step()
    with torch.no_grad():
        expected = float(reference.training_step(batches[-1], 0))  # f(theta_K) on the task's last batch
    make_trainer([MetaInit(rule)], max_steps=-1).fit(model, datamodule=data)
    assert rule.seen == [pytest.approx(expected, rel=1e-6)]
    plain = MetaLearner(torch.nn.Linear(2, 1), FinalLossOnly())
    plain.start_task()
    plain.end_task(final_loss=lambda: torch.tensor(2.5))
    assert plain.rule.seen == [2.5]


# ---------------------------------------------------------------------------------------------- task-aware modules
class HeadPerTask(DictRegression):
    """Records every task it is told of (TaskAware), in a list its copies for held-out tasks share."""

    started: list[TaskInfo] = []

    def start_task(self, task: TaskInfo) -> None:
        self.started.append(task)


def test_task_aware_modules_hear_of_every_task_from_the_schedule_not_the_batch():
    data = TaskDataModule(family("dict"), inner_steps=2, meta_batch_size=2, max_meta_steps=2, batch_size=4)
    HeadPerTask.started = []
    make_trainer([Leap(), MetaEvaluation(baseline=False)], max_steps=-1).fit(HeadPerTask(), datamodule=data)
    meta_training = [task for task in HeadPerTask.started if not task.held_out]
    assert [task.position for task in meta_training] == [0, 1, 2, 3]
    assert [task.index for task in meta_training] == [data.task_info(p).index for p in range(4)]
    assert [task.task.name for task in meta_training] == [data.task_info(p).task.name for p in range(4)]
    (held_out,) = [task for task in HeadPerTask.started if task.held_out]  # the final evaluation's one test task
    assert (held_out.split, held_out.index, held_out.position, held_out.task.name) == ("test", 0, None, "task-4")
