"""MAMLMixin against plain references: a hand-written autograd.grad loop, a deepcopy trained with torch.optim.SGD."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import ToyFamily, make_trainer
from torch import nn

from lightning_meta.data import EpisodeBatch, EpisodeDataModule
from lightning_meta.mixins import MAMLMixin


class TinyMAML(MAMLMixin, L.LightningModule):
    def __init__(self, with_norm: bool = False, meta_lr: float = 0.5, inputs: int = 4, dropout: float = 0.0, **maml):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.inputs = inputs
        self.body = nn.Linear(inputs, 5)
        self.norm = nn.BatchNorm1d(5) if with_norm else nn.Identity()
        self.head = nn.Linear(5, 3)
        self.meta_lr = meta_lr
        self.configure_maml(**maml)

    def forward(self, x):
        return self.head(self.dropout(self.norm(self.body(x.flatten(1)[:, : self.inputs])).tanh()))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.meta_lr)


def episodes(tasks: int = 2, batches: int = 2, seed: int = 0) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    return EpisodeBatch(
        torch.randn(tasks, batches, 6, 4, generator=g, dtype=torch.float64),
        torch.randint(0, 3, (tasks, batches, 6), generator=g),
        torch.randn(tasks, 7, 4, generator=g, dtype=torch.float64),
        torch.randint(0, 3, (tasks, 7), generator=g),
        tasks=list(range(tasks)),
        task_names=[f"t{i}" for i in range(tasks)],
    )


def reference_meta_gradient(model, batch, steps, lr, second_order, adapt=lambda name: True):
    """MAML written out: explicit weight tensors, the forward by hand, torch.autograd.grad for every inner step."""
    names = ["body.weight", "body.bias", "head.weight", "head.bias"]
    theta = {n: dict(model.named_parameters())[n].detach().clone().requires_grad_() for n in names}

    def forward(w, x):
        return torch.tanh(x @ w["body.weight"].T + w["body.bias"]) @ w["head.weight"].T + w["head.bias"]

    query_losses = []
    for t in range(len(batch)):
        w = dict(theta)
        for step in range(steps):
            k = step % batch.support_inputs.shape[1]
            loss = F.cross_entropy(forward(w, batch.support_inputs[t, k]), batch.support_targets[t, k])
            adapted = [n for n in names if adapt(n)]
            grads = torch.autograd.grad(loss, [w[n] for n in adapted], create_graph=second_order)
            for n, g in zip(adapted, grads):
                w[n] = w[n] - lr * (g if second_order else g.detach())
        query_losses.append(F.cross_entropy(forward(w, batch.query_inputs[t]), batch.query_targets[t]))
    grads = torch.autograd.grad(torch.stack(query_losses).mean(), [theta[n] for n in names])
    return dict(zip(names, grads))


def mixin_meta_gradient(model, batch):
    model.zero_grad()
    model.maml_loss(batch).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_plain_autograd_loop(steps, first_order):
    torch.manual_seed(0)
    model = TinyMAML(inner_steps=steps, inner_lr=0.4, first_order=first_order).double()
    batch = episodes(batches=min(steps, 2))  # 3 steps cycle through 2 support batches
    reference = reference_meta_gradient(model, batch, steps, 0.4, second_order=not first_order)
    ours = mixin_meta_gradient(model, batch)
    for name, expected in reference.items():
        torch.testing.assert_close(ours[name], expected, rtol=1e-9, atol=1e-12)


def test_second_order_terms_are_really_there():
    torch.manual_seed(0)
    batch = episodes()
    second = mixin_meta_gradient(TinyMAML(inner_steps=2, inner_lr=0.4).double(), batch)
    torch.manual_seed(0)
    first = mixin_meta_gradient(TinyMAML(inner_steps=2, inner_lr=0.4, first_order=True).double(), batch)
    assert (second["body.weight"] - first["body.weight"]).abs().max() > 1e-4


def test_anil_adapts_only_the_head():
    torch.manual_seed(0)
    model = TinyMAML(inner_steps=3, inner_lr=0.4, adapt="^head").double()
    assert model.maml.adapted == ["head.weight", "head.bias"]
    batch = episodes()
    reference = reference_meta_gradient(model, batch, 3, 0.4, True, adapt=lambda n: n.startswith("head"))
    ours = mixin_meta_gradient(model, batch)
    for name, expected in reference.items():
        torch.testing.assert_close(ours[name], expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "options",
    [{}, {"learn_inner_lr": True}, {"with_norm": True}, {"with_norm": True, "batch_norm": "frozen", "learn_inner_lr": True},
     {"adapt": "^head"}, {"dropout": 0.3}],
    ids=["plain", "learned-lr", "batch-norm", "frozen-norm", "anil", "dropout"],
)
def test_checkpointed_unroll_gives_the_same_gradient(options):
    batch = episodes(batches=5)
    grads = []
    for segments in (0, 2, 5):
        torch.manual_seed(0)
        model = TinyMAML(inner_steps=5, inner_lr=0.3, checkpoint_segments=segments, **options)
        torch.manual_seed(1)  # the dropout masks
        grads.append(mixin_meta_gradient(model.double(), batch))
    for other in grads[1:]:
        assert other.keys() == grads[0].keys()
        for name in grads[0]:
            torch.testing.assert_close(other[name], grads[0][name], rtol=1e-10, atol=1e-13)


def test_learned_inner_lr_gradient_worked_by_hand():
    """One first-order step: d/d(lr) L_q(theta - lr g_s) = -<g_q(theta'), g_s(theta)>, per adapted tensor."""
    torch.manual_seed(0)
    model = TinyMAML(inner_steps=1, inner_lr=0.3, first_order=True, learn_inner_lr=True).double()
    batch = episodes(tasks=1, batches=1)
    ours = mixin_meta_gradient(model, batch)["maml_inner_lrs"]
    names = model.maml.adapted
    theta = [dict(model.named_parameters())[n] for n in names]
    support = F.cross_entropy(model(batch.support_inputs[0, 0]), batch.support_targets[0, 0])
    g_s = torch.autograd.grad(support, theta)
    adapted = copy.deepcopy(model)
    with torch.no_grad():
        for p, g, lr in zip([dict(adapted.named_parameters())[n] for n in names], g_s, model.maml_inner_lrs[0]):
            p -= lr * g
    query = F.cross_entropy(adapted(batch.query_inputs[0]), batch.query_targets[0])
    g_q = torch.autograd.grad(query, [dict(adapted.named_parameters())[n] for n in names])
    expected = torch.stack([-(a * b).sum() for a, b in zip(g_q, g_s)]).unsqueeze(0)
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-12)


