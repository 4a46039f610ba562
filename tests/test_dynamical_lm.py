"""The meta-learned dynamical language model against plain references: an LSTM and its updates written out by hand
in the tests, the document splits recomputed from their rule, WikiText files generated here; and the recipe run
end to end through the command line."""

from __future__ import annotations

import copy
import csv
import json
import math
import zlib
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_meta.cli import main
from lightning_meta.families import DocumentDataModule, TextDocuments
from lightning_meta.models import DynamicalLanguageModel
from lightning_meta.models.byte_lstm import ByteLSTM, select_parameters
from lightning_meta.models.dynamic_evaluation import read_document, sgd
from lightning_meta.models.dynamical_lm import window_bounds
from lightning_meta.optim import CoordinatewiseLSTM, LearnedOptimizer

RECIPES = Path(__file__).parent.parent / "recipes" / "dynamical_lm"
DYNAMIC = r"decoder|lstm\..*_l1$"  # the output layer (tied to the embedding) and the top LSTM layer of two
DYNAMIC_NAMES = ["embedding.weight", "lstm.weight_ih_l1", "lstm.weight_hh_l1", "lstm.bias_ih_l1", "lstm.bias_hh_l1",
                 "decoder.bias"]


def hand_written_lm(weights: dict[str, torch.Tensor], inputs, h, c):
    """The tied two-layer byte LSTM written out: embedding rows, the gates i, f, g, o step by step, logits E h + b."""
    x = weights["embedding.weight"][inputs]
    h, c = list(h), list(c)
    for layer in range(2):
        outputs = []
        for xt in x:
            gates = (weights[f"lstm.weight_ih_l{layer}"] @ xt + weights[f"lstm.bias_ih_l{layer}"]
                     + weights[f"lstm.weight_hh_l{layer}"] @ h[layer] + weights[f"lstm.bias_hh_l{layer}"])
            i, f, g, o = gates.chunk(4)
            c[layer] = torch.sigmoid(f) * c[layer] + torch.sigmoid(i) * torch.tanh(g)
            h[layer] = torch.sigmoid(o) * torch.tanh(c[layer])
            outputs.append(h[layer])
        x = torch.stack(outputs)
    return x @ weights["embedding.weight"].T + weights["decoder.bias"], h, c


def initial_weights(model: ByteLSTM) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone().double() for name, p in model.named_parameters()}


def documents_module(**kwargs) -> DocumentDataModule:
    settings = {"segment": 8, "inner_steps": 2, "meta_batch_size": 1}
    return DocumentDataModule(TextDocuments(), **{**settings, **kwargs})


