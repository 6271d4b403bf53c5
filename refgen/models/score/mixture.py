"""The exact score of a Gaussian mixture under Gaussian noise: the oracle of the tests and
docs (every sampler and the likelihood are checked against it).

p(x) = sum_k w_k N(x; mu_k, tau_k^2 I). Perturbed by a kernel N(m x_0, s^2 I) it stays a
mixture with the same weights,

    p_t(x) = sum_k w_k N(x; m mu_k, v_k I),   v_k = m^2 tau_k^2 + s^2,
    grad log p_t(x) = sum_k r_k(x) (-(x - m mu_k) / v_k),   r_k = softmax_k(log w_k + log N_k),

with (m, s) = (1, sigma) for NCSN's noise levels and (m(t), s(t)) for an SDE.
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen.autograd import Tensor, as_tensor, no_grad
from refgen.backend import xp

__all__ = ["GaussianMixture"]


class GaussianMixture:
    """weights (K,), means (K, D), stds (K,) (isotropic components)."""

    def __init__(self, weights, means, stds):
        self.w = xp.asarray(weights, dtype=xp.float64)
        self.mu = xp.asarray(means, dtype=xp.float64).reshape(self.w.shape[0], -1)
        self.tau = xp.broadcast_to(xp.asarray(stds, dtype=xp.float64), self.w.shape)
        if abs(float(self.w.sum()) - 1.0) > 1e-9 or bool((self.w <= 0).any()):
            raise ValueError("mixture weights must be positive and sum to 1")
        self.K, self.D = self.mu.shape

    def sample(self, n: int, rng):
        k = xp.asarray(rng.choice(self.K, size=n, p=self.w))
        return self.mu[k] + self.tau[k][:, None] * rng.standard_normal((n, self.D))

    def _logits(self, x, m, s):
        """log w_k + log N(x; m mu_k, v_k I): (B, K), a Tensor when x is one."""
        m = xp.asarray(m, dtype=xp.float64).reshape(-1, 1, 1)              # (B or 1, 1, 1)
        s = xp.asarray(s, dtype=xp.float64).reshape(-1, 1, 1)
        v = m ** 2 * self.tau.reshape(1, -1, 1) ** 2 + s ** 2               # (B, K, 1)
        diff = F.unsqueeze(x, 1) - m * self.mu[None]                        # (B, K, D)
        logn = -0.5 * self.D * xp.log(2 * math.pi * v[..., 0]) - 0.5 * (diff * diff / v).sum(-1)
        return xp.log(self.w)[None] + logn, diff, v

    def log_prob(self, x, m=1.0, s=0.0):
        """log p_t(x), (B,) float64, with kernel (m, s) (scalars or (B,) arrays)."""
        x = xp.asarray(x.data if isinstance(x, Tensor) else x, dtype=xp.float64)
        with no_grad():
            logits, _, _ = self._logits(Tensor(x), m, s)
        a = logits.data
        amax = a.max(1, keepdims=True)
        return (amax + xp.log(xp.exp(a - amax).sum(1, keepdims=True)))[:, 0]

    def score(self, x, m=1.0, s=0.0):
        """grad log p_t(x), differentiable in x when x is a Tensor: (B, D)."""
        x = as_tensor(x)
        logits, diff, v = self._logits(x, m, s)
        r = F.softmax(logits, dim=1)                                        # (B, K)
        return (F.unsqueeze(r, 2) * diff * (-1.0 / v)).sum(1)               # (B, D)

    # ------------------------------------------------------------ adapters for the samplers
    def sde_score(self, sde, tensor: bool = False):
        """score(x, t) of the mixture under ``sde``: on arrays, or on Tensors (tensor=True)."""
        def fn(x, t):
            m, s = sde.marginal(t)
            return self.score(x, m, s) if tensor else self.score(Tensor(x), m, s).data
        return fn

    def sde_log_prob(self, sde, t):
        """log p_t(x) under ``sde`` at the time t: a function of x."""
        return lambda x: self.log_prob(x, *sde.marginal(xp.full((x.shape[0],), float(t))))

    def ladder_score(self, sigmas):
        """score(x, i) of the mixture perturbed by N(0, sigma_i^2 I) (NCSN's levels), on arrays."""
        return lambda x, i: self.score(Tensor(x), 1.0, float(sigmas[i])).data
