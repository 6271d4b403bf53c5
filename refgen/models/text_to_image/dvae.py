"""The discrete VAE of DALL-E (Ramesh et al. 2021, "Zero-Shot Text-to-Image Generation",
sec. 2.1): an image becomes a small grid of tokens, each one of K codebook entries.

    logits l = E(x)                      (B, K, h, w): a categorical q(z_ij | x) per grid cell
    y = softmax((l + g) / tau)           g ~ Gumbel(0, 1): the Gumbel-softmax relaxation of a
                                         one-hot draw z ~ Cat(softmax(l))  (Jang et al. 2017;
                                         Maddison et al. 2017)
    x_hat = D(y e)                       the relaxed one-hots pick a mix of codebook vectors e (K, D)

    loss = E_q[-log p(x | y)] + beta sum_ij KL(q(z_ij | x) || U(K))                  (ELBO)
    KL(q || U(K)) = sum_k q_k log(q_k K) = log K - H(q)                     per grid cell

The prior is uniform over the K codes (the transformer of DALL-E learns the real prior
later); tau is annealed from ``tau_start`` to ``tau_end`` over ``anneal_steps`` updates
(exponentially, tau = tau_start (tau_end / tau_start)^(step / anneal_steps)), so the
relaxed one-hots approach true one-hots as training goes on. ``hard=True`` feeds the
decoder the one-hot of the argmax with the soft sample's gradient (straight-through).

The likelihood is Bernoulli on the ink (x + 1) / 2 in [0, 1] (MNIST's stand-in for the
paper's logit-Laplace), so -log p(x | y) is a binary cross-entropy in nats per image (a
proper likelihood on binary data, a cross-entropy on grey levels).

Tokens for the transformer: z_ij = argmax_k l_ijk (as in the paper); ``decode_tokens`` maps a
token grid back to an image by the decoder at the one-hots.
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen.autograd import as_tensor, no_grad
from refgen.backend import xp
from refgen.models import register
from refgen.models.base import DataSpec
from refgen.nn import Conv2d, ConvTranspose2d, Module, init

__all__ = ["DVAE", "kl_uniform", "temperature", "codebook_perplexity"]


def kl_uniform(logits, dim: int = 1):
    """KL(softmax(logits) || U(K)) = sum_k q_k log q_k + log K, per slice along ``dim``."""
    # Ramesh et al. 2021, uniform prior: KL(q || U(K)) = log K - H(q)
    logq = F.log_softmax(logits, dim)
    k = logits.shape[dim]
    return F.sum(F.exp(logq) * logq, dim=dim) + math.log(k)         # = log K - H(q)


def temperature(step, tau_start: float, tau_end: float, anneal_steps: int) -> float:
    """tau_start (tau_end / tau_start)^(min(step, anneal_steps) / anneal_steps)."""
    # Ramesh et al. 2021, tau annealing: geometric from tau_start to tau_end
    frac = min(max(float(step), 0.0), float(anneal_steps)) / max(int(anneal_steps), 1)
    return float(tau_start * (tau_end / tau_start) ** frac)


def codebook_perplexity(tokens, num_codes: int) -> float:
    """exp(H(p)) of the token frequencies p: 1 when one code is used, K when all equally."""
    idx = xp.asarray(tokens).reshape(-1)
    p = xp.bincount(idx, minlength=num_codes) / max(idx.size, 1)
    p = p[p > 0]
    return float(xp.exp(-(p * xp.log(p)).sum()))


@register("dvae")
class DVAE(Module):
    """Conv encoder (two 4x4 stride-2 convolutions: 28 -> 14 -> 7) to K logits per cell of
    an (H/4, W/4) grid; a codebook (K, code_dim) as a 1x1 convolution; the mirrored
    transposed-conv decoder to Bernoulli logits (B, C, H, W).

    num_codes: K. beta: weight of the KL to the uniform prior. tau_start/tau_end/anneal_steps:
    the Gumbel-softmax temperature schedule. hard: straight-through one-hots.
    """

    data_spec = DataSpec(kinds=("continuous",), ndims=(3,), image_range=(-1.0, 1.0))
    default_train = dict(steps=3000, batch_size=64, lr=1e-3)

    def __init__(self, data_shape=(1, 28, 28), *, seed: int = 0, num_codes: int = 64,
                 code_dim: int = 32, channels: int = 64, beta: float = 0.25,
                 tau_start: float = 1.0, tau_end: float = 1.0 / 16, anneal_steps: int = 2000,
                 hard: bool = False):
        super().__init__()
        self.data_shape = tuple(int(s) for s in data_shape)
        if len(self.data_shape) != 3 or self.data_shape[1] % 4 or self.data_shape[2] % 4:
            raise ValueError(f"dvae takes images (C, H, W) with H and W multiples of 4, got {self.data_shape}")
        if int(num_codes) < 2:
            raise ValueError(f"num_codes must be at least 2, got {num_codes}")
        if not 0 < float(tau_end) <= float(tau_start):
            raise ValueError(f"need 0 < tau_end <= tau_start, got {tau_end}, {tau_start}")
        self.num_codes, self.beta, self.hard = int(num_codes), float(beta), bool(hard)
        self.tau_start, self.tau_end, self.anneal_steps = float(tau_start), float(tau_end), int(anneal_steps)
        c, h, w = self.data_shape
        self.grid = (h // 4, w // 4)
        g = init.get_rng(int(seed))
        self.enc1 = Conv2d(c, channels, 4, stride=2, padding=1, rng=g)          # (B, ch, H/2, W/2)
        self.enc2 = Conv2d(channels, channels, 4, stride=2, padding=1, rng=g)   # (B, ch, H/4, W/4)
        self.to_logits = Conv2d(channels, self.num_codes, 1, rng=g)             # (B, K, h, w)
        self.codebook = Conv2d(self.num_codes, code_dim, 1, bias=False, rng=g)   # y e: (B, D, h, w)
        self.dec1 = ConvTranspose2d(code_dim, channels, 4, stride=2, padding=1, rng=g)
        self.dec2 = ConvTranspose2d(channels, c, 4, stride=2, padding=1, rng=g)  # (B, C, H, W)
        self.register_buffer("step", xp.zeros((), dtype=xp.int64))

    def extra_repr(self):
        return f"data_shape={self.data_shape}, num_codes={self.num_codes}, grid={self.grid}, beta={self.beta}"

    # ------------------------------------------------------------------ the pieces
    def encode(self, x):
        """x (B, C, H, W) in [-1, 1] -> logits l (B, K, h, w)."""
        # Ramesh et al. 2021, sec. 2.1: the logits of q(z | x), one categorical per cell
        return self.to_logits(F.relu(self.enc2(F.relu(self.enc1(as_tensor(x))))))

    def decode(self, y):
        """(Relaxed) one-hots y (B, K, h, w) -> Bernoulli logits of the ink (B, C, H, W)."""
        return self.dec2(F.relu(self.dec1(self.codebook(y))))

    def tau(self) -> float:
        return temperature(int(self.step), self.tau_start, self.tau_end, self.anneal_steps)

    def tokens(self, x):
        """Image tokens z = argmax_k l (B, h, w) int64."""
        # Ramesh et al. 2021, sec. 2.1: z = argmax_k l
        with no_grad():
            return xp.argmax(self.encode(x).data, axis=1)

    def decode_tokens(self, z):
        """Token grids z (B, h, w) -> images (B, C, H, W) in [-1, 1]: 2 sigmoid(D(one_hot z)) - 1."""
        # Ramesh et al. 2021, sec. 2.1: the decoder at one-hot codes
        with no_grad():
            y = F.permute(F.one_hot(xp.asarray(z), self.num_codes), (0, 3, 1, 2))  # (B, K, h, w)
            return 2.0 * F.sigmoid(self.decode(y)).data - 1.0

    def reconstruct(self, x):
        return self.decode_tokens(self.tokens(x))

    # ------------------------------------------------------------------ the objective
    def terms(self, x, rng, tau: float):
        """Per image (B,): reconstruction -log p(x | y) (nats) and sum_ij KL(q_ij || U(K))."""
        # Ramesh et al. 2021, ELBO: its two terms per image
        x = as_tensor(x)
        logits = self.encode(x)                                                    # (B, K, h, w)
        y = F.gumbel_softmax(logits, tau=tau, hard=self.hard, dim=1, rng=rng)     # (B, K, h, w)
        ink = (x.data + 1.0) * 0.5                                                 # targets in [0, 1]
        rec = F.binary_cross_entropy_with_logits(self.decode(y), ink, reduction="none").sum((1, 2, 3))
        kl = kl_uniform(logits, dim=1).sum((1, 2))                                 # (B,)
        return rec, kl, logits

    def loss(self, batch, rng):
        # Ramesh et al. 2021, ELBO: reconstruction + beta KL
        tau = self.tau()
        rec, kl, logits = self.terms(batch.x, rng, tau)
        if self.training:
            self.step = self.step + 1
        self.last_stats = {"rec_nats": float(rec.data.mean()), "kl_nats": float(kl.data.mean()),
                           "tau": tau, "perplexity": codebook_perplexity(xp.argmax(logits.data, 1),
                                                                         self.num_codes)}
        return (rec + self.beta * kl).mean()

    def sample(self, n, cond=None, *, rng):
        """Images from tokens drawn from the uniform prior (B, C, H, W): what the dVAE alone
        generates; DALL-E's transformer replaces this prior."""
        z = xp.asarray(rng.integers(self.num_codes, size=(int(n),) + self.grid))
        return self.decode_tokens(z)