class FirstStep(Callback):
    """Keeps the first batch and the gradients of the first optimizer step (before Adam moves anything)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.batch = batch

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if not hasattr(self, "grads"):
            self.grads = {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}


def first_step(module: DynamicalLanguageModel, data: DocumentDataModule) -> FirstStep:
    capture = FirstStep()
    trainer = L.Trainer(max_steps=1, precision="64-true", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[capture])
    trainer.fit(module, datamodule=data)
    return capture


def small_model(**kwargs) -> DynamicalLanguageModel:
    torch.manual_seed(0)
    settings = {"hidden_size": 6, "num_layers": 2, "dynamic": DYNAMIC, "truncation": 2, "gradient_clip": None,
                "evaluate": False, "net": CoordinatewiseLSTM(hidden_size=4)}
    return DynamicalLanguageModel(**{**settings, **kwargs})


# --- documents ---------------------------------------------------------------------------------------------------

def test_document_splits_are_deterministic_disjoint_and_follow_the_crc32_rule():
    from pydoc_data.topics import topics

    first, again = TextDocuments(), TextDocuments()
    names = {split: [t.name for t in first.tasks(split)] for split in ("train", "val", "test")}
    assert names == {split: [t.name for t in again.tasks(split)] for split in ("train", "val", "test")}
    assert sorted(sum(names.values(), [])) == sorted(topics)
    for split, members in names.items():
        for name in members:
            rest = zlib.crc32(name.encode("utf-8")) % 10
            assert split == ("test" if rest == 0 else "val" if rest == 1 else "train")
    document = first.tasks("test")[0]
    assert bytes(document.train.data.tolist()) == topics[document.name].encode("utf-8")


def test_the_standard_library_sources_are_documents_too():
    import sysconfig

    family = TextDocuments(source="stdlib")
    splits = {split: {t.name: t for t in family.tasks(split)} for split in ("train", "val", "test")}
    assert sum(len(s) for s in splits.values()) > 100
    (home,) = [s for s in splits.values() if "os.py" in s]
    path = Path(sysconfig.get_paths()["stdlib"]) / "os.py"
    assert bytes(home["os.py"].train.data.tolist()) == path.read_bytes()
    assert not any(name.startswith(("test/", "site-packages/")) for s in splits.values() for name in s)


def wikitext_article(rng: torch.Generator, title: str) -> str:
    words = ["the", "cat", "sat", "on", "mat", "@-@", "1", "<unk>", "and", "dog"]

    def line(n: int) -> str:
        return " ".join(words[int(i)] for i in torch.randint(0, len(words), (n,), generator=rng)) + " . \n"

    heading, sub = " = = Section = = \n", " = = = Sub @-@ section = = = \n"
    return f" = {title} = \n \n {line(12)} \n{heading} \n {line(7)} \n{sub} {line(5)} \n"


def test_the_loader_reads_generated_wikitext_raw_files(tmp_path):
    rng = torch.Generator().manual_seed(0)
    expected = {}
    for split, name in (("train", "train"), ("val", "valid"), ("test", "test")):
        titles = [f"{name.title()} article {i}" for i in range(3 if split == "train" else 2)]
        articles = [wikitext_article(rng, title) for title in titles]
        (tmp_path / f"wiki.{name}.raw").write_text(" \n" + "".join(articles), encoding="utf-8")
        expected[split] = {f"wiki.{name}.raw/{t}": a.encode() for t, a in zip(titles, articles)}
    family = TextDocuments(root=str(tmp_path))
    for split, articles in expected.items():
        got = {task.name: bytes(task.train.data.tolist()) for task in family.tasks(split)}
        assert got == articles

    data = DocumentDataModule(family, segment=4, inner_steps=3, meta_batch_size=2)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    for d, name in enumerate(batch.names):
        text = expected["train"][name]
        crop = bytes(batch.targets[d].flatten().tolist())
        assert crop in text and len(crop) == 16
        start = text.index(crop)
        assert batch.inputs[d].flatten()[0] == (text[start - 1] if start else 0)


def test_a_folder_of_text_files_is_split_by_the_name_rule(tmp_path):
    for i in range(30):
        (tmp_path / f"doc{i}.txt").write_bytes(f"document {i} ".encode() * 5)
    family = TextDocuments(root=str(tmp_path))
    for split in ("train", "val", "test"):
        for task in family.tasks(split):
            rest = zlib.crc32(task.name.encode()) % 10
            assert split == ("test" if rest == 0 else "val" if rest == 1 else "train")
            assert bytes(task.train.data.tolist()) == (tmp_path / task.name).read_bytes()
    assert sum(len(family.tasks(s)) for s in ("train", "val", "test")) == 30


# --- reading a document online -----------------------------------------------------------------------------------

@pytest.mark.parametrize("updater", ["sgd", "learned"])
def test_the_online_update_equals_a_plain_loop(updater):
    torch.manual_seed(0)
    model = ByteLSTM(hidden_size=6, num_layers=2).double()
    net = CoordinatewiseLSTM(hidden_size=4).double()
    text = torch.tensor(list(b"The cat sat on the mat. The cat sat on the hat. The dog sat."))
    inputs = torch.cat([torch.zeros(1, dtype=torch.long), text[:-1]])
    factory = sgd(0.5) if updater == "sgd" else (lambda params: LearnedOptimizer(params, net=copy.deepcopy(net)))
    got = read_document(model, inputs, text, segment=8, pattern=DYNAMIC, optimizer=factory)

    weights = initial_weights(model)
    states = {n: net.initial_state(weights[n].numel(), like=weights[n]) for n in DYNAMIC_NAMES}
    h = c = [torch.zeros(6, dtype=torch.float64)] * 2
    expected = []
    for start in range(0, len(text), 8):
        live = {n: w.requires_grad_(n in DYNAMIC_NAMES) for n, w in weights.items()}
        logits, h, c = hand_written_lm(live, inputs[start : start + 8], h, c)
        loss = F.cross_entropy(logits, text[start : start + 8])
        expected.append(float(loss) * len(text[start : start + 8]) / math.log(2))
        grads = torch.autograd.grad(loss, [live[n] for n in DYNAMIC_NAMES])
        with torch.no_grad():
            for name, grad in zip(DYNAMIC_NAMES, grads):
                if updater == "sgd":
                    step = -0.5 * grad
                else:
                    step, states[name] = net(grad, states[name])
                weights[name] = live[name].detach() + step
        h, c = [x.detach() for x in h], [x.detach() for x in c]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=got.dtype), rtol=1e-10, atol=1e-10)
    assert len(expected) == 8 and got[-1] < got[0]


# --- meta-training -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("first_order", [False, True])
def test_the_meta_gradient_through_two_segments_equals_an_explicit_unroll(first_order):
    module = small_model(first_order=first_order)
    start_lm, start_net = copy.deepcopy(module.lm).double(), copy.deepcopy(module.net).double()
    capture = first_step(module, documents_module())
    inputs, targets = capture.batch.inputs[0], capture.batch.targets[0]  # 3 segments: 2 updates, each scored

    leaves = {n: w.requires_grad_() for n, w in initial_weights(start_lm).items()}
    weights = dict(leaves)
    states = {n: start_net.initial_state(weights[n].numel(), like=weights[n]) for n in DYNAMIC_NAMES}
    h = c = [torch.zeros(6, dtype=torch.float64)] * 2
    losses = []
    for t in range(3):
        logits, h, c = hand_written_lm(weights, inputs[t], h, c)
        losses.append(F.cross_entropy(logits, targets[t]))
        if t < 2:
            grads = torch.autograd.grad(losses[-1], [weights[n] for n in DYNAMIC_NAMES], create_graph=not first_order,
                                        retain_graph=True)
            for name, grad in zip(DYNAMIC_NAMES, grads):
                step, states[name] = start_net(grad.detach() if first_order else grad, states[name])
                weights[name] = weights[name] + step
    meta_loss = torch.stack(losses).mean()
    expected = torch.autograd.grad(meta_loss, [*start_net.parameters(), *leaves.values()])

    got = [capture.grads[f"net.{n}"] for n, _ in start_net.named_parameters()]
    got += [capture.grads[f"lm.{n}"] for n in leaves]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)
    assert all(g.abs().sum() > 0 and g.isfinite().all() for g in got)  # the meta-learner itself is trained


class EveryStep(Callback):
    """Keeps the first batch and, at every optimizer step, the gradients and the weights they were taken at."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.batch = batch

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.steps = getattr(self, "steps", [])
        self.steps.append({
            "grads": {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None},
            "weights": {n: p.detach().clone() for n, p in pl_module.named_parameters()},
        })


