"""``LearnedOptimizer``: a trained :class:`CoordinatewiseLSTM` used like any ``torch.optim`` optimizer.

Each parameter's LSTM state lives in ``optimizer.state[p]["lstm"]``, so ``state_dict`` / ``load_state_dict`` (and
with them Lightning's checkpoints) save and resume it. The network itself is not trained here.

Examples:
    >>> import torch
    >>> from lightning_meta.optim import CoordinatewiseLSTM, LearnedOptimizer
    >>> model = torch.nn.Linear(3, 1)
    >>> optimizer = LearnedOptimizer(model.parameters(), net=CoordinatewiseLSTM(hidden_size=8))
    >>> model(torch.randn(5, 3)).pow(2).mean().backward()
    >>> optimizer.step()
    >>> sorted(optimizer.state[model.weight])
    ['lstm']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_meta.optim.lstm import CoordinatewiseLSTM


class LearnedOptimizer(Optimizer):
    """Steps parameters with the updates of a (trained) :class:`CoordinatewiseLSTM`.

    Args:
        params: the parameters (or parameter groups) to optimize.
        net: the learned optimizer; ``CoordinatewiseLSTM.load(path)`` gives a saved one.
        scale: multiplies every update (1: as trained).
    """

    def __init__(self, params: Iterable[Any], net: CoordinatewiseLSTM, scale: float = 1.0) -> None:
        super().__init__(params, {"scale": scale})
        self.net = net.requires_grad_(False)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.net.use_loss and loss is None:
            raise ValueError("the learned optimizer reads the loss (use_loss=True): call step(closure)")
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "lstm" not in state:
                    state["lstm"] = self.net.initial_state(p.numel(), like=p)
                self.net.to(p.device)
                update, state["lstm"] = self.net(p.grad, state["lstm"], loss=loss, parameter=p)
                p.add_(update.to(p.dtype), alpha=group["scale"])
        return loss
