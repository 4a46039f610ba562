"""Learned optimizers against plain references: a hand-written unroll with torch.autograd.grad, a quadratic whose
second-order term can be isolated, and the torch.optim facade stepping a real model."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import TinyClassifier, make_trainer
from torch import nn

from lightning_meta.cli import main
from lightning_meta.data import EpisodeDataModule
from lightning_meta.families import GlyphAlphabets
from lightning_meta.families.quadratics import QuadraticOptimizee, RandomQuadratics, squared_error
from lightning_meta.optim import (
    CoordinatewiseLSTM,
    LearnedOptimizer,
    SGDAnchoredLSTM,
    UnrollState,
    preprocess,
    unroll,
)
from lightning_meta.optim.training import LearnedOptimizerTraining


def mse(out, y):
    return (out - y).pow(2).mean()


def setup(seed: int = 0, steps: int = 4, use_loss: bool = False):
    torch.manual_seed(seed)
    model = nn.Linear(3, 2).double()
    net = CoordinatewiseLSTM(hidden_size=6, output_scale=0.1, use_loss=use_loss).double()
    inputs = torch.randn(steps + 1, 8, 3, dtype=torch.float64)
    targets = torch.randn(steps + 1, 8, 2, dtype=torch.float64)
    return model, net, inputs, targets


def reference_meta_gradient(net, model, inputs, targets, steps, first_order, score=lambda loss: loss):
    """The unroll written out: explicit weight and bias tensors, the LSTM called directly, autograd.grad per step."""
    w = model.weight.detach().clone().requires_grad_()
    b = model.bias.detach().clone().requires_grad_()
    sw, sb = net.initial_state(w.numel(), like=w), net.initial_state(b.numel(), like=b)
    losses = []
    for t in range(steps):
        loss = mse(inputs[t] @ w.T + b, targets[t])
        if t > 0:
            losses.append(score(loss))
        gw, gb = torch.autograd.grad(loss, (w, b), create_graph=not first_order, retain_graph=True)
        if first_order:
            gw, gb = gw.detach(), gb.detach()
        uw, sw = net(gw, sw, loss=loss, parameter=w)
        ub, sb = net(gb, sb, loss=loss, parameter=b)
        w, b = w + uw, b + ub
    losses.append(score(mse(inputs[steps] @ w.T + b, targets[steps])))
    return torch.autograd.grad(torch.stack(losses).mean(), list(net.parameters()))


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_of_a_3_step_unroll_matches_a_plain_loop(first_order):
    model, net, inputs, targets = setup(steps=3, use_loss=True)
    expected = reference_meta_gradient(net, model, inputs, targets, 3, first_order)
    state = UnrollState.start(model, net)
    _, meta_loss = unroll(net, model, mse, state, inputs, targets, 0, 3, first_order=first_order)
    meta_loss.backward()
    for p, e in zip(net.parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-9, atol=1e-12)


def test_a_log_loss_meta_objective_is_the_mean_log_loss_along_the_unroll():
    model, net, inputs, targets = setup(steps=3)
    expected = reference_meta_gradient(net, model, inputs, targets, 3, False, score=torch.log)
    _, meta_loss = unroll(net, model, mse, UnrollState.start(model, net), inputs, targets, 0, 3, score=torch.log)
    meta_loss.backward()
    for p, e in zip(net.parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="objective must be"):
        LearnedOptimizerTraining(QuadraticOptimizee(2), objective="hinge")


@pytest.mark.parametrize("first_order", [False, True])
def test_checkpointed_unroll_gives_the_plain_gradient(first_order):
    grads = []
    for segments in (0, 2, 4):
        model, net, inputs, targets = setup(steps=4)
        _, meta_loss = unroll(net, model, mse, UnrollState.start(model, net), inputs, targets, 0, 4,
                              first_order=first_order, segments=segments)
        meta_loss.backward()
        grads.append([p.grad.clone() for p in [*net.parameters(), *model.parameters()]])
    for other in grads[1:]:
        for a, b in zip(other, grads[0]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_first_order_drops_exactly_the_term_through_the_optimizee_gradient_on_a_quadratic():
    """f(theta) = 0.5 theta'A theta - b'theta, two steps. The gradient g_1 = A theta_1 - b depends on the LSTM's
    weights only through theta_1; first order treats g_1 as a constant. So second - first order must equal the
    gradient of f(theta_2) / 2 taken only along that path: theta_2' = theta_1.detach() + u(A theta_1 - b) with the
    LSTM's weights and state detached."""
    torch.manual_seed(0)
    n = 5
    m = torch.randn(n, n, dtype=torch.float64)
    a, b = m @ m.T / n + torch.eye(n, dtype=torch.float64), torch.randn(n, dtype=torch.float64)

    class Quadratic(nn.Module):
        def __init__(self):
            super().__init__()
            self.theta = nn.Parameter(torch.randn(n, dtype=torch.float64))

        def forward(self, _):
            return 0.5 * self.theta @ a @ self.theta - b @ self.theta

    def f(theta):
        return 0.5 * theta @ a @ theta - b @ theta

    model, net = Quadratic(), CoordinatewiseLSTM(hidden_size=4, output_scale=0.3).double()
    dummy = torch.zeros(3, 1, dtype=torch.float64)
    grads = {}
    for first_order in (False, True):
        net.zero_grad()
        _, meta_loss = unroll(net, model, lambda out, y: out, UnrollState.start(model, net), dummy, dummy, 0, 2,
                              first_order=first_order)
        meta_loss.backward()
        grads[first_order] = [p.grad.clone() for p in net.parameters()]

    theta0 = model.theta.detach()
    state0 = net.initial_state(n, like=theta0)
    u0, state1 = net(a @ theta0 - b, state0)
    theta1 = theta0 + u0
    frozen = CoordinatewiseLSTM(hidden_size=4, output_scale=0.3).double()
    frozen.load_state_dict(net.state_dict())
    frozen.requires_grad_(False)
    u1, _ = frozen(a @ theta1 - b, state1.detach())
    dropped = torch.autograd.grad(f(theta1.detach() + u1) / 2, list(net.parameters()))
    for second, first, term in zip(grads[False], grads[True], dropped):
        torch.testing.assert_close(second - first, term, rtol=1e-8, atol=1e-12)
    assert max(t.abs().max() for t in dropped) > 1e-6  # the term is really there


