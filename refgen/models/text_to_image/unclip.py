"""unCLIP (Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation with CLIP
Latents"): a diffusion prior from a caption to a CLIP image embedding, and a diffusion decoder
from that embedding to the image. With c^i(x) the (frozen) CLIP image embedding of x,
deterministic given x,

    P(x | y) = P(x, c^i | y) = P(x | c^i, y) P(c^i | y)                                     (34)

so sampling runs the prior, then the decoder (here P(x | c^i): the decoder reads the image
embedding only, the optional [y] of eq. (34) left out).

    z = sqrt(D) c^i(x)       the unit image embedding scaled to unit variance per coordinate
    v = c^t(y)               the caption's unit CLIP text embedding

Prior P(z | y): a diffusion on z (B, D) whose network predicts the clean embedding itself,

    L_prior = E_{t, z, eps} || z - f_theta(z_t, t, v) ||^2,  z_t = sqrt(ab_t) z + sqrt(1 - ab_t) eps

f_theta is a small causal transformer (refgen.nn.TransformerBlock) over the sequence
[W_v v, e(t), W_z z_t, q] read out at the learned final query q (the paper's prior also puts
the caption's encoded tokens first; at MNIST scale the text embedding carries the caption).
v is replaced by zeros with probability p_uncond_prior (classifier-free guidance of the prior).

Or (prior_kind="ar") the paper's autoregressive prior: each coordinate of z quantized into K
uniform buckets over [-r, r], and the code sequence predicted left to right,

    c_j = min(floor((z_j + r) K / (2 r)), K - 1) clipped at 0,   z_j ~= -r + (c_j + 1/2) 2 r / K
    P(c | y) = prod_j P(c_j | c_<j, v),    L_prior = -sum_j log P(c_j | c_<j, v)

by a causal transformer over [W_v v, e(c_1), ..., e(c_{D-1})] (the paper first reduces its
1,024-dimensional embedding to 319 principal components; D = 64 needs no reduction), guided
at sampling by eq. (26) on the logits, (w + 1) l(c_<j, v) - w l(c_<j, 0).

Decoder P(x | z): GLIDE's U-Net (text_diffusion.py) with z in place of a caption: projected
into ``embedding_tokens`` context tokens that every attention layer cross-attends to, and
added to the time embedding; z is replaced by zeros with probability p_uncond (10% in the
paper), so sampling can guide the decoder by eq. (26) too.

Image variations: x -> z = sqrt(D) c^i(x) -> decoder samples that share x's embedding.
Interpolations: decoder samples from one noise along the great circle between two images'
embeddings (slerp), as the paper's interpolations between image embeddings.

Both parts are trained together, loss = L_decoder + L_prior (each logged), on the frozen CLIP
of ``clip`` (held outside the module tree, as in Imagen). CLIP's image tower takes images of
its own size ``clip_size``; smaller images are upsampled to it (nearest) before encoding.
"""
from __future__ import annotations

import dataclasses
import math

import refgen.functional as F
from refgen.autograd import Tensor, as_tensor, no_grad
from refgen.backend import asarray, xp
from refgen.models import register
from refgen.models.diffusion import guidance as G
from refgen.models.diffusion.losses import l_simple
from refgen.models.diffusion.process import interpret, q_sample, x0_from_eps
from refgen.models.diffusion.sampling import sample_loop
from refgen.models.diffusion.schedule import make_schedule
from refgen.models.text_to_image.imagen import attach_frozen_clip
from refgen.models.text_to_image.text_diffusion import NETWORK, SAMPLING, TextDiffusion, caption_batch
from refgen.nn import (Embedding, LayerNorm, Linear, Module, ModuleList, Parameter,
                       TimeEmbedding, TransformerBlock, init)

__all__ = ["AutoregressivePrior", "EmbeddingPrior", "UnCLIP", "slerp"]


