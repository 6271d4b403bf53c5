"""The U-Net denoiser for images (the DDPM / improved-DDPM layout, small).

    x (B, C, H, W) --conv3x3--> (B, ch, H, W)
    down:  at each level l (channels ch * mult_l), num_res_blocks ResBlocks (+ self-attention
           at the resolutions in attn_res), every output kept for a skip connection; then a
           stride-2 conv halves H and W (not after the last level)
    middle: ResBlock, attention, ResBlock
    up:    at each level, from the lowest, num_res_blocks + 1 ResBlocks, each taking the
           concatenation [h, skip] (channel axis), then nearest-neighbour 2x upsampling + conv3x3
    out:   GroupNorm, SiLU, conv3x3 -> (B, C_out, H, W), started at zero

ResBlock:  h = conv(silu(GN(x))) + W_e silu(e);  h = conv(dropout(silu(GN(h))));  skip(x) + h
with e the time (+ class) embedding (nets.TimeEmbedding) and skip a 1x1 conv where the channel
count changes. Attention: x + MHA(GN(x)) over the H*W positions as tokens.
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen.backend import xp
from refgen.nn import Conv2d, GroupNorm, Linear, Module, ModuleList, MultiheadAttention, init
from refgen.models.diffusion.nets import TimeEmbedding

__all__ = ["ResBlock", "AttnBlock", "Downsample", "Upsample", "UNet", "default_channel_mult"]


def _groups(c: int, groups: int) -> int:
    """gcd(c, groups): the largest group count dividing both c and ``groups`` (GroupNorm
    needs c % g == 0; e.g. c = 12, groups = 8 gives 4)."""
    return math.gcd(c, groups)


_zero = init.zero_module


class ResBlock(Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int = 8, dropout: float = 0.0,
                 rng=None, dtype=xp.float32):
        super().__init__()
        self.norm1 = GroupNorm(_groups(cin, groups), cin, dtype=dtype)
        self.conv1 = Conv2d(cin, cout, 3, padding=1, rng=rng, dtype=dtype)
        self.emb = Linear(emb_dim, cout, rng=rng, dtype=dtype)
        self.norm2 = GroupNorm(_groups(cout, groups), cout, dtype=dtype)
        # started at zero: a new block is the identity (its skip path)
        self.conv2 = _zero(Conv2d(cout, cout, 3, padding=1, rng=rng, dtype=dtype))
        self.skip = Conv2d(cin, cout, 1, rng=rng, dtype=dtype) if cin != cout else None
        self.dropout = float(dropout)

    def forward(self, x, e, rng=None):
        h = self.conv1(F.silu(self.norm1(x)))                             # (B, cout, H, W)
        b, c = h.shape[:2]
        h = h + F.reshape(self.emb(F.silu(e)), (b, c, 1, 1))              # (B, emb) -> (B, cout, 1, 1)
        h = F.silu(self.norm2(h))
        if self.training and self.dropout > 0:
            h = F.dropout(h, self.dropout, rng=rng)
        h = self.conv2(h)
        return (x if self.skip is None else self.skip(x)) + h


class AttnBlock(Module):
    def __init__(self, c: int, heads: int = 1, groups: int = 8, rng=None, dtype=xp.float32):
        super().__init__()
        self.norm = GroupNorm(_groups(c, groups), c, dtype=dtype)
        self.attn = MultiheadAttention(c, heads, rng=rng, dtype=dtype)
        _zero(self.attn.out_proj)

    def forward(self, x):
        b, c, h, w = x.shape
        tokens = F.transpose(F.reshape(self.norm(x), (b, c, h * w)), 1, 2)  # (B, C, H, W) -> (B, HW, C)
        y = self.attn(tokens)                                             # (B, HW, C)
        return x + F.reshape(F.transpose(y, 1, 2), (b, c, h, w))          # (B, HW, C) -> (B, C, H, W)


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


def default_channel_mult(size: int) -> tuple:
    """Channel multipliers by image size: one level per halving that stays even and >= 7
    (28 -> 28, 14, 7: (1, 2, 2); 14 -> 14, 7: (1, 2)), at most three levels."""
    mult, s = [1], size
    while len(mult) < 3 and s % 2 == 0 and s // 2 >= 7:
        s //= 2
        mult.append(2)
    return tuple(mult)


class UNet(Module):
    """(x (B, C, H, W), t (B,), y (B,) or None) -> (B, out_channels, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, image_size: int, channels: int = 32,
                 channel_mult=None, num_res_blocks: int = 2, attn_res=None, heads: int = 1,
                 groups: int = 8, dropout: float = 0.0, num_classes=None, rng=None,
                 dtype=xp.float32):
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
        kw = dict(rng=rng, dtype=dtype)
        self.embed = TimeEmbedding(ch, emb_dim, num_classes, **kw)
        self.conv_in = Conv2d(in_channels, ch, 3, padding=1, **kw)

        self.down = ModuleList()
        skips, c, res = [ch], ch, image_size
        for level, m in enumerate(mult):
            for _ in range(self.num_res_blocks):
                blocks = ModuleList([ResBlock(c, ch * m, emb_dim, groups, dropout, **kw)])
                c = ch * m
                if res in attn_res:
                    blocks.append(AttnBlock(c, heads, groups, **kw))
                self.down.append(blocks)
                skips.append(c)
            if level < len(mult) - 1:
                self.down.append(ModuleList([Downsample(c, **kw)]))
                skips.append(c)
                res //= 2

        self.mid1 = ResBlock(c, c, emb_dim, groups, dropout, **kw)
        self.mid_attn = AttnBlock(c, heads, groups, **kw)
        self.mid2 = ResBlock(c, c, emb_dim, groups, dropout, **kw)

        self.up = ModuleList()
        for level, m in reversed(list(enumerate(mult))):
            for i in range(self.num_res_blocks + 1):
                blocks = ModuleList([ResBlock(c + skips.pop(), ch * m, emb_dim, groups, dropout, **kw)])
                c = ch * m
                if res in attn_res:
                    blocks.append(AttnBlock(c, heads, groups, **kw))
                if level > 0 and i == self.num_res_blocks:
                    blocks.append(Upsample(c, **kw))
                    res *= 2
                self.up.append(blocks)

        self.norm_out = GroupNorm(_groups(c, groups), c, dtype=dtype)
        self.conv_out = _zero(Conv2d(c, out_channels, 3, padding=1, **kw))

    @staticmethod
    def _run(blocks, h, e, rng):
        for b in blocks:
            h = b(h, e, rng) if isinstance(b, ResBlock) else b(h)
        return h

    def forward(self, x, t, y=None, rng=None):
        e = self.embed(t, y)                                              # (B, 4 ch)
        h = self.conv_in(x)                                               # (B, C, H, W) -> (B, ch, H, W)
        hs = [h]
        for blocks in self.down:
            h = self._run(blocks, h, e, rng)
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, e, rng)), e, rng)
        for blocks in self.up:
            h = F.cat([h, hs.pop()], dim=1)                               # (B, c + c_skip, H, W)
            h = self._run(blocks, h, e, rng)
        return self.conv_out(F.silu(self.norm_out(h)))                    # (B, out_channels, H, W)
