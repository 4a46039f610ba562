"""One meta-training run for the DDP tests, launched as ``python tests/ddp_worker.py SPEC.json``.

With ``devices > 1`` Lightning's own DDP launcher starts the other processes by running this script again (gloo on
CPU). Rank 0 writes ``result.pt``: the meta-learned init as a flat float64 vector, the theta_0 checksum of every
process (gathered) and what the callbacks counted. The spec is a JSON object:

    method: "leap" | "reptile" | "maml"; parallel: "tasks" | "data"; devices; meta_batch_size; inner_steps;
    task_batch (tasks trained together, or null); batch: "images" (the default: (x, y) batches of a classifier) or
    "dict" (dict batches of a regression, through DictRegression);
    meta_steps; batch_size; nan_task (a stream task whose loss is NaN, or null); evaluate (MetaEvaluation at the
    end, and every ``evaluate_every`` meta-steps; with the initial weights' curves if ``baseline``); checkpoint_every
    (save checkpoints every n steps into out/checkpoints); kill_at (the process SIGKILLs itself at the end of this
    step; only the process of rank kill_rank if that is given); signal_at (the process of rank signal_rank sends
    itself SIGTERM during this step, with a CheckpointOnSignal callback on every process); csv (log to out/logs with
    a CSVLogger); resume (a checkpoint to resume from); strategy ("model_parallel": Lightning's ModelParallelStrategy,
    the module sharding itself with fully_shard; else DDP); distributed_checkpoint (under model_parallel: the
    strategy's save_distributed_checkpoint, default true); optimizer (the module's: "sgd", the default, or "adam");
    out (a folder).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy

sys.path.insert(0, str(Path(__file__).parent))

from helpers import DictRegression, DictSamples, TinyClassifier, ToyFamily, regression_data  # noqa: E402

from lightning_meta import Leap, MetaEvaluation, Reptile  # noqa: E402
from lightning_meta.callbacks import CheckpointOnSignal  # noqa: E402
from lightning_meta.data import EpisodeDataModule, TaskDataModule  # noqa: E402
from lightning_meta.families import DatasetTasks  # noqa: E402
from lightning_meta.mixins import MAMLMixin  # noqa: E402


class NaNOnTask(TinyClassifier):
    """A TinyClassifier whose loss is NaN on one task of the stream."""

    def __init__(self, nan_task: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.nan_task = nan_task
        self.poisoned = False

    def start_task(self, task):  # TaskAware: the meta-learner says which task of the stream starts
        self.poisoned = task.position is not None and task.position == self.nan_task

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.poisoned else loss


class ShardedNaNOnTask(NaNOnTask):
    """A NaNOnTask that shards each linear layer and the network over the processes (FSDP2) under
    ModelParallelStrategy, as a LightningModule does in ``configure_model``."""

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)


class TinyMAML(MAMLMixin, TinyClassifier):
    def __init__(self, inner_steps: int) -> None:
        super().__init__(lr=0.5)
        self.configure_maml(inner_steps=inner_steps, inner_lr=0.4)


class KillAt(L.Callback):
    """kill -9 of this very process at the end of an optimizer step: nothing gets to clean up or save. The time of the
    kill goes to ``killed_at`` in the Trainer's root folder."""

    def __init__(self, step: int, rank: int | None = None) -> None:
        self.step = step
        self.rank = rank

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and self.rank in (None, trainer.global_rank):
            (Path(trainer.default_root_dir) / "killed_at").write_text(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)


class SigtermAt(L.Callback):
    """SIGTERM to this process in the middle of optimizer step ``step``, on the process of rank ``rank`` only."""

    def __init__(self, step: int, rank: int) -> None:
        self.step = step
        self.rank = rank

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            os.kill(os.getpid(), signal.SIGTERM)


