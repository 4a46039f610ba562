"""The progress bar carries the meta-learning counters (meta/task, meta/step) for every kind of meta-learner, and
:class:`MetaProgressBar` shows the whole run in meta-steps with a labelled line per held-out evaluation.

Expected values are counted by hand from the schedule: which task of the stream is trained last, and how many
meta-steps are done when it is logged; the schedule's meta-step count against a walk along the stream.
"""

from __future__ import annotations

import io
import logging
import re
from contextlib import contextmanager

import pytest
import torch
from helpers import TinyClassifier, ToyFamily, make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from test_maml import TinyMAML, WithPlainStep

from lightning_meta import Leap, MetaEvaluation
from lightning_meta.callbacks import MetaCheckpoint, MetaProgressBar
from lightning_meta.callbacks.progress import _ClearBars, held_out_progress
from lightning_meta.data import EpisodeDataModule, TaskDataModule
from lightning_meta.families import DocumentDataModule
from lightning_meta.data.schedule import TaskSchedule
from lightning_meta.families import TextDocuments
from lightning_meta.families.quadratics import QuadraticOptimizee, RandomQuadratics
from lightning_meta.models import DynamicalLanguageModel
from lightning_meta.optim import LearnedOptimizerTraining


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
    assert trainer.progress_bar_metrics["meta/first_task"] == 2.0  # the batch trains tasks 2 and 3: "tasks 2-3"


# --- MetaProgressBar: the whole run, in meta-steps -------------------------------------------------------------------

def plain_meta_steps(schedule: TaskSchedule, steps: int) -> int:
    """Walk the stream one optimizer step at a time: every finished task of a process stands for ``world_size``
    tasks of the meta-batch when the processes share it task-parallel; a full meta-batch is a meta-step."""
    done, in_batch = schedule.origin_task // schedule.meta_batch_size, schedule.origin_task % schedule.meta_batch_size
    for step in range(schedule.origin_step + 1, steps + 1):
        if (step - schedule.origin_step) % schedule.inner_steps == 0:
            in_batch += schedule.world_size if schedule.task_parallel else 1
            if in_batch == schedule.meta_batch_size:
                done, in_batch = done + 1, 0
    return done


@pytest.mark.parametrize("schedule", [
    TaskSchedule(inner_steps=3, meta_batch_size=4),
    TaskSchedule(inner_steps=2, meta_batch_size=4, world_size=2, rank=1),
    TaskSchedule(inner_steps=2, meta_batch_size=3, world_size=2, rank=0, parallel="data"),
    TaskSchedule(inner_steps=2, meta_batch_size=4, world_size=2, rank=0, origin_step=6, origin_task=8),  # resumed
    TaskSchedule(inner_steps=5, meta_batch_size=4, origin_step=10, origin_task=6),  # resumed mid-meta-batch
], ids=["one process", "task-parallel", "data-parallel", "resumed on 2 processes", "resumed mid-batch"])  # fmt: skip
def test_the_schedule_counts_meta_steps_as_a_walk_along_the_stream_does(schedule):
    start = schedule.origin_step
    assert [schedule.meta_steps_done(s) for s in range(start, start + 41)] == [
        plain_meta_steps(schedule, s) for s in range(start, start + 41)
    ]


class RecordingBar(MetaProgressBar):
    """Keeps the label, total and advances of every held-out bar, and the run bar's label and count as each
    held-out bar opens."""

    def __init__(self):
        super().__init__()
        self.held_out_bars: list[list] = []
        self.run_bar_at_held_out: list[tuple[str, int]] = []

    @contextmanager
    def held_out(self, label, total):
        record = [label, total, 0]
        self.held_out_bars.append(record)
        with super().held_out(label, total) as advance:
            self.run_bar_at_held_out.append((self.train_progress_bar.desc, self.train_progress_bar.n))

            def counted():
                record[2] += 1
                advance()

            yield counted


