"""Gaussianization flows (Meng, Song, Song & Ermon 2020): marginal Gaussianization and rotations.

Iterative Gaussianization (Chen & Gopinath 2000) makes data Gaussian by repeating two steps:
make each coordinate marginally N(0, 1), then rotate so that the coordinates mix. Meng et
al. make both steps trainable layers of a flow:

- Marginal Gaussianization, per dimension d, with F_d a mixture of K logistic CDFs:

      F_d(x) = sum_k pi_dk sigmoid((x - mu_dk) / s_dk)
      y_d    = Phi^{-1}(F_d(x_d)) = sqrt(2) erfinv(2 F_d(x_d) - 1)

  Elementwise, so the Jacobian is diagonal with dy/dx = p_d(x) / phi(y) (p_d = F_d', the
  mixture density; phi the standard normal density), and

      log |det dy/dx| = sum_d [log p_d(x_d) - log phi(y_d)].

  y is computed from log F_d and log(1 - F_d) (logsumexp over the components), so the
  map stays exact far into both tails (refgen.functional.normal: Phi^{-1}(F) written as
  sqrt(2) erfinv(2F - 1) saturates at |y| = 8.3 and a trained flow would lose the mass it
  puts beyond). The inverse solves F_d(x) = Phi(y) by bisection (F_d increases).
  The mixture starts from the data (the paper's initialisation from data points): on the
  first training batch mu_dk are the batch's quantiles (k + 1/2) / K of dimension d and
  s_dk = s_d, chosen so that the mixture's variance var_k(mu_dk) + s_d^2 pi^2 / 3 is the
  batch's (a logistic of scale s has variance s^2 pi^2 / 3).
- Rotation: Q = H_1 ... H_R, a product of Householder reflections H_r = I - 2 v_r v_r^T / |v_r|^2
  (Tomczak & Welling 2016). Orthogonal for any v, so log |det Q| = 0 and Q^{-1} = Q^T (the
  reflections applied in the opposite order); R = D reflections reach every rotation.

The registered ``gflow`` alternates them, M R M R ... M, over the standard normal base;
images pass through the logit transform and are flattened first, like MAF.
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen.autograd import Tensor, as_tensor
from refgen.backend import xp
from refgen.models import register
from refgen.models.base import DataSpec
from refgen.models.flows.base import Flow, FlowLayer, zero_logdet
from refgen.models.flows.preprocess import LogitTransform
from refgen.models.flows.reshape import Flatten
from refgen.nn import Parameter, init

__all__ = ["MarginalGaussianization", "HouseholderRotation", "GaussianizationFlow"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class MarginalGaussianization(FlowLayer):
    """(B, D) -> (B, D): y_d = Phi^{-1}(F_d(x_d)), F_d a K-component logistic mixture CDF."""

    def __init__(self, dim: int, components: int = 16, rng=None, dtype=xp.float32):
        super().__init__()
        self.dim, self.components = int(dim), int(components)
        g = init.get_rng(rng)
        self.mu = Parameter(xp.asarray(g.standard_normal((self.dim, self.components))).astype(dtype))
        self.log_s = Parameter(xp.zeros((self.dim, self.components), dtype=dtype))
        self.logit_pi = Parameter(xp.zeros((self.dim, self.components), dtype=dtype))
        self.register_buffer("initialized", xp.zeros((), dtype=xp.int8))

    def extra_repr(self):
        return f"dim={self.dim}, components={self.components}, initialized={bool(self.initialized)}"

    def initialize(self, x):
        """mu_dk: the batch's quantiles (k + 1/2) / K of dimension d; s_dk: the variance-matching scale."""
        data = x.data if hasattr(x, "data") else x
        k = self.components
        q = xp.quantile(data.astype(xp.float64), (xp.arange(k) + 0.5) / k, axis=0).T   # (D, K)
        var = data.astype(xp.float64).var(axis=0)                                      # (D,)
        # s_d so that the mixture's variance, var(mu_d.) + s_d^2 pi^2 / 3, is the batch's
        s = xp.sqrt(xp.maximum(var - q.var(axis=1), 1e-2 * var / k ** 2) * 3.0) / math.pi + 1e-6
        self.mu.data = q.astype(self.mu.dtype)
        self.log_s.data = xp.broadcast_to(xp.log(s)[:, None], (self.dim, k)).astype(self.log_s.dtype)
        self.initialized = xp.ones((), dtype=xp.int8)

    def _log_cdfs(self, x):
        """log F_d(x_d), log(1 - F_d(x_d)) and log p_d(x_d), each (B, D); z is (B, D, K)."""
        z = (F.unsqueeze(x, -1) - self.mu) * F.exp(-self.log_s)
        log_pi = F.log_softmax(self.logit_pi, dim=-1)                          # (D, K)
        log_f = F.logsumexp(log_pi + F.logsigmoid(z), dim=-1)                 # sum_k pi sigma(z)
        log_1mf = F.logsumexp(log_pi + F.logsigmoid(-z), dim=-1)              # sum_k pi sigma(-z)
        log_p = F.logsumexp(log_pi + F.logsigmoid(z) + F.logsigmoid(-z) - self.log_s, dim=-1)
        return log_f, log_1mf, log_p

    def forward(self, x):
        x = as_tensor(x)
        if self.training and not bool(self.initialized):
            self.initialize(x)
        log_f, log_1mf, log_p = self._log_cdfs(x)
        y = F.ndtri_from_logs(log_f, log_1mf)                                  # Phi^{-1}(F_d(x_d))
        log_phi = -0.5 * y * y - _HALF_LOG_2PI
        return y, F.sum_except_batch(log_p - log_phi)

    def inverse(self, y, iterations: int = 120):
        """x with F_d(x_d) = Phi(y_d), by bisection (float64; F_d increases), comparing
        log F_d with log Phi(y) below the median and log(1 - F_d) with log Phi(-y) above."""
        y = as_tensor(y)
        y64 = y.data.astype(xp.float64)
        lower = y64 <= 0
        target = F.log_ndtr(Tensor(-xp.abs(y64))).data          # log Phi(-|y|): the smaller tail
        mu = self.mu.data.astype(xp.float64)
        s = xp.exp(self.log_s.data.astype(xp.float64))
        log_pi = F.log_softmax(Tensor(self.logit_pi.data.astype(xp.float64)), dim=-1).data
        # far enough that sum_k pi_k sigma(-|z_k|) < Phi(-|y|) at the ends
        reach = s.max(axis=1) * (0.5 * y64 * y64 + 50.0 - log_pi.min(axis=1))   # (B, D)
        lo, hi = mu.min(axis=1) - reach, mu.max(axis=1) + reach
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            z = (mid[..., None] - mu) / s
            log_f = _logsumexp(log_pi - xp.logaddexp(0.0, -z))               # log F(mid)
            log_1mf = _logsumexp(log_pi - xp.logaddexp(0.0, z))              # log(1 - F(mid))
            below = xp.where(lower, log_f < target, log_1mf > target)       # F(mid) < Phi(y)
            lo, hi = xp.where(below, mid, lo), xp.where(below, hi, mid)
        return Tensor((0.5 * (lo + hi)).astype(y.dtype))


