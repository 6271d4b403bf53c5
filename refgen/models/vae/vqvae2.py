"""VQ-VAE-2 (Razavi, van den Oord & Vinyals 2019, "Generating Diverse High-Fidelity Images with
VQ-VAE-2"): two levels of codes, a coarse top grid for global structure and a finer bottom
grid for local detail, each with an autoregressive prior; the bottom prior is conditioned on
the top codes.

The encoder (the paper's Algorithm 1, Fig. 2a), for a 28 x 28 image:

    h_b  = E_b(x)                                   (B, c, 7, 7)    two 4x4 stride-2 convs
    z_et = E_t(h_b)                                 (B, D_t, 4, 4)  3x3 stride-2 conv, 1x1
    k_t  = argmin_j ||z_et - e^t_j||^2,  e_t = e^t_{k_t}                        (Q1, top)
    z_eb = W [h_b ; D_t(e_t)]                       (B, D, 7, 7)    top decoded, concatenated
    k_b  = argmin_j ||z_eb - e^b_j||^2,  e_b = e^b_{k_b}                     (Q1, bottom)
    x_hat = Dec([e_b ; U e_t])                      the decoder reads both levels

with D_t and U transposed 3x3 stride-2 convolutions from the top grid to the bottom one.
Each level has VQ-VAE's straight-through estimator (its decoder-side input is z_q forward and
z_e backward, refgen.functional.straight_through) and its own codebook and commitment terms:

    loss = -log p(x | e_t, e_b) + sum_{l in {t, b}} ||sg[z_el] - e_l||^2 + beta ||z_el - sg[e_l]||^2

(van den Oord et al. 2017's (Q2) once per level; Razavi et al. 2019, eq. 2). With ``ema=True``
(the paper's choice, the default here) the codebook term of each level is replaced by the
moving averages of (Q3) (refgen.models.vae.vqvae.ema_codebook_update), and the codebooks are
buffers that take no gradient.

Why 7 x 7 and 4 x 4 for MNIST: the one-level ``vqvae`` codes a 28 x 28 digit on a 7 x 7 grid of
32 codes, 49 log2 32 = 245 bits. A 7 x 7 bottom grid of 16 codes and a 4 x 4 top grid of 8
codes hold 49 * 4 + 16 * 3 = 244 bits, so the two models compare at (almost) equal bits; a
14 x 14 bottom grid would hold four times as many cells, and its prior would sample 196
positions, not 49, on a CPU. The grid sizes follow from the image: bottom H/4 x W/4 (H and W
multiples of 4), top ceil(h/2) x ceil(w/2).

Priors (Razavi et al. 2019, sec. 3.2): p(k_t, k_b) = p(k_t) p(k_b | k_t), both gated PixelCNNs
(van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders") over one-hot
code grids with a K-way softmax per cell (:class:`CodePrior`). The bottom one reads the top
codes as a map s = relu(U_s onehot(k_t)) on its own grid (a transposed 3x3 stride-2 conv),
added inside every gate (refgen.models.autoregressive.gated_pixelcnn.GatedLayer with
``cond_channels``); every bottom cell may read all of s, since k_t is given. As in ``vqvae``
the priors' NLL of the (detached) codes is added to the loss, and ``train_autoencoder=False``
trains the priors alone on a frozen autoencoder (the paper's second stage). Sampling:
k_t ~ p(k_t), then k_b ~ p(k_b | k_t), then the decoder's mean at (e_t, e_b).
"""
from __future__ import annotations

import refgen.functional as F
from refgen.autograd import Tensor, as_tensor, no_grad
from refgen.backend import xp
from refgen.models import register
from refgen.models.autoregressive.gated_pixelcnn import GatedLayer
from refgen.models.base import DataSpec
from refgen.models.vae.likelihoods import make_likelihood
from refgen.models.vae.nets import ConvHead, ConvTrunk, conv_shapes
from refgen.models.vae.nets import activation as _activation
from refgen.models.vae.vqvae import ema_codebook_update, nearest_code, perplexity
from refgen.nn import Conv2d, ConvTranspose2d, Module, ModuleList, Parameter, init, parse_hidden

