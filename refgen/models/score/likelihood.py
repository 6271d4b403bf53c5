"""Exact log-likelihood through the probability-flow ODE (Song et al. 2021, Appendix D.2;
Chen et al. 2018, "Neural Ordinary Differential Equations": the instantaneous change of
variables).

For dx/dt = f~(x, t) = f(x, t) - 1/2 g(t)^2 s(x, t), the log-density along a trajectory obeys
d log p_t(x(t)) / dt = -div f~(x(t), t). Integrating the pair (x, delta) from t = eps to 1,

    log p_eps(x(eps)) = log p_1(x(1)) + int_eps^1 div f~(x(t), t) dt,

with log p_1 the prior's log-density. div f~ is exact in low dimension (D backward passes)
or Skilling-Hutchinson's estimate E_v[v^T (df~/dx) v] in high dimension, with one v per
example drawn once for the whole trajectory (the estimate of the integral is then unbiased).

Bits per dimension for 8-bit data: uniform dequantisation y -> (y + u) / 256, u ~ U[0, 1)^D,
on the model's interval [lo, hi] (width w), gives a lower bound on log P(y) of
E_u log p(x) + D log(w / 256), so

    bpd = (-log p(x) - D log(w / 256)) / (D log 2).
"""
from __future__ import annotations

import math

from refgen.autograd import Tensor, enable_grad
from refgen.backend import xp
from refgen.score_matching import exact_divergence, hutchinson_divergence, rademacher
from refgen.progress import SolverProgress
from refgen.models.score.solvers import rk4, rk45

__all__ = ["ode_log_likelihood", "check_range", "dequantize", "bits_per_dim", "DIVERGENCES"]

DIVERGENCES = ("exact", "hutchinson")


def check_range(x, data_range):
    """Refuse data outside the interval [lo, hi] a model was declared for."""
    if data_range is None:
        return
    lo, hi = data_range
    a = xp.asarray(x.data if isinstance(x, Tensor) else x)
    xmin, xmax = float(a.min()), float(a.max())
    if xmin < lo or xmax > hi:
        raise ValueError(f"data in [{xmin:.4g}, {xmax:.4g}] lies outside this model's range "
                         f"[{lo:g}, {hi:g}]: rescale it (images: x / 127.5 - 1 for [-1, 1])")


def ode_log_likelihood(sde, score, x, *, divergence: str = "exact", rng=None,
                       method: str = "rk45", steps: int = 100, rtol: float = 1e-5,
                       atol: float = 1e-5, prior_logp=None, data_range=None, progress=None,
                       max_steps: int = 100_000, return_stats: bool = False):
    """log p_eps(x) per example (nats), (B,) float64, by the probability-flow ODE.

    score(x: Tensor, t: (B,) array) -> Tensor, differentiable in x (a network, or a closed
    form). divergence 'exact' or 'hutchinson' (Rademacher probes from rng). prior_logp(z) ->
    (B,): log p_1 (default: the SDE's prior). data_range: (lo, hi) the data must lie in."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; accepted: {', '.join(DIVERGENCES)}")
    check_range(x, data_range)
    x = xp.asarray(x.data if isinstance(x, Tensor) else x, dtype=xp.float64)
    b, shape = x.shape[0], x.shape
    d = math.prod(shape[1:])
    v = None
    if divergence == "hutchinson":
        if rng is None:
            raise ValueError("the Hutchinson estimator needs rng for its probes")
        v = rademacher(shape, rng, xp.float64)

    def f(t, y):                          # y = [x (B, D), delta (B, 1)] -> [f~, div f~]
        tb = xp.full((b,), t)
        with enable_grad():
            xt = Tensor(y[:, :d].reshape(shape), requires_grad=True)
            drift = sde.ode_drift(xt, tb, score(xt, tb))                   # f - 1/2 g^2 s
            div = (exact_divergence(drift, xt) if v is None
                   else hutchinson_divergence(drift, xt, v))
        return xp.concatenate([drift.data.reshape(b, d).astype(xp.float64),
                               div.data.reshape(b, 1).astype(xp.float64)], axis=1)

    y0 = xp.concatenate([x.reshape(b, d), xp.zeros((b, 1))], axis=1)
    bar = SolverProgress(f"PF-ODE likelihood ({method})", steps if method == "rk4" else None, progress)
    if method == "rk4":
        y1, stats = rk4(f, y0, sde.eps, sde.T, steps, callback=bar)
    elif method == "rk45":
        y1, stats = rk45(f, y0, sde.eps, sde.T, rtol=rtol, atol=atol, max_steps=max_steps,
                         callback=bar)
    else:
        raise ValueError(f"unknown ODE method {method!r}; accepted: rk4, rk45")
    bar.close()
    z, delta = y1[:, :d].reshape(shape), y1[:, d]
    logp1 = sde.prior_logp(z) if prior_logp is None else prior_logp(z)
    logp = logp1 + delta                                  # log p_1(x(1)) + int div f~ dt
    return (logp, stats) if return_stats else logp


def dequantize(x, rng, data_range=(-1.0, 1.0), levels: int = 256):
    """8-bit data in [lo, hi] (values lo + w k / (levels - 1)) -> continuous lo + w (k + u) / levels."""
    lo, hi = data_range
    w = hi - lo
    k = xp.rint((xp.asarray(x, dtype=xp.float64) - lo) / w * (levels - 1))     # the integer k
    u = rng.random(k.shape)
    return lo + w * (k + u) / levels


def bits_per_dim(logp, d: int, data_range=(-1.0, 1.0), levels: int = 256):
    """bits/dim of the dequantised density: (-log p - D log(w / levels)) / (D log 2)."""
    w = data_range[1] - data_range[0]
    return (-logp - d * math.log(w / levels)) / (d * math.log(2.0))
