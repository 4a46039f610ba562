"""The Lightning callbacks on a sharded model: Lightning's ``ModelParallelStrategy`` with FSDP2's ``fully_shard``.

The module shards itself in ``configure_model`` (Lightning's way), the callback meta-learns with a
:class:`~lightning_meta.engine.ShardedMetaLearner` (what is sharded and what is reduced when:
:mod:`lightning_meta.engine.sharded`). Under this strategy the processes train every task together, each on its
share of every batch: ``parallel="data"``; tasks trained together (``task_batch``) are refused.

Checkpoints: Lightning saves the model and its optimizer sharded (a folder, ``save_distributed_checkpoint=True``) or
gathered on process 0 (one file), and the callbacks' states from process 0 only. So the callback's state holds every
process's shards, gathered on process 0 (``"shards"``: one state per process, on the CPU), and each process takes its
own back on resume (on as many processes); the model's weights in the checkpoint are theta_0, in the strategy's own
format. A resumed run is bitwise the uninterrupted one.

Examples:
    >>> import lightning as L
    >>> from lightning.pytorch.strategies import ModelParallelStrategy
    >>> from lightning_meta import Leap
    >>> strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    >>> trainer = L.Trainer(strategy=strategy, devices=2, callbacks=[Leap()], use_distributed_sampler=False,
    ...                     logger=False)  # with TaskDataModule(..., parallel="data")

    with a module that shards itself (``self.device_mesh`` exists under this strategy only)::

        def configure_model(self):
            for block in self.blocks:
                fully_shard(block, mesh=self.device_mesh["data_parallel"])
            fully_shard(self.net, mesh=self.device_mesh["data_parallel"])
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_meta.data.schedule import TaskSchedule
from lightning_meta.engine import MetaLearner, ShardedMetaLearner, TrajectoryRule
from lightning_meta.engine.sharded import sharded


def check_setup(trainer: L.Trainer, name: str, schedule: TaskSchedule) -> None:
    """Under ``ModelParallelStrategy``: data-parallel tasks, one at a time; else nothing to check."""
    if not isinstance(trainer.strategy, ModelParallelStrategy):
        return
    if schedule.parallel != "data":
        raise MisconfigurationException(
            f"{name}: under ModelParallelStrategy the processes hold shards of one model and train every task "
            "together, each on its share of every batch: pass parallel='data' to the data module "
            "(TaskDataModule(parallel='data'), --data.parallel=data)."
        )
    if schedule.task_batch is not None:
        raise MisconfigurationException(
            f"{name}: tasks trained together (task_batch={schedule.task_batch}) are not supported on a sharded model "
            "(ModelParallelStrategy): leave task_batch unset."
        )


def meta_learner(
    trainer: L.Trainer, module: L.LightningModule, rule: TrajectoryRule, name: str, **arguments: Any
) -> MetaLearner:
    """The callback's learner: a :class:`~lightning_meta.engine.ShardedMetaLearner` for a module whose parameters are
    ``DTensor``s, summing with ``torch.distributed.all_reduce`` itself (Lightning's ``strategy.reduce`` adds a
    barrier to every call: a second collective, and a host-device synchronisation on NCCL); else a
    :class:`~lightning_meta.engine.MetaLearner` with the callback's ``arguments``."""
    learner_type: type[MetaLearner] = MetaLearner
    if sharded(module):
        learner_type, arguments = ShardedMetaLearner, {**arguments, "all_reduce": None}
    elif isinstance(trainer.strategy, ModelParallelStrategy):
        raise MisconfigurationException(
            f"{name}: under ModelParallelStrategy, {type(module).__name__}.configure_model must shard the module "
            "(fully_shard(..., mesh=self.device_mesh['data_parallel'])); its parameters are ordinary tensors, which "
            "no one keeps in step across processes."
        )
    try:
        return learner_type(module, rule, **arguments)
    except ValueError as error:
        raise MisconfigurationException(f"{name}: {error}") from None


def gather_shards(state: dict[str, Any]) -> dict[str, Any]:
    """The callback's ``state`` with every process's (its shards, on the CPU) in ``"shards"`` on process 0, which
    alone writes the callbacks' states; one collective, made by every process."""
    mine = move_data_to_device(state, torch.device("cpu"))
    first = torch.distributed.get_rank() == 0
    everyone: list[Any] | None = [None] * torch.distributed.get_world_size() if first else None
    torch.distributed.gather_object(mine, everyone, dst=0)
    shared = {key: state[key] for key in ("names", "tasks_per_step", "counters")}  # the same on every process
    return {**shared, "shards": everyone}


def own_shards(trainer: L.Trainer, state: dict[str, Any]) -> dict[str, Any]:
    """This process's part of a state from :func:`gather_shards` (a state without shards, as it is)."""
    if "shards" not in state:
        return state
    shards = state["shards"]
    if len(shards) != trainer.world_size:
        raise MisconfigurationException(
            f"the checkpoint holds the meta-state's shards of {len(shards)} processes: resume it on {len(shards)} "
            f"processes, not {trainer.world_size}."
        )
    return shards[trainer.global_rank]


@torch.no_grad()
def init_weights(trainer: L.Trainer, learner: MetaLearner) -> dict[str, Any]:
    """The module's weights with theta_0 (and the buffers' start values), in the strategy's own format (sharded, or
    gathered on process 0): theta_0 is loaded into the module for the strategy to read, and the task's weights and
    buffers are put back."""
    live = [t.clone() for t in learner.live]
    buffers = {n: b.clone() for n, b in learner.module.named_buffers()}
    learner.load_init()
    try:
        weights = trainer.strategy.lightning_module_state_dict()
        return {n: t.clone() for n, t in weights.items()}  # on the CPU, the strategy's tensors may be the module's
    finally:
        torch._foreach_copy_(learner.live, live)
        for name, buffer in learner.module.named_buffers():
            buffer.copy_(buffers[name])
