"""A GPT-style decoder-only transformer over token sequences: characters or image pixels.

    p(x) = prod_{t=1}^{T} p(x_t | x_<t),   -log p(x) = sum_t cross_entropy(logits_t, x_t)

The input is the sequence shifted right by one ([BOS, x_1, ..., x_{T-1}] for images; the
text window itself, with targets one character later, for text), so position t's output
predicts the token after it. Causal self-attention (query t attends to keys s <= t) is the
only way information moves between positions, which is what makes the factorisation exact.

One block, pre-LayerNorm (GPT-2):

    h = h + Attn(LN(h), causal)         softmax(Q K^T / sqrt(d) + mask) V, per head
    h = h + W_2 GELU(W_1 LN(h))

with learned token and position embeddings in, and a final LN and a linear read-out to
logits. Sampling draws one token per step; with the key/value cache each step runs the
network on the new position only (its queries attend to the cached keys/values of every
earlier position), instead of re-running the whole prefix.
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen.autograd import Tensor, no_grad
from refgen.backend import xp
from refgen.models import register
from refgen.models.base import DataSpec
from refgen.nn import (Embedding, LayerNorm, Linear, Module, ModuleList, Parameter,
                       TransformerBlock, init)

__all__ = ["Block", "GPT", "GPTModel", "filter_logits"]


class Block(TransformerBlock):
    """GPT's block: refgen.nn.TransformerBlock, causal. (B, T, E) -> (B, T, E)."""

    def __init__(self, n_embd: int, n_head: int, rng=None, dtype=xp.float32):
        super().__init__(n_embd, n_head, causal=True, rng=rng, dtype=dtype)


class GPT(Module):
    """The network: token ids (B, T) -> logits (B, T, V_out), T <= block_size.

    out_size: number of output classes V_out (default ``vocab_size``; an image model reads in
    one more token than it predicts, its BOS).

    ``caches``: None, or a list with one dict per block that the call extends (start empty;
    ``new_caches()``); then the tokens are taken to sit after the cached ones.
    """

    def __init__(self, vocab_size: int, block_size: int, n_layer: int = 4, n_head: int = 4,
                 n_embd: int = 128, out_size: int | None = None, rng=None, dtype=xp.float32):
        super().__init__()
        g = init.get_rng(rng)
        self.vocab_size, self.block_size = int(vocab_size), int(block_size)
        self.tok_emb = Embedding(vocab_size, n_embd, rng=g, dtype=dtype)
        self.pos_emb = Parameter(xp.zeros((block_size, n_embd), dtype=dtype))  # learned positions
        self.blocks = ModuleList(Block(n_embd, n_head, rng=g, dtype=dtype) for _ in range(n_layer))
        self.ln_f = LayerNorm(n_embd, dtype=dtype)
        self.out_size = int(out_size or vocab_size)
        self.head = Linear(n_embd, self.out_size, bias=False, rng=g, dtype=dtype)
        # GPT-2's initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 L)
        for name, p in self.named_parameters():
            if name.endswith("weight") and p.ndim == 2 or name == "pos_emb":
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("out_proj.weight", "mlp.2.weight")) else 0.02
                init.normal_(p, 0.0, std, rng=g)
            elif name.endswith("bias") and "ln" not in name:
                init.zeros_(p)

    def new_caches(self) -> list:
        return [dict() for _ in self.blocks]

    def embed(self, idx, start: int = 0):
        """(B, T) ids -> (B, T, E): token embedding + position embedding of start..start+T-1."""
        t = idx.shape[1]
        if start + t > self.block_size:
            raise ValueError(f"sequence of {start + t} tokens exceeds block_size={self.block_size}")
        return self.tok_emb(idx) + self.pos_emb[start:start + t]

    def trunk(self, h, caches=None):
        """(B, T, E) embeddings -> (B, T, V) logits."""
        for i, block in enumerate(self.blocks):
            h = block(h, cache=None if caches is None else caches[i])
        return self.head(self.ln_f(h))

    def forward(self, idx, caches=None):
        start = 0 if not caches or "k" not in caches[0] else caches[0]["k"].shape[2]
        idx = idx.data if isinstance(idx, Tensor) else xp.asarray(idx)
        return self.trunk(self.embed(idx, start), caches)


