"""The gradient-check oracle: analytic gradients against finite differences.

Rather than the full Jacobian, each check compares one random directional derivative:
the numeric ``<v, (f(x + eps u) - f(x - eps u)) / 2 eps>`` against the analytic
``sum_i <J_i^T v, u_i>`` from refgen's backward pass, in float64.
"""
from __future__ import annotations

import numpy as np

import refgen
from refgen.autograd import Tensor
from refgen.backend import use_backend

__all__ = ["check_vjp", "check_double_backward", "check_grads", "check_forward",
           "GradcheckError"]


class GradcheckError(AssertionError):
    """A check failed: an analytic gradient disagrees with the numeric one, a forward value
    with its reference, or an invariant does not hold."""


def _outputs(y):
    return list(y) if isinstance(y, (tuple, list)) else [y]


def _dot(vs, ys):
    return sum(float(np.sum(np.asarray(v) * np.asarray(refgen.backend.to_numpy(y.data))))
               for v, y in zip(vs, ys))


def check_vjp(f, xs, rng=None, eps=1e-6, atol=1e-5, rtol=1e-4, min_abs_u=0.0):
    """Check ``f``'s reverse-mode gradient in one random direction, in float64, on NumPy.

    f: a function of Tensors returning a Tensor (or a tuple of Tensors).
    xs: the input arrays (converted to float64). Returns (analytic, numeric).
    min_abs_u: keep each |u_i| at least this large (useful to test every entry's path).
    """
    rng = np.random.default_rng(0) if rng is None else rng
    xs = [np.asarray(x, dtype=np.float64) for x in xs]
    with use_backend("numpy"):
        ts = [Tensor(x.copy(), requires_grad=True) for x in xs]
        ys = _outputs(f(*ts))
        vs = [rng.standard_normal(y.shape) for y in ys]
        us = [rng.standard_normal(x.shape) for x in xs]
        if min_abs_u:
            us = [np.where(np.abs(u) < min_abs_u, np.copysign(min_abs_u, u), u) for u in us]
        live = [(y, Tensor(v)) for y, v in zip(ys, vs) if y.requires_grad]
        if live:
            gs = refgen.grad([y for y, _ in live], ts, [v for _, v in live], allow_unused=True)
        else:  # no output depends on the inputs through the graph: the derivative must be 0
            gs = [None] * len(ts)
        analytic = sum(float(np.sum(g.data * u)) for g, u in zip(gs, us) if g is not None)
        for g, x in zip(gs, xs):
            if g is not None and (g.shape != x.shape or g.dtype != x.dtype):
                raise GradcheckError(f"gradient of shape {g.shape} {g.dtype} for input "
                                     f"{x.shape} {x.dtype}")
        # inputs require grad here too, since f may itself take gradients (double backward)
        plus = _outputs(f(*[Tensor(x + eps * u, requires_grad=True) for x, u in zip(xs, us)]))
        minus = _outputs(f(*[Tensor(x - eps * u, requires_grad=True) for x, u in zip(xs, us)]))
        numeric = (_dot(vs, plus) - _dot(vs, minus)) / (2 * eps)
    if not abs(analytic - numeric) <= atol + rtol * abs(numeric):
        raise GradcheckError(f"directional derivative: analytic {analytic!r} vs "
                             f"numeric {numeric!r}")
    return analytic, numeric


def check_double_backward(f, xs, rng=None, eps=1e-6, atol=1e-5, rtol=1e-4):
    """Check the gradient of f's gradient: run ``check_vjp`` on x -> J(x)^T v for a fixed v.

    A backward may take another branch when the graph is recorded (``create_graph=True``);
    a branch that computed some other function would pass a finite-difference check of its
    own derivative, so the recorded first derivative J(x)^T v is first compared, entry by
    entry, with the plain one (``create_graph=False``).
    """
    rng = np.random.default_rng(1) if rng is None else rng
    xs = [np.asarray(x, dtype=np.float64) for x in xs]
    with use_backend("numpy"):
        ys = _outputs(f(*[Tensor(x) for x in xs]))
    vs = [rng.standard_normal(y.shape) for y in ys]

    def vjp(*ts, create_graph=True):
        out = _outputs(f(*ts))
        gs = refgen.grad([y for y in out if y.requires_grad], ts,
                         [Tensor(v) for v, y in zip(vs, out) if y.requires_grad],
                         create_graph=create_graph, allow_unused=True, materialize_grads=True)
        return tuple(gs)

    with use_backend("numpy"):
        recorded = vjp(*[Tensor(x.copy(), requires_grad=True) for x in xs])
        plain = vjp(*[Tensor(x.copy(), requires_grad=True) for x in xs], create_graph=False)
    for i, (g, h) in enumerate(zip(recorded, plain)):
        if not np.allclose(g.data, h.data, rtol=rtol, atol=atol):
            err = float(np.max(np.abs(g.data - h.data)))
            raise GradcheckError(f"first derivative of input {i} with create_graph=True differs "
                                 f"from the plain one by up to {err!r}")
    return check_vjp(vjp, xs, rng=rng, eps=eps, atol=atol, rtol=rtol)


def check_grads(f, xs, order=2, rng=None, eps=1e-6, atol=1e-5, rtol=1e-4):
    """First-order check, and the double-backward check when ``order >= 2``."""
    check_vjp(f, xs, rng=rng, eps=eps, atol=atol, rtol=rtol)
    if order >= 2:
        check_double_backward(f, xs, rng=rng, eps=eps, atol=atol, rtol=rtol)


def check_forward(f, ref, xs, rtol=1e-12, atol=1e-12):
    """Check ``f``'s values against a plain NumPy formula ``ref``.

    f: a function of Tensors (run on the active backend); ref: the same function of NumPy
    arrays. xs: input arrays, passed to both unchanged (so float64 stays float64).
    Outputs may be single or tuples; shapes must match exactly.
    """
    xs = [np.asarray(x) for x in xs]
    got = _outputs(f(*[Tensor(refgen.backend.asarray(x.copy())) for x in xs]))
    want = _outputs(ref(*[x.copy() for x in xs]))
    if len(got) != len(want):
        raise GradcheckError(f"{len(got)} outputs, the reference has {len(want)}")
    for i, (g, w) in enumerate(zip(got, want)):
        g, w = refgen.backend.to_numpy(g.data), np.asarray(w)
        if g.shape != w.shape:
            raise GradcheckError(f"output {i} has shape {g.shape}, the reference {w.shape}")
        if not np.allclose(g, w, rtol=rtol, atol=atol, equal_nan=True):
            err = np.max(np.abs(g - w)) if g.size else 0.0
            raise GradcheckError(f"output {i} differs from the reference by up to {err!r}")
