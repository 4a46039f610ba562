"""``ByteLSTM``: an LSTM language model over bytes, its hidden state passed in and out so that a reader carries it
from segment to segment; :func:`select_parameters` picks the weights a dynamical model updates while reading.

Examples:
    >>> import torch
    >>> model = ByteLSTM(hidden_size=16, num_layers=2)
    >>> h, c = model.initial_state(batch=1, like=model.decoder.bias)
    >>> logits, h, c = model(torch.tensor([[0, 72, 105]]), h, c)
    >>> tuple(logits.shape), tuple(h.shape)
    ((1, 3, 256), (2, 1, 16))
    >>> model.decoder.weight is model.embedding.weight  # tied input and output embeddings
    True
    >>> sorted(select_parameters(model, "decoder"))  # the tied weight is found by its other name too
    ['decoder.bias', 'embedding.weight']
"""

from __future__ import annotations

import re

from torch import Tensor, nn

from lightning_meta.validation import check_range


class ByteLSTM(nn.Module):
    """Embedding, ``num_layers`` LSTM layers of ``hidden_size`` units, a linear decoder to 256 byte logits.

    Args:
        hidden_size: units per LSTM layer; also the embedding size.
        num_layers: stacked LSTM layers.
        tie_weights: the decoder's weight is the embedding (Press & Wolf 2017; Inan et al. 2017).
    """

    def __init__(self, hidden_size: int = 128, num_layers: int = 2, tie_weights: bool = True) -> None:
        super().__init__()
        check_range("ByteLSTM", 1, hidden_size=hidden_size, num_layers=num_layers)
        self.embedding = nn.Embedding(256, hidden_size)
        self.lstm = nn.LSTM(hidden_size, hidden_size, num_layers, batch_first=True)
        self.decoder = nn.Linear(hidden_size, 256)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)  # N(0, 1) would give huge logits once tied
        if tie_weights:
            self.decoder.weight = self.embedding.weight

    def initial_state(self, batch: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """Zero hidden and cell states ``[num_layers, batch, hidden_size]`` on ``like``'s device and dtype."""
        shape = (self.lstm.num_layers, batch, self.lstm.hidden_size)
        return like.new_zeros(shape), like.new_zeros(shape)

    def forward(self, inputs: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Logits ``[batch, length, 256]`` of the byte after each of ``inputs [batch, length]``, and the new state."""
        out, (h, c) = self.lstm(self.embedding(inputs), (h, c))
        return self.decoder(out), h, c


def select_parameters(module: nn.Module, pattern: str) -> dict[str, nn.Parameter]:
    """The parameters with a name in which the regular expression ``pattern`` is found, each once under its first
    name (``named_parameters()``), so that a tied weight is chosen by any of its names and stays one tensor.

    Examples:
        >>> model = ByteLSTM(hidden_size=8, num_layers=2)
        >>> sorted(select_parameters(model, r"lstm\\..*_l1$"))
        ['lstm.bias_hh_l1', 'lstm.bias_ih_l1', 'lstm.weight_hh_l1', 'lstm.weight_ih_l1']
    """
    search = re.compile(pattern).search
    chosen = {id(p) for name, p in module.named_parameters(remove_duplicate=False) if search(name)}
    return {name: p for name, p in module.named_parameters() if id(p) in chosen}