def test_the_optimizer_facade_reproduces_the_functional_unroll_step_for_step():
    model, net, inputs, targets = setup(steps=3)
    state = UnrollState.start(model, net, {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()})
    points = []
    for t in range(3):
        state, _ = unroll(net, model, mse, state, inputs, targets, t, t + 1, first_order=True)
        points.append({n: p.detach().clone() for n, p in state.params.items()})
    optimizer = LearnedOptimizer(model.parameters(), net=net)
    for t in range(3):
        optimizer.zero_grad()
        mse(model(inputs[t]), targets[t]).backward()
        optimizer.step()
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), points[t][name], rtol=1e-12, atol=1e-14)
    restored = LearnedOptimizer(model.parameters(), net=net)
    restored.load_state_dict(optimizer.state_dict())
    torch.testing.assert_close(restored.state[model.weight]["lstm"], optimizer.state[model.weight]["lstm"])


class TiedLanguageModel(nn.Module):
    """A tiny LSTM language model whose input and output embeddings are one tensor."""

    def __init__(self, vocabulary: int = 7, width: int = 5):
        super().__init__()
        self.embed = nn.Embedding(vocabulary, width)
        self.lstm = nn.LSTM(width, width, batch_first=True)
        self.out = nn.Linear(width, vocabulary, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens):
        return self.out(self.lstm(self.embed(tokens))[0])


