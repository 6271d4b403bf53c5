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
"""
from __future__ import annotations

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


class UNet(Module):
    """(x (B, C, H, W), t (B,), y (B,) or None, context (B, S, context_dim) or None)
    -> (B, out_channels, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, image_size: int, channels: int = 32,
                 channel_mult=None, num_res_blocks: int = 2, attn_res=None, heads: int = 1,
                 groups: int = 8, dropout: float = 0.0, num_classes=None, rng=None,
                 dtype=xp.float32, *, scale_shift: bool = False, context_dim=None):
        super().__init__()
        rng = init.get_rng(rng)
        mult = tuple(channel_mult) if channel_mult else default_channel_mult(image_size)
        if image_size % (2 ** (len(mult) - 1)):
            raise ValueError(f"image size {image_size} cannot be halved {len(mult) - 1} times "
                             f"(channel_mult={mult})")
        lowest = image_size // 2 ** (len(mult) - 1)
        attn_res = (lowest,) if attn_res is None else tuple(attn_res)
        ch, emb_dim = int(channels), 4 * int(channels)
        self.mult, self.attn_res, self.num_res_blocks = mult, attn_res, int(num_res_blocks)
        self.context_dim = None if context_dim is None else int(context_dim)
        kw = dict(rng=rng, dtype=dtype)

        def res(cin, cout):
            return ResBlock(cin, cout, emb_dim, groups, dropout, scale_shift, **kw)

        def attn(c):
            out = [AttnBlock(c, heads, groups, **kw)]
            if self.context_dim is not None:
                out.append(CrossAttnBlock(c, self.context_dim, heads, groups, **kw))
            return out

        self.embed = TimeEmbedding(ch, emb_dim, num_classes, **kw)
        self.conv_in = Conv2d(in_channels, ch, 3, padding=1, **kw)

        self.down = ModuleList()
        skips, c, r = [ch], ch, image_size
        for level, m in enumerate(mult):
            for _ in range(self.num_res_blocks):
                blocks = ModuleList([res(c, ch * m)])
                c = ch * m
                if r in attn_res:
                    blocks.extend(attn(c))
                self.down.append(blocks)
                skips.append(c)
            if level < len(mult) - 1:
                self.down.append(ModuleList([Downsample(c, **kw)]))
                skips.append(c)
                r //= 2
        self.skip_channels, self.mid_channels = tuple(skips), c          # what encode returns

        self.mid1 = res(c, c)
        self.mid_attn, *cross = attn(c)
        self.mid_cross = cross[0] if cross else None
        self.mid2 = res(c, c)

        self.up = ModuleList()
        for level, m in reversed(list(enumerate(mult))):
            for i in range(self.num_res_blocks + 1):
                blocks = ModuleList([res(c + skips.pop(), ch * m)])
                c = ch * m
                if r in attn_res:
                    blocks.extend(attn(c))
                if level > 0 and i == self.num_res_blocks:
                    blocks.append(Upsample(c, **kw))
                    r *= 2
                self.up.append(blocks)

        self.norm_out = GroupNorm(group_count(c, groups), c, dtype=dtype)
        self.conv_out = init.zero_module(Conv2d(c, out_channels, 3, padding=1, **kw))

    def forward(self, x, t, y=None, rng=None, context=None, context_mask=None):
        if (context is None) != (self.context_dim is None):
            raise ValueError("pass a context (B, S, context_dim) exactly when the U-Net was built "
                             f"with context_dim (it was built with context_dim={self.context_dim})")
        e = self.embed(t, y)                                              # (B, 4 ch)
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
        for blocks in self.down:
            h = apply_blocks(blocks, h, e, **run)
            hs.append(h)
        mid = [self.mid1, self.mid_attn] + ([self.mid_cross] if self.mid_cross is not None else []) + [self.mid2]
        return apply_blocks(mid, h, e, **run), hs

    def decode(self, h, skips, e, *, rng=None, context=None, context_mask=None):
        """The up path and the output: (h, skips) of ``encode`` -> (B, out_channels, H, W)."""
        run = dict(rng=rng, context=context, context_mask=context_mask)
        hs = list(skips)
        for blocks in self.up:
            h = F.cat([h, hs.pop()], dim=1)                               # (B, c + c_skip, H, W)
            h = apply_blocks(blocks, h, e, **run)
        return self.conv_out(F.silu(self.norm_out(h)))                    # (B, out_channels, H, W)
