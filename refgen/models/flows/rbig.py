"""RBIG: rotation-based iterative Gaussianization (Laparra, Camps-Valls & Malo 2011).

The non-parametric ancestor of Gaussianization flows: the same two steps, each *fitted* to
the data once, layer after layer, with no gradient training.

- Marginal Gaussianization by kernel density estimates: for each dimension d, with the
  layer's N reference points c_nd (a subsample of the data arriving at the layer) and
  Silverman's bandwidth h_d = 1.06 sigma_d N^{-1/5},

      F_d(x) = 1/N sum_n Phi((x - c_nd) / h_d),   p_d(x) = 1/N sum_n phi((x - c_nd) / h_d) / h_d
      y_d    = Phi^{-1}(F_d(x_d)),                log |dy_d/dx_d| = log p_d(x_d) - log phi(y_d)

- Rotation by PCA: y -> y V, V the eigenvectors of the covariance of the layer's output on
  the training data (orthogonal: log |det| = 0).

The fitted map is a flow: log p(x) = log N(z; 0, I) + sum of the marginal log-derivatives,
exact for the fitted layers (the density integrates to 1, whatever the fit's quality), and
sampling inverts each layer (the KDE CDF by bisection, the rotation by V^T).

Arrays only (fitted, not trained), through refgen.backend; ``fit(x)`` then ``log_prob(x)``
and ``sample(n, rng)`` like the registered flows.
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen.autograd import Tensor
from refgen.backend import asarray, default_rng, erf, xp

__all__ = ["RBIG"]

_SQRT2 = math.sqrt(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_EPS = 1e-12          # 2F - 1 is kept within 1 - eps of +-1: |y| <= 7.0


def _phi_cdf2(t):
    """2 Phi(t) - 1 = erf(t / sqrt 2)."""
    return asarray(erf(t / _SQRT2))


class RBIG:
    """layers: Gaussianization iterations; max_points: KDE reference points per layer;
    bandwidth: a factor on Silverman's bandwidth (which assumes one mode and oversmooths
    multimodal marginals); seed: the subsample of reference points."""

    def __init__(self, layers: int = 50, max_points: int = 1000, bandwidth: float = 1.0,
                 seed: int = 0):
        if int(layers) < 1 or int(max_points) < 2:
            raise ValueError(f"RBIG needs layers >= 1 and max_points >= 2, got {layers}, {max_points}")
        self.layers, self.max_points, self.seed = int(layers), int(max_points), int(seed)
        self.bandwidth = float(bandwidth)
        self.fitted = []            # per layer: (centres (N, D), bandwidth (D,), rotation (D, D))

    # --- one layer -------------------------------------------------------------------------
    @staticmethod
    def _marginal(x, c, h):
        """(y, log |dy/dx| per coordinate) for x (B, D) under centres c (N, D), bandwidths h (D,)."""
        u = (x[:, None, :] - c[None]) / h                                  # (B, N, D)
        two_f_minus_1 = _phi_cdf2(u).mean(axis=1)                          # 2 F_d(x_d) - 1
        log_p = (_logsumexp(-0.5 * u * u, axis=1) - math.log(c.shape[0]) - _HALF_LOG_2PI
                 - xp.log(h))                                              # log p_d(x_d)
        t = xp.clip(two_f_minus_1, -1.0 + _EPS, 1.0 - _EPS)
        y = _SQRT2 * F.erfinv(Tensor(t)).data                              # Phi^{-1}(F_d(x_d))
        return y, log_p + 0.5 * y * y + _HALF_LOG_2PI                      # log p_d - log phi(y)

    @staticmethod
    def _marginal_inverse(y, c, h, iterations=100):
        target = _phi_cdf2(y)
        lo = xp.broadcast_to(c.min(axis=0) - 40 * h, y.shape).copy()
        hi = xp.broadcast_to(c.max(axis=0) + 40 * h, y.shape).copy()
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            below = _phi_cdf2((mid[:, None, :] - c[None]) / h).mean(axis=1) < target
            lo, hi = xp.where(below, mid, lo), xp.where(below, hi, mid)
        return 0.5 * (lo + hi)

    # --- fitting and the flow ----------------------------------------------------------------
    def fit(self, x):
        """Fit ``layers`` layers to the data x (N, D); returns self."""
        x = asarray(x).astype(xp.float64)
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"RBIG fits vectors (N, D) with N >= 2; got shape {tuple(x.shape)}")
        rng = default_rng(self.seed)
        self.fitted = []
        for _ in range(self.layers):
            idx = rng.permutation(x.shape[0])[:self.max_points]
            c = x[idx]
            h = self.bandwidth * 1.06 * c.std(axis=0) * c.shape[0] ** -0.2 + 1e-6  # Silverman x factor
            y = self._chunked(x, lambda xb: self._marginal(xb, c, h)[0])
            _, v = xp.linalg.eigh(xp.cov(y, rowvar=False).reshape(x.shape[1], x.shape[1]))
            x = y @ v
            self.fitted.append((c, h, v))
        return self

    def _chunked(self, x, f, rows=None):
        rows = rows or max(1, 2_000_000 // max(1, self.max_points * x.shape[1]))
        outs = [f(x[i:i + rows]) for i in range(0, x.shape[0], rows)]
        return tuple(xp.concatenate(o) for o in zip(*outs)) if isinstance(outs[0], tuple) \
            else xp.concatenate(outs)

    def forward(self, x):
        """x (B, D) -> (z (B, D), log |det dz/dx| (B,)), float64."""
        if not self.fitted:
            raise ValueError("RBIG is not fitted: call fit(x) first")

        def run(xb):
            ld = xp.zeros(xb.shape[0])
            for c, h, v in self.fitted:
                xb, ld_d = self._marginal(xb, c, h)
                ld = ld + ld_d.sum(axis=1)
                xb = xb @ v                                                # rotation: log|det| 0
            return xb, ld
        return self._chunked(asarray(x).astype(xp.float64), run)

    def inverse(self, z):
        """z (B, D) -> x: each layer undone, last first (V^T, then the KDE CDF by bisection)."""
        def run(x):
            for c, h, v in reversed(self.fitted):
                x = self._marginal_inverse(x @ v.T, c, h)
            return x
        return self._chunked(asarray(z).astype(xp.float64), run)

    def log_prob(self, x):
        """log p(x) = log N(z; 0, I) + log |det dz/dx|, (B, D) -> (B,), nats."""
        z, ld = self.forward(x)
        return -0.5 * (z * z).sum(axis=1) - z.shape[1] * _HALF_LOG_2PI + ld

    def sample(self, n, cond=None, *, rng):
        """n samples (n, D): z ~ N(0, I) from ``rng``, mapped back through the fitted layers."""
        d = self.fitted[0][0].shape[1]
        return self.inverse(rng.standard_normal((int(n), d)))


def _logsumexp(a, axis):
    m = a.max(axis=axis, keepdims=True)
    return (m + xp.log(xp.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)
