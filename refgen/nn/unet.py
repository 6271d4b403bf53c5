"""The U-Net (the DDPM / improved-DDPM layout, small), assembled from refgen.nn.blocks.

    x (B, C, H, W) --conv3x3--> (B, ch, H, W)
    down:  at each level l (channels ch * mult_l), num_res_blocks ResBlocks (+ self-attention,
           and cross-attention to the context when there is one, at the resolutions in
           attn_res), every output kept for a skip connection; then a stride-2 conv halves
           H and W (not after the last level)
    middle: ResBlock, attention (+ cross-attention), ResBlock
    up:    at each level, from the lowest, num_res_blocks + 1 ResBlocks, each taking the
           concatenation [h, skip] (channel axis), then nearest-neighbour 2x upsampling + conv3x3
    out:   GroupNorm, SiLU, conv3x3 -> (B, C_out, H, W), started at zero

e is the time (+ class) embedding (refgen.nn.embeddings.TimeEmbedding), given to every
ResBlock. Options: scale_shift (AdaGN ResBlocks), context_dim (cross-attention blocks fed the
``context`` argument of forward, e.g. a text encoder's token features).

Architecture options (keyword-only; the defaults give the layout above):
    num_res_blocks    an int, or one per level (Imagen: more at the low resolutions)
    head_channels     attention heads of c / head_channels channels each at a level of width c
                      (instead of a fixed ``heads``; Dhariwal & Nichol 2021)
    resblock_updown   resample with ResBlock(resample='down'|'up') instead of the strided conv /
                      nearest-upsample-and-conv (BigGAN residual resampling; Dhariwal & Nichol)
    rescale_residual  every ResBlock returns (skip(x) + h) / sqrt(2) (Dhariwal & Nichol)
    rescale_skip      the skip connections are multiplied by 1/sqrt(2) before the
                      concatenation (Imagen's efficient U-Net, Saharia et al. 2022)
    resample_first    Imagen's block order: a level's downsampling comes before its blocks (and
                      its output is no skip connection), the upsampling after them, so each up
                      level has num_res_blocks ResBlocks (num_res_blocks + 1 at the top level,
                      which takes conv_in's skip)
    aug_embed         a second time embedding, of a noise-augmentation level ``aug`` passed to
                      forward, added to e (the super-resolution model of a cascade)
"""
from __future__ import annotations

import math
import numbers

import refgen.functional as F
from refgen.backend import xp
from refgen.nn import init
from refgen.nn.blocks import (AttnBlock, CrossAttnBlock, Downsample, ResBlock, Upsample,
                              apply_blocks, group_count)
from refgen.nn.embeddings import TimeEmbedding
from refgen.nn.layers import Conv2d, GroupNorm
from refgen.nn.module import Module, ModuleList

__all__ = ["UNet", "default_channel_mult"]


def default_channel_mult(size: int) -> tuple:
    """Channel multipliers by image size: one level per halving that stays even and >= 7
    (28 -> 28, 14, 7: (1, 2, 2); 14 -> 14, 7: (1, 2)), at most three levels."""
    mult, s = [1], size
    while len(mult) < 3 and s % 2 == 0 and s // 2 >= 7:
        s //= 2
        mult.append(2)
    return tuple(mult)


def _per_level(num_res_blocks, levels: int) -> tuple:
    """num_res_blocks as one count per level: an int repeated, or a sequence of ``levels``."""
    if isinstance(num_res_blocks, numbers.Integral):
        return (int(num_res_blocks),) * levels
    out = tuple(int(n) for n in num_res_blocks)
    if len(out) != levels or min(out) < 1:
        raise ValueError(f"num_res_blocks must be an int or {levels} positive ints (one per "
                         f"level), got {num_res_blocks!r}")
    return out