class TiedMAML(MAMLMixin, L.LightningModule):
    """One 4x4 weight used twice (like tied input/output embeddings)."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Linear(4, 4, bias=False)
        self.decode = nn.Linear(4, 4, bias=False)
        self.decode.weight = self.encode.weight
        self.configure_maml(inner_steps=2, inner_lr=0.5)

    def forward(self, x):
        return self.decode(self.encode(x).tanh())


def test_tied_parameters_stay_tied_through_adaptation():
    torch.manual_seed(0)
    model = TiedMAML().double()
    assert model.maml.adapted == ["encode.weight"]
    g = torch.Generator().manual_seed(1)
    batch = EpisodeBatch(
        torch.randn(1, 2, 6, 4, generator=g, dtype=torch.float64), torch.randint(0, 4, (1, 2, 6), generator=g),
        torch.randn(1, 5, 4, generator=g, dtype=torch.float64), torch.randint(0, 4, (1, 5), generator=g), [0], ["t"],
    )
    w0 = model.encode.weight.detach().clone().requires_grad_()
    w = w0
    for k in range(2):
        x, y = batch.support_inputs[0, k], batch.support_targets[0, k]
        (grad,) = torch.autograd.grad(F.cross_entropy((x @ w.T).tanh() @ w.T, y), w, create_graph=True)
        w = w - 0.5 * grad
    (expected,) = torch.autograd.grad(F.cross_entropy((batch.query_inputs[0] @ w.T).tanh() @ w.T, batch.query_targets[0]), w0)
    torch.testing.assert_close(mixin_meta_gradient(model, batch)["encode.weight"], expected, rtol=1e-9, atol=1e-12)
    adapted = model.adapt(batch.support_inputs[0], batch.support_targets[0])
    x = batch.query_inputs[0]
    out = torch.func.functional_call(model, adapted, (x,))
    torch.testing.assert_close(out, (x @ adapted["encode.weight"].T).tanh() @ adapted["encode.weight"].T)


def plain_sgd_query_loss(model, batch, steps, lr, mode):
    """A deepcopy trained with torch.optim.SGD in the BatchNorm mode's train/eval setting, then scored on the query."""
    losses = []
    for t in range(len(batch)):
        copy_ = copy.deepcopy(model)
        if mode == "task":
            copy_.norm.reset_running_stats()
        if mode == "batch":
            copy_.norm.track_running_stats = False
        optimizer = torch.optim.SGD(copy_.parameters(), lr=lr)
        copy_.train(mode != "frozen")
        for step in range(steps):
            optimizer.zero_grad()
            F.cross_entropy(copy_(batch.support_inputs[t, step]), batch.support_targets[t, step]).backward()
            optimizer.step()
        copy_.train(mode == "batch")
        with torch.no_grad():
            losses.append(F.cross_entropy(copy_(batch.query_inputs[t]), batch.query_targets[t]))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("mode", ["batch", "task", "frozen"])
