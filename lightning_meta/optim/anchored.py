"""``SGDAnchoredLSTM``: a learned optimizer that starts as SGD and learns a correction on top of it.

The free-form :class:`~lightning_meta.optim.CoordinatewiseLSTM` maps each gradient to an update from scratch: before
(and far beyond) meta-training its updates can be anything. This one keeps SGD's step and learns two per-coordinate
corrections from the same coordinate-wise LSTM: a factor on the step size and an additive term,

    update = -lr * factor * g + output_scale * correction,    factor = max_factor ** tanh(s / log(max_factor))

where ``(s, correction)`` is the LSTM's linear output. That layer starts at zero, so before meta-training the update
is exactly SGD's ``-lr * g`` (``factor = 1``), step for step; ``lr`` is meta-learned too (as its logarithm) unless
``learn_lr=False``. The factor stays within ``[1 / max_factor, max_factor]`` however long the optimizer runs.

Examples:
    >>> import torch
    >>> net = SGDAnchoredLSTM(lr=0.5, hidden_size=8)
    >>> grad = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    >>> update, state = net(grad, net.initial_state(grad.numel()))
    >>> torch.equal(update, -0.5 * grad)  # zero correction: SGD's step
    True
    >>> round(net.lr.item(), 6)
    0.5
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lightning_meta.optim.lstm import CoordinatewiseLSTM


class SGDAnchoredLSTM(CoordinatewiseLSTM):
    """SGD at ``lr`` plus a learned per-coordinate step-size factor and additive correction (both zero at first).

    Args:
        lr: SGD's learning rate, the anchor (tune it like SGD's before meta-training).
        learn_lr: meta-learn ``lr`` (as ``log_lr``) with the rest of the network.
        max_factor: the step-size factor stays within ``[1 / max_factor, max_factor]``.
        hidden_size, num_layers, preprocess_p, output_scale, use_loss, use_parameter: as for
            :class:`~lightning_meta.optim.CoordinatewiseLSTM`; ``output_scale`` scales the additive correction.
    """

    def __init__(
        self,
        lr: float = 0.1,
        learn_lr: bool = True,
        max_factor: float = 10.0,
        hidden_size: int = 20,
        num_layers: int = 2,
        preprocess_p: float = 10.0,
        output_scale: float = 0.1,
        use_loss: bool = False,
        use_parameter: bool = False,
    ) -> None:
        if lr <= 0 or max_factor <= 1:
            raise ValueError(f"SGDAnchoredLSTM: lr must be > 0 and max_factor > 1, got {lr} and {max_factor}")
        super().__init__(hidden_size, num_layers, preprocess_p, output_scale, use_loss, use_parameter)
        self.config.update({"lr": lr, "learn_lr": learn_lr, "max_factor": max_factor})
        self.head = nn.Linear(hidden_size, 2)  # (step-size logit, additive correction)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.log_lr = nn.Parameter(torch.tensor(math.log(lr)), requires_grad=learn_lr)
        self.max_factor = max_factor

    @property
    def lr(self) -> Tensor:
        """The anchor's learning rate, ``exp(log_lr)``."""
        return self.log_lr.exp()

    def set_lr(self, lr: float) -> None:
        """Move the anchor to SGD's learning rate ``lr`` (e.g. the one tuned on validation data)."""
        if lr <= 0:
            raise ValueError(f"SGDAnchoredLSTM: lr must be > 0, got {lr}")
        with torch.no_grad():
            self.log_lr.fill_(math.log(lr))
        self.config["lr"] = lr

    def forward(
        self, grad: Tensor, state: Tensor, loss: Tensor | None = None, parameter: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The update for a parameter with gradient ``grad`` (any shape) and the new state."""
        outputs, state = self.features(grad, state, loss, parameter)
        logit, correction = outputs.unbind(1)
        bound = math.log(self.max_factor)
        factor = torch.exp(bound * torch.tanh(logit / bound)).reshape(grad.shape)
        step = -self.log_lr.exp() * factor * grad.to(factor.dtype)
        return step + self.output_scale * correction.reshape(grad.shape), state
