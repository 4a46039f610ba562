"""``CoordinatewiseLSTM``: the learned optimizer of Andrychowicz et al. (2016), one small LSTM for every coordinate.

The LSTM's weights are shared by all coordinates of all parameters; each coordinate has its own hidden state. Its
input is the gradient preprocessed into (log-magnitude, sign) so that gradients of very different scales look
alike, optionally with the loss and the parameter's value; its output, times ``output_scale``, is the update.

Examples:
    >>> import torch
    >>> net = CoordinatewiseLSTM(hidden_size=8)
    >>> grad = torch.randn(3, 4)
    >>> state = net.initial_state(grad.numel())
    >>> update, state = net(grad, state)
    >>> update.shape, state.shape
    (torch.Size([3, 4]), torch.Size([2, 2, 12, 8]))
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn


def preprocess(values: Tensor, p: float = 10.0) -> Tensor:
    """Andrychowicz et al.'s preprocessing of a flat tensor into ``[N, 2]``: ``(log|x| / p, sign x)`` where
    ``|x| >= e^-p``, else ``(-1, e^p x)``.

    Examples:
        >>> preprocess(torch.tensor([1.0, -math.exp(-12.0)]), p=10.0)
        tensor([[ 0.0000,  1.0000],
                [-1.0000, -0.1353]])
    """
    values = values.reshape(-1, 1)
    large = values.abs() >= math.exp(-p)
    log = torch.where(large, values.abs().clamp_min(math.exp(-p)).log() / p, -torch.ones_like(values))
    sign = torch.where(large, values.sign(), values * math.exp(p))
    return torch.cat([log, sign], dim=1)


class CoordinatewiseLSTM(nn.Module):
    """A ``num_layers``-layer LSTM applied to every coordinate, mapping gradients to updates.

    Args:
        hidden_size: units of each LSTM layer (20 in the paper).
        num_layers: stacked LSTM cells (2 in the paper).
        preprocess_p: the ``p`` of :func:`preprocess` (10 in the paper).
        output_scale: the update is the LSTM's linear output times this (0.1 in the paper).
        use_loss: also feed the (preprocessed) loss, the same for every coordinate.
        use_parameter: also feed each coordinate's current value.
    """

    def __init__(
        self,
        hidden_size: int = 20,
        num_layers: int = 2,
        preprocess_p: float = 10.0,
        output_scale: float = 0.1,
        use_loss: bool = False,
        use_parameter: bool = False,
    ) -> None:
        super().__init__()
        self.config = {
            "hidden_size": hidden_size, "num_layers": num_layers, "preprocess_p": preprocess_p,
            "output_scale": output_scale, "use_loss": use_loss, "use_parameter": use_parameter,
        }
        inputs = 2 + 2 * use_loss + use_parameter
        self.cells = nn.ModuleList(
            nn.LSTMCell(inputs if i == 0 else hidden_size, hidden_size) for i in range(num_layers)
        )
        self.head = nn.Linear(hidden_size, 1)
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.preprocess_p, self.output_scale = preprocess_p, output_scale
        self.use_loss, self.use_parameter = use_loss, use_parameter

    def initial_state(self, coordinates: int, like: Tensor | None = None) -> Tensor:
        """Zero hidden and cell states for ``coordinates`` coordinates: ``[num_layers, 2, coordinates, hidden]``."""
        reference = like if like is not None else self.head.weight
        return reference.new_zeros(self.num_layers, 2, coordinates, self.hidden_size)

    def forward(
        self, grad: Tensor, state: Tensor, loss: Tensor | None = None, parameter: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The update for a parameter with gradient ``grad`` (any shape) and the new state."""
        outputs, state = self.features(grad, state, loss, parameter)
        return outputs.reshape(grad.shape) * self.output_scale, state

    def features(
        self, grad: Tensor, state: Tensor, loss: Tensor | None = None, parameter: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The linear output layer's values for every coordinate, ``[coordinates, outputs]``, and the new state."""
        inputs = [preprocess(grad, self.preprocess_p)]
        if self.use_loss:
            if loss is None:
                raise ValueError("this CoordinatewiseLSTM was built with use_loss=True: pass the loss")
            inputs.append(preprocess(loss.detach().reshape(1), self.preprocess_p).expand(grad.numel(), 2))
        if self.use_parameter:
            if parameter is None:
                raise ValueError("this CoordinatewiseLSTM was built with use_parameter=True: pass the parameter")
            inputs.append(parameter.reshape(-1, 1))
        x = torch.cat(inputs, dim=1).to(self.head.weight.dtype)
        states = []
        for cell, (h, c) in zip(self.cells, state):
            h, c = cell(x, (h, c))
            states.append(torch.stack([h, c]))
            x = h
        return self.head(x), torch.stack(states)

    def save(self, path: str | Path) -> None:
        """Write the trained weights and the settings, for :meth:`load`."""
        torch.save({"config": self.config, "state_dict": self.state_dict()}, path)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device | None = None) -> CoordinatewiseLSTM:
        """A network saved with :meth:`save`."""
        saved = torch.load(path, map_location=map_location, weights_only=True)
        net = cls(**saved["config"])
        net.load_state_dict(saved["state_dict"])
        return net
