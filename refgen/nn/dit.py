"""The diffusion transformer, DiT (Peebles & Xie 2023, "Scalable Diffusion Models with
Transformers"), assembled from refgen.nn's attention, transformer and embedding blocks.

    x (B, C, H, W) --patchify--> (B, N, p p C),  N = (H / p) (W / p)
                   --Linear + fixed 2D sin-cos position embedding--> tokens h (B, N, D)
    c = TimeEmbedding(t) + LabelEmbedding(y)                         (B, D)
    depth blocks, by ``conditioning``:
      adaln_zero   (a, b, g, a', b', g') = W_c silu(c) + b_c,  W_c and b_c start at zero
                   h = h + g  * Attn(LN(h) (1 + b)  + a)
                   h = h + g' * MLP(LN(h) (1 + b') + a')
      in_context   [t, y] as two more tokens in the sequence, plain transformer blocks;
                   the two are dropped after the last block
      cross_attn   plain transformer blocks with a cross-attention layer that attends to
                   the sequence [t, y] (B, 2, D)
    final layer:   LN(h) (1 + b) + a, (a, b) = W silu(c) (adaLN; a plain LN in the other
                   two variants), then Linear D -> p p C_out, started at zero
    unpatchify:    (B, N, p p C_out) -> (B, C_out, H, W)

LN here is layer normalisation without a learned gain or bias (adaLN supplies both). With the
gates and the final linear layer at zero a new adaLN-Zero DiT is the identity in every block
and outputs zero, the "-Zero" of the name.
"""
from __future__ import annotations

import refgen.functional as F
from refgen.backend import xp
from refgen.nn import init
from refgen.nn.attention import MultiheadAttention
from refgen.nn.embeddings import TimeEmbedding
from refgen.nn.layers import GELU, Embedding, LayerNorm, Linear
from refgen.nn.module import Module, ModuleList, Sequential
from refgen.nn.transformer import TransformerBlock

__all__ = ["patchify", "unpatchify", "sincos_pos_embed_2d", "modulate", "AdaLNZeroBlock",
           "DiTFinalLayer", "DiT", "DIT_CONDITIONING"]

DIT_CONDITIONING = ("adaln_zero", "in_context", "cross_attn")


def patchify(x, p: int):
    """(B, C, H, W) -> (B, (H/p)(W/p), p p C): patch (i, j) in row-major order becomes token
    i (W/p) + j, its features ordered (row in patch, column in patch, channel)."""
    b, c, hh, ww = x.shape
    if hh % p or ww % p:
        raise ValueError(f"image size {hh}x{ww} is not divisible by patch_size={p}")
    h, w = hh // p, ww // p
    x = F.reshape(x, (b, c, h, p, w, p))                                 # (B, C, h, p, w, q)
    x = F.permute(x, (0, 2, 4, 3, 5, 1))                                 # (B, h, w, p, q, C)
    return F.reshape(x, (b, h * w, p * p * c))


def unpatchify(tokens, p: int, h: int, w: int):
    """(B, h w, p p C) -> (B, C, h p, w p), the inverse of patchify."""
    b, n, d = tokens.shape
    if n != h * w or d % (p * p):
        raise ValueError(f"{n} tokens of size {d} are not a {h}x{w} grid of {p}x{p} patches")
    c = d // (p * p)
    x = F.reshape(tokens, (b, h, w, p, p, c))                            # (B, h, w, p, q, C)
    x = F.permute(x, (0, 5, 1, 3, 2, 4))                                 # (B, C, h, p, w, q)
    return F.reshape(x, (b, c, h * p, w * p))


