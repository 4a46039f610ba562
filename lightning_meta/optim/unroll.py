"""Unrolled training of an optimizee by a :class:`CoordinatewiseLSTM`, differentiable in the LSTM's weights.

Step ``t`` evaluates the optimizee's loss ``f(theta_t; b_t)`` on batch ``t``, feeds its gradient to the LSTM and
moves to ``theta_{t+1} = theta_t + update``. The meta-loss of a stretch of steps ``[start, stop)`` is the mean of
the losses of the points it reaches, ``f(theta_t; b_t)`` for ``t = start + 1 ... stop``, so it needs batches
``start ... stop``. Truncated back-propagation cuts the graph between stretches; checkpointing cuts a stretch into
segments that are recomputed in the backward pass.

Examples:
    >>> import torch
    >>> from lightning_meta.optim import CoordinatewiseLSTM
    >>> model = torch.nn.Linear(4, 1)
    >>> net = CoordinatewiseLSTM(hidden_size=8)
    >>> inputs, targets = torch.randn(6, 10, 4), torch.randn(6, 10, 1)
    >>> loss = lambda out, y: (out - y).pow(2).mean()
    >>> state = UnrollState.start(model, net)
    >>> state, meta_loss = unroll(net, model, loss, state, inputs, targets, start=0, stop=5)
    >>> meta_loss.backward()
    >>> net.head.weight.grad is not None
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn
from torch.func import functional_call

from lightning_meta.checkpointing import CheckpointedSegment, segment_bounds
from lightning_meta.optim.lstm import CoordinatewiseLSTM

LossFunction = Callable[[Tensor, Tensor], Tensor]


@dataclass
class UnrollState:
    """Where an unroll stands: the optimizee's parameters and each parameter's LSTM state, by name."""

    params: dict[str, Tensor]
    lstm: dict[str, Tensor]

    @classmethod
    def start(cls, model: nn.Module, net: CoordinatewiseLSTM, params: dict[str, Tensor] | None = None) -> UnrollState:
        """Start from ``params`` (default: the model's own parameters, which then receive the init's gradient)."""
        params = dict(model.named_parameters()) if params is None else params
        return cls(dict(params), {n: net.initial_state(p.numel(), like=p) for n, p in params.items()})

    def detached(self) -> UnrollState:
        """The same point with the graph cut (truncated back-propagation)."""
        return UnrollState(
            {n: p.detach().requires_grad_() for n, p in self.params.items()},
            {n: s.detach() for n, s in self.lstm.items()},
        )


def unroll(
    net: CoordinatewiseLSTM,
    model: nn.Module,
    loss_fn: LossFunction,
    state: UnrollState,
    inputs: Tensor,
    targets: Tensor,
    start: int,
    stop: int,
    first_order: bool = False,
    segments: int = 0,
) -> tuple[UnrollState, Tensor]:
    """Steps ``start ... stop - 1`` on batches ``inputs[t], targets[t]`` (``t`` modulo ``len(inputs)``: fewer
    batches than steps are reused in turn); returns the new state and the meta-loss.

    ``first_order`` feeds the LSTM detached gradients (no second derivatives of the optimizee's loss);
    ``segments > 1`` checkpoints that many stretches of the steps
    (:class:`~lightning_meta.checkpointing.CheckpointedSegment`).
    """
    names = list(state.params)
    weight_names, weights = zip(*[(n, p) for n, p in net.named_parameters() if p.requires_grad])
    count = len(names)

    def run(first: int, last: int, graph: bool, *tensors: Tensor) -> tuple[Tensor, ...]:
        params = dict(zip(names, tensors[:count]))
        lstm = dict(zip(names, tensors[count : 2 * count]))
        net_weights = dict(zip(weight_names, tensors[2 * count :]))
        total = torch.zeros((), dtype=inputs.dtype, device=inputs.device)
        for t in range(first, last):
            batch = t % len(inputs)
            loss = loss_fn(functional_call(model, params, (inputs[batch],)), targets[batch])
            if t > start:
                total = total + loss
            # retain_graph: the loss is also a term of the meta-loss
            grads = torch.autograd.grad(
                loss, list(params.values()), create_graph=graph and not first_order, retain_graph=True
            )
            for name, grad in zip(names, grads):
                grad = grad if graph and not first_order else grad.detach()
                extra = {"loss": loss, "parameter": params[name]}
                update, lstm[name] = functional_call(net, net_weights, (grad, lstm[name]), extra)
                params[name] = params[name] + update
        if last == stop:  # the loss of the point the stretch ends at
            batch = stop % len(inputs)
            total = total + loss_fn(functional_call(model, params, (inputs[batch],)), targets[batch])
        return (*params.values(), *lstm.values(), total)

    tensors: tuple[Tensor, ...] = (*state.params.values(), *state.lstm.values())
    pieces = segment_bounds(start, stop, segments)
    meta_loss = torch.zeros((), dtype=inputs.dtype, device=inputs.device)
    for first, last in pieces:
        if len(pieces) > 1:
            out = CheckpointedSegment.apply(partial(run, first, last), *tensors, *weights)
        else:
            out = run(first, last, True, *tensors, *weights)
        tensors, meta_loss = out[: 2 * count], meta_loss + out[-1]
    new = UnrollState(dict(zip(names, tensors[:count])), dict(zip(names, tensors[count:])))
    return new, meta_loss / (stop - start)
