"""MetaEvaluation: curves that match a direct computation, and a training run it leaves untouched."""

import csv

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import TinyClassifier, ToyFamily, flat, make_trainer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_meta import Leap, MetaEvaluation
from lightning_meta.data import TaskDataModule
from lightning_meta.data.stream import TaskBatchSampler, TaskCollate, TaskStreamDataset
from lightning_meta.metrics import curve_auc
from lightning_meta.trainer.held_out import one_optimizer

K = 5


def toy_data(meta_batch_size=None):
    return TaskDataModule(ToyFamily(), inner_steps=K, meta_batch_size=meta_batch_size, batch_size=8, tasks_per_epoch=2)


def test_training_is_identical_with_and_without_evaluation():
    results = []
    for callbacks in ([Leap()], [Leap(), MetaEvaluation(every_n_meta_steps=1)]):
        torch.manual_seed(0)
        model = TinyClassifier()
        make_trainer(callbacks, max_steps=6 * K).fit(model, datamodule=toy_data(meta_batch_size=2))
        results.append((flat(model.parameters()), torch.rand(3)))
    assert torch.equal(results[0][0], results[1][0])  # same theta_0
    assert torch.equal(results[0][1], results[1][1])  # same global RNG stream afterwards


def test_curves_with_zero_learning_rate_are_the_init_losses_on_each_batch():
    torch.manual_seed(0)
    model = TinyClassifier(lr=0.0)
    evaluation = MetaEvaluation(split="test", baseline=False, seed=7)
    make_trainer([Leap(), evaluation], max_steps=K).fit(model, datamodule=toy_data(meta_batch_size=1))
    (step, curves), = evaluation.history
    task = ToyFamily().tasks("test")[0]
    sampler = TaskBatchSampler(lambda _: len(task.train), 1, 8, K, 1, seed=7)
    dataset = TaskStreamDataset(lambda _: task)
    expected_loss, expected_error = [], []
    with torch.no_grad():
        for keys in sampler:
            x, y = TaskCollate()([dataset[key] for key in keys])
            logits = model(x)  # lr 0: theta_0 never moved and the module holds it after fit
            expected_loss.append(F.cross_entropy(logits, y))
            expected_error.append((logits.argmax(1) != y).float().mean())
        accuracy = (model(task.test.images.float() / 255).argmax(1) == task.test.labels).float().mean()  # no BatchNorm
    assert step == 1 and curves.loss.shape == (1, K)
    torch.testing.assert_close(curves.loss[0], torch.stack(expected_loss))
    torch.testing.assert_close(curves.error[0], torch.stack(expected_error))
    torch.testing.assert_close(curves.test_accuracy[0], accuracy)