class UNet(Module):
    """(x (B, C, H, W), t (B,), y (B,) or None, context (B, S, context_dim) or None)
    -> (B, out_channels, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, image_size: int, channels: int = 32,
                 channel_mult=None, num_res_blocks: int = 2, attn_res=None, heads: int = 1,
                 groups: int = 8, dropout: float = 0.0, num_classes=None, rng=None,
                 dtype=xp.float32, *, scale_shift: bool = False, context_dim=None,
                 head_channels=None, resblock_updown: bool = False, rescale_residual: bool = False,
                 rescale_skip: bool = False, resample_first: bool = False, aug_embed: bool = False):
        super().__init__()
        rng = init.get_rng(rng)
        mult = tuple(channel_mult) if channel_mult else default_channel_mult(image_size)
        if image_size % (2 ** (len(mult) - 1)):
            raise ValueError(f"image size {image_size} cannot be halved {len(mult) - 1} times "
                             f"(channel_mult={mult})")
        lowest = image_size // 2 ** (len(mult) - 1)
        attn_res = (lowest,) if attn_res is None else tuple(attn_res)
        ch, emb_dim = int(channels), 4 * int(channels)
        nrb = _per_level(num_res_blocks, len(mult))
        self.mult, self.attn_res, self.num_res_blocks = mult, attn_res, nrb
        self.context_dim = None if context_dim is None else int(context_dim)
        self.skip_scale = 1 / math.sqrt(2) if rescale_skip else 1.0
        self.resample_first = bool(resample_first)
        kw = dict(rng=rng, dtype=dtype)

        def res(cin, cout, resample=None):
            return ResBlock(cin, cout, emb_dim, groups, dropout, scale_shift, **kw,
                            resample=resample, rescale=rescale_residual)

        def n_heads(c):
            if head_channels is None:
                return heads
            if c % int(head_channels):
                raise ValueError(f"head_channels={head_channels} does not divide a level's "
                                 f"{c} channels")
            return c // int(head_channels)

        def attn(c):
            out = [AttnBlock(c, n_heads(c), groups, **kw)]
            if self.context_dim is not None:
                out.append(CrossAttnBlock(c, self.context_dim, n_heads(c), groups, **kw))
            return out

        def down(c):
            return res(c, c, "down") if resblock_updown else Downsample(c, **kw)

        def up(c):
            return res(c, c, "up") if resblock_updown else Upsample(c, **kw)

        self.embed = TimeEmbedding(ch, emb_dim, num_classes, **kw)
        self.aug_embed = TimeEmbedding(ch, emb_dim, **kw) if aug_embed else None
        self.conv_in = Conv2d(in_channels, ch, 3, padding=1, **kw)

        self.down = ModuleList()
        skips, c, r = [ch], ch, image_size
        for level, m in enumerate(mult):
            if self.resample_first and level > 0:                         # Imagen: resample, then convolve
                self.down.append(ModuleList([down(c)]))
                r //= 2
            for _ in range(nrb[level]):
                blocks = ModuleList([res(c, ch * m)])
                c = ch * m
                if r in attn_res:
                    blocks.extend(attn(c))
                self.down.append(blocks)
                skips.append(c)
            if not self.resample_first and level < len(mult) - 1:
                self.down.append(ModuleList([down(c)]))
                skips.append(c)
                r //= 2
        # which down outputs are skip connections: all, except Imagen-order resamplings
        self.skip_from = [not (self.resample_first and self._is_resampler(b[0])) for b in self.down]
        self.skip_channels, self.mid_channels = tuple(skips), c          # what encode returns

        self.mid1 = res(c, c)
        self.mid_attn, *cross = attn(c)
        self.mid_cross = cross[0] if cross else None
        self.mid2 = res(c, c)

        self.up = ModuleList()
        for level, m in reversed(list(enumerate(mult))):
            n_up = nrb[level] + (1 if level == 0 or not self.resample_first else 0)
            for i in range(n_up):
                blocks = ModuleList([res(c + skips.pop(), ch * m)])
                c = ch * m
                if r in attn_res:
                    blocks.extend(attn(c))
                if level > 0 and i == n_up - 1:
                    blocks.append(up(c))
                    r *= 2
                self.up.append(blocks)
        assert not skips, "every skip connection is used once"

        self.norm_out = GroupNorm(group_count(c, groups), c, dtype=dtype)
        self.conv_out = init.zero_module(Conv2d(c, out_channels, 3, padding=1, **kw))

    @staticmethod
    def _is_resampler(block):
        return isinstance(block, (Downsample, Upsample)) or getattr(block, "resample", None) is not None

    def forward(self, x, t, y=None, rng=None, context=None, context_mask=None, aug=None):
        """aug: (B,) noise-augmentation levels, exactly when built with aug_embed."""
        if (context is None) != (self.context_dim is None):
            raise ValueError("pass a context (B, S, context_dim) exactly when the U-Net was built "
                             f"with context_dim (it was built with context_dim={self.context_dim})")
        if (aug is None) != (self.aug_embed is None):
            raise ValueError("pass aug levels (B,) exactly when the U-Net was built with "
                             f"aug_embed (it was built with aug_embed={self.aug_embed is not None})")
        e = self.embed(t, y)                                              # (B, 4 ch)
        if self.aug_embed is not None:
            e = e + self.aug_embed(aug)                                   # + emb(s), the augmentation level
        h, skips = self.encode(x, e, rng=rng, context=context, context_mask=context_mask)
        return self.decode(h, skips, e, rng=rng, context=context, context_mask=context_mask)

    def encode(self, x, e, *, hint=None, rng=None, context=None, context_mask=None):
        """The down path and the middle: x (B, C, H, W), e (B, 4 ch) -> (h, skips), h the
        middle's output (B, mid_channels, H', W') and skips the list of kept outputs, one per
        entry of skip_channels. hint (B, ch, H, W), when given, is added to conv_in's output
        (ControlNet's way in)."""
        run = dict(rng=rng, context=context, context_mask=context_mask)
        h = self.conv_in(x)                                               # (B, C, H, W) -> (B, ch, H, W)
        if hint is not None:
            h = h + hint
        hs = [h]
        for blocks, keep in zip(self.down, self.skip_from):
            h = apply_blocks(blocks, h, e, **run)
            if keep:
                hs.append(h)
        mid = [self.mid1, self.mid_attn] + ([self.mid_cross] if self.mid_cross is not None else []) + [self.mid2]
        return apply_blocks(mid, h, e, **run), hs

    def decode(self, h, skips, e, *, rng=None, context=None, context_mask=None):
        """The up path and the output: (h, skips) of ``encode`` -> (B, out_channels, H, W)."""
        run = dict(rng=rng, context=context, context_mask=context_mask)
        hs = list(skips)
        for blocks in self.up:
            skip = hs.pop()
            skip = skip * self.skip_scale if self.skip_scale != 1.0 else skip  # Imagen: skip / sqrt(2)
            h = F.cat([h, skip], dim=1)                                   # (B, c + c_skip, H, W)
            h = apply_blocks(blocks, h, e, **run)
        return self.conv_out(F.silu(self.norm_out(h)))                    # (B, out_channels, H, W)