def test_the_bar_spans_the_run_and_its_evaluations_in_meta_steps_and_labels_each_held_out_evaluation():
    # 2 steps a task, 2 tasks a meta-step, 10 steps: meta-steps end at steps 4 and 8; steps 9 and 10 train task 4.
    # MetaEvaluation trains the one test task for 2 steps: the initial weights and meta-step 1 after step 4,
    # meta-step 2 after step 8. The run is 10 training steps and 3 x 2 held-out steps.
    data = TaskDataModule(ToyFamily(), inner_steps=2, meta_batch_size=2, batch_size=4)
    bar = RecordingBar()
    callbacks = [Leap(meta_lr=0.1), MetaEvaluation(every_n_meta_steps=1), bar]
    trainer, module = make_trainer(callbacks, max_steps=10, enable_progress_bar=True), TinyClassifier()
    trainer.fit(module, datamodule=data)
    train = bar.train_progress_bar
    assert (train.n, train.total) == (16, 16)
    assert train.disable  # closed: a message logged now gets its own line
    assert train.desc == "Meta-training: 2/2 meta-steps, task 4: "  # tqdm puts the colon
    assert bar.run_bar_at_held_out == [  # the meta-step just done, and the steps so far, held-out ones included
        ("Meta-training: 1/2 meta-steps, task 1: ", 4),
        ("Meta-training: 1/2 meta-steps, task 1: ", 6),
        ("Meta-training: 2/2 meta-steps, task 3: ", 12),
    ]
    assert {"meta/task", "meta/step"} <= set(trainer.progress_bar_metrics)  # in the label, not again after the bar
    assert not {"meta/task", "meta/step", "v_num"} & set(bar.get_metrics(trainer, module))
    label = "Held-out evaluation, {} (1 test tasks x 2 steps)"
    weights = ["initial weights", "meta-step 1", "meta-step 2"]
    assert bar.held_out_bars == [[label.format(w), 2, 2] for w in weights]


def test_maml_counts_one_meta_step_per_training_step_and_its_evaluations_say_so():
    data = EpisodeDataModule(ToyFamily(), inner_steps=1, batch_size=4, meta_batch_size=2, query_size=4)
    bar = RecordingBar()
    trainer = make_trainer([MetaEvaluation(), bar], max_steps=3, limit_val_batches=0, enable_progress_bar=True)
    trainer.fit(WithPlainStep(inputs=16, inner_steps=1, inner_lr=0.1), datamodule=data)
    assert bar.train_progress_bar.desc == "Meta-training: 3/3 meta-steps, tasks 4-5: "  # a batch of 2 episodes
    label = "Held-out evaluation, {} (1 test tasks x 1 steps)"
    assert bar.held_out_bars == [[label.format("initial weights"), 1, 1], [label.format("meta-step 3"), 1, 1]]


def test_a_plain_trainer_with_a_meta_learner_shows_the_meta_progress_bar_in_place_of_lightnings():
    data = TaskDataModule(ToyFamily(), inner_steps=2, meta_batch_size=2, batch_size=4)
    trainer = make_trainer([Leap()], max_steps=4, enable_progress_bar=True)
    assert type(trainer.progress_bar_callback) is TQDMProgressBar  # Lightning's default, one bar per epoch
    trainer.fit(TinyClassifier(), datamodule=data)
    bar = trainer.progress_bar_callback
    assert isinstance(bar, MetaProgressBar) and bar.train_progress_bar.total == 4
    assert bar.train_progress_bar.desc == "Meta-training: 1/1 meta-steps, task 1: "
    assert sum(isinstance(c, ProgressBar) for c in trainer.callbacks) == 1


def test_a_progress_bar_of_the_users_own_is_kept():
    class Mine(TQDMProgressBar):
        pass

    data = TaskDataModule(ToyFamily(), inner_steps=2, meta_batch_size=2, batch_size=4)
    mine = Mine()
    make_trainer([Leap(), mine], max_steps=4, enable_progress_bar=True).fit(TinyClassifier(), datamodule=data)
    assert mine.train_progress_bar.total == 4 and mine.train_progress_bar.desc.startswith("Epoch")


def test_a_message_logged_while_the_bar_is_open_erases_it_first_so_the_message_gets_its_own_line():
    screen = io.StringIO()
    bar = Tqdm(total=10, file=screen, desc="Meta-training")
    bar.update(3)
    _ClearBars(lambda: [bar]).filter(logging.makeLogRecord({"msg": "`Trainer.fit` stopped"}))
    written = screen.getvalue()
    assert written.endswith("\r") and written.split("\r")[-2].strip() == ""  # the line blank, the cursor at its start
    bar.close()


