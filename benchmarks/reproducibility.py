"""How far apart meta-training runs end that "should" agree: theta_0 of the same Leap run on the glyph alphabets,
trained again, with another number of torch threads, and with its meta-batch's tasks trained together
(``task_batch``) instead of one at a time, in float32 and float64.

Every run: ``seed_everything(0)``, :class:`~lightning_meta.models.ConvClassifier` (``--channels``), a
:class:`~lightning_meta.data.TaskDataModule` of the glyph alphabets (``--inner-steps`` steps of batch 20 per task,
meta-batch ``--meta-batch``), ``Leap(meta_lr=0.1)``; theta_0 is read after every meta-step. The table gives, for each
comparison and each meta-step, the largest difference of a theta_0 entry relative to the largest entry of the
reference run's theta_0 (0 is bit for bit).

    python benchmarks/reproducibility.py --meta-steps 5
"""

from __future__ import annotations

import argparse
import platform

import lightning as L
import torch

from lightning_meta import Leap
from lightning_meta.data import TaskDataModule
from lightning_meta.models import ConvClassifier


class Snapshots(L.Callback):
    """theta_0 (flattened) after every meta-step of the Trainer's ``Leap``."""

    def __init__(self, leap: Leap) -> None:
        self.leap = leap
        self.theta_0: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if self.leap.meta_steps > len(self.theta_0):
            self.theta_0.append(torch.cat([p.detach().double().flatten() for p in self.leap.theta_0]))


def run(args: argparse.Namespace, threads: int, task_batch: int | None, precision: str) -> list[torch.Tensor]:
    torch.set_num_threads(threads)
    L.seed_everything(0, verbose=False)
    data = TaskDataModule(
        "glyphs", inner_steps=args.inner_steps, meta_batch_size=args.meta_batch, task_batch=task_batch,
        max_meta_steps=args.meta_steps, batch_size=20,
    )  # fmt: skip
    leap = Leap(meta_lr=0.1)
    snapshots = Snapshots(leap)
    trainer = L.Trainer(
        callbacks=[leap, snapshots], precision=precision, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
    )  # fmt: skip
    trainer.fit(ConvClassifier(num_classes=20, channels=args.channels), datamodule=data)
    return snapshots.theta_0


def relative(a: list[torch.Tensor], b: list[torch.Tensor]) -> list[float]:
    return [float((x - y).abs().max() / x.abs().max()) for x, y in zip(a, b)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meta-steps", type=int, default=5)
    parser.add_argument("--inner-steps", type=int, default=20)
    parser.add_argument("--meta-batch", type=int, default=5)
    parser.add_argument("--channels", type=int, default=32)
    args = parser.parse_args()
    reference = run(args, 1, None, "32-true")
    rows = {
        "the same run again": relative(reference, run(args, 1, None, "32-true")),
        "2 torch threads instead of 1": relative(reference, run(args, 2, None, "32-true")),
        f"tasks trained together (task_batch={args.meta_batch}), float32": relative(
            reference, run(args, 1, args.meta_batch, "32-true")
        ),
    }
    reference64 = run(args, 1, None, "64-true")
    rows[f"tasks trained together (task_batch={args.meta_batch}), float64"] = relative(
        reference64, run(args, 1, args.meta_batch, "64-true")
    )
    steps = range(1, args.meta_steps + 1)
    print("| compared with one task at a time, 1 thread | " + " | ".join(f"meta-step {s}" for s in steps) + " |")
    print("|---|" + "---:|" * len(steps))
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{v:.1e}" if v else "0" for v in values) + " |")
    print(
        f"\nConvClassifier({args.channels} channels), {args.inner_steps} inner steps of batch 20, meta-batch "
        f"{args.meta_batch}, Leap(meta_lr=0.1); torch {torch.__version__}, lightning {L.__version__}, "
        f"{platform.machine()} {platform.processor() or ''}, Python {platform.python_version()}"
    )


if __name__ == "__main__":
    main()
