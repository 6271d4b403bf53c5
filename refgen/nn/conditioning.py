"""Domain encoders tau_theta: a condition y -> a token sequence tau_theta(y) (B, M, d_tau)
that a denoiser reads by cross-attention (latent diffusion, Rombach et al. 2022; eq. (33) of
the numbered diffusion derivation, computed in refgen.nn.blocks.CrossAttnBlock).

    ClassTokens   a label y in 0..K-1 (and K, the null label of classifier-free guidance)
                  -> LayerNorm(reshape(E[y], (M, d_tau))): M learned tokens per class
"""
from __future__ import annotations

import refgen.functional as F
from refgen.autograd import Tensor
from refgen.backend import xp
from refgen.nn.layers import Embedding, LayerNorm
from refgen.nn.module import Module

__all__ = ["ClassTokens"]


class ClassTokens(Module):
    """tau_theta for class labels: y (B,) integers in 0..num_classes (num_classes: the null
    label) -> (B, tokens, dim). One embedding row of tokens * dim numbers per label, cut into
    ``tokens`` tokens and layer-normalised token by token."""

    def __init__(self, num_classes: int, tokens: int = 4, dim: int = 32, rng=None,
                 dtype=xp.float32):
        super().__init__()
        if int(num_classes) < 1 or int(tokens) < 1 or int(dim) < 1:
            raise ValueError(f"ClassTokens needs num_classes, tokens and dim >= 1; got "
                             f"{num_classes}, {tokens}, {dim}")
        self.num_classes, self.tokens, self.dim = int(num_classes), int(tokens), int(dim)
        self.embed = Embedding(self.num_classes + 1, self.tokens * self.dim, rng=rng, dtype=dtype)
        self.norm = LayerNorm(self.dim, dtype=dtype)

    def forward(self, y):
        y = xp.asarray(y.data if isinstance(y, Tensor) else y).astype(xp.int64).reshape(-1)
        if y.size and (int(y.min()) < 0 or int(y.max()) > self.num_classes):
            raise ValueError(f"labels must be in 0..{self.num_classes} ({self.num_classes}: the "
                             f"null label); got {int(y.min())}..{int(y.max())}")
        e = self.embed(y)                                                   # (B, M d_tau)
        return self.norm(F.reshape(e, (y.shape[0], self.tokens, self.dim)))  # (B, M, d_tau)

    def extra_repr(self):
        return f"num_classes={self.num_classes}, tokens={self.tokens}, dim={self.dim}"
