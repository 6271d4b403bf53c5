"""Residual, attention and resampling blocks shared by denoisers, classifiers and U-Nets.

    MLPBlock        h + W_2 silu(W_1 silu(h) + W_e e)                        vectors (B, W)
    ResBlock        h = conv(silu(GN(x))) then, with e the time (+ class) embedding,
                      plain:        h = silu(GN(h + W_e silu(e)))
                      scale-shift:  h = silu(GN(h) (1 + s) + b),  (s, b) = W_e silu(e)   (AdaGN)
                    out = skip(x) + conv(dropout(h))                         images (B, C, H, W)
                    options: resample 'down' | 'up' (BigGAN's resampling residual block:
                    x and h both 2x average-pooled / nearest-upsampled after the first
                    norm and SiLU, before conv1); rescale: out = (skip(x) + h) / sqrt(2)
    AttnBlock       x + MHA(GN(x)) over the H*W positions as tokens
    CrossAttnBlock  x + MHA(Q from GN(x), K and V from a context (B, S, D_c), optional mask)
    Downsample      stride-2 conv3x3: (B, C, H, W) -> (B, C, H/2, W/2)
    Upsample        nearest 2x, then conv3x3: (B, C, H, W) -> (B, C, 2H, 2W)

The last convolution of ResBlock and the output projection of the attention blocks start at
zero, so a new block is the identity (its skip path). Scale-shift normalisation is improved
DDPM's (Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models"; also
Dhariwal & Nichol 2021's AdaGN); cross-attention is latent diffusion's (Rombach et al. 2022).
The resampling residual block and the 1/sqrt(2) residual rescaling are Dhariwal & Nichol 2021's
("Diffusion Models Beat GANs on Image Synthesis"), after BigGAN (Brock et al. 2019).
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen.backend import xp
from refgen.nn import init
from refgen.nn.attention import MultiheadAttention, key_padding_mask
from refgen.nn.layers import Conv2d, GroupNorm, Linear
from refgen.nn.module import Module

__all__ = ["group_count", "MLPBlock", "ResBlock", "AttnBlock", "CrossAttnBlock", "Downsample",
           "Upsample", "apply_blocks"]


def group_count(c: int, groups: int) -> int:
    """gcd(c, groups): the largest group count dividing both c and ``groups`` (GroupNorm
    needs c % g == 0; e.g. c = 12, groups = 8 gives 4)."""
    return math.gcd(c, groups)


class MLPBlock(Module):
    """h + W_2 silu(W_1 silu(h) + W_e e): a residual block conditioned on the embedding e."""

    def __init__(self, width: int, emb_dim: int, rng=None, dtype=xp.float32):
        super().__init__()
        self.lin1 = Linear(width, width, rng=rng, dtype=dtype)
        self.emb = Linear(emb_dim, width, rng=rng, dtype=dtype)
        self.lin2 = Linear(width, width, rng=rng, dtype=dtype)

    def forward(self, h, e):
        return h + self.lin2(F.silu(self.lin1(F.silu(h)) + self.emb(e)))


class ResBlock(Module):
    """(x (B, cin, H, W), e (B, emb_dim)) -> (B, cout, H, W).

    scale_shift: the embedding gives (s, b) (its projection is 2 cout wide) applied after the
    second group norm as GN(h) (1 + s) + b, instead of being added before it.
    resample: None, 'down' (-> (B, cout, H/2, W/2)) or 'up' (-> (B, cout, 2H, 2W)): BigGAN's
    resampling block; the skip path is resampled too. rescale: divide the sum by sqrt(2).
    """

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int = 8, dropout: float = 0.0,
                 scale_shift: bool = False, rng=None, dtype=xp.float32, *, resample=None,
                 rescale: bool = False):
        super().__init__()
        if resample not in (None, "down", "up"):
            raise ValueError(f"resample must be None, 'down' or 'up', got {resample!r}")
        self.scale_shift = bool(scale_shift)
        self.resample, self.rescale = resample, bool(rescale)
        self.norm1 = GroupNorm(group_count(cin, groups), cin, dtype=dtype)
        self.conv1 = Conv2d(cin, cout, 3, padding=1, rng=rng, dtype=dtype)
        self.emb = Linear(emb_dim, 2 * cout if self.scale_shift else cout, rng=rng, dtype=dtype)
        self.norm2 = GroupNorm(group_count(cout, groups), cout, dtype=dtype)
        self.conv2 = init.zero_module(Conv2d(cout, cout, 3, padding=1, rng=rng, dtype=dtype))
        self.skip = Conv2d(cin, cout, 1, rng=rng, dtype=dtype) if cin != cout else None
        self.dropout = float(dropout)

    def _resample(self, x):
        if self.resample == "down":
            return F.avg_pool2d(x, 2)                                     # (B, C, H, W) -> (B, C, H/2, W/2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2)                       # (B, C, H, W) -> (B, C, 2H, 2W)
        return x

    def forward(self, x, e, rng=None):
        h = self.conv1(self._resample(F.silu(self.norm1(x))))             # (B, cout, H', W')
        x = self._resample(x)                                             # the skip path, resampled alike
        b, c = h.shape[:2]
        emb = self.emb(F.silu(e))                                         # (B, cout) or (B, 2 cout)
        if self.scale_shift:
            scale, shift = F.chunk(F.reshape(emb, (b, 2 * c, 1, 1)), 2, dim=1)  # 2 x (B, cout, 1, 1)
            h = self.norm2(h) * (1 + scale) + shift                       # AdaGN
        else:
            h = self.norm2(h + F.reshape(emb, (b, c, 1, 1)))              # (B, cout) -> (B, cout, 1, 1)
        h = F.silu(h)
        if self.training and self.dropout > 0:
            h = F.dropout(h, self.dropout, rng=rng)
        h = self.conv2(h)
        out = (x if self.skip is None else self.skip(x)) + h
        return out * (1 / math.sqrt(2)) if self.rescale else out          # residual rescaled by 1/sqrt(2)

    def extra_repr(self):
        return (f"scale_shift={self.scale_shift}, dropout={self.dropout}, "
                f"resample={self.resample}, rescale={self.rescale}")


def _tokens(x):
    b, c, h, w = x.shape
    return F.transpose(F.reshape(x, (b, c, h * w)), 1, 2)                 # (B, C, H, W) -> (B, HW, C)


def _image(y, shape):
    b, c, h, w = shape
    return F.reshape(F.transpose(y, 1, 2), (b, c, h, w))                  # (B, HW, C) -> (B, C, H, W)


class AttnBlock(Module):
    """x + MHA(GN(x)): self-attention among the H*W positions. (B, C, H, W) -> same."""

    def __init__(self, c: int, heads: int = 1, groups: int = 8, rng=None, dtype=xp.float32):
        super().__init__()
        self.norm = GroupNorm(group_count(c, groups), c, dtype=dtype)
        self.attn = MultiheadAttention(c, heads, rng=rng, dtype=dtype)
        init.zero_module(self.attn.out_proj)

    def forward(self, x):
        return x + _image(self.attn(_tokens(self.norm(x))), x.shape)


class CrossAttnBlock(Module):
    """x + MHA(GN(x), context): each of the H*W positions attends to a context sequence.

    (x (B, C, H, W), context (B, S, context_dim), mask (B, S) boolean or None) -> (B, C, H, W).
    mask: True where a context token may be attended to (False: padding).
    """

    def __init__(self, c: int, context_dim: int, heads: int = 1, groups: int = 8, rng=None,
                 dtype=xp.float32):
        super().__init__()
        self.norm = GroupNorm(group_count(c, groups), c, dtype=dtype)
        self.attn = MultiheadAttention(c, heads, kdim=context_dim, rng=rng, dtype=dtype)
        init.zero_module(self.attn.out_proj)

    def forward(self, x, context, mask=None):
        if context is None:
            raise ValueError("a cross-attention block needs a context (B, S, context_dim)")
        mask = key_padding_mask(mask)                                     # (B, S) -> (B, 1, 1, S)
        # (33): softmax(Q K^T / sqrt(d)) V, Q = W_Q phi(z_t) (the normed pixels as tokens),
        # K = W_K tau(y), V = W_V tau(y) (the context), then the output projection, residual
        return x + _image(self.attn(_tokens(self.norm(x)), context, attn_mask=mask), x.shape)


class Downsample(Module):
    def __init__(self, c: int, rng=None, dtype=xp.float32):
        super().__init__()
        self.conv = Conv2d(c, c, 3, stride=2, padding=1, rng=rng, dtype=dtype)

    def forward(self, x):
        return self.conv(x)                                  # (B, C, H, W) -> (B, C, H/2, W/2)


class Upsample(Module):
    def __init__(self, c: int, rng=None, dtype=xp.float32):
        super().__init__()
        self.conv = Conv2d(c, c, 3, padding=1, rng=rng, dtype=dtype)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2))   # (B, C, H, W) -> (B, C, 2H, 2W)


def apply_blocks(blocks, h, e, rng=None, context=None, context_mask=None):
    """Run a sequence of blocks, giving each what it takes: ResBlocks the embedding e (and the
    dropout rng), cross-attention blocks the context, the others h alone."""
    for b in blocks:
        if isinstance(b, ResBlock):
            h = b(h, e, rng)
        elif isinstance(b, CrossAttnBlock):
            h = b(h, context, context_mask)
        else:
            h = b(h)
    return h