@pytest.mark.parametrize("first_order", [False, True])
def test_the_meta_gradient_of_two_truncation_windows_equals_an_explicit_unroll_carrying_the_state(first_order):
    """Four updates in two windows of two. The first window's meta-gradient reaches the optimizer and every LM
    weight; the second starts where the first left the dynamic weights, the optimizer's states and the LSTM's
    hidden state (all carried, the graph cut) and runs with the weights Adam gave the optimizer and the fixed LM
    weights after the first step."""
    module = small_model(first_order=first_order)
    capture = EveryStep()
    trainer = L.Trainer(max_steps=2, precision="64-true", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[capture])
    trainer.fit(module, datamodule=documents_module(inner_steps=4))
    inputs, targets = capture.batch.inputs[0], capture.batch.targets[0]  # 5 segments: 4 updates, each scored
    first, second = capture.steps

    def explicit(window, weights, net, carried):
        """The meta-loss of updates ``window`` from ``carried`` (dynamic weights, optimizer states, h, c)."""
        dynamic, states, h, c = carried
        weights = {**weights, **dynamic}
        losses = []
        for t in range(window[0], window[1] + 1):
            logits, h_next, c_next = hand_written_lm(weights, inputs[t], h, c)
            loss = F.cross_entropy(logits, targets[t])
            if t > window[0] or window[0] == 0:  # a later window scores only the points its updates reach
                losses.append(loss)
            if t == window[1]:
                break  # the point the window ends at: scored, and the hidden state stays where it was
            grads = torch.autograd.grad(loss, [weights[n] for n in DYNAMIC_NAMES], create_graph=not first_order,
                                        retain_graph=True)
            for name, grad in zip(DYNAMIC_NAMES, grads):
                step, states[name] = net(grad.detach() if first_order else grad, states[name])
                weights[name] = weights[name] + step
            h, c = h_next, c_next
        end = ({n: weights[n] for n in DYNAMIC_NAMES}, states, h, c)
        return torch.stack(losses).mean(), end

    def leaves(step):
        lm = {n[3:]: w.clone().requires_grad_() for n, w in step["weights"].items() if n.startswith("lm.")}
        net = copy.deepcopy(module.net).double()
        net.load_state_dict({n[4:]: w for n, w in step["weights"].items() if n.startswith("net.")})
        return lm, net

    lm, net = leaves(first)
    zeros = [torch.zeros(6, dtype=torch.float64)] * 2
    start = ({n: lm[n] for n in DYNAMIC_NAMES}, {n: net.initial_state(lm[n].numel(), like=lm[n])
                                                 for n in DYNAMIC_NAMES}, zeros, zeros)
    loss, end = explicit((0, 2), lm, net, start)
    expected = torch.autograd.grad(loss, [*net.parameters(), *lm.values()])
    names = [f"net.{n}" for n, _ in net.named_parameters()] + [f"lm.{n}" for n in lm]
    for name, e in zip(names, expected):
        torch.testing.assert_close(first["grads"][name], e, rtol=1e-9, atol=1e-12, msg=name)

    dynamic, states, h, c = end
    carried = ({n: w.detach().requires_grad_() for n, w in dynamic.items()},
               {n: s.detach() for n, s in states.items()}, [x.detach() for x in h], [x.detach() for x in c])
    lm, net = leaves(second)
    assert not torch.equal(lm["lstm.weight_ih_l0"], first["weights"]["lm.lstm.weight_ih_l0"])  # Adam moved it
    loss, _ = explicit((2, 4), lm, net, carried)
    fixed = [n for n in lm if n not in DYNAMIC_NAMES]
    expected = torch.autograd.grad(loss, [*net.parameters(), *(lm[n] for n in fixed)])
    names = [f"net.{n}" for n, _ in net.named_parameters()] + [f"lm.{n}" for n in fixed]
    for name, e in zip(names, expected):
        torch.testing.assert_close(second["grads"][name], e, rtol=1e-9, atol=1e-12, msg=name)
        assert e.abs().sum() > 0
    assert not any(f"lm.{n}" in second["grads"] for n in DYNAMIC_NAMES)  # the carried weights are cut from the init


