"""Score matching (Hyvarinen 2005) and sliced score matching (Song et al. 2019), on any
model of the score s(x) = grad_x log p(x) (an energy gives s = -grad_x E).

Fitting s to the data's score, the explicit objective

    J(s) = 1/2 E_p[ |s(x) - grad_x log p(x)|^2 ]

needs the unknown grad log p; integrating by parts (Hyvarinen 2005, Theorem 1) gives, up to
the constant 1/2 E_p |grad log p|^2,

    J(s) = E_p[ tr(grad_x s(x)) + 1/2 |s(x)|^2 ]                        (exact_score_matching)

The trace needs one backward pass per dimension (double backward through s): cheap in 2D,
D passes on MNIST. Sliced score matching projects on random directions v with E[v v^T] = I,
so E_v[v^T (grad_x s) v] = tr(grad_x s) and one pass suffices:

    J(s) = E_p E_v[ v^T grad_x (v^T s(x)) + 1/2 (v^T s(x))^2 ]          (sliced_score_matching)

(``variance_reduced=True`` replaces 1/2 (v^T s)^2 by its expectation over Gaussian v,
1/2 |s|^2: SSM-VR.) Both return differentiable Tensors, so the loss trains the model's
parameters through the double backward.
"""
from __future__ import annotations

from refgen.autograd import Tensor, as_tensor, enable_grad, grad
from refgen.backend import default_rng, xp

__all__ = ["energy_score", "score_divergence", "exact_score_matching", "sliced_score_matching"]


def _reduce(per_example, reduction):
    if reduction == "mean":
        return per_example.mean()
    if reduction == "none":
        return per_example
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def energy_score(energy):
    """The score of p = exp(-E)/Z: x -> -grad_x E(x), differentiable (create_graph)."""
    def score(x):
        (g,) = grad(energy(x).sum(), x, create_graph=True)     # rows are independent
        return -g
    return score


def _flat(t):
    return t.reshape(t.shape[0], -1)                            # (B, *shape) -> (B, D)


def score_divergence(score, x):
    """tr(grad_x s(x)) per example, (B,), exactly: one double-backward pass per dimension.

    ``score`` maps a Tensor x (B, *shape) that requires grad to a Tensor of its shape."""
    with enable_grad():
        x = x if isinstance(x, Tensor) and x.requires_grad else Tensor(as_tensor(x).data, requires_grad=True)
        s = _flat(score(x))                                     # (B, D)
        d = s.shape[1]
        trace = 0.0
        for i in range(d):                                      # d/dx_i s_i(x), all rows at once
            (g,) = grad(s[:, i].sum(), x, create_graph=True)
            trace = trace + _flat(g)[:, i]
    return trace


def exact_score_matching(score, x, reduction="mean"):
    """Hyvarinen's objective tr(grad_x s(x)) + 1/2 |s(x)|^2, averaged (or per example)."""
    with enable_grad():
        x = Tensor(as_tensor(x).data, requires_grad=True)
        s = score(x)
        div = score_divergence(lambda _: s, x)                  # reuse s: one forward pass
        per_example = div + 0.5 * (_flat(s) ** 2).sum(1)        # (B,)
    return _reduce(per_example, reduction)


def sliced_score_matching(score, x, rng=None, n_projections=1, variance_reduced=False,
                          reduction="mean", dist="normal"):
    """v^T grad_x (v^T s(x)) + 1/2 (v^T s(x))^2 with v ~ N(0, I) (or Rademacher), averaged
    over ``n_projections`` directions per example (and over examples unless 'none')."""
    if dist not in ("normal", "rademacher"):
        raise ValueError(f"dist must be 'normal' or 'rademacher', got {dist!r}")
    rng = default_rng(rng)
    with enable_grad():
        x = Tensor(as_tensor(x).data, requires_grad=True)
        s = _flat(score(x))                                     # (B, D)
        total = 0.0
        for _ in range(int(n_projections)):
            v = rng.standard_normal(s.shape, dtype=s.dtype)
            if dist == "rademacher":
                v = xp.sign(v).astype(s.dtype)
            vs = (s * Tensor(v)).sum(1)                         # v^T s (B,)
            (g,) = grad(vs.sum(), x, create_graph=True)
            vhv = (_flat(g) * Tensor(v)).sum(1)                 # v^T (grad_x s) v (B,)
            second = 0.5 * (s ** 2).sum(1) if variance_reduced else 0.5 * vs ** 2
            total = total + vhv + second
        per_example = total / int(n_projections)
    return _reduce(per_example, reduction)
