"""The standard normal CDF in log space and its inverse, accurate far into both tails.

    log_ndtr(y)                = log Phi(y)
    ndtri_from_logs(lp, lq)    = Phi^{-1}(p), given lp = log p and lq = log(1 - p)

Gaussianization maps a CDF value p to y = Phi^{-1}(p). Written as sqrt(2) erfinv(2p - 1) it
is exact only while 2p - 1 is not rounded to +-1, i.e. |y| < 8.3 in float64: beyond that a
flow would map a whole tail to one point and lose the mass there. From the logs of p and
1 - p (which a mixture CDF gives accurately through logsumexp) the quantile is exact for
|y| up to the hundreds:

- log Phi(y) for -3 <= y <= 0: log((1 + erf(y / sqrt 2)) / 2); for y < -3: log phi(y) - log M(-y),
  M(t) = t + 1/(t + 2/(t + 3/(t + ...))) Laplace's continued fraction of the Mills ratio
  (phi(t) / Phi(-t) = M(t)), 60 terms: converged to rounding for t >= 3; for y > 0,
  log(1 - Phi(-y)) by log1p.
- Phi^{-1}: on the lower half (p < 1/2) solve log Phi(y) = lp by Newton's method from
  sqrt(2) erfinv(2p - 1) (or, for p < 1e-10, the asymptote -sqrt(-2 lp - log(-2 lp) - log 2 pi));
  log Phi is concave, so after the first step the iterates rise monotonically to the root.
  The upper half is the mirror image, y = -Phi^{-1}(1 - p) from lq.

Derivatives: d log Phi / dy = phi(y) / Phi(y); dy/d lp = p / phi(y) (lower half) and
dy/d lq = -(1 - p) / phi(y) (upper half), each written with the output so that it is
differentiable again.
"""
from __future__ import annotations

import math

from refgen.autograd import Function, Tensor, as_tensor
from refgen.backend import erf as _erf, xp
from refgen.functional.elementwise import _erfinv_array, exp, where

__all__ = ["log_ndtr", "ndtri_from_logs"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _log_phi(y):
    return -0.5 * y * y - _HALF_LOG_2PI


def _log_ndtr_array(y):
    shape, y = y.shape, y.astype(xp.float64).reshape(-1)   # flat: the tail is indexed
    v = -xp.abs(y)                                   # log Phi(v), v <= 0, then mirror
    low = xp.log(0.5 * (1.0 + xp.asarray(_erf(xp.maximum(v, -3.0) / math.sqrt(2.0)))))
    far = v < -3.0                                   # the tail: only these pay for the fraction
    if bool(far.any()):
        t = -v[far]                                  # the continued fraction's argument (> 3)
        m = t + 60.0 / t
        for k in range(59, 0, -1):
            m = t + k / m
        low[far] = _log_phi(t) - xp.log(m)           # log Phi(-t) = log phi(t) - log M(t)
    return xp.where(y <= 0, low, xp.log1p(-xp.exp(low))).reshape(shape)   # Phi(y) = 1 - Phi(-y)


def _ndtri_lower(lp, newton_steps=6):
    """Phi^{-1}(p) <= 0 from lp = log p <= log 1/2 (float64 arrays)."""
    p = xp.exp(lp)
    start = math.sqrt(2.0) * _erfinv_array(xp.maximum(2.0 * p - 1.0, -1.0 + 1e-16))
    u = -2.0 * xp.minimum(lp, -1.0)
    asym = -xp.sqrt(xp.maximum(u - xp.log(u) - 2.0 * _HALF_LOG_2PI, 1e-6))
    y = xp.where(p > 1e-10, start, asym)
    for _ in range(newton_steps):                    # g(y) = log Phi(y) - lp, g' = phi / Phi
        lphi = _log_ndtr_array(y)
        y = y - (lphi - lp) * xp.exp(lphi - _log_phi(y))
    return y


class _LogNdtr(Function):
    def forward(self, y):
        return _log_ndtr_array(y).astype(y.dtype)

    def backward(self, gy):
        y = self.inputs[0]
        return gy * exp(-0.5 * y * y - _HALF_LOG_2PI - self.output)       # phi(y) / Phi(y)


class _NdtriFromLogs(Function):
    def forward(self, lp, lq):
        self.lower = lp <= lq                                             # p <= 1/2
        upper = ~self.lower                                               # each half from its own log
        y = xp.empty(lp.shape, dtype=xp.float64)
        y[self.lower] = _ndtri_lower(lp[self.lower].astype(xp.float64))
        y[upper] = -_ndtri_lower(lq[upper].astype(xp.float64))
        return y.astype(lp.dtype)

    def backward(self, gy):
        lp, lq = self.inputs
        y = self.output
        log_phi = -0.5 * y * y - _HALF_LOG_2PI
        zero = Tensor(xp.zeros((), dtype=gy.dtype))
        g_lp = where(self.lower, gy * exp(lp - log_phi), zero)            # dy/dlp = p / phi(y)
        g_lq = where(self.lower, zero, -gy * exp(lq - log_phi))           # dy/dlq = -(1-p)/phi(y)
        return g_lp, g_lq


def log_ndtr(y):
    """log Phi(y), the log standard normal CDF, accurate for y down to about -1e150."""
    return _LogNdtr.apply(as_tensor(y))


def ndtri_from_logs(log_p, log_1mp):
    """Phi^{-1}(p) from log p and log(1 - p) (both given: each tail from its own log)."""
    log_p = as_tensor(log_p)
    return _NdtriFromLogs.apply(log_p, as_tensor(log_1mp, like=log_p))
