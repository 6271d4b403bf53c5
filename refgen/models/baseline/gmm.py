"""A K-component diagonal Gaussian mixture, fitted by maximum likelihood with SGD.

    p(x) = sum_k pi_k N(x; mu_k, diag(sigma_k^2)),   pi = softmax(logits),  sigma_k = exp(s_k)

    log N(x; mu, diag(sigma^2)) = -1/2 sum_d ((x_d - mu_d) / sigma_d)^2 - sum_d log sigma_d
                                  - D/2 log(2 pi)

    log p(x) = logsumexp_k [log pi_k + log N(x; mu_k, diag(sigma_k^2))]

Learned: logits (K,), mu (K, D), s = log sigma (K, D). The loss is the mean negative
log-likelihood in nats, so the loss *is* the training NLL and needs no extra metric.
"""
from __future__ import annotations

import math

from refgen import functional as F
from refgen.autograd import as_tensor
from refgen.backend import xp
from refgen.models import register
from refgen.models.base import DataSpec
from refgen.nn import Module, Parameter, init

__all__ = ["GaussianMixture"]


@register("gmm")
class GaussianMixture(Module):
    """Diagonal Gaussian mixture density on vectors: the baseline density model."""

    data_spec = DataSpec(kinds=("continuous",), ndims=(1,))
    default_train = dict(steps=1500, batch_size=256, lr=2e-2)
    demo = True

    def __init__(self, data_shape, *, seed=0, components: int = 32, init_std: float = 1.0):
        super().__init__()
        if len(data_shape) != 1:
            raise ValueError(f"gmm models vectors; got examples of shape {tuple(data_shape)}")
        if int(components) < 1:
            raise ValueError(f"components must be at least 1, got {components}")
        k, d = int(components), int(data_shape[0])
        self.num_components, self.dim = k, d
        g = init.get_rng(int(seed))  # host generator: same start on CPU and GPU
        self.logits = Parameter(xp.zeros((k,), dtype=xp.float32))          # pi = softmax(logits)
        self.mu = init.normal_(Parameter(xp.zeros((k, d), dtype=xp.float32)), 0.0, init_std, rng=g)
        self.log_sigma = Parameter(xp.full((k, d), math.log(init_std), dtype=xp.float32))

    def extra_repr(self):
        return f"components={self.num_components}, dim={self.dim}"

    def log_prob(self, x):
        """Exact log p(x) in nats: (B, D) -> (B,)."""
        x = as_tensor(x)
        z = (x.unsqueeze(1) - self.mu) / self.log_sigma.exp()                 # (B, K, D)
        log_normal = (-0.5 * (z * z) - self.log_sigma).sum(-1) \
            - 0.5 * self.dim * math.log(2.0 * math.pi)                        # (B, K)
        log_pi = self.logits - F.logsumexp(self.logits, dim=0)               # (K,)
        return F.logsumexp(log_normal + log_pi, dim=1)                       # (B,)

    def loss(self, batch, rng):
        """Mean negative log-likelihood (nats per example)."""
        return -self.log_prob(batch.x).mean()

    def sample(self, n, cond=None, *, rng):
        """n draws (n, D): a component k ~ Categorical(pi), then mu_k + sigma_k * eps."""
        p = xp.exp(self.logits.data - self.logits.data.max())
        cdf = xp.cumsum(p / p.sum())
        k = xp.searchsorted(cdf, rng.random(n) * cdf[-1])                   # inverse CDF
        k = xp.minimum(k, self.num_components - 1)
        eps = rng.standard_normal((n, self.dim), dtype=xp.float32)
        return self.mu.data[k] + xp.exp(self.log_sigma.data[k]) * eps