class EmbeddingPrior(Module):
    """f_theta(z_t (B, D), t (B,), v (B, D)) -> the clean embedding (B, D): a causal
    transformer over [W_v v, e(t), W_z z_t, q], read out at q."""

    def __init__(self, dim: int, width: int = 64, layers: int = 2, heads: int = 4, rng=None,
                 dtype=xp.float32):
        super().__init__()
        self.text_in = Linear(dim, width, rng=rng, dtype=dtype)
        self.time = TimeEmbedding(width, width, rng=rng, dtype=dtype)
        self.z_in = Linear(dim, width, rng=rng, dtype=dtype)
        self.query = Parameter(xp.zeros((1, 1, width), dtype=dtype))
        self.pos = Parameter(xp.zeros((4, width), dtype=dtype))
        init.normal_(self.query, 0.0, 0.02, rng=rng)
        init.normal_(self.pos, 0.0, 0.02, rng=rng)
        self.blocks = ModuleList(TransformerBlock(width, heads, causal=True, rng=rng, dtype=dtype)
                                 for _ in range(layers))
        self.ln = LayerNorm(width, dtype=dtype)
        self.out = Linear(width, dim, rng=rng, dtype=dtype)

    def forward(self, zt, t, v):
        b, w = zt.shape[0], self.pos.shape[1]
        q = F.broadcast_to(self.query, (b, 1, w))
        seq = F.cat([F.reshape(self.text_in(v), (b, 1, w)), F.reshape(self.time(t), (b, 1, w)),
                     F.reshape(self.z_in(zt), (b, 1, w)), q], dim=1) + self.pos  # (B, 4, W)
        for block in self.blocks:
            seq = block(seq)
        return self.out(self.ln(seq)[:, -1])                             # (B, W) -> (B, D)


class AutoregressivePrior(Module):
    """Logits (B, S + 1, K) of codes c_1..c_{S+1} from the known codes c_<= S (B, S) and the
    text embedding v (B, D): a causal transformer over [W_v v, e(c_1), ..., e(c_S)]."""

    def __init__(self, dim: int, bins: int, width: int = 64, layers: int = 2, heads: int = 4,
                 rng=None, dtype=xp.float32):
        super().__init__()
        self.text_in = Linear(dim, width, rng=rng, dtype=dtype)
        self.codes = Embedding(bins, width, rng=rng, dtype=dtype)
        self.pos = Parameter(xp.zeros((dim, width), dtype=dtype))
        init.normal_(self.pos, 0.0, 0.02, rng=rng)
        self.blocks = ModuleList(TransformerBlock(width, heads, causal=True, rng=rng, dtype=dtype)
                                 for _ in range(layers))
        self.ln = LayerNorm(width, dtype=dtype)
        self.out = Linear(width, bins, rng=rng, dtype=dtype)

    def forward(self, c, v, caches=None, start: int = 0):
        """Logits (B, S + 1, K) as above. With ``caches`` (one dict per block, holding the
        keys and values of the positions before ``start``), incremental decoding: start 0
        feeds [W_v v, e(c)], start j > 0 feeds e(c) (B, S) at positions j..j + S - 1 only, and
        the logits are those of the positions fed (B, S, K)."""
        b, s, w = v.shape[0], c.shape[1], self.pos.shape[1]
        parts = [F.reshape(self.text_in(v), (b, 1, w))] if start == 0 else []
        if s:
            parts.append(self.codes(c))                                   # (B, S, W)
        seq = parts[0] if len(parts) == 1 else F.cat(parts, dim=1)        # (B, S + 1, W) at start 0
        seq = seq + self.pos[start:start + seq.shape[1]]
        for i, block in enumerate(self.blocks):
            seq = block(seq, cache=None if caches is None else caches[i])
        return self.out(self.ln(seq))                                     # (B, S + 1 or S, K)


