"""The pre-norm transformer block (GPT-2's layout), optionally causal, with a cross-attention
layer when there is a context:

    h = h + Attn(LN(h))                    softmax(Q K^T / sqrt(d) + mask) V, per head
    h = h + CrossAttn(LN(h), context)      only when built with context_dim
    h = h + W_2 GELU(W_1 LN(h))

(B, T, E) -> (B, T, E). With ``cache`` (a dict, empty at first) a causal block decodes
incrementally: each call appends its keys/values to the cached ones and its queries attend
to every cached position and to the new ones up to themselves, so feeding a sequence in
pieces gives the same outputs as one full forward.
"""
from __future__ import annotations

from refgen.backend import xp
from refgen.nn.attention import MultiheadAttention, key_padding_mask
from refgen.nn.layers import GELU, LayerNorm, Linear
from refgen.nn.module import Module, Sequential

__all__ = ["TransformerBlock"]


class TransformerBlock(Module):
    """h + Attn(LN(h)) [+ CrossAttn(LN(h), context)], then h + MLP(LN(h)).

    causal: position t attends to positions <= t only. context_dim: the feature size of a
    context sequence (B, S, context_dim) that every position may attend to (cross-attention;
    ``context_mask`` (B, S) boolean, True where a context token may be attended to).
    """

    def __init__(self, n_embd: int, n_head: int, causal: bool = False, context_dim=None,
                 mlp_ratio: int = 4, rng=None, dtype=xp.float32):
        super().__init__()
        self.causal = bool(causal)
        self.ln1 = LayerNorm(n_embd, dtype=dtype)
        self.attn = MultiheadAttention(n_embd, n_head, rng=rng, dtype=dtype)
        if context_dim is not None:
            self.ln_cross = LayerNorm(n_embd, dtype=dtype)
            self.cross_attn = MultiheadAttention(n_embd, n_head, kdim=int(context_dim), rng=rng,
                                                 dtype=dtype)
        else:
            self.cross_attn = None
        self.ln2 = LayerNorm(n_embd, dtype=dtype)
        # GELU in GPT-2's tanh form (as trained there; also cheaper than erf on NumPy)
        self.mlp = Sequential(Linear(n_embd, mlp_ratio * n_embd, rng=rng, dtype=dtype),
                              GELU(approximate="tanh"),
                              Linear(mlp_ratio * n_embd, n_embd, rng=rng, dtype=dtype))

    def forward(self, h, cache=None, context=None, context_mask=None):
        h = h + self.attn(self.ln1(h), is_causal=self.causal, cache=cache)
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this block has cross-attention: pass a context (B, S, context_dim)")
            sub = None if cache is None else cache.setdefault("cross", {})
            h = h + self.cross_attn(self.ln_cross(h), context, attn_mask=key_padding_mask(context_mask),
                                    cache=sub)
        elif context is not None:
            raise ValueError("this block was built without context_dim: it takes no context")
        return h + self.mlp(self.ln2(h))

    def extra_repr(self):
        return f"causal={self.causal}"