def test_tied_embeddings_stay_tied_through_the_unroll():
    torch.manual_seed(0)
    model = TiedLanguageModel().double()
    net = CoordinatewiseLSTM(hidden_size=4).double()
    tokens = torch.randint(0, 7, (3, 4, 6))

    def loss_fn(logits, y):
        return F.cross_entropy(logits.reshape(-1, 7), y.reshape(-1))

    state = UnrollState.start(model, net)
    assert "out.weight" not in state.params  # one tensor, one name
    state, meta_loss = unroll(net, model, loss_fn, state, tokens[:, :, :-1], tokens[:, :, 1:], 0, 2)
    logits = torch.func.functional_call(model, state.params, (tokens[0, :, :-1],))
    untied = copy.deepcopy(model)
    untied.out.weight = nn.Parameter(torch.empty_like(model.out.weight))  # its own tensor now
    with torch.no_grad():
        for name, value in state.params.items():
            untied.get_parameter(name).copy_(value)
        untied.out.weight.copy_(state.params["embed.weight"])  # the adapted embedding, used as the output layer too
    torch.testing.assert_close(logits, untied(tokens[0, :, :-1]))
    meta_loss.backward()
    assert net.head.weight.grad is not None and torch.isfinite(net.head.weight.grad).all()


# --- the SGD-anchored updater -------------------------------------------------------------------------------------