def test_pretraining_reads_short_windows_over_a_stretch_of_a_long_crop():
    """Crops of 9 segments, meta-training windows of 4 (2 a crop); pretraining takes 2 windows of 1 segment at a
    seeded place k: the loss of segments k and k + 1, then of k + 2, the LSTM's state carried between them (the
    reading starts at k from a zero state). Exactly one k in 0 ... 6 gives the recorded gradients."""
    module, capture = small_model(truncation=4, pretrain_truncation=1, pretrain_batches=1), EveryStep()
    trainer = L.Trainer(max_steps=2, precision="64-true", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[capture])
    trainer.fit(module, datamodule=documents_module(inner_steps=8))
    inputs, targets = capture.batch.inputs[0], capture.batch.targets[0]
    assert capture.batch.segments == [9] and not any(n.startswith("net.") for n in capture.steps[0]["grads"])

    def matches(k: int) -> bool:
        zeros = [torch.zeros(6, dtype=torch.float64)] * 2
        weights = {n[3:]: w.requires_grad_() for n, w in capture.steps[0]["weights"].items() if n.startswith("lm.")}
        first, h, c = hand_written_lm(weights, inputs[k], zeros, zeros)
        second, _, _ = hand_written_lm(weights, inputs[k + 1], h, c)
        loss = (F.cross_entropy(first, targets[k]) + F.cross_entropy(second, targets[k + 1])) / 2
        expected = dict(zip(weights, torch.autograd.grad(loss, list(weights.values()))))
        weights = {n[3:]: w.requires_grad_() for n, w in capture.steps[1]["weights"].items() if n.startswith("lm.")}
        _, h, c = hand_written_lm(weights, inputs[k + 1], [x.detach() for x in h], [x.detach() for x in c])
        third, _, _ = hand_written_lm(weights, inputs[k + 2], h, c)
        later = dict(zip(weights, torch.autograd.grad(F.cross_entropy(third, targets[k + 2]), list(weights.values()))))
        got = [(capture.steps[0]["grads"][f"lm.{n}"], e) for n, e in expected.items()]
        got += [(capture.steps[1]["grads"][f"lm.{n}"], e) for n, e in later.items()]
        return all(torch.allclose(g, e, rtol=1e-9, atol=1e-12) for g, e in got)

    assert sum(matches(k) for k in range(7)) == 1


