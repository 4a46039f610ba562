"""``CheckpointedSegment``: gradient checkpointing for unrolled loops that call ``torch.autograd.grad`` inside.

Used by the MAML mixin's inner loop and by the unrolled meta-training of learned optimizers.

Examples:
    >>> import torch
    >>> w = torch.tensor(2.0, requires_grad=True)
    >>> def run(graph, x):  # two steps of x <- x - 0.1 * d(x^2 w)/dx
    ...     for _ in range(2):
    ...         (g,) = torch.autograd.grad(x * x * w, x, create_graph=graph)
    ...         x = x - 0.1 * g
    ...     return (x,)
    >>> (out,) = CheckpointedSegment.apply(run, torch.tensor(1.0, requires_grad=True))
    >>> round(out.item(), 4)
    0.36
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


class CheckpointedSegment(torch.autograd.Function):
    """Gradient checkpointing of a stretch of the inner loop: only its inputs are kept for the backward pass.

    The forward pass runs the steps without building a graph of the inner gradients (``graph=False``); the backward
    pass recomputes them with the second-order graph and backpropagates through that one segment. Memory therefore
    holds one segment's graph plus the inputs of every segment, instead of the graph of the whole unroll.
    (``torch.utils.checkpoint`` does not fit here: the inner loop calls ``torch.autograd.grad`` inside the
    checkpointed function, which makes its non-reentrant variant recompute and keep every saved tensor in the
    forward pass, and its reentrant variant runs the function under ``no_grad``.)
    The RNG state is restored for the recomputation, so dropout draws the same masks.

    Call it as ``apply(run, *inputs)``: ``run(graph, *inputs)`` returns a tuple of tensors and builds the graph of
    its inner gradients only when ``graph`` is true; ``inputs`` are all the tensors the outputs depend on
    differentiably (parameters included).
    """

    @staticmethod
    def forward(ctx: Any, run: Callable[..., tuple[Tensor, ...]], *inputs: Tensor) -> tuple[Tensor, ...]:
        ctx.run = run
        ctx.devices = sorted({x.device for x in inputs if x.is_cuda}, key=str)
        ctx.rng = torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in ctx.devices]
        ctx.save_for_backward(*inputs)
        with torch.enable_grad():
            result = run(False, *[x.detach().requires_grad_(x.requires_grad) for x in inputs])
        return tuple(t.detach() for t in result)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
        inputs = [x.detach().requires_grad_(x.requires_grad) for x in ctx.saved_tensors]
        with torch.random.fork_rng(devices=ctx.devices), torch.enable_grad():
            torch.set_rng_state(ctx.rng[0])
            for device, state in zip(ctx.devices, ctx.rng[1]):
                torch.cuda.set_rng_state(state, device)
            result = ctx.run(True, *inputs)
            pairs = [(r, g) for r, g in zip(result, grad_outputs) if r.requires_grad]  # e.g. not a constant output
            wanted = [x for x in inputs if x.requires_grad]
            outputs, grads_out = [r for r, _ in pairs], [g for _, g in pairs]
            grads = iter(torch.autograd.grad(outputs, wanted, grads_out, allow_unused=True))
        return (None, *(next(grads) if x.requires_grad else None for x in inputs))


def segment_bounds(start: int, stop: int, segments: int) -> list[tuple[int, int]]:
    """Steps ``start ... stop - 1`` cut into ``segments`` (at least 1, at most one step each) stretches of near-equal
    length, as ``(first, last)`` pairs.

    Examples:
        >>> segment_bounds(0, 5, 2)
        [(0, 2), (2, 5)]
    """
    pieces = max(1, min(segments, stop - start))
    bounds = [start + round((stop - start) * k / pieces) for k in range(pieces + 1)]
    return list(zip(bounds, bounds[1:]))
