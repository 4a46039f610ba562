"""The RunawayGuard's checks, against figures worked by hand, and the MetaState's meta-step under it: theta_0 and the
meta-optimizer keep their values when a step is refused; the statistics survive a checkpoint."""

from __future__ import annotations

import statistics
from copy import deepcopy

import pytest
import torch

from lightning_meta.engine import MetaState, MetaTrainingDiverged, RunawayGuard
from lightning_meta.engine.runaway import NOT_FINITE


def figures(norm=1.0, distance=0.5, size=4.0, first=3.0, final=1.0, finite=1.0):
    return [finite, norm, distance, size, first, final]


def test_task_figures_are_read_from_the_tensors_task_by_task():
    meta_gradient = [torch.tensor([[3.0, 4.0], [0.0, 1.0]]), torch.tensor([[[12.0]], [[0.0]]])]  # norms 13 and 1
    theta_0 = [torch.tensor([1.0, 0.0]), torch.tensor([[0.0]])]  # norm 1
    end = [torch.tensor([[1.0, 3.0], [1.0, 0.0]]), torch.tensor([[[4.0]], [[2.0]]])]  # 5 and 2 away
    losses = (torch.tensor([2.5, 1.0]), torch.tensor([0.5, 3.0]))
    assert RunawayGuard.task_figures(meta_gradient, theta_0, end, losses) == [
        [1.0, 13.0, 5.0, 1.0, 2.5, 0.5],
        [1.0, 1.0, 2.0, 1.0, 1.0, 3.0],
    ]
    (nan,) = RunawayGuard.task_figures([torch.tensor([[float("nan")]])], [torch.zeros(1)], None, None)
    assert nan[0] == 0.0 and all(v != v for v in nan[2:3] + nan[4:])  # not finite; unknowns are NaN


def test_float32_overflow_does_not_hide_a_finite_meta_gradient():
    huge = [torch.full((1, 4), 3e38)]  # finite in float32; its squared norm is not
    ((finite, norm, *_),) = RunawayGuard.task_figures(huge, [torch.ones(4)], None, None)
    assert finite == 1.0 and norm == pytest.approx(6e38)


def test_tasks_trained_together_are_judged_one_by_one():
    state = MetaState([torch.zeros(2)], meta_batch_size=3)
    stacked = [torch.tensor([[1.0, 0.0], [float("nan"), 0.0], [0.0, 2.0]])]
    end = [torch.tensor([[0.1, 0.0], [0.0, 0.0], [5000.0, 0.0]])]  # theta_0 = 0: no scale to judge the distance by
    losses = (torch.tensor([2.0, 2.0, 2.0]), torch.tensor([1.0, 1.0, 25.0]))  # task 2's loss rose 12.5 times
    assert state.add_tasks(stacked, end, losses) == [True, False, False]
    assert state.drop_reasons == [None, NOT_FINITE, "its loss rose from 2 to 25, more than loss_ratio=10 times"]
    assert torch.equal(state.grads[0], torch.tensor([1.0, 0.0])) and state.tasks_in_batch == 3


def test_loss_check_drops_a_task_whose_final_loss_is_more_than_loss_ratio_times_its_first():
    guard = RunawayGuard(loss_ratio=10.0)
    assert guard.judge_task(figures(first=2.0, final=20.0)) is None  # exactly 10 times is kept
    assert "rose from 2 to 20.01" in guard.judge_task(figures(first=2.0, final=20.01))
    assert guard.judge_task(figures(first=-1.0, final=50.0)) is None  # a loss of any sign: no ratio to judge
    assert guard.judge_task(figures(first=float("nan"), final=50.0)) is None  # not handed losses
    assert RunawayGuard(loss_ratio=None).judge_task(figures(first=1.0, final=1e9)) is None


def test_distance_check_compares_with_the_norm_of_theta_0():
    guard = RunawayGuard(distance_ratio=100.0)
    assert guard.judge_task(figures(distance=400.0, size=4.0)) is None
    assert "moved 400.1 from theta_0, more than distance_ratio=100 times" in guard.judge_task(
        figures(distance=400.1, size=4.0)
    )
    assert guard.judge_task(figures(distance=1e9, size=0.0)) is None  # theta_0 all zeros: no scale to judge by


