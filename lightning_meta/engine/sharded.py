"""Meta-learn the initialisation of a model whose parameters are sharded over processes (FSDP2's ``fully_shard``).

Under ``torch.distributed.fsdp.fully_shard`` every parameter is a ``DTensor`` and each process holds one shard of it.
A :class:`ShardedMetaLearner` keeps everything it adds in the same shards: theta_0, the meta-gradient being gathered,
the meta-optimizer's state and the rule's buffers (Leap's three copies) are this process's shards only, so their
memory per process falls with the number of processes. FSDP is data-parallel: all processes train every task, each on
its share of every batch, and hold the same gradients' shards. What needs the whole vector is summed from partial
sums, with as few collectives as the maths allows (each carries a few numbers, never a tensor of the model's size):

- inside a task, Leap's segment length ``l_i`` (``p=1``, or the loss term): one per inner step, for ``|dtheta_i|^2``
  and ``df_i`` together; ``p=2`` without the loss term: none (one at the task end, for the path length); Reptile:
  none;
- at each task end, whether its meta-gradient is finite and the :class:`~lightning_meta.engine.RunawayGuard`'s
  figures: one, for all the tasks trained together;
- at each meta-step, the guard's check of the step: one (none without a guard). The meta-gradients themselves are
  never reduced: each process holds the meta-gradient's shard that goes with its theta_0 shard.

Losses: each process hands in its own batch's loss; the rule and the guard work with its share of the mean over the
processes (``loss / processes``), whose sums are the mean loss.

Supported layouts: every meta-learned parameter a ``DTensor`` on one device mesh that spans all processes, each of its
dimensions ``Shard`` or ``Replicate``, every parameter replicated over the same number of processes: ``fully_shard``
on a 1-D mesh (FSDP) or on a ``(replicate, shard)`` mesh (HSDP). The meta-optimizer must act element by element
(:data:`~lightning_meta.engine.batched.ELEMENTWISE_OPTIMIZERS`), since it steps theta_0's shards.

A state from :meth:`ShardedMetaLearner.state_dict` holds this process's shards: each process saves its own and loads
it back on the same number of processes (resumes are bitwise equal to the uninterrupted run). theta_0 as the model's
weights: :meth:`~lightning_meta.engine.MetaLearner.load_init`, then FSDP's own tools
(``torch.distributed.checkpoint.state_dict.get_model_state_dict``), or :meth:`ShardedMetaLearner.init_state_dict`.

Examples:
    On each of the processes of a ``torch.distributed`` run (``torchrun --nproc_per_node 2 train.py``; the loop of
    :class:`~lightning_meta.engine.MetaLearner`, each process on its share of each batch)::

        torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(minutes=2))  # "nccl" on GPUs
        fully_shard(model, mesh=init_device_mesh("cpu", (torch.distributed.get_world_size(),)))
        meta = ShardedMetaLearner(model, LeapRule(), meta_batch_size=20, meta_lr=0.1)

    On one process, a mesh of one shard behaves like the unsharded learner:

    >>> import torch
    >>> import torch.nn.functional as F
    >>> from torch.distributed.device_mesh import init_device_mesh
    >>> from torch.distributed.fsdp import fully_shard
    >>> from lightning_meta.engine import LeapRule
    >>> fresh = not torch.distributed.is_initialized()  # else: a process group of one made earlier (a Trainer)
    >>> if fresh:
    ...     torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    >>> model = fully_shard(torch.nn.Linear(4, 2), mesh=init_device_mesh("cpu", (1,)))
    >>> meta = ShardedMetaLearner(model, LeapRule(), meta_batch_size=2)
    >>> for task in range(2):
    ...     meta.start_task()
    ...     inner = torch.optim.SGD(model.parameters(), lr=0.1)
    ...     x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    ...     for step in range(3):
    ...         loss = F.cross_entropy(model(x), y)
    ...         inner.zero_grad()
    ...         loss.backward()
    ...         meta.update(loss)
    ...         inner.step()
    ...     _ = meta.end_task(final_loss=lambda: F.cross_entropy(model(x), y))
    >>> meta.meta_steps, type(meta.theta_0[0]).__name__, type(meta.init_state_dict()["weight"]).__name__
    (1, 'Parameter', 'DTensor')
    >>> if fresh:
    ...     torch.distributed.destroy_process_group()
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lightning_meta.engine.batched import ELEMENTWISE_OPTIMIZERS
from lightning_meta.engine.learner import MetaLearner, Parallel, select_parameters
from lightning_meta.engine.meta_state import AllReduce, MetaState, distributed_sum
from lightning_meta.engine.rule import TrajectoryRule
from lightning_meta.engine.runaway import NOT_FINITE, RunawayGuard
from lightning_meta.utils import ParamFilter

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor


def sharded(module: nn.Module) -> bool:
    """Whether ``module`` has ``DTensor`` parameters (FSDP2's ``fully_shard``, tensor parallelism)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


class Shards:
    """The processes that hold the shards of the meta-learned parameters, and sums over them.

    Args:
        parameters: the module's meta-learned parameters (``DTensor``; see the module docstring for the layouts).
        all_reduce: sums a tensor over all processes (default: :func:`~lightning_meta.engine.distributed_sum`).

    Attributes:
        processes: the processes of the device mesh (all of them).
        rank: this process's rank.
        weight: one over the number of processes that hold each shard (HSDP's replicate groups hold the same
            shards): partial sums of squares are multiplied by it, so that their total counts each element once.
    """

    def __init__(self, parameters: Sequence[Tensor], all_reduce: AllReduce | None = None) -> None:
        from torch.distributed.tensor import DTensor, Replicate, Shard

        plain = [i for i, p in enumerate(parameters) if not isinstance(p, DTensor)]
        if plain:
            raise ValueError(
                f"{len(plain)} of the {len(parameters)} meta-learned parameters are ordinary tensors, not DTensor "
                "shards: apply fully_shard to the whole module (or meta-learn an unsharded module with MetaLearner)"
            )
        dtensors: list[DTensor] = list(parameters)  # type: ignore[arg-type]
        meshes = {p.device_mesh for p in dtensors}
        mesh = dtensors[0].device_mesh
        world = torch.distributed.get_world_size()
        if len(meshes) > 1 or mesh.size() != world:
            raise ValueError(
                f"the meta-learned parameters live on {len(meshes)} device mesh(es) of {mesh.size()} of the {world} "
                "processes: shard them all on one mesh over all processes"
            )
        odd = {str(p) for t in dtensors for p in t.placements if not isinstance(p, (Shard, Replicate))}
        if odd:
            raise ValueError(f"parameters placed as {sorted(odd)}: only Shard and Replicate placements are supported")
        replicas = {
            math.prod(mesh.size(d) for d, p in enumerate(t.placements) if isinstance(p, Replicate)) for t in dtensors
        }
        if len(replicas) > 1:
            raise ValueError(
                f"the meta-learned parameters are replicated over {sorted(replicas)} processes (tensor-parallel layers "
                "mixed with sharded ones?): shard them all alike (fully_shard on a 1-D or a (replicate, shard) mesh)"
            )
        self.processes = world
        self.rank = torch.distributed.get_rank()
        self.weight = 1.0 / replicas.pop()
        self.all_reduce = all_reduce or distributed_sum
        self._layouts = [(t.device_mesh, t.placements, t.shape, t.stride()) for t in dtensors]

    def total(self, *partials: Tensor | None) -> list[Tensor | None]:
        """The sums of ``partials`` (tensors of one dtype) over the processes, in one collective; ``None`` stays."""
        present = [p for p in partials if p is not None]
        flat = self.all_reduce(torch.cat([p.reshape(-1) for p in present]))
        sums = iter(flat.split([p.numel() for p in present]))
        return [None if p is None else next(sums).view_as(p) for p in partials]

    def dtensors(self, shards: Sequence[Tensor]) -> list[DTensor]:
        """This process's ``shards`` of the meta-learned parameters as ``DTensor``s laid out like those (no copy)."""
        from torch.distributed.tensor import DTensor

        return [
            DTensor.from_local(t, mesh, placements, run_check=False, shape=shape, stride=stride)
            for t, (mesh, placements, shape, stride) in zip(shards, self._layouts)
        ]


class ShardedMetaState(MetaState):
    """A :class:`~lightning_meta.engine.MetaState` of theta_0's shards: each process steps its own with its shard of
    the meta-gradients; whether a task is kept and the guard's figures are decided from sums over ``shards``, so that
    every process decides alike. The other arguments are :class:`~lightning_meta.engine.MetaState`'s (no
    ``all_reduce``: the meta-gradients are not reduced)."""

    def __init__(self, theta_0: Sequence[Tensor], shards: Shards, *arguments: Any, **kwargs: Any) -> None:
        super().__init__(theta_0, *arguments, **kwargs)
        if self.all_reduce is not None:
            raise ValueError("the meta-gradients of sharded parameters are not reduced over processes: all_reduce=None")
        if type(self.optimizer) not in ELEMENTWISE_OPTIMIZERS:
            names = ", ".join(o.__name__ for o in ELEMENTWISE_OPTIMIZERS)
            raise ValueError(
                f"meta_optimizer={type(self.optimizer).__name__} steps theta_0's shards one by one, which is only "
                f"right for optimizers that act element by element: use one of {names}"
            )
        self.shards = shards

    def _judge_tasks(
        self,
        meta_gradients: Sequence[Tensor],
        end_points: Sequence[Tensor] | None,
        losses: tuple[Tensor, Tensor] | None,
    ) -> list[str | None]:
        """The guard's figures of the whole vectors from this process's: not-finite counts, squared norms and loss
        shares summed over the processes in one collective."""
        local = RunawayGuard.task_figures_on_device(meta_gradients, self.theta_0, end_points, losses)
        finite, norms, losses_ = local[:, :1], local[:, 1:4], local[:, 4:]
        (total,) = self.shards.total(torch.cat([1 - finite, norms.square() * self.shards.weight, losses_], dim=1))
        assert total is not None
        figures = torch.cat([(total[:, :1] == 0).to(total), total[:, 1:4].sqrt(), total[:, 4:]], dim=1).tolist()
        if self.guard is None:
            return [None if row[0] else NOT_FINITE for row in figures]
        return self.guard.judge_tasks(figures)

    def _step_figures(self, before: Sequence[Tensor]) -> list[float]:
        local = RunawayGuard.step_figures_on_device(self.theta_0, before)
        (total,) = self.shards.total(local.square() * self.shards.weight)
        assert total is not None
        return total.sqrt().tolist()


class ShardedMetaLearner(MetaLearner):
    """A :class:`~lightning_meta.engine.MetaLearner` of a module whose parameters are sharded (see the module
    docstring): the same loop, on every process, each process on its share of every batch.

    Its :attr:`live` tensors and theta_0 are this process's shards of the meta-learned parameters (the module's
    ``DTensor``s' local tensors, which the module's own optimizer steps in place); ``update`` takes this process's
    loss. The arguments are :class:`~lightning_meta.engine.MetaLearner`'s (all but ``meta_batch_size`` by name);
    ``parallel`` must be ``"data"`` (the
    processes train every task together) and ``all_reduce`` sums over all processes (default:
    :func:`~lightning_meta.engine.distributed_sum`). The rule is given the :class:`Shards` (a rule object serves one
    learner) and must be ``shardable`` (:class:`~lightning_meta.engine.LeapRule` and
    :class:`~lightning_meta.engine.ReptileRule` are).
    """

    def __init__(
        self,
        module: nn.Module,
        rule: TrajectoryRule,
        meta_batch_size: int = 1,
        *,
        include: str | ParamFilter | None = None,
        parallel: Parallel = "data",
        all_reduce: AllReduce | None = None,
        **kwargs: Any,
    ) -> None:
        if parallel != "data":
            raise ValueError(
                f"parallel={parallel!r}: the processes of a sharded model train every task together, each on its "
                "share of every batch: use parallel='data'"
            )
        if not rule.shardable:
            raise ValueError(
                f"{type(rule).__name__} does not say it is right on sharded parameters: set shardable = True on it if "
                "it only does element-wise work, or sum its norms over the processes with self.shards.total"
            )
        self.sharded_parameters = [p for _, p in select_parameters(module, include)]
        self.shards = Shards(self.sharded_parameters, all_reduce)
        rule.shards = self.shards
        super().__init__(
            module, rule, meta_batch_size, include=include, parallel="data", all_reduce=self.shards.all_reduce, **kwargs
        )

    @torch.no_grad()
    def load_init(self) -> None:
        """Copy theta_0 into the module's shards (and the buffers' start values into its buffers), after resharding
        it: FSDP2 keeps the root module's parameters gathered after a forward pass without backward (e.g. the one of
        the final loss), and the next forward would use them instead of theta_0."""
        from torch.distributed.fsdp import FSDPModule

        for module in self.module.modules():
            if isinstance(module, FSDPModule):
                module.reshard()
        super().load_init()

    @torch.no_grad()
    def _own_tensors(self, parameters: list[Tensor]) -> list[Tensor]:
        return [p.to_local() for p in parameters]  # type: ignore[attr-defined]

    def _meta_state(self, theta_0: list[Tensor], *arguments: Any) -> MetaState:
        return ShardedMetaState(theta_0, self.shards, *arguments)

    def _gradients(self) -> list[Tensor]:
        return [
            p.grad.to_local() if p.grad is not None else torch.zeros_like(shard)  # type: ignore[attr-defined]
            for p, shard in zip(self.sharded_parameters, self.live)
        ]

    def _global_loss(self, loss: Tensor | None) -> Tensor | None:
        """This process's share of the mean loss over the processes, ``loss / processes``, in theta_0's precision:
        the rule and the guard sum the shares inside the collectives they make anyway."""
        if loss is None or not self.rule.needs_loss:
            return None
        return loss.detach().to(self.theta_0[0].dtype) / self.shards.processes

    def init_state_dict(self) -> dict[str, Tensor]:
        """The module's ``state_dict`` with theta_0 (``DTensor``s laid out like the module's parameters: save them
        with ``torch.distributed.checkpoint`` or gather them with ``full_tensor()``) and the buffers a task starts
        with in place of the live ones."""
        state = super().init_state_dict()
        state.update((n, t) for n, t in zip(self.names, self.shards.dtensors(self.theta_0)) if n in state)
        return state

    def state_dict(self) -> dict[str, Any]:
        """:meth:`~lightning_meta.engine.MetaLearner.state_dict` of this process's shards, stamped with its rank."""
        return {**super().state_dict(), "shard": [self.shards.rank, self.shards.processes]}

    def load_state_dict(self, state: dict[str, Any], trajectory: bool = True) -> None:
        """Inverse of :meth:`state_dict`, on the process of the same rank among as many, sharded alike."""
        mine = [self.shards.rank, self.shards.processes]
        shapes = [tuple(t.shape) for t in state["init"]] == [tuple(t.shape) for t in self.theta_0]
        if state.get("shard") != mine or not shapes:
            saved = state.get("shard") or "an unsharded learner"
            raise ValueError(
                f"this state holds the shards of {saved} ([rank, processes]), not of process {mine}: load each "
                "process's own state, on as many processes as saved it, with the model sharded alike"
            )
        super().load_state_dict(state, trajectory)