def test_the_sgd_anchored_updater_with_zero_correction_is_sgd_step_for_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    twin, start = copy.deepcopy(model), copy.deepcopy(model)
    net = SGDAnchoredLSTM(lr=0.2, hidden_size=5, num_layers=2).double()
    learned = LearnedOptimizer(model.parameters(), net=net)
    plain = torch.optim.SGD(twin.parameters(), lr=float(net.lr))
    inputs, targets = torch.randn(6, 8, 3, dtype=torch.float64), torch.randn(6, 8, 2, dtype=torch.float64)
    for t in range(6):
        for m, optimizer in ((model, learned), (twin, plain)):
            optimizer.zero_grad()
            mse(m(inputs[t]), targets[t]).backward()
            optimizer.step()
        for a, b in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)
    assert abs(float(net.lr) - 0.2) < 1e-7 and not torch.equal(model[0].weight, start[0].weight)  # it did train

    functional = nn.Linear(3, 2).double()  # and in the differentiable unroll: theta_t+1 = theta_t - lr grad_t
    start_params = {n: p.detach().clone().requires_grad_() for n, p in functional.named_parameters()}
    state = UnrollState.start(functional, net, start_params)
    state, _ = unroll(net, functional, mse, state, inputs, targets, 0, 3, first_order=True)
    w, b = functional.weight.detach().clone().requires_grad_(), functional.bias.detach().clone().requires_grad_()
    lr = float(net.lr)
    for t in range(3):
        gw, gb = torch.autograd.grad(mse(inputs[t] @ w.T + b, targets[t]), (w, b))
        w, b = (w - lr * gw).detach().requires_grad_(), (b - lr * gb).detach().requires_grad_()
    torch.testing.assert_close(state.params["weight"], w, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(state.params["bias"], b, rtol=1e-12, atol=1e-14)


def test_the_sgd_anchored_updater_bounds_its_step_factor_and_adds_its_correction():
    net = SGDAnchoredLSTM(lr=0.5, max_factor=10.0, output_scale=0.1, hidden_size=3).double()
    grad = torch.tensor([1.0, -2.0, 0.25], dtype=torch.float64)
    state = net.initial_state(3, like=grad)
    with torch.no_grad():  # the output layer's weights stay zero: its bias alone sets (step logit, correction)
        net.head.bias.copy_(torch.tensor([50.0, 0.0]))
        torch.testing.assert_close(net(grad, state)[0], -0.5 * 10.0 * grad)  # saturates at max_factor
        net.head.bias.copy_(torch.tensor([-50.0, 0.0]))
        torch.testing.assert_close(net(grad, state)[0], -0.5 / 10.0 * grad)
        net.head.bias.copy_(torch.tensor([0.0, 2.0]))
        torch.testing.assert_close(net(grad, state)[0], -0.5 * grad + 0.1 * 2.0)
    net.set_lr(0.03)
    assert abs(float(net.lr) - 0.03) < 1e-9 and net.config["lr"] == 0.03
    with pytest.raises(ValueError, match="max_factor"):
        SGDAnchoredLSTM(max_factor=1.0)


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_of_the_sgd_anchored_updater_matches_a_plain_loop(first_order):
    model, _, inputs, targets = setup(steps=3)
    torch.manual_seed(1)
    net = SGDAnchoredLSTM(lr=0.1, hidden_size=6, use_loss=True).double()
    with torch.no_grad():  # away from zero, so that every weight's gradient is exercised
        net.head.weight.normal_(0, 0.5)
        net.head.bias.normal_(0, 0.5)
    expected = reference_meta_gradient(net, model, inputs, targets, 3, first_order)
    _, meta_loss = unroll(net, model, mse, UnrollState.start(model, net), inputs, targets, 0, 3,
                          first_order=first_order)
    meta_loss.backward()
    assert net.log_lr.grad is not None
    for p, e in zip(net.parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-9, atol=1e-12)
        assert e.abs().sum() > 0


def test_preprocessing_and_saving():
    torch.testing.assert_close(preprocess(torch.tensor([-2.0]), p=10.0), torch.tensor([[torch.log(torch.tensor(2.0)) / 10, -1.0]]))
    net = CoordinatewiseLSTM(hidden_size=3, use_parameter=True)
    with pytest.raises(ValueError, match="use_parameter"):
        net(torch.zeros(2), net.initial_state(2))


@pytest.mark.parametrize("kind", [CoordinatewiseLSTM, SGDAnchoredLSTM])
def test_save_and_load_round_trip(tmp_path, kind):
    net = kind(hidden_size=5, num_layers=1, output_scale=0.2)
    net.save(tmp_path / "lstm.pt")
    loaded = kind.load(tmp_path / "lstm.pt")
    assert type(loaded) is kind and loaded.config == net.config
    for a, b in zip(loaded.state_dict().values(), net.state_dict().values()):
        assert torch.equal(a, b)


def test_meta_training_on_quadratics_beats_the_untrained_optimizer_on_held_out_ones():
    torch.manual_seed(0)
    family = RandomQuadratics(dim=6, num_train=50, num_test=8)
    module = LearnedOptimizerTraining(QuadraticOptimizee(6), loss="squared_error", unroll_steps=10, truncation=5,
                                      meta_lr=3e-3)

    def held_out_loss(net):
        losses = []
        for index, task in enumerate(family.tasks("test")):
            w, y = (t[None] for t in task.train[0])
            torch.manual_seed(index)
            model = QuadraticOptimizee(6)
            optimizer = LearnedOptimizer(model.parameters(), net=copy.deepcopy(net))
            for _ in range(10):
                optimizer.zero_grad()
                squared_error(model(w), y).backward()
                optimizer.step()
            losses.append(squared_error(model(w), y).item())
        return sum(losses) / len(losses)

    before = held_out_loss(module.net)
    data = EpisodeDataModule(family, inner_steps=1, batch_size=1, meta_batch_size=4)
    make_trainer([], max_steps=40 * module.optimizer_steps_per_batch, limit_val_batches=0).fit(module, datamodule=data)
    after = held_out_loss(module.net)
    assert after < 0.5 * before, (before, after)


def test_truncation_steps_the_meta_optimizer_once_per_window_and_learn_init_moves_the_init():
    torch.manual_seed(0)
    family = RandomQuadratics(dim=4, num_train=8)
    data = EpisodeDataModule(family, inner_steps=1, batch_size=1, meta_batch_size=2)
    module = LearnedOptimizerTraining(QuadraticOptimizee(4), loss="squared_error", unroll_steps=6, truncation=4,
                                      learn_init=True, first_order=True, meta_lr=0.01)
    assert module.optimizer_steps_per_batch == 2  # windows of 4 and 2 steps
    init = module.optimizee.theta.detach().clone()
    trainer = make_trainer([], max_steps=4, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 4 and trainer.fit_loop.epoch_loop.batch_progress.current.completed == 2
    assert not torch.equal(module.optimizee.theta.detach(), init)
    fixed = LearnedOptimizerTraining(QuadraticOptimizee(4), loss="squared_error", unroll_steps=2, truncation=None)
    kept = fixed.optimizee.theta.detach().clone()
    make_trainer([], max_steps=2, limit_val_batches=0).fit(fixed, datamodule=data)
    assert torch.equal(fixed.optimizee.theta.detach(), kept)  # without learn_init every task starts from a fresh draw


def test_bad_training_settings_are_named():
    with pytest.raises(ValueError, match="loss must be one of"):
        LearnedOptimizerTraining(QuadraticOptimizee(2), loss="hinge")
    with pytest.raises(ValueError, match="truncation"):
        LearnedOptimizerTraining(QuadraticOptimizee(2), truncation=0)


def test_the_quadratics_recipe_runs_and_its_checkpoint_gives_a_learned_optimizer(tmp_path):
    recipe = Path(__file__).parents[1] / "recipes" / "learned_optimizer" / "quadratics.yaml"
    main(["fit", "--config", str(recipe), "--trainer.max_steps=8", f"--trainer.default_root_dir={tmp_path}",
          f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.enable_progress_bar=false"])
    (checkpoint,) = (tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("*.ckpt")
    module = LearnedOptimizerTraining.load_from_checkpoint(checkpoint, optimizee=QuadraticOptimizee(10))
    assert module.hparams.unroll_steps == 20 and module.optimizer_steps_per_batch == 4
    model = QuadraticOptimizee(10)
    optimizer = module.learned_optimizer(model.parameters())
    squared_error(model(torch.randn(1, 10, 10)), torch.randn(1, 10)).backward()
    before = model.theta.detach().clone()
    optimizer.step()
    assert not torch.equal(model.theta.detach(), before)


def test_meta_training_on_glyph_episodes_with_an_image_classifier(glyph_root):
    optimizee = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 20))
    module = LearnedOptimizerTraining(optimizee, net=CoordinatewiseLSTM(hidden_size=8), unroll_steps=4, truncation=2)
    data = EpisodeDataModule(GlyphAlphabets(root=glyph_root), inner_steps=4, batch_size=10, meta_batch_size=2)
    trainer = make_trainer([], max_steps=4, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 4 and torch.isfinite(trainer.callback_metrics["meta_loss"])


class LearnedOptimizerClassifier(TinyClassifier):
    def configure_optimizers(self):
        torch.manual_seed(0)
        return LearnedOptimizer(self.parameters(), net=CoordinatewiseLSTM(hidden_size=4))


def test_a_lightning_module_trains_with_the_learned_optimizer_and_resumes_its_state(tmp_path):
    loader = torch.utils.data.DataLoader([(torch.rand(1, 4, 4), 0)] * 24, batch_size=6)
    torch.manual_seed(0)
    model = LearnedOptimizerClassifier()
    trainer = make_trainer([], max_steps=3, enable_checkpointing=True, default_root_dir=tmp_path)
    trainer.fit(model, train_dataloaders=loader)
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    saved = torch.load(checkpoint, weights_only=False)["optimizer_states"][0]["state"]
    assert all("lstm" in state for state in saved.values())
    resumed = LearnedOptimizerClassifier()
    again = make_trainer([], max_steps=3, default_root_dir=tmp_path)
    again.fit(resumed, train_dataloaders=loader, ckpt_path=checkpoint)  # nothing left to train: state restored
    restored = again.optimizers[0].state
    for p, q in zip(resumed.parameters(), model.parameters()):
        torch.testing.assert_close(restored[p]["lstm"], trainer.optimizers[0].state[q]["lstm"])
