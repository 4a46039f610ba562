"""Leap and Reptile on parameters sharded by FSDP2 (``fully_shard``, 2 CPU processes, gloo) against the unsharded
single-process run on the same tasks: each process trains every task on its half of every batch, and theta_0, the
meta-gradients and the rule's buffers are its shards. Also: a task that is not finite on one process is dropped on
all, a resume from the processes' saved states is bitwise the uninterrupted run, a killed process makes its peer exit
within seconds, and what the sharded learner refuses."""

from __future__ import annotations

import datetime
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import ToyFamily
from torch import nn

from lightning_meta.data import TaskDataModule
from lightning_meta.engine import LeapRule, MetaLearner, ReptileRule, ShardedMetaLearner, TrajectoryRule

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")

K, TASKS, META_BATCH, LR, META_LR = 4, 4, 2, 0.5, 0.3
RULES: dict[str, Callable[[], TrajectoryRule]] = {
    "leap-length-loss": lambda: LeapRule(p=1, loss=True),
    "leap-length": lambda: LeapRule(p=1, loss=False),
    "leap-energy-loss": lambda: LeapRule(p=2, loss=True),
    "leap-energy": lambda: LeapRule(p=2, loss=False),
    "reptile": ReptileRule,
}
DTYPES = {"float64": torch.float64, "float32": torch.float32}
POISONED = {"loss": (1, 1), "gradient": (1, K - 1)}  # (task, step) at which the NaN runs go wrong
NAN_RUNS = {"loss": "leap-length-loss", "gradient": "reptile"}  # how it goes wrong, and the rule that sees it
STOP = (3, 2)  # the resume run stops before this (task, step): inside a task, half-way through a meta-batch
JOIN_SECONDS = 180  # a hung collective fails the test instead of hanging the suite


class Scaled(nn.Module):
    """Layer sizes that split unevenly: the 7-row weight into 4 and 3 rows, the 3-row one into 2 and 1, and the
    scale's one element into 1 and 0 (process 1 holds an empty shard of it)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 7), nn.Tanh(), nn.Linear(7, 3))
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.scale


def start_model(dtype: torch.dtype) -> Scaled:
    torch.manual_seed(0)
    return Scaled().to(dtype)


def task_batches(dtype: torch.dtype) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    data = TaskDataModule(ToyFamily(), inner_steps=K, batch_size=8)
    return [[(x.to(dtype), y) for x, y in data.task_batches(position)] for position in range(TASKS)]


def train(
    model: Scaled,
    meta: MetaLearner,
    tasks: list,
    rank: int = 0,
    processes: int = 1,
    nan: str | None = None,
    start: tuple[int, int] = (0, 0),
    stop: tuple[int, int] | None = None,
) -> list[tuple[int, int]]:
    """The reference code's loop on this process's share of every batch (rows ``rank::processes``), from ``start``
    (a task and step) until ``stop``; the ``(kept, tasks)`` of each meta-step. ``nan="loss"``: the last process's
    loss is NaN at ``POISONED["loss"]``; ``nan="gradient"``: at the task's last step, one gradient element that only
    the last process holds (row 2 of the 3-row weight) is NaN, so that only its shard of theta_K is not finite."""
    meta_steps = []
    for t in range(start[0], len(tasks)):
        first = start[1] if t == start[0] else 0
        if first == 0:
            meta.start_task()
        inner = torch.optim.SGD(model.parameters(), lr=LR)
        for step in range(first, K):
            if (t, step) == stop:
                return meta_steps
            x, y = tasks[t][step]
            loss = F.cross_entropy(model(x[rank::processes]), y[rank::processes])
            poisoned = nan is not None and (t, step) == POISONED[nan] and rank == processes - 1
            if poisoned and nan == "loss":
                loss = loss * float("nan")
            inner.zero_grad()
            loss.backward()
            if poisoned and nan == "gradient":
                grad = model.net[3].weight.grad
                (grad.to_local() if processes > 1 else grad[2:])[0, 0] = float("nan")  # type: ignore[operator]
            meta.update(loss)
            inner.step()
        x, y = tasks[t][-1]
        ended = meta.end_task(final_loss=lambda: F.cross_entropy(model(x[rank::processes]), y[rank::processes]))  # noqa: B023
        if ended is not None:
            meta_steps.append(ended)
    return meta_steps


def flat_init(meta: MetaLearner) -> torch.Tensor:
    """theta_0 as one vector in the module's parameter order (the whole vector on every process)."""
    parts = meta.init_state_dict()
    return torch.cat([getattr(parts[n], "full_tensor", parts[n].detach)().flatten() for n in meta.names])


