"""VQ-VAE (van den Oord, Vinyals & Kavukcuoglu 2017): a discrete code grid, and a PixelCNN
prior over it so that the model can sample.

    z_e = E(x)                                  (B, D, h, w): one D-vector per grid cell
    k   = argmin_j ||z_e - e_j||^2              nearest of K codebook vectors e (K, D)   (Q1)
    z_q = e_k                                   (B, D, h, w)
    x_hat = Dec(z_q)

argmin has no gradient, so the decoder's input is z_q in the forward pass and z_e in the
backward one, the straight-through estimator: dL/dz_e := dL/dz_q (refgen.functional.
straight_through). The codebook and the encoder are then pulled together by two terms:

    loss = -log p(x | z_q) + ||sg[z_e] - e_k||^2 + beta ||z_e - sg[e_k]||^2               (Q2)

(sg = stop-gradient): the codebook term moves the chosen codes toward the encoder outputs,
the commitment term (beta = 0.25) keeps the encoder near its codes. With ``ema=True`` the
codebook term is replaced by exponential moving averages (the paper's appendix):

    N_j <- g N_j + (1 - g) n_j,   m_j <- g m_j + (1 - g) sum_{i: k_i = j} z_e,i,
    e_j = m_j / N_j                                                                     (Q3)

(n_j the number of cells assigned to code j in the batch; N_j Laplace-smoothed so that an
unused code does not divide by zero). Squared errors are summed over D and the grid, and
the reconstruction over pixels, so every term is per image.

Prior: the codes k (B, h, w) are a small image of K categories; a PixelCNN with ``levels=K``
(refgen.models.autoregressive.pixelcnn) models p(k) = prod_i p(k_i | k_<i). Code j is handed
to it as the value 2 j / (K - 1) - 1 in [-1, 1], its convention for L-level pixels, and with
``prior_one_hot`` (the default) it reads that as a one-hot vector of K entries: codes are
categories, and a network reading them as intensities would treat code 3 as nearer to 4
than to 20. It predicts a K-way softmax per cell. Its loss, -log p(k) of the (detached) codes of the batch, is added
to (Q2); no gradient crosses between the two since k is discrete, so this is the usual
two-stage training run as one loop: the prior keeps chasing the codes while they settle.
Sampling: k ~ p(k) by the PixelCNN, then x = Dec(e_k).

Codebook usage is measured by the perplexity exp(H(p)) of the code frequencies p: 1 when
one code is used, K when all are used equally.
"""
from __future__ import annotations

import refgen.functional as F
from refgen.autograd import Tensor, as_tensor, no_grad
from refgen.backend import xp
from refgen.models import register
from refgen.models.autoregressive.pixelcnn import PixelCNN
from refgen.models.base import DataSpec
from refgen.models.vae.likelihoods import make_likelihood
from refgen.models.vae.nets import ConvHead, ConvTrunk, conv_shapes
from refgen.models.vae.nets import activation as _activation
from refgen.nn import Conv2d, Module, Parameter, init, parse_hidden

__all__ = ["VQVAE", "ema_codebook_update", "nearest_code", "perplexity"]


def nearest_code(z, codebook):
    """Index of the nearest codebook row for each row of z: (N, D), (K, D) -> (N,)  (Q1).

    ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; ||z||^2 is the same for every code and dropped.
    """
    z = z.data if isinstance(z, Tensor) else z
    e = codebook.data if isinstance(codebook, Tensor) else codebook
    d = (e * e).sum(1) - 2.0 * (z @ e.T)                              # (N, K), up to ||z||^2
    return xp.argmin(d, axis=1)


def perplexity(indices, num_codes: int) -> float:
    """exp(entropy) of the code frequencies in ``indices`` (any shape): 1 .. num_codes."""
    idx = xp.asarray(indices).reshape(-1)
    p = xp.bincount(idx, minlength=num_codes) / max(idx.size, 1)
    p = p[p > 0]
    return float(xp.exp(-(p * xp.log(p)).sum()))


def ema_codebook_update(ema_count, ema_sum, flat, k, decay, eps=1e-5):
    """(Q3) on arrays: counts N (K,), sums m (K, D), encoder outputs flat (N, D) assigned to
    codes k (N,) -> the new (N, m, codebook e = m / N), N Laplace-smoothed by eps."""
    g, num_codes = decay, ema_count.shape[0]
    onehot = (k[:, None] == xp.arange(num_codes)).astype(flat.dtype)      # (N, K)
    ema_count = g * ema_count + (1 - g) * onehot.sum(0)
    ema_sum = g * ema_sum + (1 - g) * (onehot.T @ flat)
    n = ema_count.sum()
    count = (ema_count + eps) / (n + num_codes * eps) * n                  # Laplace smoothing
    return ema_count, ema_sum, (ema_sum / count[:, None]).astype(ema_sum.dtype)


