"""Reading held-out documents with a language model whose chosen weights learn as it reads: static evaluation,
dynamic evaluation with SGD (Krause et al. 2018) or with a learned optimizer, in bits per byte.

Each document is read from the model's weights, in segments: the model predicts a segment (its bits are counted),
then, with an optimizer, takes one step on that segment's mean loss before it reads the next one. The hidden state
runs on across segments (its gradient is truncated at segment boundaries). Every document starts afresh from the
same weights and a zero state.

Examples:
    >>> import torch
    >>> from lightning_meta.models.byte_lstm import ByteLSTM
    >>> model = ByteLSTM(hidden_size=8, num_layers=1)
    >>> text = torch.tensor(list(b"the cat sat on the mat; the cat sat on the mat"))
    >>> inputs = torch.cat([torch.zeros(1, dtype=torch.long), text[:-1]])
    >>> bits = read_document(model, inputs, text, segment=16, pattern="decoder")
    >>> bits.shape  # three segments, the last one short
    torch.Size([3])
    >>> sgd = lambda params: torch.optim.SGD(params, lr=1.0)
    >>> learning = read_document(model, inputs, text, segment=16, pattern="decoder", optimizer=sgd)
    >>> bool(learning[0] == bits[0]), bool(learning.sum() < bits.sum())  # same first segment; then it learns
    (True, True)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta.models.byte_lstm import ByteLSTM, select_parameters

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
Document = tuple[str, Tensor, Tensor]


@torch.inference_mode(False)
def read_document(
    model: ByteLSTM,
    inputs: Tensor,
    targets: Tensor,
    segment: int,
    pattern: str,
    optimizer: OptimizerFactory | None = None,
    per_byte: bool = False,
) -> Tensor:
    """The bits of each segment of one document (``inputs``, ``targets``: 1-D byte values) read by a copy of
    ``model`` (``per_byte``: of each byte); ``optimizer`` (``None``: static) is built on the copy's parameters that
    ``pattern`` selects (:func:`~lightning_meta.models.byte_lstm.select_parameters`) and steps after every
    segment."""
    reader = copy.deepcopy(model).train()  # cuDNN's LSTM backward needs training mode; ByteLSTM has no dropout
    reader.requires_grad_(False)
    chosen = list(select_parameters(reader, pattern).values())
    for p in chosen:
        p.requires_grad_()
    step = optimizer(chosen) if optimizer is not None else None
    h, c = reader.initial_state(1, like=reader.decoder.bias)
    bits = []
    for x, y in zip(inputs.split(segment), targets.split(segment)):
        with torch.enable_grad():
            logits, h, c = reader(x[None], h, c)
            losses = F.cross_entropy(logits[0], y, reduction="none")
            loss = losses.mean()
        bits.append(losses.detach() / math.log(2) if per_byte else loss.detach() * len(y) / math.log(2))
        if step is not None:
            loss.backward()
            closure: Callable[[], Any] = partial(Tensor.detach, loss)  # for a learned optimizer that reads the loss
            step.step(closure)
            step.zero_grad()
        h, c = h.detach(), c.detach()
    return torch.cat(bits) if per_byte else torch.stack(bits)


def read_documents(
    model: ByteLSTM,
    documents: Sequence[Document],
    segment: int,
    pattern: str,
    optimizer: OptimizerFactory | None = None,
    progress: Callable[[], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`read_document` on each document (calling ``progress`` after each): ``(bits, sizes)``, both
    ``[documents, segments of the longest]`` with the bits and the bytes of every segment (zeros past a document's
    end).

    Examples:
        >>> model = ByteLSTM(hidden_size=8, num_layers=1)
        >>> short, long = torch.arange(5), torch.arange(12)
        >>> bits, sizes = read_documents(model, [("a", short, short), ("b", long, long)], 4, "decoder")
        >>> sizes.tolist()
        [[4, 1, 0], [4, 4, 4]]
    """
    bits = []
    for _, inputs, targets in documents:
        bits.append(read_document(model, inputs, targets, segment, pattern, optimizer))
        if progress is not None:
            progress()
    sizes = [torch.tensor([len(y) for y in targets.split(segment)]) for _, _, targets in documents]
    pad = nn.utils.rnn.pad_sequence
    return pad([b.cpu() for b in bits], batch_first=True), pad(sizes, batch_first=True)


def bits_per_byte(bits: Tensor, sizes: Tensor) -> float:
    """All the bits over all the bytes (documents weighted by their length)."""
    return float(bits.sum() / sizes.sum())


def document_bits_per_byte(bits: Tensor, sizes: Tensor) -> Tensor:
    """The bits per byte of each whole document (one value a row of ``bits``, ``sizes``).

    Examples:
        >>> document_bits_per_byte(torch.tensor([[8.0, 2.0], [4.0, 0.0]]), torch.tensor([[4, 2], [4, 0]])).tolist()
        [1.6666666269302368, 1.0]
    """
    return bits.sum(1) / sizes.sum(1)


def windowed_bits_per_byte(bits: Tensor, sizes: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """Each document's bits per byte over ``window`` consecutive segments from each position on,
    ``[documents, positions]``, and whether the document fills that whole window (else NaN there).

    Examples:
        >>> values, full = windowed_bits_per_byte(torch.tensor([[8.0, 2.0, 6.0]]), torch.tensor([[4, 2, 0]]), 2)
        >>> values.tolist(), full.tolist()
        ([[1.6666666269302368, nan]], [[True, False]])
    """
    pool = partial(F.avg_pool1d, kernel_size=window, stride=1)
    full = pool((sizes > 0).double()[:, None])[:, 0] > 1 - 1e-9
    values = pool(bits.double()[:, None])[:, 0] / pool(sizes.double()[:, None])[:, 0].clamp_min(1e-12)
    return torch.where(full, values, torch.nan).float(), full


def position_curve(bits: Tensor, sizes: Tensor) -> tuple[Tensor, Tensor]:
    """Bits per byte at each segment position over the documents that reach it, and how many do.

    Examples:
        >>> curve, documents = position_curve(torch.tensor([[8.0, 2.0], [4.0, 0.0]]), torch.tensor([[4, 2], [4, 0]]))
        >>> curve.tolist(), documents.tolist()
        ([1.5, 1.0], [2, 1])
    """
    return bits.sum(0) / sizes.sum(0), (sizes > 0).sum(0)


def choose_sgd_lr(
    model: ByteLSTM,
    documents: Sequence[Document],
    segment: int,
    pattern: str,
    lrs: Sequence[float],
    progress: Callable[[], None] | None = None,
) -> tuple[float, dict[float, float]]:
    """The SGD learning rate of dynamic evaluation with the fewest bits per byte on ``documents`` (validation
    documents), and the bits per byte of every candidate (a diverging one counts as infinite); ``progress`` is
    called after each document read."""
    scores = {}
    for lr in lrs:
        score = bits_per_byte(*read_documents(model, documents, segment, pattern, sgd(lr), progress))
        scores[lr] = score if math.isfinite(score) else math.inf
    return min(scores, key=lambda lr: scores[lr]), scores


def sgd(lr: float) -> OptimizerFactory:
    """Plain SGD at ``lr`` (dynamic evaluation), as an optimizer factory."""
    return lambda params: torch.optim.SGD(params, lr=lr)