def _logsumexp(a):
    m = a.max(axis=-1, keepdims=True)
    return (m + xp.log(xp.exp(a - m).sum(axis=-1, keepdims=True)))[..., 0]


class HouseholderRotation(FlowLayer):
    """(B, D) -> (B, D): x Q^T with Q = H_1 H_2 ... H_R (H_R applied first); log|det| = 0."""

    def __init__(self, dim: int, reflections: int | None = None, rng=None, dtype=xp.float32):
        super().__init__()
        self.dim = int(dim)
        r = self.dim if reflections is None else int(reflections)
        g = init.get_rng(rng)
        self.v = Parameter(xp.asarray(g.standard_normal((r, self.dim))).astype(dtype))  # (R, D)

    def extra_repr(self):
        return f"dim={self.dim}, reflections={self.v.shape[0]}"

    def _reflect(self, x, r):
        """H_r x = x - 2 v (v . x) / (v . v), for every row of x."""
        v = self.v[r]
        return x - (2.0 * F.sum(x * v, dim=-1, keepdim=True) / F.sum(v * v)) * v

    def forward(self, x):
        x = as_tensor(x)
        y = x
        for r in reversed(range(self.v.shape[0])):
            y = self._reflect(y, r)
        return y, zero_logdet(x)

    def inverse(self, y):
        x = as_tensor(y)
        for r in range(self.v.shape[0]):                   # Q^{-1} = Q^T = H_R ... H_1
            x = self._reflect(x, r)
        return x


@register("gflow")
class GaussianizationFlow(Flow):
    """Marginal Gaussianization layers alternating with Householder rotations, M R ... R M.

    layers: marginal Gaussianization layers; components: logistics per dimension;
    reflections: Householder reflections per rotation (default D); logit_alpha: the
    [0, 1] -> R transform of images (which are flattened first).
    """

    data_spec = DataSpec(kinds=("continuous",), ndims=(1, 3), image_range=(0.0, 1.0))
    default_train = dict(steps=2500, batch_size=256, lr=5e-3, schedule="cosine")
    demo = True

    def __init__(self, data_shape, *, seed=0, layers: int = 8, components: int = 16,
                 reflections: int | None = None, logit_alpha: float = 1e-6):
        shape = tuple(int(s) for s in data_shape)
        if int(layers) < 1 or int(components) < 1:
            raise ValueError(f"layers and components must be at least 1, got {layers}, {components}")
        image = len(shape) == 3
        d = math.prod(shape)
        g = init.get_rng(int(seed))
        flow = [LogitTransform(logit_alpha), Flatten(shape)] if image else []
        for k in range(int(layers)):
            if k:
                flow.append(HouseholderRotation(d, reflections, rng=g))
            flow.append(MarginalGaussianization(d, components, rng=g))
        super().__init__(flow, shape)