def test_logs_summaries_and_writes_the_figure(tmp_path):
    torch.manual_seed(0)
    evaluation = MetaEvaluation(every_n_meta_steps=2)
    logger = CSVLogger(tmp_path)
    make_trainer([Leap(), evaluation], max_steps=4 * K, logger=logger).fit(TinyClassifier(), datamodule=toy_data(2))
    assert [step for step, _ in evaluation.history] == [2]
    rows = list(csv.DictReader(open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")))
    logged = [float(r["meta_eval/test/meta_init/train_loss_auc"]) for r in rows if r.get("meta_eval/test/meta_init/train_loss_auc")]
    assert logged == [float(curve_auc(evaluation.history[0][1].loss).mean())]
    assert any(r.get("meta_eval/test/initial/test_accuracy") for r in rows)
    assert (tmp_path / "lightning_logs" / "version_0" / "meta_evaluation_test.png").stat().st_size > 10_000


def test_held_out_accuracy_uses_batch_statistics_or_eval_mode():
    from lightning_meta.callbacks.meta_evaluation import adapt

    torch.manual_seed(0)
    model = TinyClassifier(lr=0.0, batch_norm=True)
    model.net[2].momentum = 0.0  # training steps leave the running statistics where they are
    model.net[2].running_mean.fill_(0.3)
    task = ToyFamily().tasks("test")[0]
    images, labels = task.test.images.float() / 255, task.test.labels
    with torch.no_grad():
        accuracies = {}
        for train_mode in (True, False):
            model.train(train_mode)
            accuracies[train_mode] = (model(images).argmax(1) == labels).float().mean()
    assert accuracies[True] != accuracies[False]
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for batch_statistics in (True, False):
        curves = adapt(model, state, [task], inner_steps=1, batch_size=8, seed=0, batch_statistics=batch_statistics)
        torch.testing.assert_close(curves.test_accuracy[0], accuracies[batch_statistics])
        torch.testing.assert_close(curves.test_accuracy_batch_statistics[0], accuracies[True])  # both modes, named
        torch.testing.assert_close(curves.test_accuracy_running_statistics[0], accuracies[False])


def test_running_statistics_are_the_training_steps_and_final_error_is_on_all_training_images():
    """Eval-mode accuracy uses the running statistics the task's steps left (scoring with batch statistics before it
    must not move them); the final training error is the error on all the task's training images after training."""
    from lightning_meta.callbacks.meta_evaluation import Scoring, _OutputHook, adapt

    torch.manual_seed(0)
    model = TinyClassifier(lr=0.0, batch_norm=True)  # weights stay put; BatchNorm's running statistics move
    task = ToyFamily().tasks("test")[0]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    reference = TinyClassifier(lr=0.0, batch_norm=True)
    reference.load_state_dict(state)
    reference.train()
    dataset = TaskStreamDataset(lambda _: task)
    images, labels = task.test.images.float() / 255, task.test.labels
    with torch.no_grad():
        for keys in TaskBatchSampler(lambda _: len(task.train), 1, 8, 3, 1, seed=5):  # the 3 steps move the statistics
            reference(TaskCollate()([dataset[key] for key in keys])[0])
        running = reference.eval()(images).argmax(1).eq(labels).float().mean()
        batch = reference.train()(images).argmax(1).eq(labels).float().mean()
    for batch_statistics in (True, False):
        curves = adapt(model, state, [task], inner_steps=3, batch_size=8, seed=5, batch_statistics=batch_statistics)
        torch.testing.assert_close(curves.test_accuracy_running_statistics[0], running)
        torch.testing.assert_close(curves.test_accuracy_batch_statistics[0], batch)
        trained_on = batch if batch_statistics else running  # ToyFamily trains and tests on the same images
        assert curves.summary()["final_train_error"] == pytest.approx(1 - float(trained_on))
    buffers = [b.clone() for b in reference.buffers()]
    Scoring().score(reference, task.test, torch.device("cpu"), True, _OutputHook(reference))  # e.g. early stopping
    assert all(torch.equal(a, b) for a, b in zip(buffers, reference.buffers()))


def test_a_data_module_without_held_out_tasks_is_named_with_what_it_lacks():
    class Partial(L.LightningDataModule):
        inner_steps = 3

        def tasks(self, split):
            return ToyFamily().tasks(split)

        def train_dataloader(self):
            return toy_data().train_dataloader()

    with pytest.raises(MisconfigurationException, match=r"needs Partial to have batch_size, collate_fn \(HeldOutTasks"):
        make_trainer([MetaEvaluation()], max_steps=1).fit(TinyClassifier(), datamodule=Partial())


def test_held_out_training_reads_every_documented_form_of_configure_optimizers():
    params = [torch.nn.Parameter(torch.zeros(1))]
    sgd = torch.optim.SGD(params, lr=0.1)
    per_step = {"scheduler": torch.optim.lr_scheduler.StepLR(sgd, 1), "interval": "step"}
    per_epoch = torch.optim.lr_scheduler.StepLR(sgd, 1)  # Lightning's default interval is "epoch"
    assert one_optimizer(sgd) == (sgd, [])
    assert one_optimizer([sgd]) == (sgd, [])
    assert one_optimizer({"optimizer": sgd, "lr_scheduler": per_step}) == (sgd, [per_step["scheduler"]])
    assert one_optimizer([{"optimizer": sgd, "lr_scheduler": per_epoch}]) == (sgd, [])
    assert one_optimizer(([sgd], [per_step, per_epoch])) == (sgd, [per_step["scheduler"]])
    with pytest.raises(MisconfigurationException, match="one optimizer"):
        one_optimizer([sgd, torch.optim.SGD(params, lr=0.2)])