def sharded_model(dtype: torch.dtype, mesh) -> Scaled:
    from torch.distributed.fsdp import fully_shard

    model = start_model(dtype)
    for layer in (model.net[1], model.net[3]):
        fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


# ----------------------------------------------------------------- the processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process(rank: int, processes: int, port: int, out: str, job: Callable[[int, int, Path], None]) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group(
        "gloo", rank=rank, world_size=processes, timeout=datetime.timedelta(seconds=60)
    )
    try:
        job(rank, processes, Path(out))
    finally:
        torch.distributed.destroy_process_group()


def launch(job: Callable[[int, int, Path], None], out: Path, processes: int = 2) -> list[tuple[int | None, float]]:
    """Run ``job(rank, processes, out)`` on ``processes`` fresh processes; each one's exit code and exit time. A
    process still running after ``JOIN_SECONDS`` fails the test (all are killed)."""
    context = torch.multiprocessing.get_context("spawn")
    port = free_port()
    workers = [context.Process(target=process, args=(r, processes, port, str(out), job)) for r in range(processes)]
    for worker in workers:
        worker.start()
    deadline, exits = time.monotonic() + JOIN_SECONDS, {}
    while len(exits) < processes and time.monotonic() < deadline:
        for rank, worker in enumerate(workers):
            if rank not in exits and not worker.is_alive():
                exits[rank] = (worker.exitcode, time.time())
        time.sleep(0.05)
    for worker in workers:
        if worker.is_alive():
            worker.kill()
        worker.join(timeout=10)
    assert len(exits) == processes, f"processes {sorted(set(range(processes)) - set(exits))} hung"
    return [exits[rank] for rank in range(processes)]