@register("unclip")
class UnCLIP(TextDiffusion):
    """Prior P(z | y) and decoder P(x | z) on a frozen CLIP (see the module docstring).
    ``sample(n, cond=caption ids (n, L), *, rng, guidance=w, prior_guidance=w_p)``;
    ``variations(x, *, rng)``; ``embed_images(x)``; ``sample_embeddings(n, cond, *, rng)``."""

    def __init__(self, data_shape=(1, 14, 14), *, seed: int = 0, clip="runs/clip",
                 clip_size: int = 28, embedding_tokens: int = 4, prior_width: int = 64,
                 prior_layers: int = 2, prior_heads: int = 4, prior_T: int = 1000,
                 prior_steps: int = 50, prior_guidance: float = 1.0, p_uncond_prior: float = 0.1,
                 prior_kind: str = "diffusion", prior_bins: int = 64, prior_range: float = 4.0,
                 prior_candidates: int = 1,
                 schedule: str = "cosine", T: int = 1000, parameterization: str = "eps",
                 variance: str = "beta_tilde", p_uncond: float = 0.1,
                 network=NETWORK, sampling=dataclasses.replace(SAMPLING, guidance=1.0), **options):
        super().__init__()
        self._setup(data_shape, schedule, T, parameterization, variance, p_uncond, network,
                    sampling, options)
        frozen = attach_frozen_clip(self, clip)
        self.dim = d = frozen.text_encoder.proj.out_features
        self.clip_size, self.k = int(clip_size), int(embedding_tokens)
        if self.clip_size % self.data_shape[-1]:
            raise ValueError(f"clip_size={clip_size} is not a multiple of the image size "
                             f"{self.data_shape[-1]}")
        if not 0.0 <= float(p_uncond_prior) < 1.0:
            raise ValueError(f"p_uncond_prior must be in [0, 1), got {p_uncond_prior}")
        self.p_uncond_prior, self.prior_guidance = float(p_uncond_prior), float(prior_guidance)
        self.prior_schedule, self.prior_steps = make_schedule(schedule, int(prior_T)), int(prior_steps)
        if prior_kind not in ("diffusion", "ar"):
            raise ValueError(f"prior_kind must be 'diffusion' or 'ar', got {prior_kind!r}")
        if int(prior_bins) < 2 or not float(prior_range) > 0:
            raise ValueError(f"the ar prior needs prior_bins >= 2 and prior_range > 0, got "
                             f"{prior_bins} and {prior_range}")
        self.prior_kind, self.bins, self.range = prior_kind, int(prior_bins), float(prior_range)
        self.prior_candidates = int(prior_candidates)
        g = init.get_rng(int(seed))
        if prior_kind == "ar":
            self.prior = AutoregressivePrior(d, self.bins, int(prior_width), int(prior_layers),
                                             int(prior_heads), rng=g)
        else:
            self.prior = EmbeddingPrior(d, int(prior_width), int(prior_layers), int(prior_heads), rng=g)
        width = self.network.channels * 4
        self.tokens = Linear(d, self.k * width, rng=g)                    # z -> k context tokens
        self._build_unet(context_dim=width, pooled_dim=d, rng=g)
        self.last_stats = {}

    # ------------------------------------------------------------------------- CLIP, frozen
    def embed_images(self, x):
        """z = sqrt(D) c^i(x) (B, D), an array: the decoder's condition for images x."""
        x = asarray(x.data if isinstance(x, Tensor) else x)
        f = self.clip_size // x.shape[-1]
        if f > 1:
            x = xp.repeat(xp.repeat(x, f, axis=-2), f, axis=-1)           # (B, C, clip_size, clip_size)
        with no_grad():
            return self.clip.encode_image(Tensor(x)).data * math.sqrt(self.dim)

    def embed_text(self, ids):
        """v = c^t(y) (B, D), an array: the prior's condition."""
        with no_grad():
            return self.clip.encode_text(ids).data

    # ------------------------------------------------------------------------- the decoder's condition
    def null(self, n: int = 1):
        return xp.zeros((n, self.dim), dtype=self.dtype)

    def condition(self, z, n: int):
        z = xp.asarray(asarray(z), dtype=self.dtype)
        if z.ndim != 2 or z.shape != (n, self.dim):
            raise ValueError(f"image embeddings of shape {tuple(z.shape)}: expected ({n}, {self.dim})")
        return z

    def drop(self, z, rng):
        return _drop_rows(z, self.p_uncond, rng)

    def encode(self, z):
        """k context tokens (B, k, 4 ch) projected from z, and z itself as the pooled vector."""
        z = as_tensor(z)
        return F.reshape(self.tokens(z), (z.shape[0], self.k, -1)), z, None

    # ------------------------------------------------------------------------- training
    def quantize(self, z):
        """Codes c (B, D) int64 of embeddings z (B, D): K uniform buckets over [-r, r]."""
        c = xp.floor((asarray(z) + self.range) * (self.bins / (2 * self.range)))
        return xp.clip(c, 0, self.bins - 1).astype(xp.int64)

    def dequantize(self, c):
        """The bucket centres (B, D) of codes c: -r + (c + 1/2) 2 r / K."""
        return (-self.range + (asarray(c) + 0.5) * (2 * self.range / self.bins)).astype(self.dtype)

    def prior_loss(self, z0, v, rng):
        """L_prior = || z - f_theta(z_t, t, v) ||^2 (diffusion), or -sum_j log P(c_j | c_<j, v)
        per embedding (ar), v dropped to zeros with p_uncond_prior."""
        if self.prior_kind == "ar":
            c = self.quantize(z0.data if isinstance(z0, Tensor) else z0)      # (B, D)
            v = Tensor(_drop_rows(asarray(v), self.p_uncond_prior, rng))
            logits = self.prior(c[:, :-1], v)                                 # (B, D, K)
            return F.cross_entropy(F.transpose(logits, 1, 2), c, reduction="none").sum(1).mean()
        sch = self.prior_schedule
        z0 = as_tensor(z0)
        t = rng.integers(1, sch.T + 1, size=z0.shape[0])                 # t ~ U{1, ..., T}
        eps = Tensor(rng.standard_normal(z0.shape, dtype=z0.dtype))
        zt = q_sample(sch, z0, t, eps)                                    # (3)
        v = Tensor(_drop_rows(asarray(v), self.p_uncond_prior, rng))
        return l_simple(z0, self.prior(zt, sch.net_t[t], v))             # predict the clean z

    def loss(self, batch, rng):
        """L_decoder (19) of the images given their own z, plus L_prior of z given the caption."""
        ids = self.captions(batch)
        z = self.embed_images(batch.x)
        decoder = self.diffusion_loss(batch.x, z, rng)
        prior = self.prior_loss(z, self.embed_text(ids), rng)
        self.last_stats = {"l_decoder": float(decoder.item()), "l_prior": float(prior.item())}
        return decoder + prior

    # ------------------------------------------------------------------------- sampling
    def sample_embeddings(self, n, cond, *, rng, guidance=None, steps=None, candidates=None):
        """z ~ P(z | y) (n, D) for captions ``cond`` (ids or texts) by the prior's DDIM chain
        (or its codes, ar), classifier-free guided by ``guidance`` (default prior_guidance).
        candidates k > 1 (default prior_candidates): k draws per caption, keeping the one
        with the highest dot product with the caption's text embedding v (the paper's
        sampling, with k = 2)."""
        k = self.prior_candidates if candidates is None else int(candidates)
        if k < 1:
            raise ValueError(f"candidates must be >= 1, got {k}")
        if k > 1:
            ids = caption_batch(cond, n, self.tok)
            z = self.sample_embeddings(k * n, xp.concatenate([ids] * k), rng=rng, guidance=guidance,
                                       steps=steps, candidates=1).reshape(k, n, -1)   # (k, n, D)
            score = xp.sum(z * self.embed_text(ids)[None], axis=-1)          # (k, n): z . v
            return z[xp.argmax(score, axis=0), xp.arange(n)]                 # (n, D)
        ids = caption_batch(cond, n, self.tok)
        w = self.prior_guidance if guidance is None else float(guidance)
        v = self.embed_text(ids)
        vv = xp.concatenate([v, xp.zeros_like(v)]) if w != 0 else v
        if self.prior_kind == "ar":
            return self._sample_codes(n, vv, w, rng)
        sch = self.prior_schedule.strided(min(steps or self.prior_steps, self.prior_schedule.T))

        def predict(z, t):
            t_net = xp.full((vv.shape[0],), int(sch.net_t[t]), dtype=xp.int64)
            zz = xp.concatenate([z, z]) if w != 0 else z
            out = self.prior(Tensor(zz), t_net, Tensor(vv)).data
            p = interpret(out[:n], z, t, sch, "x0", "beta_tilde")         # f predicts the clean z
            if w == 0:
                return p
            eps = G.cfg_eps(p.eps, interpret(out[n:], z, t, sch, "x0", "beta_tilde").eps, w)  # (26)
            return p._replace(eps=eps, x0=x0_from_eps(sch, z, t, eps))    # (11)
        with no_grad():
            return sample_loop(predict, sch, (n, self.dim), rng, sampler="ddim", dtype=self.dtype)

    def _sample_codes(self, n, vv, w, rng):
        """The ar prior's embeddings (n, D): D draws c_j ~ softmax(l_j), l_j guided by (26),
        with the key/value cache (each step runs the network on the newest code only)."""
        c = xp.zeros((n, 0), dtype=xp.int64)
        caches = [dict() for _ in self.prior.blocks]
        with no_grad():
            for j in range(self.dim):
                new = c[:, -1:]                                               # (n, 0) at j = 0
                new = xp.concatenate([new, new]) if w != 0 else new
                logits = self.prior(new, Tensor(vv), caches, start=j).data[:, -1]  # (n or 2n, K)
                if w != 0:
                    logits = (w + 1.0) * logits[:n] - w * logits[n:]          # (26) on the logits
                c = xp.concatenate([c, F.gumbel_max(logits, rng)[:, None].astype(xp.int64)], axis=1)
        return self.dequantize(c)

    def sample(self, n, cond=None, *, rng, guidance=None, prior_guidance=None, steps=None,
               sampler=None, eta=None, threshold=None, x_T=None):
        """n images for captions ``cond`` by eq. (34): z ~ prior, then x ~ decoder(z); None
        samples the decoder unconditionally (null embedding)."""
        # (34): z ~ P(z | y), then x ~ P(x | z)
        z = None if cond is None else self.sample_embeddings(n, cond, rng=rng, guidance=prior_guidance)
        return super().sample(n, z, rng=rng, guidance=guidance, steps=steps, sampler=sampler,
                              eta=eta, threshold=threshold, x_T=x_T)

    def decode(self, z, *, rng, guidance=None, steps=None, x_T=None):
        """x ~ P(x | z): one decoder sample per embedding of z (B, D) (scaled as embed_images
        scales them), from the noise x_T when given."""
        z = asarray(z)                                                    # condition() casts it
        return super().sample(z.shape[0], z, rng=rng, guidance=guidance, steps=steps, x_T=x_T)

    def variations(self, x, *, rng, guidance=None, steps=None):
        """One decoder sample per image of x (B, C, H, W) from its own embedding z = sqrt(D) c^i(x)."""
        return self.decode(self.embed_images(x), rng=rng, guidance=guidance, steps=steps)

    def interpolations(self, x_a, x_b, k: int, *, rng, guidance=None, steps=None):
        """k decoder samples (k, C, H, W) along the great circle from x_a's embedding to
        x_b's (each (1, C, H, W) or (C, H, W)), all from one noise x_T (unCLIP's interpolations):

            z_s = sin((1 - s) theta) / sin(theta) z_a + sin(s theta) / sin(theta) z_b,
            theta = arccos(<z_a, z_b> / D),  s = 0, 1/(k-1), ..., 1
        """
        if int(k) < 2:
            raise ValueError(f"interpolations need k >= 2 points, got {k}")
        z = self.embed_images(xp.concatenate([xp.reshape(asarray(x), (1,) + self.data_shape)
                                              for x in (x_a, x_b)]))      # (2, D)
        zs = slerp(z[0], z[1], xp.linspace(0.0, 1.0, int(k)))             # (k, D)
        x_T = xp.broadcast_to(rng.standard_normal((1,) + self.data_shape, dtype=self.dtype),
                              (int(k),) + self.data_shape).copy()
        return self.decode(zs, rng=rng, guidance=guidance, steps=steps, x_T=x_T)


def slerp(a, b, s):
    """Points (len(s), D) on the great circle from a (D,) to b (D,) (equal norms) at
    fractions s (k,); the straight line where a and b are (nearly) parallel."""
    cos = xp.clip(xp.sum(a * b) / xp.sqrt(xp.sum(a * a) * xp.sum(b * b)), -1.0, 1.0)
    theta = xp.arccos(cos)
    s = xp.asarray(s, dtype=a.dtype)[:, None]                             # (k, 1)
    if float(theta) < 1e-6:
        return (1 - s) * a + s * b
    return (xp.sin((1 - s) * theta) * a + xp.sin(s * theta) * b) / xp.sin(theta)


def _drop_rows(a, p: float, rng):
    """Rows of a (B, D) replaced by zeros with probability p (the null embedding)."""
    if p <= 0:
        return a
    keep = rng.random((a.shape[0],)) >= p                                 # (B,)
    return xp.where(keep[:, None], a, xp.zeros_like(a))