@register("vqvae")
class VQVAE(Module):
    """Conv encoder to a (h, w) = (H/4, W/4) grid of code_dim-vectors, a codebook of
    num_codes vectors, a transposed-conv decoder, and a PixelCNN prior over the code grid.

    commitment: beta of (Q2). ema: update the codebook by (Q3) instead of its loss term.
    likelihood: 'bernoulli' (data in [0, 1]) or 'gaussian' (the squared error, for [-1, 1]).
    prior_channels / prior_blocks: the PixelCNN's width and depth. prior_one_hot: the prior
    reads each code as a one-hot vector (True) or as the number 2 j / (K - 1) - 1 (False).
    train_autoencoder=False trains the prior alone (the second stage of the usual two-stage
    recipe). prior=False leaves the prior out (no sampling): the VQ-regularised autoencoder of
    latent diffusion (refgen.models.vae.regularized).
    """

    data_spec = DataSpec(kinds=("binary", "continuous"), ndims=(3,))
    default_train = dict(steps=5000, batch_size=64, lr=1e-3)
    eval_samples = 2000

    def __init__(self, data_shape, *, seed=0, num_codes: int = 64, code_dim: int = 16,
                 channels="32,64", activation: str = "relu", commitment: float = 0.25,
                 ema: bool = False, ema_decay: float = 0.99, likelihood: str = "bernoulli",
                 prior_channels: int = 64, prior_blocks: int = 4, prior_one_hot: bool = True,
                 train_autoencoder: bool = True, prior: bool = True):
        super().__init__()
        self.data_shape = tuple(int(s) for s in data_shape)
        if len(self.data_shape) != 3:
            raise ValueError(f"vqvae models images (C, H, W); got {self.data_shape}")
        if likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"vqvae likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
        self.num_codes, self.code_dim = int(num_codes), int(code_dim)
        if self.num_codes < 2:
            raise ValueError(f"num_codes must be at least 2, got {num_codes}")
        self.commitment, self.ema, self.ema_decay = float(commitment), bool(ema), float(ema_decay)
        self.train_autoencoder = bool(train_autoencoder)
        channels = parse_hidden(channels)
        act = _activation(activation)
        g = init.get_rng(int(seed))
        shapes = conv_shapes(self.data_shape[1:])
        self.grid = shapes[-1]                                          # (h, w)
        self.encoder = ConvTrunk(self.data_shape[0], channels, act, g)
        self.to_code = Conv2d(channels[1], self.code_dim, 1, rng=g)      # (B, D, h, w)
        self.from_code = Conv2d(self.code_dim, channels[1], 1, rng=g)
        self.decoder = ConvHead(channels, self.data_shape[0], shapes, act, g)
        self.act = act
        self.likelihood = make_likelihood(likelihood, 3)
        if likelihood == "gaussian":  # a fixed unit variance: the loss is the squared error / 2
            self.likelihood.log_sigma.requires_grad = False
        book = init.uniform_(Parameter(xp.zeros((self.num_codes, self.code_dim), dtype=xp.float32)),
                             -1.0 / self.num_codes, 1.0 / self.num_codes, rng=g)
        if self.ema:
            self.register_buffer("codebook", book.data)
            self.register_buffer("ema_count", xp.ones((self.num_codes,), dtype=xp.float32))
            self.register_buffer("ema_sum", book.data.copy())
        else:
            self.codebook = book
        if not prior and not self.train_autoencoder:
            raise ValueError("vqvae with prior=false has nothing to train with train_autoencoder=false")
        self.prior = (PixelCNN((1,) + self.grid, seed=int(seed) + 1, channels=prior_channels,
                               blocks=prior_blocks, kernel=3, head_channels=prior_channels,
                               levels=self.num_codes, one_hot=bool(prior_one_hot))
                      if prior else None)          # None: the autoencoder alone (latent diffusion's VQ-reg)

    def extra_repr(self):
        return (f"data_shape={self.data_shape}, num_codes={self.num_codes}, "
                f"code_dim={self.code_dim}, grid={self.grid}, ema={self.ema}")

    # ------------------------------------------------------------------ the bottleneck
    def encode(self, x):
        """x (B, C, H, W) -> z_e (B, D, h, w)."""
        return self.to_code(self.encoder(as_tensor(x)))

    def quantize(self, z_e):
        """Nearest codes (Q1): z_e (B, D, h, w) -> k (B, h, w) integer indices."""
        b, d, h, w = z_e.shape
        flat = xp.moveaxis(z_e.data, 1, -1).reshape(-1, d)              # (B h w, D)
        return nearest_code(flat, self.codebook).reshape(b, h, w)

    def lookup(self, k):
        """k (B, h, w) -> z_q = e_k (B, D, h, w); differentiable in the codebook."""
        return F.permute(F.embedding(k, self.codebook), (0, 3, 1, 2))

    def decode(self, z_q):
        """z_q (B, D, h, w) -> the decoder's output (B, C, H, W) (logits or means)."""
        return self.decoder(self.act(self.from_code(z_q)))

    def codes(self, x):
        """The code grid of x: (B, h, w) integer indices."""
        with no_grad():
            return self.quantize(self.encode(x))

    def reconstruct(self, x):
        with no_grad():
            return self.likelihood.mean(self.decode(self.lookup(self.codes(x)))).data

    # ------------------------------------------------------------------ the prior
    def _code_image(self, k):
        """k (B, h, w) -> the PixelCNN's input (B, 1, h, w): code j as 2 j / (K - 1) - 1."""
        dt = next(self.prior.parameters()).dtype
        return (k[:, None] * (2.0 / (self.num_codes - 1)) - 1.0).astype(dt)

    def prior_log_prob(self, k):
        """log p(k) of code grids (B, h, w) under the PixelCNN prior, nats (B,)."""
        if self.prior is None:
            raise ValueError("this vqvae was built with prior=false: it has no p(k)")
        return self.prior.log_prob(self._code_image(xp.asarray(k)))

    # ------------------------------------------------------------------ training
    def _ema_update(self, flat, k):
        """(Q3): moving averages of the code counts and of the vectors assigned to each code."""
        self.ema_count, self.ema_sum, self.codebook = ema_codebook_update(
            self.ema_count, self.ema_sum, flat, k, self.ema_decay)

    def loss(self, batch, rng):
        """(Q2) (with (Q3) for ema=True) plus the prior's NLL of the batch's codes."""
        x = as_tensor(batch.x)
        if not self.train_autoencoder:  # stage 2: the autoencoder is fixed, only p(k) learns
            k = self.codes(x)
            nll = -self.prior_log_prob(k).mean()
            self.last_stats = {"prior_nll": float(nll.data), "perplexity": perplexity(k, self.num_codes)}
            return nll
        if self.likelihood.name == "bernoulli":
            self.likelihood.check(x.data)
        z_e = self.encode(x)                                               # (B, D, h, w)
        k = self.quantize(z_e)                                             # (B, h, w)
        if self.ema and self.training:
            self._ema_update(xp.moveaxis(z_e.data, 1, -1).reshape(-1, self.code_dim), k.reshape(-1))
        z_q = self.lookup(k)                                               # e_k, (B, D, h, w)
        x_out = self.decode(F.straight_through(z_q, z_e))                  # forward z_q, grad -> z_e
        rec = -self.likelihood.log_prob(x, x_out).mean()                   # -log p(x | z_q)
        per_image = (1, 2, 3)
        commit = ((z_e - z_q.detach()) ** 2).sum(per_image).mean()        # ||z_e - sg[e]||^2
        total = rec + self.commitment * commit
        stats = {"rec": float(rec.data), "commit": float(commit.data)}
        if not self.ema:
            book = ((z_e.detach() - z_q) ** 2).sum(per_image).mean()      # ||sg[z_e] - e||^2
            total = total + book
        if self.prior is None:
            self.last_stats = dict(stats, perplexity=perplexity(k, self.num_codes))
            return total
        prior_nll = -self.prior_log_prob(k).mean()                         # codes are data here
        stats.update(prior_nll=float(prior_nll.data), perplexity=perplexity(k, self.num_codes))
        self.last_stats = stats
        return total + prior_nll

    # ------------------------------------------------------------------ generation
    def sample(self, n, cond=None, *, rng, sampler=None):
        """k ~ p(k) by the PixelCNN (its ``sampler``: 'cached', the default, or 'full'), then
        the decoder's mean at e_k."""
        with no_grad():
            v = self.prior.sample(int(n), rng=rng, sampler=sampler)                 # (n, 1, h, w)
            k = F.to_levels(v[:, 0], self.num_codes)                                # (n, h, w) code ids
            return self.likelihood.mean(self.decode(self.lookup(k))).data