def test_batch_norm_modes_match_plain_training_and_leave_running_stats_alone(mode):
    torch.manual_seed(0)
    model = TinyMAML(with_norm=True, inner_steps=3, inner_lr=0.4, first_order=True, batch_norm=mode).double()
    with torch.no_grad():  # running statistics far from the defaults, so that using them or not shows
        model.norm.running_mean.uniform_(-1, 1)
        model.norm.running_var.uniform_(0.5, 2)
    before = {n: b.clone() for n, b in model.named_buffers()}
    batch = episodes(batches=3)
    expected = plain_sgd_query_loss(model, batch, 3, 0.4, mode)
    torch.testing.assert_close(model.maml_loss(batch).loss.detach(), expected, rtol=1e-9, atol=1e-12)
    for name, value in model.named_buffers():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    assert model.norm.training and model.norm.track_running_stats


def test_validation_adapts_under_default_inference_mode():
    torch.manual_seed(0)
    model = TinyMAML(inner_steps=3, inner_lr=0.4)
    data = EpisodeDataModule(ToyFamily(), inner_steps=3, batch_size=6, query_size=8, meta_batch_size=2)
    trainer = make_trainer([], max_steps=1, inference_mode=True)
    (metrics,) = trainer.validate(model, datamodule=data, verbose=False)
    batch = next(iter(data.val_dataloader()))
    batch = EpisodeBatch(batch.support_inputs, batch.support_targets, batch.query_inputs, batch.query_targets, [], [])
    expected = model.maml_loss(batch).loss.item()
    assert metrics["val/query_loss"] == pytest.approx(expected, rel=1e-5)
    assert "val/query_accuracy" in metrics


def test_fomaml_and_maml_fit_lower_the_held_out_query_loss():
    family = ToyFamily(num_tasks=8, same_teacher=True)
    data = EpisodeDataModule(family, inner_steps=3, batch_size=10, query_size=20, meta_batch_size=4)
    for first_order in (True, False):
        torch.manual_seed(0)
        model = TinyMAML(inputs=16, inner_steps=3, inner_lr=0.5, first_order=first_order, meta_lr=0.5)
        before = make_trainer([], max_steps=1).test(model, datamodule=data, verbose=False)[0]["test/query_loss"]
        make_trainer([], max_steps=40, limit_val_batches=0).fit(model, datamodule=data)
        after = make_trainer([], max_steps=1).test(model, datamodule=data, verbose=False)[0]["test/query_loss"]
        assert after < before - 0.05, (first_order, before, after)


class WithPlainStep(TinyMAML):
    """Trains ordinary ``(x, y)`` batches too, as held-out tasks give them."""

    def training_step(self, batch, batch_idx):
        if isinstance(batch, EpisodeBatch):
            return super().training_step(batch, batch_idx)
        x, y = batch
        return F.cross_entropy(self(x), y)


def test_plain_batches_go_to_the_module_s_own_training_step():
    model = WithPlainStep(inner_steps=1)
    loss = model.training_step((torch.randn(5, 4), torch.zeros(5, dtype=torch.long)), 0)
    assert loss.ndim == 0
    assert isinstance(model.configure_inner_optimizer(), torch.optim.SGD)
    assert model.configure_inner_optimizer().param_groups[0]["lr"] == 0.1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"adapt": "^nothing"}, "matched no trainable parameter"),
        ({"batch_norm": "running"}, "batch_norm must be"),
        ({"batch_norm": "task", "checkpoint_segments": 2}, "would apply twice"),
        ({"learn_inner_lr": True}, "needs inner_steps"),
        ({"inner_steps": 0}, "inner_steps must be"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TinyMAML(**kwargs)


def test_more_support_batches_than_steps_is_an_error():
    model = TinyMAML(inner_steps=2).double()
    with pytest.raises(ValueError, match="support_batches"):
        model.maml_loss(episodes(batches=3))


def test_mixin_needs_a_module():
    class NotAModule(MAMLMixin):
        pass

    with pytest.raises(TypeError, match="LightningModule"):
        NotAModule().configure_maml()
