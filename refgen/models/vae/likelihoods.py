"""The decoder's distribution p(x | z), given the decoder's output ``out`` for each data dim.

- ``bernoulli``: out are logits, x in {0, 1} (binarized MNIST);
      log p(x | z) = sum_d x_d l_d - softplus(l_d)
- ``gaussian``: out are means, one learned scale sigma = exp(log_sigma) shared by all dims
  (probabilistic PCA's isotropic noise); a density, for continuous data;
      log p(x | z) = sum_d -(x_d - m_d)^2 / (2 sigma^2) - log sigma - log(2 pi) / 2
- ``discretized``: the Gaussian integrated over the 256 bins of 8-bit data in [-1, 1]
  (refgen.distributions.DiscretizedGaussian): a probability, so its NLL is in discrete nats.

Every ``log_prob`` sums over the data dims (the last ``len(data_shape)`` axes) and keeps the
leading ones, so ``out`` of shape (k, B, *data_shape) against x (B, *data_shape) gives (k, B).
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen.autograd import Tensor, as_tensor
from refgen.backend import xp
from refgen.distributions import Bernoulli, DiscretizedGaussian, Normal
from refgen.nn import Module, Parameter

__all__ = ["make_likelihood", "BernoulliLikelihood", "GaussianLikelihood",
           "DiscretizedGaussianLikelihood", "LIKELIHOODS"]

LIKELIHOODS = ("bernoulli", "gaussian", "discretized")


def _sum_event(t, event_ndim):
    return t.sum(tuple(range(t.ndim - event_ndim, t.ndim)))


class BernoulliLikelihood(Module):
    name = "bernoulli"

    def __init__(self, event_ndim):
        super().__init__()
        self.event_ndim = event_ndim

    def check(self, x):
        if not bool(((x >= 0) & (x <= 1)).all()):
            raise ValueError("likelihood='bernoulli' needs data in [0, 1] (binarized MNIST); "
                             "use --set likelihood=gaussian (or discretized) for data in [-1, 1]")

    def log_prob(self, x, out):
        # check() has vetted the data ([0, 1]: grey levels act as soft targets)
        bern = Bernoulli(out, validate_args=False)
        return _sum_event(bern.log_prob(as_tensor(x, like=out)), self.event_ndim)

    def mean(self, out):
        return F.sigmoid(out)

    def sample(self, out, rng):
        return Bernoulli(out).sample(rng)


class GaussianLikelihood(Module):
    name = "gaussian"

    def __init__(self, event_ndim, log_sigma=0.0, learn_sigma=True, dtype=xp.float32):
        super().__init__()
        self.event_ndim = event_ndim
        self.log_sigma = Parameter(xp.full((), log_sigma, dtype=dtype), requires_grad=learn_sigma)

    def check(self, x):
        pass

    def log_prob(self, x, out):
        sigma = F.broadcast_to(F.exp(self.log_sigma), out.shape)
        normal = Normal(out, sigma, validate_args=False)  # sigma = exp(.) > 0: no device sync
        return _sum_event(normal.log_prob(as_tensor(x, like=out)), self.event_ndim)

    def mean(self, out):
        return out

    def sample(self, out, rng):
        return Normal(out, F.exp(self.log_sigma)).sample(rng)


class DiscretizedGaussianLikelihood(GaussianLikelihood):
    name = "discretized"

    def check(self, x):
        if not bool(((x >= -1) & (x <= 1)).all()):
            raise ValueError("likelihood='discretized' needs 8-bit data scaled to [-1, 1] ('mnist')")

    def log_prob(self, x, out):
        d = DiscretizedGaussian(out, F.broadcast_to(self.log_sigma, out.shape), num_bins=256)
        return _sum_event(d.log_prob(x.data if isinstance(x, Tensor) else x), self.event_ndim)

    def sample(self, out, rng):
        return DiscretizedGaussian(out, F.broadcast_to(self.log_sigma, out.shape)).sample(rng)


def make_likelihood(name: str, event_ndim: int, dtype=xp.float32):
    if name == "bernoulli":
        return BernoulliLikelihood(event_ndim)
    if name == "gaussian":
        return GaussianLikelihood(event_ndim, dtype=dtype)
    if name == "discretized":
        return DiscretizedGaussianLikelihood(event_ndim, log_sigma=math.log(0.1), dtype=dtype)
    raise ValueError(f"unknown likelihood {name!r}; accepted: {', '.join(LIKELIHOODS)}")
