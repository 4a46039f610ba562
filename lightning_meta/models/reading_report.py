"""What reading the held-out documents with several updaters shows: a table with 95 % intervals over documents, the
curves of bits per byte against the position in the document (mean over documents and interval), and one document
coloured byte by byte by the bits the learned updater saved against static reading.

Every read is ``(bits, sizes)``, ``[documents, segments]`` (:func:`~lightning_meta.models.dynamic_evaluation.
read_documents`), keyed ``"<init>/<updater>"``; the documents are the same, in the same order, in every read, so
differences between updaters are paired document by document.

Examples:
    >>> bits = torch.tensor([[8.0, 6.0, 4.0], [9.0, 7.0, 0.0]])
    >>> sizes = torch.tensor([[4, 4, 4], [4, 4, 0]])
    >>> reads = {"meta_init/static": (bits, sizes), "meta_init/sgd": (0.8 * bits, sizes)}
    >>> [round(r["bits_per_byte"], 3) for r in table_rows(reads, horizon=2)]  # 34 and 27.2 bits in 20 bytes
    [1.7, 1.36]
    >>> row = table_rows(reads, horizon=2)[0]
    >>> round(row["minus_sgd_mean"], 3), round(row["minus_sgd_ci95"], 3)  # 0.3, 0.4: 0.35 +- 12.71 * 0.0707 / 1.414
    (0.35, 0.635)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_meta.intervals import t_quantile
from lightning_meta.models.dynamic_evaluation import bits_per_byte, document_bits_per_byte, windowed_bits_per_byte
from lightning_meta.plotting import plot_position_curves

Read = tuple[Tensor, Tensor]
INITS = {"before_meta": "LM and updater before meta-training", "meta_init": "meta-learned"}


def interval(values: Tensor, counted: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and half-width of the 95 % t-interval over the first dimension, counting the entries where
    ``counted`` (NaN where fewer than 2 count)."""
    n = counted.sum(0)
    kept = torch.where(counted, values, 0.0)
    mean = kept.sum(0) / n.clamp_min(1)
    variance = torch.where(counted, values - mean, 0.0).square().sum(0) / (n - 1).clamp_min(1)
    quantiles = {int(k): t_quantile(0.975, int(k) - 1) for k in n.unique().tolist() if k >= 2}
    t = torch.tensor([quantiles.get(int(k), math.nan) for k in n.flatten().tolist()]).reshape(n.shape)
    half = t * variance.sqrt() / n.clamp_min(1).sqrt()
    return torch.where(n >= 1, mean, torch.nan), torch.where(n >= 2, half, torch.nan)


def table_rows(reads: dict[str, Read], horizon: int) -> list[dict[str, Any]]:
    """One row a read: bits per byte over all the bytes and over the first ``horizon`` segments (the trained
    horizon); the mean of the documents' bits per byte and its 95 % interval over documents; the same for each
    document's difference to SGD from the same init (paired), when that init has an SGD read."""
    rows = []
    for name, (bits, sizes) in reads.items():
        init, updater = name.split("/")
        documents = document_bits_per_byte(bits, sizes)
        every = torch.ones_like(documents, dtype=torch.bool)
        mean, half = interval(documents, every)
        row = {
            "init": init,
            "updater": updater,
            "bits_per_byte": bits_per_byte(bits, sizes),
            "trained_horizon_bits_per_byte": bits_per_byte(bits[:, :horizon], sizes[:, :horizon]),
            "document_mean": float(mean),
            "document_ci95": float(half),
        }
        if f"{init}/sgd" in reads:
            difference = documents - document_bits_per_byte(*reads[f"{init}/sgd"])
            mean, half = interval(difference, every)
            row |= {"minus_sgd_mean": float(mean), "minus_sgd_ci95": float(half)}
        rows.append({**row, "bytes": int(sizes.sum()), "documents": len(documents)})
    return rows


def position_curves(reads: dict[str, Read], window: int) -> dict[str, dict[str, Tensor]]:
    """Bits per byte over ``window`` segments from each position on: for every read its mean over the documents
    that fill the window and the 95 % half-width (``"mean"``, ``"ci95"``, ``[positions]``), and the same for its
    difference to static reading from the same init (``"gain_mean"``, ``"gain_ci95"``), plus ``"documents"``."""
    windowed = {name: windowed_bits_per_byte(*read, window) for name, read in reads.items()}
    curves = {}
    for name, (values, full) in windowed.items():
        mean, half = interval(values, full)
        curves[name] = {"mean": mean, "ci95": half, "documents": full.sum(0)}
        static = windowed.get(name.split("/")[0] + "/static")
        if static is not None and not name.endswith("/static"):
            gain_mean, gain_half = interval(values - static[0], full)
            curves[name] |= {"gain_mean": gain_mean, "gain_ci95": gain_half}
    return curves


def plot_reading(
    curves: dict[str, dict[str, Tensor]], segment: int, window: int, trained_bytes: int, path: Path
) -> Path:
    """Two panels against the position in the document, over the positions that at least two documents fill:
    the bits per byte of every read, and every updater's difference to static reading from the same init; bands
    are 95 % intervals over documents."""
    documents = next(iter(curves.values()))["documents"]
    shown = documents >= 2
    positions = ((torch.arange(len(documents)) + window) * segment)[shown]  # the byte each window ends at
    labels = {name: f"{INITS[name.split('/')[0]]}, {name.split('/')[1]}" for name in curves}
    absolute = {labels[n]: c["mean"][shown] for n, c in curves.items()}
    gains = {labels[n]: c["gain_mean"][shown] for n, c in curves.items() if "gain_mean" in c}
    bands = {
        "bits per byte": {labels[n]: c["ci95"][shown] for n, c in curves.items()},
        "bits per byte minus static, same init": {labels[n]: c["gain_ci95"][shown] for n, c in curves.items()
                                                  if "gain_ci95" in c},
    }
    panels = {"bits per byte": absolute, "bits per byte minus static, same init": gains}
    title = (
        f"Reading {int(documents[0])} test documents: bits per byte over {window} segments of {segment} bytes "
        "(mean over the documents that fill them, band: 95 % interval), where at least two documents do"
    )
    return plot_position_curves(panels, positions, path, title, mark=("trained horizon", trained_bytes), bands=bands)
