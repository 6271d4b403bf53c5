"""Score matching (Hyvarinen 2005) and sliced score matching (Song et al. 2019), on any model
of the score s(x) = grad_x log p(x) (an energy gives s = -grad_x E; a score network is one),
and the divergence of a vector field that both need. The energy family and the score family
share this module.

Fitting s to the data's score, the explicit objective

    J(s) = 1/2 E_p[ |s(x) - grad_x log p(x)|^2 ]

needs the unknown grad log p; integrating by parts (Hyvarinen 2005, Theorem 1) gives, up to
the constant 1/2 E_p |grad log p|^2,

    J(s) = E_p[ tr(grad_x s(x)) + 1/2 |s(x)|^2 ]                        (exact_score_matching)

The trace needs one backward pass per dimension (double backward through s): cheap in 2D,
D passes on MNIST. Sliced score matching projects on random directions v with E[v v^T] = I,
so E_v[v^T (grad_x s) v] = tr(grad_x s) and one pass suffices:

    J_SSM    = E_p E_v[ v^T grad_x (v^T s(x)) + 1/2 (v^T s(x))^2 ]      (sliced_score_matching)
    J_SSM-VR = E_p E_v[ v^T grad_x (v^T s(x)) ] + 1/2 E_p |s(x)|^2

(``variance_reduced=True``: E_v[(v^T s)^2] = |s|^2 taken in closed form). Both return
differentiable Tensors, so the loss trains the model's parameters through the double backward.

The divergence div f(x) = tr(df/dx) of a vector field, per example:

    exact_divergence       sum_i d f_i / d x_i: one backward pass per dimension
    hutchinson_divergence  v^T (df/dx) v for a probe v with E[v v^T] = I (Skilling 1989,
                           Hutchinson 1990): one backward pass, v^T J = grad_x <f(x), v>

Both take the output ``out`` (B, ...) of f at the input Tensor ``x`` (B, ...) in its graph;
with create_graph=True the result can be differentiated again. The probability-flow ODE's
likelihood (refgen.models.score.likelihood) uses them too.
"""
from __future__ import annotations

from refgen.autograd import Tensor, as_tensor, enable_grad, grad
from refgen.backend import xp

__all__ = ["energy_score", "exact_divergence", "hutchinson_divergence", "rademacher",
           "exact_score_matching", "sliced_score_matching"]


def _reduce(per_example, reduction):
    if reduction == "mean":
        return per_example.mean()
    if reduction == "none":
        return per_example
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def _flat(t):
    return t.reshape(t.shape[0], -1)                            # (B, *shape) -> (B, D)


def energy_score(energy):
    """The score of p = exp(-E)/Z: x -> -grad_x E(x), differentiable (create_graph)."""
    def score(x):
        (g,) = grad(energy(x).sum(), x, create_graph=True)     # rows are independent
        return -g
    return score


# ----------------------------------------------------------------------------- divergence
def exact_divergence(out: Tensor, x: Tensor, create_graph: bool = False) -> Tensor:
    """sum_i d out_i / d x_i per example, (B,): one backward pass per dimension."""
    o = _flat(out)                                              # (B, D)
    total = None
    for i in range(o.shape[1]):                                 # d/dx_i out_i, all rows at once
        g = _flat(grad(o[:, i].sum(), x, create_graph=create_graph)[0])[:, i]
        total = g if total is None else total + g
    return total


def hutchinson_divergence(out: Tensor, x: Tensor, v, create_graph: bool = False) -> Tensor:
    """v^T (d out / d x) v per example, (B,): an unbiased estimate of the divergence."""
    vjp = grad((out * v).sum(), x, create_graph=create_graph)[0]  # v^T J, (B, ...)
    return _flat(vjp * v).sum(1)


def rademacher(shape, rng, dtype):
    """+-1 with probability 1/2 each: the lowest-variance probe of Hutchinson's estimator."""
    return (2.0 * (rng.random(shape) < 0.5) - 1.0).astype(dtype)


def _input(x):
    """x as a fresh leaf Tensor that requires grad (the variable the scores differentiate in)."""
    return Tensor(as_tensor(x).data, requires_grad=True)


# ----------------------------------------------------------------------------- objectives
def exact_score_matching(score, x, reduction="mean"):
    """Hyvarinen's objective tr(grad_x s(x)) + 1/2 |s(x)|^2, averaged (or per example)."""
    with enable_grad():
        x = _input(x)
        s = score(x)
        per_example = exact_divergence(s, x, create_graph=True) + 0.5 * (_flat(s) ** 2).sum(1)
    return _reduce(per_example, reduction)


def sliced_score_matching(score, x, *, rng=None, v=None, n_projections=1,
                          variance_reduced=False, reduction="mean", dist="normal"):
    """v^T grad_x (v^T s(x)) + 1/2 (v^T s(x))^2 (or + 1/2 |s|^2, variance reduced), averaged
    over ``n_projections`` directions per example and over examples unless 'none'. The
    directions are ``v`` (B, ...) when given (one projection), else drawn from ``rng``:
    N(0, I) or, with dist='rademacher', +-1."""
    if dist not in ("normal", "rademacher"):
        raise ValueError(f"dist must be 'normal' or 'rademacher', got {dist!r}")
    if (v is None) == (rng is None):
        raise ValueError("sliced_score_matching needs exactly one of rng (to draw the "
                         "directions) and v (the directions)")
    with enable_grad():
        x = _input(x)
        s = score(x)
        probes = [xp.asarray(v, dtype=s.dtype)] if v is not None else [
            (rademacher(s.shape, rng, s.dtype) if dist == "rademacher"
             else rng.standard_normal(s.shape, dtype=s.dtype)) for _ in range(int(n_projections))]
        total = 0.0
        for p in probes:
            vhv = hutchinson_divergence(s, x, p, create_graph=True)   # v^T (grad_x s) v (B,)
            vs = _flat(s * p).sum(1)                                   # v^T s (B,)
            total = total + vhv + (0.5 * (_flat(s) ** 2).sum(1) if variance_reduced else 0.5 * vs * vs)
        per_example = total / len(probes)
    return _reduce(per_example, reduction)
