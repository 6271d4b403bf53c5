"""The divergence div f(x) = tr(df/dx) of a vector field, by autograd, per example.

    exact        tr J = sum_i d f_i / d x_i: one backward pass per dimension (low dimension)
    hutchinson   tr J = E_v[v^T J v] for any v with E[v v^T] = I (Skilling 1989, Hutchinson
                 1990): one backward pass per probe, v^T J = grad_x <f(x), v>

Both take the output ``out`` (B, ...) of f at the input Tensor ``x`` (B, ...), which must be
part of the graph; with create_graph=True the result can be differentiated again (score
matching differentiates the trace with respect to the parameters).
"""
from __future__ import annotations

from refgen.autograd import Tensor, grad

__all__ = ["exact_divergence", "hutchinson_divergence", "rademacher"]


def exact_divergence(out: Tensor, x: Tensor, create_graph: bool = False) -> Tensor:
    """sum_i d out_i / d x_i per example: (B,)."""
    b = x.shape[0]
    o = out.reshape(b, -1)                                                # (B, D)
    total = None
    for i in range(o.shape[1]):
        g = grad(o[:, i].sum(), x, create_graph=create_graph)[0].reshape(b, -1)[:, i]
        total = g if total is None else total + g
    return total


def hutchinson_divergence(out: Tensor, x: Tensor, v, create_graph: bool = False) -> Tensor:
    """v^T (d out / d x) v per example, (B,): an unbiased estimate of the divergence."""
    b = x.shape[0]
    vjp = grad((out * v).sum(), x, create_graph=create_graph)[0]          # v^T J, (B, ...)
    return (vjp * v).reshape(b, -1).sum(1)


def rademacher(shape, rng, dtype):
    """+-1 with probability 1/2 each: the lowest-variance probe of Hutchinson's estimator."""
    return (2.0 * (rng.random(shape) < 0.5) - 1.0).astype(dtype)
