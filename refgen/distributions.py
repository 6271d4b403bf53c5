"""Probability distributions on refgen Tensors: differentiable log-densities, samplers, and
closed-form KL divergences.

Everything is elementwise (no event dimensions are summed), so a model sums over the axes
it means: ``Normal(mu, sigma).log_prob(x).sum((1, 2, 3))``.

``rng`` arguments take a generator of the active backend, a NumPy Generator, an int seed or
None (refgen.backend.default_rng decides).

Support is checked: a Normal's scale must be positive, a Bernoulli's value 0 or 1, a
Categorical's value a class index in 0..K-1; anything else raises ValueError. The check reads
the values (a device sync on a GPU): ``validate_args=False`` skips it in a hot loop whose
inputs are known to be valid.
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen import backend
from refgen.autograd import Tensor, as_tensor, no_grad
from refgen.backend import xp

__all__ = ["Normal", "Bernoulli", "Categorical", "DiscretizedGaussian", "kl_normal",
           "kl_normal_std", "kl_normal_logvar", "normal_cdf"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _check(ok, what):
    """Raise ValueError(what) unless the boolean array ``ok`` is all true."""
    if not bool(xp.all(ok)):
        raise ValueError(what)


def _t(x, like=None):
    return as_tensor(x, like=like)


def _tensors(a, b):
    """Both as Tensors; a Python number takes the other's dtype (no float32 promotion)."""
    if isinstance(a, Tensor):
        return a, _t(b, like=a)
    b = _t(b)
    return _t(a, like=b), b