def test_norm_check_uses_the_median_of_recent_meta_steps_after_warmup():
    guard = RunawayGuard(norm_ratio=3.0, warmup=2, window=3)
    means = [1.0, 2.0, 10.0, 4.0]  # mean kept-task norm of four meta-steps
    for index, mean in enumerate(means):
        if index < 2:  # warm-up: no typical norm yet, so no norm is too large
            assert guard.typical_norm is None and guard.judge_task(figures(norm=1e6)) is None
        guard.end_meta_batch(None, kept=2, norm_sum=2 * mean)
    typical = statistics.median(means[-3:])  # the window keeps the last 3: 2, 10, 4 -> 4
    assert guard.typical_norm == typical == 4.0
    assert guard.judge_task(figures(norm=3 * typical)) is None
    assert "norm 12.01 is more than norm_ratio=3 times the typical 4" in guard.judge_task(figures(norm=12.01))


def test_stop_after_counts_meta_batches_in_a_row_and_names_the_cause():
    guard = RunawayGuard(stop_after=2)
    guard.end_meta_batch(("dropped", "a"))
    guard.end_meta_batch(None, kept=1, norm_sum=1.0)  # a meta-step resets the count
    guard.end_meta_batch(("dropped", "b"))
    with pytest.raises(MetaTrainingDiverged, match=r"2 meta-batches in a row .* \(last: c\).*meta_lr") as error:
        guard.end_meta_batch(("dropped", "c"))
    assert error.value.likely_cause == "meta_lr" and error.value.theta_0_suspect
    fresh = RunawayGuard(stop_after=1)
    with pytest.raises(MetaTrainingDiverged, match="initial weights: the inner learning rate") as error:
        fresh.end_meta_batch(("dropped", "a"))
    assert error.value.likely_cause == "inner_lr" and not error.value.theta_0_suspect
    RunawayGuard(stop_after=None).end_meta_batch(("dropped", "a"))  # never stops


@pytest.mark.parametrize("name,value", [("loss_ratio", 1.0), ("distance_ratio", 0.5), ("stop_after", 0), ("warmup", 0)])
def test_bad_settings_are_named(name, value):
    with pytest.raises(ValueError, match=f"{name} must be"):
        RunawayGuard(**{name: value})


def momentum_state(lr=0.1, **guard):
    state = MetaState([torch.ones(3)], meta_batch_size=1, meta_lr=0.1, meta_optimizer_kwargs={"momentum": 0.9},
                      guard=RunawayGuard(**guard))  # fmt: skip
    state.add_task([torch.ones(3)])
    state.step()  # a first step fills the momentum buffer
    state.optimizer.param_groups[0]["lr"] = lr
    return state


@pytest.mark.parametrize(
    ("gradient", "guard", "message"),
    [
        (3e38, {"distance_ratio": None}, "non-finite"),  # 1e9 x 3e38 overflows float32
        (1e5, {}, "by 1.732e\\+14, more than distance_ratio=1000"),  # |1e9 x (0.9 + 1e5)| x sqrt(3)
    ],
    ids=["non-finite", "too-far"],
)
def test_a_refused_meta_step_leaves_theta_0_and_the_meta_optimizer_as_they_were(gradient, guard, message):
    state = momentum_state(lr=1e9, **guard)
    theta_0, optimizer = state.theta_0[0].detach().clone(), deepcopy(state.optimizer.state_dict())
    state.add_task([torch.full((3,), gradient)])
    with pytest.raises(MetaTrainingDiverged, match=message) as error:
        state.step()
    assert error.value.likely_cause == "meta_lr"
    assert torch.equal(state.theta_0[0].detach(), theta_0)
    after = state.optimizer.state_dict()
    assert torch.equal(after["state"][0]["momentum_buffer"], optimizer["state"][0]["momentum_buffer"])
    assert (state.meta_steps, state.tasks_in_batch, state.tasks_kept) == (1, 0, 0)
    assert torch.equal(state.grads[0], torch.zeros(3))


