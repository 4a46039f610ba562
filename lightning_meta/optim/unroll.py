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
Carry = tuple[Tensor, ...]
Step = Callable[[dict[str, Tensor], Carry, int], tuple[Tensor, Carry]]
Score = Callable[[Tensor], Tensor]


@dataclass
class UnrollState:
    """Where an unroll stands: the optimizee's parameters and each parameter's LSTM state, by name, and what a
    recurrent optimizee carries from one step's batch to the next (``carry``, e.g. an LSTM's hidden state)."""

    params: dict[str, Tensor]
    lstm: dict[str, Tensor]
    carry: Carry = ()

    @classmethod
    def start(
        cls, model: nn.Module, net: CoordinatewiseLSTM, params: dict[str, Tensor] | None = None, carry: Carry = ()
    ) -> UnrollState:
        """Start from ``params`` (default: the model's own parameters, which then receive the init's gradient)."""
        params = dict(model.named_parameters()) if params is None else params
        return cls(dict(params), {n: net.initial_state(p.numel(), like=p) for n, p in params.items()}, carry)

    def detached(self) -> UnrollState:
        """The same point with the graph cut (truncated back-propagation)."""
        return UnrollState(
            {n: p.detach().requires_grad_() for n, p in self.params.items()},
            {n: s.detach() for n, s in self.lstm.items()},
            tuple(c.detach() for c in self.carry),
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
    score: Score | None = None,
) -> tuple[UnrollState, Tensor]:
    """Steps ``start ... stop - 1`` on batches ``inputs[t], targets[t]`` (``t`` modulo ``len(inputs)``: fewer
    batches than steps are reused in turn); returns the new state and the meta-loss.

    ``first_order`` feeds the LSTM detached gradients (no second derivatives of the optimizee's loss);
    ``segments > 1`` checkpoints that many stretches of the steps
    (:class:`~lightning_meta.checkpointing.CheckpointedSegment`); ``score`` maps each loss to its term of the
    meta-loss (default: the loss itself; e.g. ``torch.log``, which weighs every step's relative progress alike).
    """

    def step(params: dict[str, Tensor], carry: Carry, t: int) -> tuple[Tensor, Carry]:
        batch = t % len(inputs)
        return loss_fn(functional_call(model, params, (inputs[batch],)), targets[batch]), carry

    return unroll_steps(net, step, state, start, stop, first_order, segments, score=score)


def unroll_steps(
    net: CoordinatewiseLSTM,
    step: Step,
    state: UnrollState,
    start: int,
    stop: int,
    first_order: bool = False,
    segments: int = 0,
    score_start: bool = False,
    fixed: dict[str, Tensor] | None = None,
    score: Score | None = None,
) -> tuple[UnrollState, Tensor]:
    """:func:`unroll` for any optimizee: ``step(params, carry, t)`` returns the loss of step ``t`` at ``params`` and
    the carry after it (an LSTM language model reading segment ``t`` of a document returns its hidden state).

    The LSTM updates ``state.params`` only; ``fixed`` are further tensors the loss depends on (e.g. the weights that
    are not updated), passed to ``step`` with them and given their gradient also through checkpointed segments.
    ``score_start`` also counts the loss at ``start`` (the first segment of a document, read with the init) in the
    meta-loss, the mean of the counted losses (of ``score(loss)`` with a ``score``).

    Examples:
        >>> import torch
        >>> net = CoordinatewiseLSTM(hidden_size=4)
        >>> w = torch.ones(3, requires_grad=True)
        >>> def step(params, carry, t):  # a running sum carried from step to step
        ...     total = carry[0] + params["w"].sum()
        ...     return (params["w"] - t).pow(2).sum() + 0 * total, (total,)
        >>> state = UnrollState({"w": w}, {"w": net.initial_state(3)}, (torch.zeros(()),))
        >>> state, meta_loss = unroll_steps(net, step, state, 0, 2, score_start=True)
        >>> meta_loss.backward()
        >>> w.grad is not None and net.head.weight.grad is not None
        True
    """
    names = list(state.params)
    fixed = fixed or {}
    fixed_names = list(fixed)
    trained = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    weight_names, weights = [n for n, _ in trained], [p for _, p in trained]
    count, carried, held = len(names), len(state.carry), len(weights)

    def run(first: int, last: int, graph: bool, *tensors: Tensor) -> tuple[Tensor, ...]:
        params = dict(zip(names, tensors[:count]))
        lstm = dict(zip(names, tensors[count : 2 * count]))
        carry = tensors[2 * count : 2 * count + carried]
        net_weights = dict(zip(weight_names, tensors[2 * count + carried : 2 * count + carried + held]))
        constants = dict(zip(fixed_names, tensors[2 * count + carried + held :]))
        scored = []
        for t in range(first, last):
            loss, following = step({**constants, **params}, carry, t)
            if t > start or score_start:
                scored.append(loss if score is None else score(loss))
            if names:
                # retain_graph: the loss is also a term of the meta-loss, and the carry leads on from its graph
                grads = torch.autograd.grad(
                    loss, list(params.values()), create_graph=graph and not first_order, retain_graph=True
                )
                for name, grad in zip(names, grads):
                    grad = grad if graph and not first_order else grad.detach()
                    extra = {"loss": loss, "parameter": params[name]}
                    update, lstm[name] = functional_call(net, net_weights, (grad, lstm[name]), extra)
                    params[name] = params[name] + update
            carry = following
        if last == stop:  # the loss of the point the stretch ends at
            end = step({**constants, **params}, carry, stop)[0]
            scored.append(end if score is None else score(end))
        total = torch.stack(scored).sum() if scored else loss.new_zeros(())
        return (*params.values(), *lstm.values(), *carry, total)

    tensors: tuple[Tensor, ...] = (*state.params.values(), *state.lstm.values(), *state.carry)
    pieces = segment_bounds(start, stop, segments)
    meta_loss: Tensor | None = None
    for first, last in pieces:
        if len(pieces) > 1:
            out = CheckpointedSegment.apply(partial(run, first, last), *tensors, *weights, *fixed.values())
        else:
            out = run(first, last, True, *tensors, *weights, *fixed.values())
        tensors, meta_loss = out[:-1], out[-1] if meta_loss is None else meta_loss + out[-1]
    assert meta_loss is not None, "segment_bounds gives at least one stretch"
    new = UnrollState(
        dict(zip(names, tensors[:count])), dict(zip(names, tensors[count : 2 * count])), tuple(tensors[2 * count :])
    )
    return new, meta_loss / (stop - start + score_start)