__all__ = ["VQVAE2", "Quantizer", "CodePrior", "TwoLevelPrior"]


class Quantizer(Module):
    """One level's codebook e (K, D): a Parameter, or with ``ema`` a buffer moved by (Q3)."""

    def __init__(self, num_codes: int, code_dim: int, ema: bool, decay: float, rng):
        super().__init__()
        self.num_codes, self.code_dim, self.ema, self.decay = num_codes, code_dim, ema, decay
        book = init.uniform_(Parameter(xp.zeros((num_codes, code_dim), dtype=xp.float32)),
                             -1.0 / num_codes, 1.0 / num_codes, rng=rng)
        if ema:
            self.register_buffer("codebook", book.data)
            self.register_buffer("ema_count", xp.ones((num_codes,), dtype=xp.float32))
            self.register_buffer("ema_sum", book.data.copy())
        else:
            self.codebook = book

    def extra_repr(self):
        return f"num_codes={self.num_codes}, code_dim={self.code_dim}, ema={self.ema}"

    def quantize(self, z_e):
        """(Q1): z_e (B, D, h, w) -> k (B, h, w)."""
        b, d, h, w = z_e.shape
        flat = xp.moveaxis(z_e.data, 1, -1).reshape(-1, d)                # (B h w, D)
        return nearest_code(flat, self.codebook).reshape(b, h, w)

    def lookup(self, k):
        """k (B, h, w) -> e_k (B, D, h, w); differentiable in the codebook (not with ema)."""
        return F.permute(F.embedding(k, self.codebook), (0, 3, 1, 2))

    def ema_update(self, z_e, k):
        """(Q3) with this batch's encoder outputs z_e (B, D, h, w) and their codes k (B, h, w)."""
        flat = xp.moveaxis(z_e.data, 1, -1).reshape(-1, self.code_dim)
        self.ema_count, self.ema_sum, self.codebook = ema_codebook_update(
            self.ema_count, self.ema_sum, flat, k.reshape(-1), self.decay)

    def forward(self, z_e, training: bool):
        """z_e -> (decoder input straight_through(e_k, z_e), e_k, k), the EMA step first."""
        k = self.quantize(z_e)                                            # (B, h, w)
        if self.ema and training:
            self.ema_update(z_e, k)
        z_q = self.lookup(k)                                              # e_k (B, D, h, w)
        return F.straight_through(z_q, z_e), z_q, k                       # forward e_k, grad -> z_e


class CodePrior(Module):
    """A gated PixelCNN over a grid of K-category codes: log p(k) = sum_i log p(k_i | k_<i [, s]).

    The codes enter one-hot (B, K, h, w); ``layers`` gated layers (the first with a
    ``first_kernel`` reach, type A), a ReLU / 1x1 / ReLU / 1x1 head to K logits per cell.
    ``cond_channels`` > 0: every layer also reads a map s (B, cond_channels, h, w).
    """

    def __init__(self, num_codes: int, channels: int, layers: int, first_kernel: int,
                 kernel: int, cond_channels: int = 0, rng=None):
        super().__init__()
        self.num_codes = int(num_codes)
        self.layers = ModuleList(
            [GatedLayer(self.num_codes, channels, first_kernel, True, rng=rng,
                        cond_channels=cond_channels)]
            + [GatedLayer(channels, channels, kernel, False, rng=rng, cond_channels=cond_channels)
               for _ in range(int(layers) - 1)])
        self.head1 = Conv2d(channels, channels, 1, rng=rng)
        self.head2 = Conv2d(channels, self.num_codes, 1, rng=rng)

    def logits(self, k, cond=None):
        """k (B, h, w) -> (B, K, h, w); the logits at cell i depend on k_<i (and all of s)."""
        dt = self.head2.weight.dtype
        x = Tensor(xp.moveaxis(xp.eye(self.num_codes, dtype=dt)[k], -1, 1))   # (B, K, h, w)
        v, hs = x, x
        for layer in self.layers:
            v, hs = layer(v, hs, cond)
        return self.head2(F.relu(self.head1(F.relu(hs))))

    def log_prob(self, k, cond=None):
        """log p(k [| s]) of code grids k (B, h, w), nats (B,)."""
        k = xp.asarray(k)
        return -F.sum_except_batch(F.cross_entropy(self.logits(k, cond), k, reduction="none"))

    def sample(self, n, grid, cond=None, *, rng):
        """n code grids (n, h, w), one cell per pass in raster order (rows 0..i each pass)."""
        h, w = grid
        k = xp.zeros((int(n), h, w), dtype=xp.int64)
        with no_grad():
            for i in range(h):
                s = None if cond is None else cond[:, :, :i + 1]
                for j in range(w):
                    lg = self.logits(k[:, :i + 1], s).data[:, :, i, j]      # (n, K)
                    k[:, i, j] = F.gumbel_max(lg, rng, axis=1)
        return k