def test_the_guard_state_resumes_exactly():
    def state():
        return MetaState([torch.zeros(2)], meta_batch_size=2, guard=RunawayGuard(warmup=1, norm_ratio=2.0))

    straight = state()
    straight.add_task([torch.tensor([1.0, 0.0])])
    straight.add_task([torch.tensor([0.0, 3.0])])
    straight.step()  # mean kept norm (1 + 3) / 2 = 2
    straight.add_task([torch.tensor([2.0, 0.0])])  # half of the next meta-batch
    resumed = state()
    resumed.load_state_dict(deepcopy(straight.state_dict()))
    expected = {"norms": [2.0], "meta_steps": 1, "norm_sum": 2.0, "failures": [], "start_tasks": [2, 2]}  # 2 of 2 kept
    assert resumed.guard.state_dict() == straight.guard.state_dict() == expected
    for run in (straight, resumed):  # norm 4.5 > norm_ratio 2 x the typical 2: dropped by both
        assert not run.add_task([torch.tensor([4.5, 0.0])])
    assert resumed.drop_reasons == straight.drop_reasons
    assert straight.step() == resumed.step() == (1, 2)
    assert torch.equal(straight.theta_0[0], resumed.theta_0[0])


def test_resuming_with_another_meta_lr_uses_it():
    state = momentum_state(lr=0.1)
    other = MetaState([torch.ones(3)], meta_batch_size=1, meta_lr=0.01, meta_optimizer_kwargs={"momentum": 0.9})
    other.load_state_dict(state.state_dict())
    assert other.optimizer.param_groups[0]["lr"] == 0.01
    assert torch.equal(other.optimizer.state_dict()["state"][0]["momentum_buffer"], torch.full((3,), 1.0))


def test_guard_off_keeps_only_the_finiteness_check():
    state = MetaState([torch.ones(2)], meta_batch_size=1, meta_lr=1e9, guard=False)
    assert state.add_task([torch.full((2,), 1e5)])  # would be refused as too far under a guard
    state.step()
    assert state.meta_steps == 1 and state.theta_0[0][0].item() == pytest.approx(1 - 1e14)
    assert not state.add_task([torch.tensor([float("nan"), 0.0])])


def nan_tasks(state: MetaState, finite: int, tasks: int = 5) -> None:
    """Hand in a meta-batch of ``tasks`` tasks, the first ``finite`` of them with a finite meta-gradient."""
    for index in range(tasks):
        state.add_task([torch.full((2,), 1.0 if index < finite else float("nan"))])


@pytest.mark.parametrize(
    ("first_kept", "cause", "says"),
    [
        (1, "inner_lr", "the starting weights already diverge with this inner learning rate (4 of the 5 tasks trained "
                        "from them, before any meta-step, were dropped): the inner learning rate"),
        (4, "meta_lr", "theta_0 went bad after 1 meta-step (the tasks trained from the initial weights did not "
                       "diverge): the meta learning rate (meta_lr) is likely too high"),
    ],
    ids=["starting-weights-diverge", "theta-0-went-bad"],
)
def test_the_stop_tells_starting_weights_that_diverge_from_a_theta_0_gone_bad(first_kept, cause, says):
    """Issue 24's trial at inner lr 50: 4 of the first 5 tasks diverge from the starting weights, one meta-step is
    taken with the fifth, then every task diverges: the inner learning rate, not meta_lr. With 1 of 5 dropped at the
    start, the same later failure is theta_0's."""
    state = MetaState([torch.zeros(2)], meta_batch_size=5)
    nan_tasks(state, first_kept)
    state.step()  # one meta-step, with the kept tasks
    for _ in range(2):
        nan_tasks(state, 0)
        state.step()
    nan_tasks(state, 0)
    with pytest.raises(MetaTrainingDiverged) as stopped:
        state.step()  # the third meta-batch in a row with every task dropped
    assert stopped.value.likely_cause == cause and stopped.value.theta_0_suspect == (cause == "meta_lr")
    assert says in str(stopped.value)
