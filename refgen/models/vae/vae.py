"""The variational autoencoder (Kingma & Welling 2014) and its variants.

Generative model: z ~ p(z) = N(0, I), x ~ p_theta(x | z) (the decoder). The marginal
p_theta(x) = integral p(z) p_theta(x | z) dz is intractable, so an encoder
q_phi(z | x) = N(mu_phi(x), diag(sigma_phi(x)^2)) (two heads: mu and log sigma^2) stands in
for the posterior, and for any q

    log p(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z)) + KL(q(z | x) || p(z | x))      (V1)
             >= E_q[log p(x | z)] - KL(q(z | x) || p(z))  =  ELBO(x)                     (V2)

(the last KL of V1 is >= 0 and unknown). The VAE maximises the ELBO in theta and phi:

    loss = -E_q[log p(x | z)] + KL(q(z | x) || p(z))                                     (V3)
    z = mu + sigma * eps,  eps ~ N(0, I)     (reparameterization: a sample differentiable
                                              in mu and sigma)                           (V4)
    KL(N(mu, sigma^2) || N(0, 1)) = (mu^2 + sigma^2 - 1 - log sigma^2) / 2   per dim     (V5)

Both terms are sums: the reconstruction over the data dims, the KL over the latent dims
(the KL between two diagonal Gaussians is the sum of the per-dim KLs). Averaging either over
its dims instead would reweigh the two and silently change beta; only the batch is averaged.

Variants, each one line of ``loss``:
- beta-VAE: loss = -E_q[log p(x | z)] + beta KL                                          (V6)
- conditional VAE: labels y go into the encoder q(z | x, y) and the decoder p(x | z, y)
- IWAE (Burda et al. 2016): with w_i = p(x, z_i) / q(z_i | x), z_1..z_k ~ q(z | x),
      L_k = E[log (1/k) sum_i w_i],   ELBO = L_1 <= L_k <= L_{k+1} <= log p(x)            (V7)
  trained by maximising L_k (objective='iwae') and used as the evaluation estimator.
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen.autograd import Tensor, as_tensor, no_grad
from refgen.backend import xp
from refgen.distributions import Normal, kl_normal_std
from refgen.metrics.likelihood import iwae as iwae_estimator
from refgen.models import register
from refgen.models.base import DataSpec
from refgen.models.vae.likelihoods import make_likelihood
from refgen.models.vae.nets import Decoder, Encoder
from refgen.nn import Module, init, parse_hidden

__all__ = ["VAE", "BetaVAE", "ConditionalVAE", "IWAE"]

_LOG_2PI = math.log(2.0 * math.pi)
OBJECTIVES = ("elbo", "iwae")


def log_standard_normal(z):
    """log N(z; 0, I), summed over the last axis."""
    return (-0.5 * (z * z) - 0.5 * _LOG_2PI).sum(-1)


@register("vae")
class VAE(Module):
    """Gaussian encoder, Bernoulli / Gaussian / discretized decoder; MLP or conv networks.

    latent_dim: size of z. hidden: the encoder's hidden widths (the decoder mirrors them).
    arch: 'mlp' or 'conv'. likelihood: 'bernoulli' (data in [0, 1]), 'gaussian' or
    'discretized' (data in [-1, 1]). beta: weight of the KL in the loss (1 = the ELBO).
    objective: 'elbo' or 'iwae' (the k-sample bound, ``k`` samples per example).
    sample_mean: ``sample`` returns the decoder's mean E[x | z] (True) or a draw of p(x | z).
    """

    data_spec = DataSpec(kinds=("binary", "continuous"), ndims=(1, 3))
    default_train = dict(steps=20000, batch_size=100, lr=1e-3)
    eval_iwae_k = 1000
    num_classes = None

    def __init__(self, data_shape, *, seed=0, latent_dim: int = 32, hidden="512,256",
                 arch: str = "mlp", activation: str = "relu", likelihood: str = "bernoulli",
                 beta: float = 1.0, objective: str = "elbo", k: int = 1, channels="32,64",
                 sample_mean: bool = True):
        super().__init__()
        self._build(data_shape, seed, None, latent_dim, hidden, arch, activation, likelihood,
                    beta, objective, k, channels, sample_mean)

    def _build(self, data_shape, seed, num_classes, latent_dim, hidden, arch, activation,
               likelihood, beta, objective, k, channels, sample_mean):
        self.data_shape = tuple(int(s) for s in data_shape)
        self.latent_dim, self.beta, self.k = int(latent_dim), float(beta), int(k)
        self.objective, self.sample_mean = objective, bool(sample_mean)
        self.num_classes = None if num_classes is None else int(num_classes)
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; accepted: {', '.join(OBJECTIVES)}")
        if self.k < 1 or self.latent_dim < 1:
            raise ValueError(f"k and latent_dim must be at least 1, got k={k}, latent_dim={latent_dim}")
        if self.beta < 0:
            raise ValueError(f"beta must be non-negative, got {beta}")
        hidden, channels = parse_hidden(hidden), parse_hidden(channels)
        g = init.get_rng(int(seed))  # host generator: the same initial weights on CPU and GPU
        self.encoder = Encoder(self.data_shape, self.latent_dim, hidden, arch, activation,
                               self.num_classes, channels, rng=g)
        self.decoder = Decoder(self.data_shape, self.latent_dim, hidden[::-1], arch,
                               activation, self.num_classes, channels, rng=g)
        self.likelihood = make_likelihood(likelihood, len(self.data_shape))

    def extra_repr(self):
        return (f"data_shape={self.data_shape}, latent_dim={self.latent_dim}, "
                f"likelihood={self.likelihood.name}, objective={self.objective}, k={self.k}, "
                f"beta={self.beta}")

    # ------------------------------------------------------------------ the two networks
    def encode(self, x, y=None):
        """q(z | x): mean and log-variance, (B, *data_shape) -> (B, latent), (B, latent)."""
        return self.encoder(x, y)

    def decode(self, z, y=None):
        """p(x | z): the decoder's output (logits or means), (..., latent) -> (..., *data_shape)."""
        return self.decoder(z, y)

    def reparameterize(self, mu, logvar, rng, k=None):
        """z = mu + sigma * eps, eps ~ N(0, I) from ``rng`` (V4); ``k`` draws give (k, B, latent)."""
        shape = tuple(mu.shape) if k is None else (int(k),) + tuple(mu.shape)
        eps = Tensor(rng.standard_normal(shape, dtype=mu.dtype))
        return mu + F.exp(0.5 * logvar) * eps

    @staticmethod
    def kl(mu, logvar):
        """KL(q(z | x) || N(0, I)) in closed form (V5), summed over latent dims: (B,)."""
        return kl_normal_std(mu, logvar).sum(-1)

    def _labels(self, y):
        if self.num_classes is not None and y is None:
            raise ValueError("a conditional VAE needs labels y")
        return y

    # ------------------------------------------------------------------ bounds
    def elbo_terms(self, x, y=None, *, rng):
        """One-sample estimates of E_q[log p(x | z)] and the exact KL, each (B,) nats."""
        x = as_tensor(x)
        self.likelihood.check(x.data)
        mu, logvar = self.encode(x, y)
        z = self.reparameterize(mu, logvar, rng)                       # (B, latent)
        rec = self.likelihood.log_prob(x, self.decode(z, y))           # log p(x | z), (B,)
        return rec, self.kl(mu, logvar)

    def elbo(self, x, y=None, *, rng):
        """ELBO(x) = E_q[log p(x | z)] - KL(q || p(z)) per example, nats (V2); one-sample
        estimate of the expectation. A conditional model given no labels returns the bound
        log (1/C) sum_y exp ELBO(x | y) on log p(x) = log (1/C) sum_y p(x | y)."""
        if self.num_classes is not None and y is None:
            return self._over_labels(lambda xx, yy: self.elbo(xx, yy, rng=rng), x)
        rec, kl = self.elbo_terms(x, self._labels(y), rng=rng)
        return rec - kl

    def log_weights(self, x, k, y=None, *, rng):
        """log w_i = log p(x | z_i) + log p(z_i) - log q(z_i | x), z_i ~ q: (k, B), differentiable."""
        x = as_tensor(x)
        self.likelihood.check(x.data)
        mu, logvar = self.encode(x, y)
        return self._log_weights(x, mu, logvar, k, y, rng)

    def _log_weights(self, x, mu, logvar, k, y, rng):
        z = self.reparameterize(mu, logvar, rng, k=k)                  # (k, B, latent)
        log_px_z = self.likelihood.log_prob(x, self.decode(z, y))      # (k, B)
        log_qz = Normal.from_logvar(mu, logvar).log_prob(z).sum(-1)     # (k, B)
        return log_px_z + log_standard_normal(z) - log_qz

    def iwae(self, x, k, y=None, chunk=None, *, rng):
        """The IWAE bound L_k per example, nats (V7): an estimate of log p(x) from below that
        tightens as k grows. Samples go ``chunk`` at a time (default: ~10,000 decoder rows),
        so k = 5000 fits in memory. Not differentiated (training uses ``log_weights``)."""
        if self.num_classes is not None and y is None:
            return self._over_labels(lambda xx, yy: self.iwae(xx, k, yy, chunk, rng=rng), x)
        x = as_tensor(x)
        self.likelihood.check(x.data)
        with no_grad():
            mu, logvar = self.encode(x, y)
            b = x.shape[0]
            chunk = int(chunk or max(1, 10_000 // max(b, 1)))
            lw = lambda xb, n: self._log_weights(x, mu, logvar, n, y, rng).data  # noqa: E731
            return Tensor(iwae_estimator(lw, x.data, k, chunk=chunk, batch_size=b))

    def _over_labels(self, fn, x):
        """log (1/C) sum_y exp fn(x, y): a bound of a class-conditional model on log p(x)."""
        x = as_tensor(x)
        per_class = [fn(x, xp.full((x.shape[0],), c, dtype=xp.int64))
                     for c in range(self.num_classes)]                 # C x (B,)
        return F.logsumexp(F.stack(per_class, 0), 0) - math.log(self.num_classes)

    # ------------------------------------------------------------------ training
    def loss(self, batch, rng):
        """The mean over the batch of -ELBO with beta on the KL (V3, V6), or of -L_k (V7)."""
        y = self._labels(batch.y) if self.num_classes is not None else None
        if self.objective == "iwae":
            lw = self.log_weights(batch.x, self.k, y, rng=rng)            # (k, B)
            bound = F.logsumexp(lw, 0) - math.log(self.k)                  # L_k, (B,)
            self.last_stats = {"iwae": float(bound.data.mean())}
            return -bound.mean()
        rec, kl = self.elbo_terms(batch.x, y, rng=rng)
        self.last_stats = {"rec": float(rec.data.mean()), "kl": float(kl.data.mean())}
        return -(rec - self.beta * kl).mean()

    # ------------------------------------------------------------------ generation
    def _output(self, out, rng):
        if self.sample_mean:
            return self.likelihood.mean(out).data
        return self.likelihood.sample(out, rng).data

    def sample(self, n, cond=None, *, rng):
        """n images: z ~ N(0, I), then the decoder's mean (or a draw); labels ``cond`` (n,)
        for a conditional model (None: drawn uniformly)."""
        dtype = next(self.parameters()).dtype
        with no_grad():
            z = Tensor(rng.standard_normal((int(n), self.latent_dim), dtype=dtype))
            y = None
            if self.num_classes is not None:
                y = (rng.integers(0, self.num_classes, int(n)) if cond is None
                     else xp.asarray(cond).astype(xp.int64).reshape(-1))
            return self._output(self.decode(z, y), rng)

    def decode_latents(self, z, cond=None):
        """The decoder's mean at given latents z (n, latent): latent traversals and grids."""
        with no_grad():
            return self.likelihood.mean(self.decode(as_tensor(z), cond)).data

    def reconstruct(self, x, y=None):
        """The decoder's mean at the posterior mean: x -> E[x | z = mu(x)]."""
        with no_grad():
            mu, _ = self.encode(as_tensor(x), y)
            return self.likelihood.mean(self.decode(mu, y)).data


@register("beta-vae")
class BetaVAE(VAE):
    """beta-VAE (Higgins et al. 2017): the VAE with beta (default 4) on the KL (V6). beta > 1
    buys a more factorised, lower-rate code with blurrier reconstructions; the model is then
    no longer trained on a bound of log p(x), though ``elbo`` still reports the true ELBO."""

    def __init__(self, data_shape, *, seed=0, beta: float = 4.0, latent_dim: int = 32,
                 hidden="512,256", arch: str = "mlp", activation: str = "relu",
                 likelihood: str = "bernoulli", channels="32,64", sample_mean: bool = True):
        Module.__init__(self)
        self._build(data_shape, seed, None, latent_dim, hidden, arch, activation, likelihood,
                    beta, "elbo", 1, channels, sample_mean)


@register("cvae")
class ConditionalVAE(VAE):
    """Conditional VAE (Sohn et al. 2015): q(z | x, y), p(x | z, y), p(z) = N(0, I).
    ``sample(n, cond=labels)`` draws images of the given classes."""

    eval_iwae_k = 100  # the unconditional bound sums over all classes: C times the work

    def __init__(self, data_shape, *, seed=0, num_classes=None, latent_dim: int = 32,
                 hidden="512,256", arch: str = "mlp", activation: str = "relu",
                 likelihood: str = "bernoulli", beta: float = 1.0, channels="32,64",
                 sample_mean: bool = True):
        Module.__init__(self)
        if num_classes is None or int(num_classes) < 2:
            raise ValueError(f"cvae needs labelled data (num_classes >= 2), got num_classes={num_classes}")
        self._build(data_shape, seed, num_classes, latent_dim, hidden, arch, activation,
                    likelihood, beta, "elbo", 1, channels, sample_mean)


@register("iwae")
class IWAE(VAE):
    """The importance-weighted autoencoder (Burda et al. 2016): the VAE's networks trained on
    L_k (V7), k samples per example (default 5). Costs about k times a VAE step."""

    def __init__(self, data_shape, *, seed=0, k: int = 5, latent_dim: int = 32,
                 hidden="512,256", arch: str = "mlp", activation: str = "relu",
                 likelihood: str = "bernoulli", channels="32,64", sample_mean: bool = True):
        Module.__init__(self)
        self._build(data_shape, seed, None, latent_dim, hidden, arch, activation, likelihood,
                    1.0, "iwae", k, channels, sample_mean)
