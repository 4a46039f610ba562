"""What a meta-learning callback refuses when ``fit`` sets up, each in one line that names the fix: manual
optimisation, an unsupported strategy, no task data module, an ``include`` that matches nothing, and what tasks
trained together or sharded parameters cannot do.

Examples:
    >>> SUPPORTED_STRATEGIES[0].__name__
    'SingleDeviceStrategy'
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, SingleDeviceStrategy, Strategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_meta.data.datamodule import StreamDataModule, task_datamodule
from lightning_meta.engine.learner import select_parameters
from lightning_meta.trainer import sharded
from lightning_meta.trainer.task_batched import TaskBatchedTraining
from lightning_meta.utils import ParamFilter

SUPPORTED_STRATEGIES: tuple[type[Strategy], ...] = (SingleDeviceStrategy, DDPStrategy, ModelParallelStrategy)
"""The strategies the meta-learning callbacks run under, by exact class (``"ddp"``, ``"ddp_spawn"``,
``"ddp_notebook"`` are :class:`DDPStrategy`; DeepSpeed's strategy subclasses it but shards the model its own way;
``ModelParallelStrategy`` with a module sharded by FSDP2's ``fully_shard``: :mod:`~lightning_meta.trainer.sharded`)."""


def check_meta_fit(
    trainer: L.Trainer, pl_module: L.LightningModule, include: str | ParamFilter | None, owner: str
) -> tuple[StreamDataModule, list[str]]:
    """Refuse what the callback ``owner`` cannot meta-learn; return the task stream and the meta-learned
    parameters' names."""
    if not pl_module.automatic_optimization:
        raise MisconfigurationException(
            f"{owner} hooks Lightning's automatic optimisation; {type(pl_module).__name__} uses manual "
            "optimisation. Set `self.automatic_optimization = True` or use the MAML mixin instead."
        )
    if type(trainer.strategy) not in SUPPORTED_STRATEGIES:
        raise MisconfigurationException(
            f"{owner} supports a single device, DDP (strategy='ddp', 'ddp_spawn' or 'ddp_notebook') and "
            f"ModelParallelStrategy (a module sharded with FSDP2), not {type(trainer.strategy).__name__}."
        )
    datamodule = task_datamodule(trainer)
    if datamodule is None:
        raise MisconfigurationException(
            f"{owner} trains a stream of tasks: fit with a task data module, e.g. "
            "trainer.fit(model, datamodule=TaskDataModule(family, inner_steps=..., meta_batch_size=...)) with a "
            "family of your data sets (DatasetTasks, FewShotTasks, SeededTasks)."
        )
    try:
        names = [n for n, _ in select_parameters(pl_module, include)]
    except ValueError as error:
        raise MisconfigurationException(f"{owner}: {error}") from None
    schedule = datamodule.schedule
    sharded.check_setup(trainer, owner, schedule)
    if schedule.task_batch is not None:
        if schedule.parallel == "data" and schedule.world_size > 1:
            raise MisconfigurationException(
                f"{owner}: tasks trained together (task_batch={schedule.task_batch}) are each process's own: use "
                "parallel='tasks' under DDP, or leave task_batch unset."
            )
        TaskBatchedTraining.check_setup(trainer, schedule.task_batch, owner)
    return datamodule, names
