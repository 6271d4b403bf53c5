"""Multi-head attention: self, causal and cross attention, with a key/value cache.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V,   Q = x W_q,  K = c W_k,  V = c W_v

per head, where c is x itself (self-attention) or a context sequence (cross-attention, as in
latent diffusion's text conditioning). Shapes are batch-first: x (B, L, E).
"""
from __future__ import annotations

import refgen.functional as F
from refgen.autograd import Tensor
from refgen.backend import xp
from refgen.nn import init
from refgen.nn.layers import Linear
from refgen.nn.module import Module

__all__ = ["MultiheadAttention", "key_padding_mask"]


class MultiheadAttention(Module):
    """``num_heads`` heads of size ``embed_dim // num_heads`` with separate q/k/v/out projections.

    kdim: the feature size of the context for cross-attention (default ``embed_dim``);
    keys and values are both projected from it.
    dropout: probability of dropping attention weights in training (noise from F's default
    generator; the constructor's ``rng`` only initialises the weights).
    """

    def __init__(self, embed_dim: int, num_heads: int, kdim: int | None = None,
                 bias: bool = True, dropout: float = 0.0, rng=None, dtype=xp.float32):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        kdim = embed_dim if kdim is None else kdim
        self.kdim, self.dropout = kdim, dropout
        rng = init.get_rng(rng)
        self.q_proj = Linear(embed_dim, embed_dim, bias=bias, rng=rng, dtype=dtype)
        self.k_proj = Linear(kdim, embed_dim, bias=bias, rng=rng, dtype=dtype)
        self.v_proj = Linear(kdim, embed_dim, bias=bias, rng=rng, dtype=dtype)
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, rng=rng, dtype=dtype)

    def _heads(self, t):
        b, n, _ = t.shape
        # (B, L, E) -> (B, H, L, D)
        return F.transpose(F.reshape(t, (b, n, self.num_heads, self.head_dim)), 1, 2)

    def forward(self, x, context=None, is_causal: bool = False, attn_mask=None, cache=None):
        """x: (B, L, E); context: (B, S, kdim) or None for self-attention.

        attn_mask: broadcastable to (B, H, L, S_total), torch semantics (boolean True = may
        attend; floating = added to the scores).
        cache: a dict, filled on the first call and extended on later ones, for incremental
        decoding. Self-attention appends this call's keys/values to the cached ones, so a
        causal call with L new tokens attends to every cached position plus the new ones up
        to itself. Cross-attention projects the context once and reuses it.
        """
        b, n, _ = x.shape
        q = self._heads(self.q_proj(x))  # (B, H, L, D)
        if context is not None:  # cross-attention
            if cache is not None and "k" in cache:
                k, v = cache["k"], cache["v"]
            else:
                k, v = self._heads(self.k_proj(context)), self._heads(self.v_proj(context))
                if cache is not None:
                    cache["k"], cache["v"] = k, v
            past = 0
        else:
            k, v = self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
            past = 0
            if cache is not None:
                if "k" in cache:
                    past = cache["k"].shape[2]
                    k = F.cat([cache["k"], k], dim=2)  # (B, H, past + L, D)
                    v = F.cat([cache["v"], v], dim=2)
                cache["k"], cache["v"] = k, v
        if is_causal and past > 0:
            # query i sits at position past + i: it may see keys 0 .. past + i
            s = k.shape[2]
            allowed = xp.arange(s)[None, :] <= (past + xp.arange(n))[:, None]  # (L, S)
            attn_mask = _combine(attn_mask, allowed)
            is_causal = False
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                           dropout_p=p)
        # (B, H, L, D) -> (B, L, E)
        y = F.reshape(F.transpose(y, 1, 2), (b, n, self.embed_dim))
        return self.out_proj(y)

    def extra_repr(self):
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, kdim={self.kdim}"


def key_padding_mask(mask):
    """A (B, S) boolean mask over a context's tokens (True: may be attended to) as an
    attention mask broadcastable to (B, H, L, S); None stays None."""
    if mask is None:
        return None
    return xp.asarray(mask.data if isinstance(mask, Tensor) else mask).astype(bool)[:, None, None, :]


def _combine(mask, allowed):
    """A user mask and a boolean (L, S) causal pattern as one mask of the user's kind."""
    if mask is None:
        return allowed
    m = mask.data if isinstance(mask, Tensor) else xp.asarray(mask)
    if m.dtype == bool:
        return m & allowed
    additive = xp.where(allowed, 0.0, -xp.inf).astype(m.dtype)
    return mask + Tensor(additive) if isinstance(mask, Tensor) else m + additive