def filter_logits(logits, top_k=None, top_p=None):
    """Raw logits (n, V) with everything outside the top-k / the nucleus set to -inf.

    top_k keeps the k largest; top_p keeps the smallest set of most likely tokens whose
    probability reaches p (the most likely token is always kept).
    """
    logits = logits.astype(xp.float64)
    if top_k is not None and 0 < int(top_k) < logits.shape[-1]:
        kth = xp.sort(logits, axis=-1)[:, -int(top_k)][:, None]
        logits = xp.where(logits < kth, -xp.inf, logits)
    if top_p is not None and float(top_p) < 1.0:
        order = xp.argsort(-logits, axis=-1)
        srt = xp.take_along_axis(logits, order, -1)
        p = xp.exp(srt - srt[:, :1])
        p /= p.sum(-1, keepdims=True)
        before = xp.cumsum(p, -1) - p                       # mass of strictly more likely tokens
        drop = xp.zeros_like(logits, dtype=bool)
        xp.put_along_axis(drop, order, before >= float(top_p), -1)
        logits = xp.where(drop, -xp.inf, logits)
    return logits


def _sample_logits(logits, rng, temperature=1.0, top_k=None, top_p=None):
    """One id per row of logits (n, V); temperature 0 is greedy (argmax)."""
    if temperature == 0:
        return xp.argmax(logits, axis=-1)
    lg = filter_logits(logits / float(temperature), top_k, top_p)
    return F.gumbel_max(lg, rng)