class Counted:
    """The learner's sum over processes, counting its calls (each one collective)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        torch.distributed.all_reduce(tensor)
        return tensor


def outcome(meta: MetaLearner, steps: list, collectives: Counted | None = None) -> dict:
    guard = meta.state.guard
    assert guard is not None
    return {
        "init": flat_init(meta),
        "steps": steps,
        "path_length": meta.rule.metrics().get("path_length"),
        "guard": {"norms": guard.norms, **guard.metrics()},
        "collectives": collectives.calls if collectives else None,
    }


def all_runs(rank: int, processes: int, out: Path) -> None:
    """Every sharded run the tests compare, on this process, which writes what it found to ``out/rank<rank>.pt``."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (processes,))
    results: dict[str, object] = {}

    def run(name: str, dtype: torch.dtype, on=mesh, learner: dict | None = None, **options) -> tuple:
        model = sharded_model(dtype, on)
        collectives = Counted()
        settings = {"meta_lr": META_LR, "all_reduce": collectives, **(learner or {})}
        meta = ShardedMetaLearner(model, RULES[name](), META_BATCH, **settings)
        return model, meta, outcome(meta, train(model, meta, task_batches(dtype), rank, processes, **options),
                                    collectives)

    for dtype_name, dtype in DTYPES.items():
        for name in RULES:
            results[f"{name}/{dtype_name}"] = run(name, dtype)[2]
    hybrid = init_device_mesh("cpu", (processes, 1), mesh_dim_names=("replicate", "shard"))  # HSDP: replicas
    results["hybrid"] = run("leap-length-loss", torch.float64, on=hybrid)[2]
    for how, name in NAN_RUNS.items():
        results[f"nan-{how}"] = run(name, torch.float64, nan=how)[2]
    model = sharded_model(torch.float64, mesh)  # at each task's end: is this process's shard of theta_K finite?
    meta = ShardedMetaLearner(model, ReptileRule(), META_BATCH, meta_lr=META_LR)
    finite, end_task = [], meta.end_task
    meta.end_task = lambda **kwargs: finite.append(all(t.isfinite().all() for t in meta.live)) or end_task(**kwargs)
    train(model, meta, task_batches(torch.float64), rank, processes, nan="gradient")
    results["finite shards"] = finite

    adam = {"meta_optimizer": "Adam"}
    results["straight"] = run("leap-length-loss", torch.float64, learner=adam)[2]
    _, stopped, _ = run("leap-length-loss", torch.float64, learner=adam, stop=STOP)
    torch.save({"meta": stopped.state_dict(), "live": [t.clone() for t in stopped.live]}, out / f"state{rank}.pt")
    model = sharded_model(torch.float64, mesh)  # a new model and learner, as in a new run
    resumed = ShardedMetaLearner(model, RULES["leap-length-loss"](), META_BATCH, meta_lr=META_LR, **adam)
    saved = torch.load(out / f"state{rank}.pt", weights_only=True)
    resumed.load_state_dict(saved["meta"])
    with torch.no_grad():
        torch._foreach_copy_(resumed.live, saved["live"])
    steps = train(model, resumed, task_batches(torch.float64), rank, processes, start=STOP)
    results["resumed"] = outcome(resumed, steps)
    torch.save(results, out / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The sharded runs, on 2 processes: what each process found."""
    out = tmp_path_factory.mktemp("sharded")
    assert [code for code, _ in launch(all_runs, out)] == [0, 0]
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


def unsharded(name: str, dtype: torch.dtype, nan: str | None = None) -> dict:
    """The same tasks on one process, unsharded, each step on the whole batch."""
    model = start_model(dtype)
    meta = MetaLearner(model, RULES[name](), meta_batch_size=META_BATCH, meta_lr=META_LR)
    return outcome(meta, train(model, meta, task_batches(dtype), nan=nan))


def assert_same_run(sharded: list[dict], expected: dict, tolerance: dict) -> None:
    zero, one = sharded
    assert torch.equal(zero["init"], one["init"]), "the processes' theta_0 differ"
    assert zero["steps"] == one["steps"] == expected["steps"]
    torch.testing.assert_close(zero["init"], expected["init"], **tolerance)
    if expected["path_length"] is not None:  # Leap's path length, from the whole vector
        torch.testing.assert_close(zero["path_length"], expected["path_length"], **tolerance)
    for process in sharded:  # the guard's figures (norms, ratios) are the whole vector's, on every process
        assert process["guard"].keys() == expected["guard"].keys()
        torch.testing.assert_close(process["guard"], expected["guard"], rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------- the tests
TOLERANCES = {"float64": dict(rtol=1e-12, atol=1e-12), "float32": dict(rtol=1e-5, atol=1e-6)}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", RULES)
def test_two_sharded_processes_learn_the_single_process_theta_0(sharded_runs, name, dtype):
    expected = unsharded(name, DTYPES[dtype])
    assert expected["steps"] == [(2, 2), (2, 2)]
    assert (expected["init"] - flat_init(MetaLearner(start_model(DTYPES[dtype]), ReptileRule()))).norm() > 1e-2
    assert_same_run([runs[f"{name}/{dtype}"] for runs in sharded_runs], expected, TOLERANCES[dtype])


@pytest.mark.slow
def test_hybrid_sharding_counts_each_replicated_shard_once(sharded_runs):
    """HSDP: both processes hold the whole of every parameter (a (2, 1) mesh of replicas): the norms' partial sums
    are weighted so that they are still the norms of the one vector."""
    expected = unsharded("leap-length-loss", torch.float64)
    assert_same_run([runs["hybrid"] for runs in sharded_runs], expected, TOLERANCES["float64"])


@pytest.mark.slow
def test_collectives_per_step(sharded_runs):
    """Leap p=1 or with the loss term: one per inner step (K per task, the last segment's at its end); p=2 without it
    and Reptile: none inside tasks, one at each task end for the path length (Leap). Then one per task end (whether
    it is finite and the guard's figures) and one per meta-step (the guard's check of the step)."""
    tasks, meta_steps = TASKS, TASKS // META_BATCH
    expected = {
        "leap-length-loss": tasks * K, "leap-length": tasks * K, "leap-energy-loss": tasks * K, "leap-energy": tasks,
        "reptile": 0,
    }
    for name, in_tasks in expected.items():
        assert sharded_runs[0][f"{name}/float64"]["collectives"] == in_tasks + tasks + meta_steps, name


@pytest.mark.slow
@pytest.mark.parametrize("how", NAN_RUNS)
def test_a_task_not_finite_on_one_process_is_dropped_on_all(sharded_runs, how):
    """A NaN loss on process 1, or one NaN gradient element in process 1's shard at the task's last step (process
    0's shards stay finite): both processes drop the task, as the single process does."""
    expected = unsharded(NAN_RUNS[how], torch.float64, nan=how)
    assert expected["steps"] == [(1, 2), (2, 2)]
    assert_same_run([runs[f"nan-{how}"] for runs in sharded_runs], expected, TOLERANCES["float64"])
    if how == "gradient":  # process 0's shards of theta_K stayed finite: it dropped the task on process 1's word
        assert [runs["finite shards"] for runs in sharded_runs] == [[True] * TASKS, [True, False, True, True]]


@pytest.mark.slow
def test_a_resume_from_the_processes_states_is_the_uninterrupted_run_bitwise(sharded_runs):
    for runs in sharded_runs:
        assert torch.equal(runs["resumed"]["init"], runs["straight"]["init"])
        assert runs["resumed"]["guard"] == runs["straight"]["guard"]
        assert runs["straight"]["steps"] == [(2, 2), (2, 2)] and runs["resumed"]["steps"] == [(2, 2)]


def killed_at_task_one(rank: int, processes: int, out: Path) -> None:
    """Process 1 is killed (SIGKILL, nothing cleans up) inside task 1; process 0 goes on training."""
    from torch.distributed.device_mesh import init_device_mesh

    model = sharded_model(torch.float32, init_device_mesh("cpu", (processes,)))
    meta = ShardedMetaLearner(model, LeapRule(), META_BATCH, meta_lr=META_LR)
    tasks = task_batches(torch.float32)
    train(model, meta, tasks, rank, processes, stop=(1, 2) if rank == 1 else None)
    if rank == 1:
        (out / "killed_at").write_text(repr(time.time()))
        os.kill(os.getpid(), signal.SIGKILL)
    train(model, meta, tasks * 10, rank, processes)  # waits for process 1 in its next collective


@pytest.mark.slow
def test_a_killed_process_makes_its_peer_exit_within_seconds(tmp_path):
    (zero, exited), (one, _) = launch(killed_at_task_one, tmp_path)
    assert one == -signal.SIGKILL and zero not in (0, None)
    assert exited - float((tmp_path / "killed_at").read_text()) < 30


# ----------------------------------------------------------------- what is refused, in one line
@pytest.fixture
def one_process():
    """A mesh over a process group of one: this test's, or one an earlier test in this process left behind."""
    from torch.distributed.device_mesh import init_device_mesh

    fresh = not torch.distributed.is_initialized()
    if fresh:
        torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    assert torch.distributed.get_world_size() == 1
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        if fresh:
            torch.distributed.destroy_process_group()


class GradientSum(TrajectoryRule):
    def start(self, theta_0, live):
        self.total = [torch.zeros_like(p) for p in live]

    def step(self, live, grads, loss):
        torch._foreach_add_(self.total, list(grads))

    def end(self, live, final_loss):
        return self.total


def test_what_a_sharded_learner_refuses(one_process):
    with pytest.raises(ValueError, match="are ordinary tensors, not DTensor shards: apply fully_shard"):
        ShardedMetaLearner(start_model(torch.float32), LeapRule())
    model = sharded_model(torch.float32, one_process)
    with pytest.raises(ValueError, match="GradientSum does not say it is right on sharded parameters"):
        ShardedMetaLearner(model, GradientSum())
    with pytest.raises(ValueError, match="use parallel='data'"):
        ShardedMetaLearner(model, LeapRule(), parallel="tasks")
    with pytest.raises(ValueError, match="meta_optimizer=LBFGS steps theta_0's shards one by one"):
        ShardedMetaLearner(model, LeapRule(), meta_optimizer="LBFGS")
    meta = ShardedMetaLearner(model, ReptileRule())
    state = meta.state_dict()
    assert state["shard"] == [0, 1]
    with pytest.raises(ValueError, match=r"the shards of \[1, 2\] \(\[rank, processes\]\), not of process \[0, 1\]"):
        meta.load_state_dict({**state, "shard": [1, 2]})
    GradientSum.shardable = True  # element-wise: right on shards as it stands
    try:
        assert ShardedMetaLearner(model, GradientSum()).rule.shards is not None
    finally:
        GradientSum.shardable = False


# ----------------------------------------------------------------- the Lightning door: ModelParallelStrategy
SHARDED = dict(method="leap", parallel="data", meta_batch_size=2, strategy="model_parallel")


@pytest.mark.slow
def test_model_parallel_strategy_on_two_processes_equals_one_unsharded_process(tmp_path):
    """The Trainer with ModelParallelStrategy on 2 CPU processes (gloo), the module sharding itself in
    configure_model, and Leap: the theta_0 of one unsharded process on the same tasks."""
    from test_ddp import assert_same_init, run

    two = run(tmp_path, "two", devices=2, **SHARDED)
    one = run(tmp_path, "one", method="leap", parallel="data", devices=1, meta_batch_size=2)
    assert two["global_step"] == one["global_step"] == 2 * 3 * 2
    assert_same_init(two, one)


@pytest.mark.slow
@pytest.mark.parametrize("distributed", [True, False], ids=["sharded-checkpoint", "gathered-checkpoint"])
def test_model_parallel_checkpoint_resumes_bitwise_with_theta_0_as_the_weights(tmp_path, distributed):
    """Saved at step 4 (inside the second task of the first meta-batch) by ModelParallelStrategy, sharded (a folder)
    or gathered (a file), and resumed on 2 processes: bitwise the uninterrupted run; ``final.ckpt`` holds theta_0 as
    the model's weights. (Adam inside tasks: Lightning 2.6's gathered checkpoints of an optimizer without state,
    e.g. plain SGD, fail to load with an IndexError in ``_rekey_optimizer_state_if_needed``.)"""
    from test_ddp import run
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    spec = dict(devices=2, distributed_checkpoint=distributed, optimizer="adam", **SHARDED)
    straight = run(tmp_path, "straight", checkpoint_every=4, **spec)
    folder = tmp_path / "straight" / "checkpoints"
    resumed = run(tmp_path, "resumed", resume=str(next(folder.glob("*step=4.ckpt"))), **spec)
    assert torch.equal(resumed["init"], straight["init"]) and resumed["meta_steps"] == straight["meta_steps"] == 2
    final = folder / "final.ckpt"
    if distributed:
        assert final.is_dir()
        dcp_to_torch_save(final, tmp_path / "final.pt")
        final = tmp_path / "final.pt"
    weights = torch.load(final, weights_only=False)["state_dict"]
    torch.testing.assert_close(torch.cat([w.double().flatten() for w in weights.values()]), straight["init"])


def test_the_fabric_door_meta_learns_a_sharded_module_like_the_unsharded_one(one_process):
    """On one process (a mesh of one shard), bitwise the unsharded learner on the same tasks."""
    import lightning as L

    from lightning_meta.fabric import fabric_meta_learner

    fabric = L.Fabric(accelerator="cpu", devices=1)
    model = sharded_model(torch.float64, one_process)
    meta = fabric_meta_learner(fabric, model, LeapRule(), parallel="data", meta_batch_size=META_BATCH, meta_lr=META_LR)
    assert isinstance(meta, ShardedMetaLearner)
    result = outcome(meta, train(model, meta, task_batches(torch.float64)))
    expected = unsharded("leap-length-loss", torch.float64)
    assert torch.equal(result["init"], expected["init"]) and result["steps"] == expected["steps"]


def test_a_checkpoint_of_shards_resumes_on_as_many_processes_only():
    from types import SimpleNamespace

    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    from lightning_meta.trainer.sharded import own_shards

    state = {"names": ["w"], "schedule": {}, "counters": {}, "shards": [{"rank": 0}, {"rank": 1}]}
    assert own_shards(SimpleNamespace(world_size=2, global_rank=1), state) == {"rank": 1}  # type: ignore[arg-type]
    unsharded_state = {"names": ["w"]}
    assert own_shards(SimpleNamespace(world_size=1, global_rank=0), unsharded_state) is unsharded_state  # type: ignore[arg-type]
    with pytest.raises(MisconfigurationException, match="shards of 2 processes: resume it on 2 processes, not 1"):
        own_shards(SimpleNamespace(world_size=1, global_rank=0), state)  # type: ignore[arg-type]
