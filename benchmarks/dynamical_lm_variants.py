"""The dynamical language model's updater variants, compared on the validation documents from one pretrained LM.

Pretrains the recipe's 2 x 64 byte LSTM once (``--pretrain-batches`` batches of ``--pretrain-inner`` + 1 segments
of 32 bytes; kept in ``--pretrained``, reused by later runs), then meta-trains one updater variant from it for
``--batches`` batches and reads the documents of ``--split`` (default: validation, for choosing among variants; the
test documents are the recipe's) static, with SGD dynamic evaluation (learning rate chosen on the validation
documents) and with the learned updater, before and after meta-training. Prints the bits per byte over whole
documents and over their first 17 segments (the old 16-update crops) and writes them to ``--out`` (JSON).

The variants the docs compare (docs/dynamical_lm.md, "How the default was chosen")::

    python benchmarks/dynamical_lm_variants.py --inner 16 --short skip --crop random --truncation 4 --batches 150
    python benchmarks/dynamical_lm_variants.py                                  # whole documents, windows of 16
    python benchmarks/dynamical_lm_variants.py --truncation 64
    python benchmarks/dynamical_lm_variants.py --truncation 4 8 16 32 64         # growing windows
    python benchmarks/dynamical_lm_variants.py --no-learn-lr
    python benchmarks/dynamical_lm_variants.py --meta-lr 0.003
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch

from lightning_meta.families import DocumentDataModule, TextDocuments
from lightning_meta.models import DynamicalLanguageModel
from lightning_meta.models.dynamic_evaluation import bits_per_byte, choose_sgd_lr, read_documents, sgd
from lightning_meta.models.dynamical_lm import window_bounds
from lightning_meta.optim import CoordinatewiseLSTM, LearnedOptimizer, SGDAnchoredLSTM

SEGMENT = 32
TRAINED_HORIZON = 17  # segments of the old crops (16 updates)
QUIET = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}


def pretrain(args: argparse.Namespace, family: TextDocuments) -> dict[str, torch.Tensor]:
    """The static LM's weights: ``--pretrain-batches`` batches of short crops, truncation 4."""
    model = DynamicalLanguageModel(hidden_size=64, num_layers=2, pretrain_batches=args.pretrain_batches, truncation=4,
                                   first_order=True, evaluate=False)
    data = DocumentDataModule(family, segment=SEGMENT, inner_steps=args.pretrain_inner, crop="random", seed=args.seed)
    steps = args.pretrain_batches * len(window_bounds(args.pretrain_inner, 4))
    L.Trainer(max_steps=steps, **QUIET).fit(model, datamodule=data)
    return model.lm.state_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrained", type=Path, default=Path("outputs/dynamical_lm/variants/pretrained.pt"))
    parser.add_argument("--pretrain-batches", type=int, default=1500)
    parser.add_argument("--pretrain-inner", type=int, default=16)
    parser.add_argument("--net", choices=["anchored", "free"], default="anchored")
    parser.add_argument("--hidden", type=int, default=16, help="the updater's LSTM units")
    parser.add_argument("--inner", type=int, default=1023, help="updates per crop (1023: whole documents)")
    parser.add_argument("--short", default="whole", help="DocumentDataModule(short_documents=...)")
    parser.add_argument("--crop", default="start")
    parser.add_argument("--truncation", type=int, nargs="+", default=[16], help="window lengths (the last repeats)")
    parser.add_argument("--batches", type=int, default=60, help="meta-training batches")
    parser.add_argument("--meta-lr", type=float, default=1e-3)
    parser.add_argument("--no-learn-lr", action="store_true", help="keep the anchor's learning rate fixed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="val")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cpu, wall = time.process_time(), time.perf_counter()
    L.seed_everything(args.seed, verbose=False)
    family = TextDocuments()
    if not args.pretrained.exists():
        args.pretrained.parent.mkdir(parents=True, exist_ok=True)
        torch.save(pretrain(args, family), args.pretrained)
    truncation = args.truncation[0] if len(args.truncation) == 1 else args.truncation
    net = (SGDAnchoredLSTM(lr=0.3, learn_lr=not args.no_learn_lr, hidden_size=args.hidden, num_layers=1)
           if args.net == "anchored" else CoordinatewiseLSTM(hidden_size=args.hidden, num_layers=1))
    model = DynamicalLanguageModel(hidden_size=64, num_layers=2, truncation=truncation, first_order=True,
                                   evaluate=False, net=net, meta_lr=args.meta_lr)
    model.lm.load_state_dict(torch.load(args.pretrained))
    data = DocumentDataModule(family, segment=SEGMENT, inner_steps=args.inner, crop=args.crop,
                              short_documents=args.short, seed=args.seed)
    steps = args.batches * len(window_bounds(args.inner, truncation))
    L.Trainer(max_steps=steps, **QUIET).fit(model, datamodule=data)
    documents, validation = data.held_out(args.split), data.held_out("val")
    results = {}
    for init, lm in (("pre", model.pretrained), ("meta", model.lm)):
        lr, _ = choose_sgd_lr(lm, validation, SEGMENT, "decoder", (0.03, 0.1, 0.3, 1.0))
        updaters = {"static": None, "sgd": sgd(lr)}
        if init == "meta":
            updaters["learned"] = partial(LearnedOptimizer, net=model.net)
        for name, updater in updaters.items():
            bits, sizes = read_documents(lm, documents, SEGMENT, "decoder", updater)
            results[f"{init}/{name}"] = {
                "bits_per_byte": bits_per_byte(bits, sizes),
                "first_17_segments": bits_per_byte(bits[:, :TRAINED_HORIZON], sizes[:, :TRAINED_HORIZON]),
                "sgd_lr": lr if name == "sgd" else None,
            }
            print(init, name, {k: round(v, 4) for k, v in results[f"{init}/{name}"].items() if v}, flush=True)
    seconds = {"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall}
    print("learned - sgd:", results["meta/learned"]["bits_per_byte"] - results["meta/sgd"]["bits_per_byte"], seconds)
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"pretrained": str(args.pretrained),
                                                                "out": str(args.out)},
                                        "results": results, "seconds": seconds}, indent=1))


if __name__ == "__main__":
    main()