@register("gpt")
class GPTModel(Module):
    """GPT as a density model of text (``vocab_size`` given by the data) or of images.

    Text: data_shape is (block_size,) windows; loss is the mean cross-entropy per character
    (nats). Images (C, H, W): the D = C H W pixels in raster order are the tokens ('levels'
    values each: 2 for binary data, 256 for 8-bit data in [-1, 1]) after a BOS token;
    loss and log_prob are per image, nats.
    """

    data_spec = DataSpec(kinds=("binary", "continuous", "categorical"), ndims=(1, 3))
    default_train = dict(steps=800, batch_size=32, lr=2e-3, schedule="cosine", warmup=80,
                         grad_clip=1.0)  # the mnist-14 benchmark's

    def __init__(self, data_shape, *, seed=0, vocab_size=None, n_layer: int = 4,
                 n_head: int = 4, n_embd: int = 128, levels: int = 2):
        super().__init__()
        self.data_shape = tuple(int(s) for s in data_shape)
        self.text = vocab_size is not None
        if self.text:
            if len(self.data_shape) != 1:
                raise ValueError(f"gpt on text takes windows of shape (block_size,), got {self.data_shape}")
            vocab, block = int(vocab_size), self.data_shape[0]
        else:
            if len(self.data_shape) != 3:
                raise ValueError(f"gpt models text (with a vocabulary) or images (C, H, W); "
                                 f"got examples of shape {self.data_shape} and no vocabulary")
            self.levels = int(levels)
            self.dim = math.prod(self.data_shape)
            vocab, block = self.levels + 1, self.dim           # + BOS = id `levels`, read only
        self.net = GPT(vocab, block, n_layer, n_head, n_embd,
                       out_size=None if self.text else self.levels, rng=init.get_rng(int(seed)))

    def extra_repr(self):
        return f"data_shape={self.data_shape}, text={self.text}"

    # --- images <-> tokens ---------------------------------------------------------------
    def _tokens(self, x):
        """(B, C, H, W) values -> (B, D) level ids in raster order."""
        x = x.data if isinstance(x, Tensor) else xp.asarray(x)
        x = x.reshape(x.shape[0], -1)
        if self.levels == 2:
            if not bool(((x == 0) | (x == 1)).all()):
                raise ValueError("gpt with levels=2 needs binary {0, 1} images; use --set levels=256 "
                                 "for 8-bit images in [-1, 1]")
            return x.astype(xp.int64)
        return F.to_levels(x, self.levels)

    def _values(self, ids):
        return ids.astype(xp.float32) if self.levels == 2 else F.from_levels(ids, self.levels)

    def _shifted(self, ids):
        """[BOS, x_1, ..., x_{D-1}]: position t predicts x_{t+1}."""
        bos = xp.full((ids.shape[0], 1), self.levels, dtype=xp.int64)
        return xp.concatenate([bos, ids[:, :-1]], axis=1)

    # --- likelihood ------------------------------------------------------------------------
    def log_prob(self, x):
        """Images: exact log p(x), nats, (B, C, H, W) -> (B,). Text: (B, T) ids -> (B,),
        the log-likelihood of x_2..x_T given the window's first token."""
        if self.text:
            ids = x.data if isinstance(x, Tensor) else xp.asarray(x)
            logits = self.net(ids[:, :-1])
            return -F.cross_entropy(F.transpose(logits, 1, 2), ids[:, 1:], reduction="none").sum(1)
        ids = self._tokens(x)
        logits = self.net(self._shifted(ids))                               # (B, D, V)
        return -F.cross_entropy(F.transpose(logits, 1, 2), ids, reduction="none").sum(1)

    def loss(self, batch, rng):
        """Text: mean cross-entropy per character (nats). Images: mean NLL per image (nats)."""
        if self.text:
            logits = self.net(batch.x)                                          # (B, T, V)
            y = batch.y.data if isinstance(batch.y, Tensor) else xp.asarray(batch.y)
            return F.cross_entropy(F.transpose(logits, 1, 2), y)
        return -self.log_prob(batch.x).mean()

    # --- sampling --------------------------------------------------------------------------
    def generate(self, idx, steps: int, *, rng, temperature: float = 1.0, top_k=None,
                 top_p=None, use_cache: bool = True):
        """Append ``steps`` sampled tokens to ids (n, t0); returns (n, t0 + steps).

        With ``use_cache`` each step feeds only the newest token (keys/values of the others
        are cached); without, each step re-runs the last ``block_size`` tokens. Once the
        cache is full, each step re-runs the last ``block_size`` tokens, as without it.
        """
        idx = xp.asarray(idx, dtype=xp.int64)
        bs = self.net.block_size
        with no_grad():
            caches, fed = None, 0
            for _ in range(int(steps)):
                if not use_cache:
                    logits = self.net(idx[:, -bs:]).data[:, -1]
                else:
                    if caches is None or fed >= bs:                 # (re)fill from the window
                        caches = self.net.new_caches()
                        window = idx[:, -bs:]
                        logits = self.net(window, caches).data[:, -1]
                        fed = window.shape[1]
                    else:                                           # one new position
                        logits = self.net(idx[:, -1:], caches).data[:, -1]
                        fed += 1
                nxt = _sample_logits(logits, rng, temperature, top_k, top_p)
                idx = xp.concatenate([idx, nxt[:, None].astype(xp.int64)], axis=1)
        return idx

    def sample(self, n, cond=None, *, rng, temperature: float = 1.0, top_k=None, top_p=None,
               use_cache: bool = True):
        """Images: (n, C, H, W). Text: (n, block_size) ids, continuing ``cond`` (a prompt of ids,
        (n, t0)) or a first character drawn uniformly."""
        kw = dict(rng=rng, temperature=temperature, top_k=top_k, top_p=top_p, use_cache=use_cache)
        n = int(n)
        if self.text:
            start = xp.asarray(cond, dtype=xp.int64) if cond is not None else \
                xp.asarray(rng.integers(self.net.vocab_size, size=(n, 1)), dtype=xp.int64)
            return self.generate(start, self.data_shape[0] - start.shape[1], **kw)
        bos = xp.full((n, 1), self.levels, dtype=xp.int64)
        ids = self.generate(bos, self.dim, **kw)[:, 1:]                     # (n, D)
        return self._values(ids).reshape((n,) + self.data_shape)
