"""One entry point for SDE sampling and likelihood, shared by the trained SDE models and
by a DDPM seen as a VP SDE (bridge.py): ``sde_sample`` and ``sde_log_likelihood`` take an
SDE and a score s(x: Tensor, t: (B,) array) -> Tensor."""
from __future__ import annotations

import math

from refgen.autograd import Tensor, no_grad
from refgen.backend import xp
from refgen.models.score.likelihood import bits_per_dim, dequantize, ode_log_likelihood
from refgen.models.score.samplers import (SDE_SAMPLERS, euler_maruyama, ode_sample,
                                          predictor_corrector)

__all__ = ["sde_sample", "sde_log_likelihood", "sde_bits_per_dim"]


def sde_sample(sde, score, shape, rng, sampler: str = "pc", steps=None, *, snr: float = 0.16,
               n_corrector: int = 1, method: str = "rk45", rtol: float = 1e-5,
               atol: float = 1e-5, progress=None, x=None, dtype=xp.float32):
    """Samples (shape) by 'em' (reverse SDE), 'pc' (predictor-corrector) or 'ode' (PF-ODE;
    steps given: fixed-step RK4, else adaptive RK45)."""
    if sampler not in SDE_SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; accepted: {', '.join(SDE_SAMPLERS)}")

    def s(xx, t):
        return score(Tensor(xx), t).data.astype(xx.dtype)

    with no_grad():
        if sampler == "em":
            return euler_maruyama(sde, s, shape, rng, steps or 1000, x=x, progress=progress,
                                  dtype=dtype)
        if sampler == "pc":
            return predictor_corrector(sde, s, shape, rng, steps or 1000, snr, n_corrector, x=x,
                                       progress=progress, dtype=dtype)
        if steps is not None:
            method = "rk4"
        return ode_sample(sde, s, shape, rng, method, steps or 100, rtol, atol, x=x,
                          progress=progress, dtype=dtype)


def sde_log_likelihood(sde, score, x, rng, divergence: str = "auto", **kw):
    """log p(x) per example by the PF-ODE; divergence 'auto' is exact up to 16 dimensions,
    Hutchinson above."""
    if divergence == "auto":
        divergence = "exact" if math.prod(x.shape[1:]) <= 16 else "hutchinson"
    return ode_log_likelihood(sde, score, x, divergence=divergence, rng=rng, **kw)


def sde_bits_per_dim(sde, score, x, rng, data_range=(-1.0, 1.0), **kw):
    """bits/dim of 8-bit data x in data_range, uniformly dequantised (one u per example)."""
    from refgen.models.score.likelihood import check_range
    check_range(x, data_range)
    xd = dequantize(x, rng, data_range)
    logp = sde_log_likelihood(sde, score, xd, rng, **kw)
    return bits_per_dim(logp, math.prod(x.shape[1:]), data_range)