def test_a_window_past_the_end_of_every_document_moves_nothing():
    family = TextDocuments()
    short = min(family.tasks("train"), key=lambda t: len(t.train) if len(t.train) >= 24 else 1 << 30)
    only_short = type("OneDocument", (TextDocuments,), {"tasks": lambda self, split: [short]})()
    data = DocumentDataModule(only_short, segment=8, inner_steps=2 * (len(short.train) // 8) + 3,
                              short_documents="whole", crop="start")
    module, capture = small_model(), EveryStep()
    windows = len(window_bounds(data.inner_steps, 2))
    trainer = L.Trainer(max_steps=windows, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[capture])
    trainer.fit(module, datamodule=data)
    real = capture.batch.segments[0]
    assert real == len(short.train) // 8 and capture.batch.inputs.shape[1] == data.inner_steps + 1
    assert torch.equal(capture.batch.targets[0, real:], torch.zeros_like(capture.batch.targets[0, real:]))
    reading = len(window_bounds(real - 1, 2))
    assert all(step["grads"] for step in capture.steps[:reading])
    assert not any(step["grads"] for step in capture.steps[reading:])  # Adam skips weights without a gradient
    final = dict(module.named_parameters())
    for name, value in capture.steps[reading]["weights"].items():
        assert torch.equal(final[name].detach(), value), name


def test_checkpointed_segments_give_the_plain_meta_gradient():
    plain = first_step(small_model(checkpoint_segments=0), documents_module(inner_steps=4)).grads
    checkpointed = first_step(small_model(checkpoint_segments=2), documents_module(inner_steps=4)).grads
    assert plain.keys() == checkpointed.keys() and any(n.startswith("net.") for n in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-9, atol=1e-12)


def test_tied_weights_stay_tied_through_meta_training_and_the_checkpoint(tmp_path):
    module = small_model(truncation=1)
    trainer = L.Trainer(max_steps=4, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, datamodule=documents_module())
    assert module.lm.decoder.weight is module.lm.embedding.weight
    assert "lm.decoder.weight" not in dict(module.named_parameters())  # one tensor, updated once per step
    trainer.save_checkpoint(tmp_path / "tied.ckpt")
    loaded = DynamicalLanguageModel.load_from_checkpoint(tmp_path / "tied.ckpt", net=CoordinatewiseLSTM(hidden_size=4))
    assert loaded.lm.decoder.weight is loaded.lm.embedding.weight
    torch.testing.assert_close(loaded.lm.embedding.weight, module.lm.embedding.weight)


def test_a_resumed_run_ends_where_the_uninterrupted_one_does(tmp_path):
    def run(max_steps, ckpt_path=None, callbacks=()):
        module = small_model(pretrain_batches=1)
        trainer = L.Trainer(max_steps=max_steps, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, callbacks=list(callbacks))
        trainer.fit(module, datamodule=documents_module(), ckpt_path=ckpt_path)
        return module

    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    run(2, callbacks=[saver])  # one batch of static training (2 truncation windows)
    resumed = run(8, ckpt_path=str(tmp_path / "epoch=0-step=2.ckpt"))
    whole = run(8)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    assert not torch.equal(whole.pretrained.decoder.bias, whole.lm.decoder.bias)  # meta-training moved the init


def test_bad_values_name_the_value_and_the_fix():
    with pytest.raises(ValueError, match="matches none of the parameters"):
        DynamicalLanguageModel(hidden_size=4, dynamic="head")
    with pytest.raises(ValueError, match="truncation must be >= 1"):
        DynamicalLanguageModel(hidden_size=4, truncation=0)
    with pytest.raises(ValueError, match="sgd_lrs"):
        DynamicalLanguageModel(hidden_size=4, sgd_lrs=())
    with pytest.raises(ValueError, match="segment must be >= 1"):
        DocumentDataModule(segment=0)
    with pytest.raises(ValueError, match="lower inner_steps or segment"):
        DocumentDataModule(segment=4096, inner_steps=100).setup("fit")
    with pytest.raises(ValueError, match="with short_documents='whole' reads documents of 2 segments or more"):
        DocumentDataModule(segment=2**20, inner_steps=100, short_documents="whole").setup("fit")


# --- the recipe --------------------------------------------------------------------------------------------------

def test_the_quick_recipe_runs_end_to_end_through_the_cli(tmp_path):
    tiny = ["--model.hidden_size=8", "--model.pretrain_batches=1", "--model.sgd_lrs=[0.1, 1.0]",
            "--data.segment=8", "--data.inner_steps=4", "--data.eval_bytes=48", "--trainer.max_steps=4",
            f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1"]
    main(args=["fit", "--config", str(RECIPES / "quick.yaml"), *tiny])
    log_dir = next(tmp_path.glob("lightning_logs/version_*"))
    with (log_dir / "dynamical_lm.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["init"], r["updater"]) for r in rows] == [
        (init, updater) for init in ("before_meta", "meta_init") for updater in ("static", "sgd", "learned")
    ]
    assert all(0 < float(r["bits_per_byte"]) < 12 and int(r["bytes"]) == 5 * 48 for r in rows)
    table = json.loads((log_dir / "dynamical_lm.json").read_text())
    assert table["documents_at_position"] == [5] * 6
    for row in rows:  # the interval over the 5 documents, recomputed from the table's per-document values
        documents = table["document_bits_per_byte"][f"{row['init']}/{row['updater']}"]
        sgd_read = table["document_bits_per_byte"][f"{row['init']}/sgd"]
        for values, column in ((documents, "document"), ([a - b for a, b in zip(documents, sgd_read)], "minus_sgd")):
            mean = sum(values) / 5
            half = 2.776445105 * math.sqrt(sum((v - mean) ** 2 for v in values) / 4) / math.sqrt(5)  # t(0.975, 4)
            assert math.isclose(float(row[f"{column}_mean"]), mean, rel_tol=1e-6, abs_tol=1e-9)
            assert math.isclose(float(row[f"{column}_ci95"]), half, rel_tol=1e-6, abs_tol=1e-9)
    for name in ("dynamical_lm.png", "dynamical_lm_saved_bits.png", "dynamical_lm_saved_bits.html"):
        assert (log_dir / name).stat().st_size > 0
    page = (log_dir / "dynamical_lm_saved_bits.html").read_text()
    assert page.count("<span") == 48  # every byte of the longest (all 48 bytes long) test document
    with (log_dir / "metrics.csv").open() as f:
        logged = list(csv.DictReader(f))
    assert any(r.get("test/meta_init/learned/bits_per_byte") for r in logged)
    assert any(r.get("meta/step") for r in logged) and any(r.get("train/bits_per_byte") for r in logged)


def test_the_gpu_config_builds_its_model():
    cli = main(["--config", str(RECIPES / "gpu.yaml"), "--trainer.accelerator=cpu"], run=False)  # parses on any machine
    model, data = cli.model, cli.datamodule
    assert isinstance(model, DynamicalLanguageModel) and isinstance(data, DocumentDataModule)
    assert sorted(select_parameters(model.lm, model.hparams["dynamic"])) == sorted(DYNAMIC_NAMES)
    assert data.family.source == "stdlib" and cli.config["trainer"]["accelerator"] == "cpu"