class TwoLevelPrior(Module):
    """p(k_t, k_b) = p(k_t) p(k_b | k_t) (Razavi et al. 2019, sec. 3.2)."""

    def __init__(self, top_codes, num_codes, top_grid, grid, channels, layers, first_kernel,
                 kernel, rng):
        super().__init__()
        self.top_codes, self.top_grid, self.grid = int(top_codes), tuple(top_grid), tuple(grid)
        self.top = CodePrior(top_codes, channels, layers, first_kernel, kernel, rng=rng)
        self.bottom = CodePrior(num_codes, channels, layers, first_kernel, kernel,
                                cond_channels=channels, rng=rng)
        self.cond_up = _upsampler(self.top_codes, channels, top_grid, grid, rng)

    def condition(self, k_t):
        """The bottom prior's map s = relu(U_s onehot(k_t)): (B, ht, wt) -> (B, c, h, w)."""
        dt = self.cond_up.weight.dtype
        onehot = Tensor(xp.moveaxis(xp.eye(self.top_codes, dtype=dt)[xp.asarray(k_t)], -1, 1))
        return F.relu(self.cond_up(onehot))

    def log_prob(self, k_t, k_b):
        """log p(k_t) + log p(k_b | k_t), nats (B,)."""
        return self.top.log_prob(k_t) + self.bottom.log_prob(k_b, self.condition(k_t))

    def sample(self, n, *, rng):
        """k_t ~ p(k_t), then k_b ~ p(k_b | k_t): (n, ht, wt), (n, h, w)."""
        k_t = self.top.sample(n, self.top_grid, rng=rng)
        with no_grad():
            s = self.condition(k_t).data
        return k_t, self.bottom.sample(n, self.grid, s, rng=rng)


def _upsampler(c_in, c_out, top_grid, grid, rng):
    """A transposed 3x3 stride-2 conv from the top grid (ceil(h/2)) back to the bottom grid h."""
    pad = tuple(g - (2 * t - 1) for g, t in zip(grid, top_grid))          # 0 for odd h, 1 for even
    return ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=pad, rng=rng)