def main(spec: dict) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    out = Path(spec["out"])
    model_parallel = spec.get("strategy") == "model_parallel"
    family = ToyFamily(num_tasks=12, held_out=3)
    if spec.get("batch") == "dict":
        family = DatasetTasks([DictSamples(regression_data(seed)) for seed in range(12)], val=[9, 10], test=[11])
    size = dict(inner_steps=spec["inner_steps"], meta_batch_size=spec["meta_batch_size"], batch_size=spec["batch_size"])
    size["max_meta_steps"] = spec["meta_steps"]  # the data module stops fit there, whatever the processes
    callbacks: list[L.Callback] = []
    if spec["method"] == "maml":
        model: L.LightningModule = TinyMAML(spec["inner_steps"])
        data: L.LightningDataModule = EpisodeDataModule(family, query_size=8, **size)
    elif spec.get("batch") == "dict":
        model = DictRegression()
    else:
        optimizer = spec.get("optimizer", "sgd")
        model = (ShardedNaNOnTask if model_parallel else NaNOnTask)(nan_task=spec.get("nan_task"), optimizer=optimizer)
    if spec["method"] != "maml":
        data = TaskDataModule(family, task_batch=spec.get("task_batch"), parallel=spec["parallel"], **size)
        rule = Leap if spec["method"] == "leap" else Reptile
        callbacks.append(rule(meta_lr=0.5))
    if spec.get("evaluate"):
        every = spec.get("evaluate_every", 0)
        baseline = spec.get("baseline", False)
        callbacks.append(MetaEvaluation(split="test", inner_steps=4, every_n_meta_steps=every, baseline=baseline))
    if spec.get("checkpoint_every"):
        every = spec["checkpoint_every"]
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(out / "checkpoints", every_n_train_steps=every, save_top_k=-1))
    if spec.get("kill_at"):
        callbacks.append(KillAt(spec["kill_at"], spec.get("kill_rank")))
    if spec.get("signal_at"):
        callbacks += [SigtermAt(spec["signal_at"], spec.get("signal_rank", 0)), CheckpointOnSignal()]
    logger = L.pytorch.loggers.CSVLogger(out / "logs", name="", version="") if spec.get("csv") else False
    strategy = "ddp" if spec["devices"] > 1 else "auto"
    if model_parallel:
        save_distributed = spec.get("distributed_checkpoint", True)
        strategy = ModelParallelStrategy(spec["devices"], 1, save_distributed_checkpoint=save_distributed)
    trainer = L.Trainer(
        accelerator="cpu", devices=spec["devices"], strategy=strategy,
        use_distributed_sampler=False, callbacks=callbacks, logger=logger,
        enable_checkpointing=bool(spec.get("checkpoint_every")), enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, default_root_dir=out,
    )
    trainer.fit(model, datamodule=data, ckpt_path=spec.get("resume"))
    meta = next((c for c in callbacks if isinstance(c, (Leap, Reptile))), None)
    theta_0 = meta.theta_0 if meta else model.parameters()
    if model_parallel:  # this process's shards: the whole tensors from theta_0 laid out like the parameters
        parts = meta.learner.init_state_dict()
        theta_0 = [parts[name].full_tensor() for name in meta.names]
    init = torch.cat([p.detach().double().flatten() for p in theta_0])
    checksums = trainer.strategy.all_gather(init.sum().float().reshape(1)).flatten().tolist()
    evaluation = next((c for c in callbacks if isinstance(c, MetaEvaluation)), None)
    if trainer.is_global_zero:
        torch.save({
            "init": init,
            "checksums": checksums,
            "meta_steps": meta.meta_steps if meta else trainer.global_step,
            "global_step": trainer.global_step,
            "evaluation": evaluation.history[-1][1] if evaluation else None,
            "history": evaluation.history if evaluation else None,
            "initial": evaluation.initial if evaluation else None,
        }, out / "result.pt")


if __name__ == "__main__":
    main(json.loads(Path(sys.argv[1]).read_text()))
