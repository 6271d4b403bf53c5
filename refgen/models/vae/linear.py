"""The linear-Gaussian VAE: probabilistic PCA (Tipping & Bishop 1999) fitted as a VAE.

    p(z) = N(0, I_d),   p(x | z) = N(W z + b, sigma^2 I_D),   q(z | x) = N(V x + c, diag(s^2))

Everything is Gaussian, so every term the VAE can only estimate is exact here:

    p(x)      = N(x; b, C),   C = W W^T + sigma^2 I                                    (L1)
    p(z | x)  = N(M^-1 W^T (x - b), sigma^2 M^-1),   M = W^T W + sigma^2 I               (L2)
    E_q[log p(x | z)] = -(||x - W m - b||^2 + sum_j s_j^2 ||W_:j||^2) / (2 sigma^2)
                        - D log sigma - D log(2 pi) / 2,   m = V x + c                  (L3)

The posterior covariance sigma^2 M^-1 does not depend on x, and it is diagonal when the
columns of W are orthogonal, as they are at the maximum-likelihood solution

    W = U_d (Lambda_d - sigma^2 I)^{1/2},  sigma^2 = mean of the D - d smallest eigenvalues
                                                    of the data covariance              (L4)

(U_d, Lambda_d its top-d eigenvectors and eigenvalues). So the mean-field encoder can equal
the true posterior, KL(q || p(z | x)) = 0, and the ELBO equals log p(x) exactly (V1): the
tests check both this and the identity log p(x) - KL(q || p(z | x)) = ELBO for any q.
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen.autograd import as_tensor
from refgen.backend import xp
from refgen.models import register
from refgen.models.base import DataSpec
from refgen.models.vae.likelihoods import GaussianLikelihood
from refgen.models.vae.nets import LinearEncoder
from refgen.models.vae.vae import VAE
from refgen.nn import Linear, Module, init

__all__ = ["LinearGaussianVAE", "ppca_mle"]

_LOG_2PI = math.log(2.0 * math.pi)


def ppca_mle(x, latent_dim):
    """Maximum-likelihood PPCA (L4) of rows x (N, D): (W (D, d), b (D,), sigma^2), float64."""
    x = xp.asarray(x, dtype=xp.float64)
    b = x.mean(0)
    cov = (x - b).T @ (x - b) / x.shape[0]
    evals, evecs = xp.linalg.eigh(cov)                  # ascending
    evals, evecs = evals[::-1], evecs[:, ::-1]
    sigma2 = float(evals[latent_dim:].mean())
    w = evecs[:, :latent_dim] * xp.sqrt(xp.maximum(evals[:latent_dim] - sigma2, 0.0))
    return w, b, sigma2


@register("linear-vae")
class LinearGaussianVAE(VAE):
    """The VAE with a linear encoder mean, an input-independent encoder variance and a linear
    Gaussian decoder (probabilistic PCA). It is the VAE class itself (same ``elbo``,
    ``iwae``, ``loss``) plus the exact quantities (L1)-(L3).

    expectation: 'sample' trains on the reparameterised one-sample ELBO like any VAE;
    'exact' on the closed-form ELBO (L3), which has the same gradient in expectation.
    """

    data_spec = DataSpec(kinds=("continuous",), ndims=(1,))
    default_train = dict(steps=3000, batch_size=200, lr=1e-2)

    def __init__(self, data_shape, *, seed=0, latent_dim: int = 2, expectation: str = "sample",
                 init_log_sigma: float = 0.0):
        Module.__init__(self)
        if len(data_shape) != 1:
            raise ValueError(f"linear-vae models vectors; got examples of shape {tuple(data_shape)}")
        if expectation not in ("sample", "exact"):
            raise ValueError(f"expectation must be 'sample' or 'exact', got {expectation!r}")
        self.data_shape, self.latent_dim = (int(data_shape[0]),), int(latent_dim)
        self.beta, self.k, self.objective, self.sample_mean = 1.0, 1, "elbo", True
        self.num_classes, self.expectation = None, expectation
        g = init.get_rng(int(seed))
        self.encoder = LinearEncoder(self.data_shape[0], self.latent_dim, rng=g)
        self.decoder = Linear(self.latent_dim, self.data_shape[0], rng=g)   # W z + b
        self.likelihood = GaussianLikelihood(1, log_sigma=init_log_sigma)

    # ------------------------------------------------------------------ parameters by name
    @property
    def W(self):
        return self.decoder.weight                         # (D, d)

    @property
    def b(self):
        return self.decoder.bias                           # (D,)

    def decode(self, z, y=None):
        return self.decoder(z)                             # W z + b, (..., D)

    def _sigma2(self):
        return F.exp(2.0 * self.likelihood.log_sigma)

    def set_ppca(self, W, b, sigma2, posterior: bool = True):
        """Load a PPCA decoder (W, b, sigma^2); with ``posterior`` also set the encoder to the
        exact posterior (L2) (exact only when W^T W is diagonal; its diagonal is used)."""
        dt = self.W.dtype
        W, b = xp.asarray(W, dtype=xp.float64), xp.asarray(b, dtype=xp.float64)
        self.decoder.weight.data = W.astype(dt)
        self.decoder.bias.data = b.astype(dt)
        self.likelihood.log_sigma.data = xp.asarray(0.5 * math.log(sigma2), dtype=dt)
        if posterior:
            M = W.T @ W + sigma2 * xp.eye(W.shape[1])
            V = xp.linalg.solve(M, W.T)                                       # M^-1 W^T
            self.encoder.mean.weight.data = V.astype(dt)
            self.encoder.mean.bias.data = (-V @ b).astype(dt)
            self.encoder.logvar.data = xp.log(sigma2 * xp.diag(xp.linalg.inv(M))).astype(dt)
        return self

    # ------------------------------------------------------------------ exact quantities
    def marginal_covariance(self):
        """C = W W^T + sigma^2 I (L1), a Tensor (D, D)."""
        eye = xp.eye(self.data_shape[0], dtype=self.W.dtype)
        return F.matmul(self.W, F.transpose(self.W, 0, 1)) + self._sigma2() * eye

    def log_prob(self, x):
        """Exact log p(x) = log N(x; b, W W^T + sigma^2 I) (L1), nats per example (B,)."""
        x = as_tensor(x)
        C = self.marginal_covariance()
        d = x - self.b                                                       # (B, D)
        maha = (F.matmul(d, F.inv(C)) * d).sum(-1)                           # d^T C^-1 d
        return -0.5 * (maha + F.slogdet(C)[1] + self.data_shape[0] * _LOG_2PI)

    def posterior(self, x):
        """The exact p(z | x) (L2): mean (B, d) and covariance (d, d), as Tensors."""
        x = as_tensor(x)
        s2 = self._sigma2()
        M = F.matmul(F.transpose(self.W, 0, 1), self.W) + s2 * xp.eye(self.latent_dim, dtype=self.W.dtype)
        Minv = F.inv(M)
        mean = F.matmul(F.matmul(x - self.b, self.W), Minv)                   # (x - b)^T W M^-1
        return mean, s2 * Minv

    def expected_log_likelihood(self, x):
        """E_q[log p(x | z)] in closed form (L3), (B,)."""
        x = as_tensor(x)
        mu, logvar = self.encode(x)
        r = x - self.decode(mu)                                              # x - W m - b
        spread = (F.exp(logvar) * (self.W * self.W).sum(0)).sum(-1)         # sum_j s_j^2 ||W_:j||^2
        D = self.data_shape[0]
        return (-0.5 * ((r * r).sum(-1) + spread) / self._sigma2()
                - D * self.likelihood.log_sigma - 0.5 * D * _LOG_2PI)

    def elbo_exact(self, x):
        """The ELBO with no Monte Carlo at all: (L3) minus the closed-form KL (V5)."""
        mu, logvar = self.encode(as_tensor(x))
        return self.expected_log_likelihood(x) - self.kl(mu, logvar)

    def loss(self, batch, rng):
        if self.expectation == "exact":
            return -self.elbo_exact(batch.x).mean()
        return super().loss(batch, rng)

    def sample(self, n, cond=None, *, rng):
        """Draws of x = W z + b + sigma eps (the model's samples, not the decoder's mean)."""
        dt = self.W.dtype
        z = rng.standard_normal((int(n), self.latent_dim), dtype=dt)
        eps = rng.standard_normal((int(n), self.data_shape[0]), dtype=dt)
        sigma = xp.exp(self.likelihood.log_sigma.data)
        return z @ self.W.data.T + self.b.data + sigma * eps