@register("vqvae2")
class VQVAE2(Module):
    """Two-level VQ-VAE with a top grid (ceil(H/8), ceil(W/8)) of ``top_codes`` codes and a
    bottom grid (H/4, W/4) of ``num_codes`` codes, and gated PixelCNN priors p(k_t) p(k_b | k_t).

    commitment: beta, both levels. ema: codebooks by (Q3) (default, as the paper) or by their
    loss term. likelihood: 'bernoulli' ([0, 1] data) or 'gaussian' (unit variance).
    prior_channels / prior_layers / prior_first_kernel: both priors' width, depth and the first
    layer's reach. The paper's two stages: train_prior=False trains the autoencoder alone
    (stage one), train_autoencoder=False the priors alone on its frozen codes (stage two); with
    both True (the default) one loss trains everything, the priors chasing the moving codes.
    """

    data_spec = DataSpec(kinds=("binary", "continuous"), ndims=(3,))
    default_train = dict(steps=5000, batch_size=64, lr=1e-3)
    eval_samples = 2000

    def __init__(self, data_shape, *, seed=0, num_codes: int = 16, top_codes: int = 8,
                 code_dim: int = 16, top_code_dim: int = 16, channels="32,64",
                 activation: str = "relu", commitment: float = 0.25, ema: bool = True,
                 ema_decay: float = 0.99, likelihood: str = "bernoulli", prior_channels: int = 32,
                 prior_layers: int = 5, prior_first_kernel: int = 5, train_autoencoder: bool = True,
                 train_prior: bool = True):
        super().__init__()
        self.data_shape = tuple(int(s) for s in data_shape)
        if len(self.data_shape) != 3:
            raise ValueError(f"vqvae2 models images (C, H, W); got {self.data_shape}")
        c, hh, ww = self.data_shape
        if hh % 4 or ww % 4 or hh < 8 or ww < 8:
            raise ValueError(f"vqvae2 needs H and W multiples of 4 and at least 8 (bottom grid "
                             f"H/4 x W/4, top grid half of it); got {hh} x {ww}")
        if likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"vqvae2 likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
        self.num_codes, self.top_codes = int(num_codes), int(top_codes)
        if self.num_codes < 2 or self.top_codes < 2:
            raise ValueError(f"num_codes and top_codes must be at least 2, got {num_codes}, {top_codes}")
        self.code_dim, self.top_code_dim = int(code_dim), int(top_code_dim)
        self.commitment, self.ema = float(commitment), bool(ema)
        self.train_autoencoder, self.train_prior = bool(train_autoencoder), bool(train_prior)
        if not (self.train_autoencoder or self.train_prior):
            raise ValueError("vqvae2 with train_autoencoder=false and train_prior=false has nothing to train")
        ch = parse_hidden(channels)
        if len(ch) != 2:
            raise ValueError(f"channels takes two widths 'c1,c2', got {channels!r}")
        act = _activation(activation)
        g = init.get_rng(int(seed))
        shapes = conv_shapes((hh, ww))
        self.grid = shapes[-1]                                             # (h, w) = (H/4, W/4)
        self.top_grid = tuple((s + 1) // 2 for s in self.grid)             # ceil(h/2)
        self.encoder = ConvTrunk(c, ch, act, g)                            # E_b: x -> h_b
        self.encoder_top = Conv2d(ch[1], ch[1], 3, stride=2, padding=1, rng=g)   # h_b -> top grid
        self.to_code_top = Conv2d(ch[1], self.top_code_dim, 1, rng=g)
        self.decoder_top = _upsampler(self.top_code_dim, ch[1], self.top_grid, self.grid, g)  # D_t
        self.to_code = Conv2d(2 * ch[1], self.code_dim, 1, rng=g)          # W [h_b ; D_t(e_t)]
        self.upsample_top = _upsampler(self.top_code_dim, self.code_dim, self.top_grid, self.grid, g)  # U
        self.from_code = Conv2d(2 * self.code_dim, ch[1], 1, rng=g)
        self.decoder = ConvHead(ch, c, shapes, act, g)
        self.act = act
        self.quant_top = Quantizer(self.top_codes, self.top_code_dim, self.ema, float(ema_decay), g)
        self.quant = Quantizer(self.num_codes, self.code_dim, self.ema, float(ema_decay), g)
        self.likelihood = make_likelihood(likelihood, 3)
        if likelihood == "gaussian":  # a fixed unit variance: the loss is the squared error / 2
            self.likelihood.log_sigma.requires_grad = False
        self.prior = TwoLevelPrior(self.top_codes, self.num_codes, self.top_grid, self.grid,
                                   int(prior_channels), int(prior_layers),
                                   int(prior_first_kernel), 3, init.get_rng(int(seed) + 1))

    def extra_repr(self):
        return (f"data_shape={self.data_shape}, grids: top={self.top_grid} x {self.top_codes} "
                f"codes, bottom={self.grid} x {self.num_codes} codes, ema={self.ema}")

    # ------------------------------------------------------------------ the two bottlenecks
    def forward_codes(self, x, training: bool = False):
        """Algorithm 1's encoder: x -> per level (decoder input, e_k, z_e, k), top then bottom."""
        h_b = self.encoder(as_tensor(x))                                   # (B, c, h, w)
        z_et = self.to_code_top(self.act(self.encoder_top(h_b)))           # (B, D_t, ht, wt)
        st_t, e_t, k_t = self.quant_top(z_et, training)
        top = self.act(self.decoder_top(st_t))                             # D_t(e_t): (B, c, h, w)
        z_eb = self.to_code(F.cat([h_b, top], 1))                          # (B, D, h, w)
        st_b, e_b, k_b = self.quant(z_eb, training)
        return (st_t, e_t, z_et, k_t), (st_b, e_b, z_eb, k_b)

    def codes(self, x):
        """The code grids of x: k_t (B, ht, wt), k_b (B, h, w)."""
        with no_grad():
            (_, _, _, k_t), (_, _, _, k_b) = self.forward_codes(x)
        return k_t, k_b

    def decode(self, e_t, e_b):
        """Dec([e_b ; U e_t]): (B, D_t, ht, wt), (B, D, h, w) -> (B, C, H, W) logits or means."""
        return self.decoder(self.act(self.from_code(F.cat([e_b, self.upsample_top(e_t)], 1))))

    def decode_codes(self, k_t, k_b):
        return self.decode(self.quant_top.lookup(xp.asarray(k_t)), self.quant.lookup(xp.asarray(k_b)))

    def reconstruct(self, x):
        with no_grad():
            return self.likelihood.mean(self.decode_codes(*self.codes(x))).data

    def prior_log_prob(self, k_t, k_b):
        """log p(k_t) + log p(k_b | k_t) of code grids, nats (B,)."""
        return self.prior.log_prob(xp.asarray(k_t), xp.asarray(k_b))

    # ------------------------------------------------------------------ training
    def loss(self, batch, rng):
        """(Q2) per level (with (Q3) for ema=True) plus both priors' NLL of the batch's codes."""
        x = as_tensor(batch.x)
        if not self.train_autoencoder:  # stage 2: the autoencoder is fixed, only the priors learn
            k_t, k_b = self.codes(x)
            nll = -self.prior_log_prob(k_t, k_b).mean()
            self.last_stats = {"prior_nll": float(nll.data),
                               "perplexity_top": perplexity(k_t, self.top_codes),
                               "perplexity": perplexity(k_b, self.num_codes)}
            return nll
        if self.likelihood.name == "bernoulli":
            self.likelihood.check(x.data)
        (st_t, e_t, z_et, k_t), (st_b, e_b, z_eb, k_b) = self.forward_codes(x, self.training)
        rec = -self.likelihood.log_prob(x, self.decode(st_t, st_b)).mean()   # -log p(x | e_t, e_b)
        per_image = (1, 2, 3)
        commit_t = ((z_et - e_t.detach()) ** 2).sum(per_image).mean()      # ||z_et - sg[e_t]||^2
        commit_b = ((z_eb - e_b.detach()) ** 2).sum(per_image).mean()      # ||z_eb - sg[e_b]||^2
        total = rec + self.commitment * (commit_t + commit_b)
        if not self.ema:
            book_t = ((z_et.detach() - e_t) ** 2).sum(per_image).mean()    # ||sg[z_et] - e_t||^2
            book_b = ((z_eb.detach() - e_b) ** 2).sum(per_image).mean()    # ||sg[z_eb] - e_b||^2
            total = total + book_t + book_b
        stats = {"rec": float(rec.data), "commit_top": float(commit_t.data),
                 "commit": float(commit_b.data), "perplexity_top": perplexity(k_t, self.top_codes),
                 "perplexity": perplexity(k_b, self.num_codes)}
        if not self.train_prior:  # stage 1: the autoencoder alone
            self.last_stats = stats
            return total
        prior_nll = -self.prior_log_prob(k_t, k_b).mean()                  # codes are data here
        self.last_stats = dict(stats, prior_nll=float(prior_nll.data))
        return total + prior_nll

    # ------------------------------------------------------------------ generation
    def sample(self, n, cond=None, *, rng):
        """k_t ~ p(k_t), k_b ~ p(k_b | k_t) (ht wt + h w passes), then the decoder's mean."""
        with no_grad():
            k_t, k_b = self.prior.sample(int(n), rng=rng)
            return self.likelihood.mean(self.decode_codes(k_t, k_b)).data