def test_the_language_models_pretraining_is_labelled_so_and_counts_no_meta_steps(capsys):
    # 2 pretraining batches of 2 truncation windows (4 steps), then 1 meta-training batch (2 meta-steps)
    model = DynamicalLanguageModel(hidden_size=8, num_layers=1, pretrain_batches=2, truncation=2, evaluate=False)
    data = DocumentDataModule(TextDocuments(), segment=8, inner_steps=4)
    trainer = make_trainer([], max_steps=6, enable_progress_bar=True)
    trainer.fit(model, datamodule=data)
    assert model.pretraining_steps == 4
    shown = [re.split(r":\s+\d+%", line)[0] for line in re.split(r"[\r\n]", capsys.readouterr().out) if "%" in line]
    assert shown == [
        "Pretraining: 0/4 steps", "Pretraining: 2/4 steps", "Meta-training: 0/2 meta-steps, task 1",
        "Meta-training: 2/2 meta-steps, task 2", "Meta-training: 2/2 meta-steps, task 2",
    ]  # fmt: skip


def test_a_run_without_a_meta_learner_counts_steps_and_an_epoch_run_keeps_lightnings_bar():
    data = TaskDataModule(ToyFamily(), inner_steps=2, batch_size=4, tasks_per_epoch=2)
    bar = MetaProgressBar()
    make_trainer([bar], max_steps=6, enable_progress_bar=True).fit(TinyClassifier(), datamodule=data)
    assert (bar.train_progress_bar.desc, bar.train_progress_bar.total) == ("Training: ", 6)
    bar = MetaProgressBar()
    trainer = make_trainer([bar], max_steps=-1, max_epochs=2, enable_progress_bar=True)
    trainer.fit(TinyClassifier(), datamodule=data)
    assert (bar.train_progress_bar.desc, bar.train_progress_bar.total) == ("Epoch 1: ", 4)  # Lightning's, per epoch


def test_held_out_progress_without_a_meta_progress_bar_logs_its_label_once(caplog):
    trainer = make_trainer([], max_steps=1)
    with caplog.at_level(logging.INFO), held_out_progress(trainer, "Held-out evaluation, meta-step 3", 4) as advance:
        for _ in range(4):
            advance()
    assert [r.getMessage() for r in caplog.records if "Held-out" in r.getMessage()] == [
        "Held-out evaluation, meta-step 3"
    ]


def test_a_resumed_run_counts_on_from_its_checkpoint(tmp_path):
    # 2 steps a task, 2 tasks a meta-step: the first run stops after 4 steps (1 meta-step), the second goes to 12
    data = TaskDataModule(ToyFamily(), inner_steps=2, meta_batch_size=2, batch_size=4)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    first = make_trainer([Leap(), checkpoint], max_steps=4, enable_checkpointing=True)
    first.fit(TinyClassifier(), datamodule=data)
    bar = MetaProgressBar()
    second = make_trainer([Leap(), bar], max_steps=12, enable_progress_bar=True)
    second.fit(TinyClassifier(), datamodule=data, ckpt_path=tmp_path / "last.ckpt")
    train = bar.train_progress_bar
    assert (train.initial, train.n, train.total) == (4, 12, 12)  # the ETA counts the 8 steps this run takes
    assert train.desc == "Meta-training: 3/3 meta-steps, task 5: "


def test_checkpoint_files_are_named_in_meta_steps(tmp_path):
    # 2 steps a task, 2 tasks a meta-step: a file every 4 steps is meta-steps 1 and 2; 8 steps are 2 meta-steps
    data = TaskDataModule(ToyFamily(), inner_steps=2, meta_batch_size=2, batch_size=4)
    checkpoint = MetaCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1, save_last=True)
    make_trainer([Leap(), checkpoint], max_steps=8, enable_checkpointing=True).fit(TinyClassifier(), datamodule=data)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["final.ckpt", "last.ckpt", "meta-step=1.ckpt", "meta-step=2.ckpt"]


def test_without_a_meta_learner_checkpoint_names_count_optimizer_steps(tmp_path):
    data = TaskDataModule(ToyFamily(), inner_steps=2, batch_size=4, tasks_per_epoch=2)
    checkpoint = MetaCheckpoint(dirpath=tmp_path, every_n_train_steps=4)
    make_trainer([checkpoint], max_steps=4, enable_checkpointing=True).fit(TinyClassifier(), datamodule=data)
    assert [p.name for p in tmp_path.iterdir()] == ["step=4.ckpt"]  # not the epochs of the task stream
