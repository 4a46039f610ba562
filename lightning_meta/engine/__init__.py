"""The meta-learning engine in plain PyTorch (no Lightning): meta-state, trajectory rules, and the learner that
binds them to a module (:class:`TaskBatchedLearner`: several tasks at once, vectorised; :class:`ShardedMetaLearner`:
parameters sharded over processes by FSDP2). Every front door (Lightning callbacks, Fabric, a plain loop) runs on
it."""

from lightning_meta.engine.batched import TaskBatchedLearner
from lightning_meta.engine.leap import LeapRule
from lightning_meta.engine.learner import MetaLearner
from lightning_meta.engine.meta_state import AllReduce, MetaState, distributed_sum
from lightning_meta.engine.options import MetaOptions
from lightning_meta.engine.reptile import ReptileRule
from lightning_meta.engine.rule import TrajectoryRule
from lightning_meta.engine.runaway import MetaTrainingDiverged, RunawayGuard
from lightning_meta.engine.sharded import ShardedMetaLearner

__all__ = [
    "AllReduce",
    "LeapRule",
    "MetaLearner",
    "MetaOptions",
    "MetaState",
    "MetaTrainingDiverged",
    "ReptileRule",
    "RunawayGuard",
    "ShardedMetaLearner",
    "TaskBatchedLearner",
    "TrajectoryRule",
    "distributed_sum",
]