def _broadcast_shapes(*shapes):
    """The broadcast of several shapes (plain tuples: no array module needed)."""
    ndim = max(len(s) for s in shapes)
    out = []
    for i in range(ndim):
        dims = {s[i - ndim + len(s)] for s in shapes if i - ndim + len(s) >= 0} - {1}
        if len(dims) > 1:
            raise ValueError(f"shapes {shapes} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def _shape(sample_shape, batch_shape):
    sample_shape = (sample_shape,) if isinstance(sample_shape, int) else tuple(sample_shape)
    return sample_shape + tuple(batch_shape)


def _standard_normal(rng, shape, dtype):
    g = backend.default_rng(rng)
    return backend.asarray(g.standard_normal(shape, dtype=dtype))


def _uniform(rng, shape, dtype):
    g = backend.default_rng(rng)
    return backend.asarray(g.random(shape, dtype=dtype))


def normal_cdf(z):
    """Phi(z) = (1 + erf(z / sqrt 2)) / 2, differentiable."""
    z = _t(z)
    return 0.5 * (1.0 + F.erf(z * (1.0 / math.sqrt(2.0))))


class Normal:
    """Diagonal Gaussian N(loc, scale^2); loc and scale broadcast together."""

    def __init__(self, loc, scale, validate_args: bool = True):
        self.loc, self.scale = _tensors(loc, scale)
        self.batch_shape = _broadcast_shapes(self.loc.shape, self.scale.shape)
        if validate_args:
            _check(self.scale.data > 0, "Normal: scale must be positive (got a value <= 0 "
                                        "or nan); pass the standard deviation, not a log")

    @classmethod
    def from_logvar(cls, loc, logvar):
        """N(loc, exp(logvar)): scale = exp(logvar / 2)."""
        return cls(loc, F.exp(0.5 * _t(logvar)))

    @property
    def mean(self):
        return self.loc

    @property
    def variance(self):
        return self.scale * self.scale

    @property
    def stddev(self):
        return self.scale

    def log_prob(self, x):
        """log N(x; mu, sigma^2) = -(x - mu)^2 / (2 sigma^2) - log sigma - log(2 pi) / 2."""
        z = (_t(x, like=self.loc) - self.loc) / self.scale
        return -0.5 * (z * z) - F.log(self.scale) - _HALF_LOG_2PI

    def cdf(self, x):
        return normal_cdf((_t(x, like=self.loc) - self.loc) / self.scale)

    def entropy(self):
        """H = 1/2 + log(2 pi)/2 + log sigma, elementwise."""
        return F.broadcast_to(F.log(self.scale) + (0.5 + _HALF_LOG_2PI), self.batch_shape)

    def rsample(self, rng=None, sample_shape=()):
        """mu + sigma * eps, eps ~ N(0, I): differentiable in mu and sigma (reparameterised)."""
        shape = _shape(sample_shape, self.batch_shape)
        eps = Tensor(_standard_normal(rng, shape, self.loc.dtype))
        return self.loc + self.scale * eps

    def sample(self, rng=None, sample_shape=()):
        with no_grad():
            return self.rsample(rng, sample_shape).detach()


def kl_normal(q: Normal, p: Normal):
    """KL(q || p) between diagonal Gaussians, elementwise:
    log(sigma_p / sigma_q) + (sigma_q^2 + (mu_q - mu_p)^2) / (2 sigma_p^2) - 1/2."""
    ratio = q.scale / p.scale
    d = (q.loc - p.loc) / p.scale
    return -F.log(ratio) + 0.5 * (ratio * ratio + d * d) - 0.5


def kl_normal_logvar(mu_q, logvar_q, mu_p, logvar_p):
    """KL(N(mu_q, e^logvar_q) || N(mu_p, e^logvar_p)), elementwise, from log-variances:
    (logvar_p - logvar_q + e^(logvar_q - logvar_p) + (mu_q - mu_p)^2 e^-logvar_p - 1) / 2.
    The form diffusion's L_{t-1} terms use."""
    mu_q, logvar_q = _tensors(mu_q, logvar_q)
    mu_p, logvar_p = _t(mu_p, like=mu_q), _t(logvar_p, like=mu_q)
    d = mu_q - mu_p
    return 0.5 * (logvar_p - logvar_q + F.exp(logvar_q - logvar_p)
                  + d * d * F.exp(-logvar_p) - 1.0)


def kl_normal_std(mu, logvar):
    """KL(N(mu, e^logvar) || N(0, 1)) = (mu^2 + e^logvar - 1 - logvar) / 2, elementwise:
    the VAE's regulariser."""
    mu, logvar = _tensors(mu, logvar)
    return 0.5 * (mu * mu + F.exp(logvar) - 1.0 - logvar)


class Bernoulli:
    """Bernoulli with success probability sigmoid(logits)."""

    def __init__(self, logits, validate_args: bool = True):
        self.logits = _t(logits)
        self.batch_shape = self.logits.shape
        self.validate_args = validate_args

    @property
    def probs(self):
        return F.sigmoid(self.logits)

    mean = probs

    def log_prob(self, x):
        """x l - softplus(l) = x log sigmoid(l) + (1 - x) log sigmoid(-l): minus the
        binary cross-entropy with logits, finite for any l. x must be 0 or 1."""
        x = _t(x, like=self.logits)
        if self.validate_args:
            _check((x.data == 0) | (x.data == 1), "Bernoulli.log_prob: x must be 0 or 1")
        return F.bernoulli_log_prob(self.logits, x)

    def entropy(self):
        """softplus(l) - l sigmoid(l)."""
        return F.softplus(self.logits) - self.logits * F.sigmoid(self.logits)

    def sample(self, rng=None, sample_shape=()):
        shape = _shape(sample_shape, self.batch_shape)
        u = _uniform(rng, shape, self.logits.dtype)
        p = xp.broadcast_to(F.sigmoid(self.logits.detach()).data, shape)
        return Tensor((u < p).astype(self.logits.dtype))


class Categorical:
    """Categorical over the last axis of ``logits`` (..., K)."""

    def __init__(self, logits, validate_args: bool = True):
        logits = _t(logits)
        self.validate_args = validate_args
        self.logits = logits - F.logsumexp(logits, -1, keepdim=True)  # normalised: log p
        self.batch_shape = logits.shape[:-1]
        self.num_classes = logits.shape[-1]

    @property
    def probs(self):
        return F.exp(self.logits)

    def log_prob(self, x):
        """log p[x]; x: integer indices of shape batch_shape (or broadcastable to it)."""
        idx = x.data if isinstance(x, Tensor) else xp.asarray(x)
        if self.validate_args:
            _check((idx >= 0) & (idx < self.num_classes) & (idx == xp.floor(idx)),
                   f"Categorical.log_prob: x must be a class index in 0..{self.num_classes - 1}")
        hit = xp.arange(self.num_classes) == idx[..., None]  # one-hot of x, (..., K)
        lp = self.logits
        if hit.shape != lp.shape:
            lp = F.broadcast_to(lp, _broadcast_shapes(hit.shape, lp.shape))
        # where, not a product with the one-hot: 0 * (-inf) for a masked class would be nan
        return F.sum(F.where(hit, lp, 0.0), -1)

    def entropy(self):
        """-sum_k p_k log p_k (a class with p = 0 contributes 0)."""
        lp = self.logits
        safe = F.where(xp.isfinite(lp.data), lp, 0.0)  # keeps 0 * (-inf) out of both passes
        return -F.sum(F.exp(lp) * safe, -1)

    def sample(self, rng=None, sample_shape=()):
        """Gumbel-max: argmax_k (log p_k + G_k), G_k = -log(-log U_k), U ~ U(0, 1)."""
        shape = _shape(sample_shape, self.batch_shape) + (self.num_classes,)
        u = _uniform(rng, shape, self.logits.dtype)
        g = -xp.log(-xp.log(xp.maximum(u, 1e-30)))  # u < 1 always; u = 0 would give log 0
        return Tensor(xp.argmax(self.logits.data + g, axis=-1))


class DiscretizedGaussian:
    """A Gaussian N(mean, e^(2 log_scale)) discretised into ``num_bins`` bins over [-1, 1].

    Bin k has center c_k = -1 + 2k / (num_bins - 1) and half-width delta = 1 / (num_bins - 1);
    its probability is Phi((c_k + delta - mu) / sigma) - Phi((c_k - delta - mu) / sigma), with
    the first bin taking the whole lower tail and the last the whole upper tail, so the bins'
    probabilities sum to 1: DDPM's L_0 decoder for 8-bit images scaled to [-1, 1].
    """

    def __init__(self, mean, log_scale, num_bins: int = 256):
        self.mean, self.log_scale = _tensors(mean, log_scale)
        self.num_bins = num_bins
        self.batch_shape = _broadcast_shapes(self.mean.shape, self.log_scale.shape)

    def _bin(self, x):
        """Index and center of the bin containing each x (x is data: not differentiated)."""
        x = x.data if isinstance(x, Tensor) else xp.asarray(x)
        k = F.to_levels(x, self.num_bins)
        return k, F.from_levels(k, self.num_bins, self.mean.dtype)

    def log_prob(self, x):
        """log P(bin containing x), elementwise; clamped at log(1e-12) like DDPM's decoder."""
        k, c = self._bin(x)
        delta = 1.0 / (self.num_bins - 1)
        inv_s = F.exp(-self.log_scale)
        centered = Tensor(c) - self.mean
        cdf_hi = normal_cdf((centered + delta) * inv_s)  # Phi((c + delta - mu) / sigma)
        cdf_lo = normal_cdf((centered - delta) * inv_s)  # Phi((c - delta - mu) / sigma)
        # edge bins take the tails: P(x <= c_0 + delta) and P(x > c_last - delta)
        p = F.where(k == 0, cdf_hi, F.where(k == self.num_bins - 1, 1.0 - cdf_lo, cdf_hi - cdf_lo))
        return F.log(F.clamp(p, min=1e-12))

    def sample(self, rng=None, sample_shape=()):
        """A continuous Gaussian draw snapped to the nearest bin center (clipped to [-1, 1])."""
        shape = _shape(sample_shape, self.batch_shape)
        eps = _standard_normal(rng, shape, self.mean.dtype)
        x = self.mean.data + xp.exp(self.log_scale.data) * eps
        return Tensor(self._bin(x)[1])
