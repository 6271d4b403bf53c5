"""Normalising a 2D energy by quadrature: log Z = log sum_grid exp(-E(x_ij)) dA.

A midpoint rule on an n x n grid over [-L, L]^2, evaluated in float64 with a log-sum-exp.
The band between L and 2L is added on a coarser grid (half as many points per side over
twice the width), and its share of the total is reported: where it is more than
``max_outside`` the coarse grid carries too much of Z and the result is refused. Beyond 2L
nothing is counted; energy models keep that mass negligible with their quadratic term
(base.py: with base_std = 3 and L = 7, a Gaussian tail beyond 4.7 standard deviations).
"""
from __future__ import annotations

import math

from refgen.autograd import Tensor, no_grad
from refgen.backend import xp

__all__ = ["grid_log_normalizer"]


def _midpoints(lo, hi, n):
    h = (hi - lo) / n
    return lo + h * (xp.arange(n, dtype=xp.float64) + 0.5), h


def _energies(energy, pts, dtype, chunk=1 << 15):
    out = []
    with no_grad():
        for i in range(0, len(pts), chunk):
            out.append(energy(Tensor(pts[i:i + chunk].astype(dtype))).data)
    return xp.concatenate(out).astype(xp.float64)


def _logsumexp(a):
    m = float(a.max())
    return m + math.log(float(xp.exp(a - m).sum()))


def grid_log_normalizer(energy, data_shape, limit=7.0, n=560, max_outside=1e-2, dtype=None):
    """(log Z, outside fraction) of exp(-energy(x)) for x in R^2, by grid quadrature.

    energy: Tensor (B, 2) -> Tensor (B,). Raises ValueError for data that is not 2D, and for
    an energy whose mass outside [-limit, limit]^2 is more than ``max_outside`` of the total.
    """
    dtype = xp.float32 if dtype is None else dtype
    if tuple(data_shape) != (2,):
        raise ValueError(f"grid quadrature normalises 2D densities only; this model's examples "
                         f"have shape {tuple(data_shape)}")
    c, h = _midpoints(-limit, limit, int(n))
    grid = xp.stack(xp.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)
    log_inside = _logsumexp(-_energies(energy, grid, dtype)) + 2.0 * math.log(h)
    c2, h2 = _midpoints(-2.0 * limit, 2.0 * limit, int(n) // 2)
    outer = xp.stack(xp.meshgrid(c2, c2, indexing="ij"), -1).reshape(-1, 2)
    outer = outer[xp.abs(outer).max(1) > limit]                            # the band L < |x|_inf < 2L
    log_band = _logsumexp(-_energies(energy, outer, dtype)) + 2.0 * math.log(h2)
    outside = 1.0 / (1.0 + math.exp(log_inside - log_band))                # band / (inside + band)
    if outside > max_outside:
        raise ValueError(f"the energy puts {outside:.2g} of its mass outside [-{limit:g}, {limit:g}]^2 "
                         f"(accepted: at most {max_outside:g}); the quadrature's log Z would be wrong")
    return float(xp.logaddexp(log_inside, log_band)), float(outside)