def _sincos_1d(dim: int, pos):
    """(M,) positions -> (M, dim): [sin(pos w_i), cos(pos w_i)], w_i = 10000^(-i / (dim/2))."""
    omega = 1.0 / 10000.0 ** (xp.arange(dim // 2, dtype=xp.float64) / (dim / 2.0))
    args = xp.asarray(pos, dtype=xp.float64)[:, None] * omega[None, :]  # (M, dim/2)
    return xp.concatenate([xp.sin(args), xp.cos(args)], axis=1)


def sincos_pos_embed_2d(dim: int, h: int, w: int, dtype=xp.float32):
    """The fixed (h w, dim) position embedding of a token grid: the first dim/2 features are
    the 1D sin-cos embedding of the token's column, the last dim/2 that of its row."""
    if dim % 4:
        raise ValueError(f"the 2D sin-cos position embedding needs a width divisible by 4, got {dim}")
    row, col = xp.divmod(xp.arange(h * w), w)                           # token i w + j -> (i, j)
    return xp.concatenate([_sincos_1d(dim // 2, col), _sincos_1d(dim // 2, row)], axis=1).astype(dtype)


def modulate(x, shift, scale):
    """adaLN: x (B, N, D) normalised, scaled by 1 + scale and shifted, per example (B, D)."""
    return x * (1 + F.unsqueeze(scale, 1)) + F.unsqueeze(shift, 1)


def _mlp(d: int, ratio: int, rng, dtype):
    return Sequential(Linear(d, ratio * d, rng=rng, dtype=dtype), GELU(approximate="tanh"),
                      Linear(ratio * d, d, rng=rng, dtype=dtype))


class AdaLNZeroBlock(Module):
    """(h (B, N, D), c (B, D)) -> (B, N, D): the DiT block with adaLN-Zero.

    The six (B, D) vectors shift, scale, gate of the attention and of the MLP sub-block are
    one Linear of silu(c), whose weight and bias start at zero: the block starts as the
    identity map and learns how far to open each residual branch.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4, rng=None, dtype=xp.float32):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=1e-6, elementwise_affine=False, dtype=dtype)
        self.attn = MultiheadAttention(dim, heads, rng=rng, dtype=dtype)
        self.norm2 = LayerNorm(dim, eps=1e-6, elementwise_affine=False, dtype=dtype)
        self.mlp = _mlp(dim, mlp_ratio, rng, dtype)
        self.ada = init.zero_module(Linear(dim, 6 * dim, rng=rng, dtype=dtype))  # adaLN-Zero

    def forward(self, h, c):
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = F.chunk(self.ada(F.silu(c)), 6, dim=1)
        h = h + F.unsqueeze(gate_a, 1) * self.attn(modulate(self.norm1(h), shift_a, scale_a))
        return h + F.unsqueeze(gate_m, 1) * self.mlp(modulate(self.norm2(h), shift_m, scale_m))


class DiTFinalLayer(Module):
    """(h (B, N, D), c (B, D) or None) -> (B, N, out_dim): LN, adaLN's shift and scale from c
    (when ``adaptive``), then a Linear that starts at zero."""

    def __init__(self, dim: int, out_dim: int, adaptive: bool = True, rng=None, dtype=xp.float32):
        super().__init__()
        self.adaptive = bool(adaptive)
        self.norm = LayerNorm(dim, eps=1e-6, elementwise_affine=not adaptive, dtype=dtype)
        self.ada = init.zero_module(Linear(dim, 2 * dim, rng=rng, dtype=dtype)) if adaptive else None
        self.linear = init.zero_module(Linear(dim, out_dim, rng=rng, dtype=dtype))

    def forward(self, h, c=None):
        h = self.norm(h)
        if self.adaptive:
            shift, scale = F.chunk(self.ada(F.silu(c)), 2, dim=1)         # 2 x (B, D)
            h = modulate(h, shift, scale)
        return self.linear(h)


class DiT(Module):
    """(x (B, C, H, W), t (B,), y (B,) or None) -> (B, out_channels, H, W).

    patch_size p (H and W divisible by p), width D (divisible by 4 and by heads), depth
    blocks, heads; conditioning adaln_zero | in_context | cross_attn (module docstring);
    num_classes: a label embedding with num_classes + 1 rows, the last the null label.
    forward's ``rng`` is accepted for the U-Net's signature and unused (no dropout). Weights
    not started at zero take refgen's (torch's) default initialisation.
    """

    def __init__(self, in_channels: int, out_channels: int, image_size: int, patch_size: int = 2,
                 width: int = 64, depth: int = 4, heads: int = 4, conditioning: str = "adaln_zero",
                 num_classes=None, mlp_ratio: int = 4, freq_dim: int = 256, rng=None,
                 dtype=xp.float32):
        super().__init__()
        if conditioning not in DIT_CONDITIONING:
            raise ValueError(f"DiT conditioning must be one of {', '.join(DIT_CONDITIONING)}, "
                             f"got {conditioning!r}")
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not divisible by patch_size={patch_size}")
        if width % heads:
            raise ValueError(f"DiT width={width} is not divisible by heads={heads}")
        rng = init.get_rng(rng)
        kw = dict(rng=rng, dtype=dtype)
        p, d = int(patch_size), int(width)
        self.patch_size, self.grid = p, image_size // p
        self.conditioning, self.out_channels = conditioning, int(out_channels)
        self.patch_embed = Linear(p * p * in_channels, d, **kw)          # (B, N, p p C) -> (B, N, D)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(d, self.grid, self.grid, dtype),
                             persistent=False)
        self.t_embed = TimeEmbedding(freq_dim, d, None, **kw)            # sinusoids -> MLP -> (B, D)
        self.y_embed = Embedding(num_classes + 1, d, **kw) if num_classes else None
        if conditioning == "adaln_zero":
            self.blocks = ModuleList([AdaLNZeroBlock(d, heads, mlp_ratio, **kw) for _ in range(depth)])
        else:
            ctx = d if conditioning == "cross_attn" else None
            self.blocks = ModuleList([TransformerBlock(d, heads, context_dim=ctx, mlp_ratio=mlp_ratio, **kw)
                                      for _ in range(depth)])
        self.final = DiTFinalLayer(d, p * p * self.out_channels, conditioning == "adaln_zero", **kw)

    def _conditions(self, t, y):
        """[t_emb, y_emb] (each (B, D); y_emb only for a class-conditional DiT)."""
        out = [self.t_embed(t)]
        if self.y_embed is not None:
            if y is None:
                raise ValueError("this DiT is class-conditional: pass labels y (the null label "
                                 f"{self.y_embed.num_embeddings - 1} for unconditional)")
            out.append(self.y_embed(y))
        return out

    def forward(self, x, t, y=None, rng=None):
        side = self.grid * self.patch_size
        if tuple(x.shape[2:]) != (side, side):
            raise ValueError(f"this DiT takes {side}x{side} images, got shape {tuple(x.shape)}")
        h = self.patch_embed(patchify(x, self.patch_size)) + self.pos_embed  # (B, N, D)
        conds = self._conditions(t, y)
        if self.conditioning == "adaln_zero":
            c = conds[0] if len(conds) == 1 else conds[0] + conds[1]     # (B, D)
            for block in self.blocks:
                h = block(h, c)
            h = self.final(h, c)
        elif self.conditioning == "in_context":
            k = len(conds)
            h = F.cat([F.stack(conds, dim=1), h], dim=1)                 # (B, k + N, D)
            for block in self.blocks:
                h = block(h)
            h = self.final(h[:, k:])                                     # drop the k condition tokens
        else:
            ctx = F.stack(conds, dim=1)                                  # (B, k, D)
            for block in self.blocks:
                h = block(h, context=ctx)
            h = self.final(h)
        return unpatchify(h, self.patch_size, self.grid, self.grid)      # (B, C_out, H, W)

    def extra_repr(self):
        return f"patch_size={self.patch_size}, grid={self.grid}, conditioning={self.conditioning}"
