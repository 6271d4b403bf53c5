"""CLIP (Radford et al. 2021): an image encoder and a text transformer trained so that an
image and its caption have nearby unit embeddings (the loss in
:mod:`refgen.models.text_to_image.contrastive`).

    image  x (B, 1, 28, 28) -> conv 3x3/2 x3 (ReLU) -> flatten -> linear -> f(x) (B, D)
    text   ids (B, T) -> token + position embeddings -> causal TransformerBlocks -> LN
           -> the features at <eot> -> linear -> g(c) (B, D)

As in the paper the text transformer is causal and reads the caption at its end-of-text
token, so the padding after <eot> is never seen. The logit scale s = exp(t) starts at
1 / 0.07 and is clamped at 100.

Training data: (images, caption ids) pairs; on ``mnist-captions`` a Batch carries the
caption ids (B, T) in ``y`` (the data set's ``batch`` draws one caption per image).
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen.autograd import Tensor, no_grad
from refgen.backend import asarray, xp
from refgen.data.captions import CONTEXT, Tokenizer
from refgen.models import register
from refgen.models.base import DataSpec
from refgen.models.text_to_image import contrastive as C
from refgen.nn import (Conv2d, Embedding, LayerNorm, Linear, Module, ModuleList, Parameter,
                       TransformerBlock, init)

__all__ = ["ImageEncoder", "TextEncoder", "CLIP"]


class ImageEncoder(Module):
    """(B, C, H, W) -> (B, D): three stride-2 3x3 convolutions (ReLU), then a linear map."""

    def __init__(self, data_shape, embed_dim: int, channels: int = 32, rng=None):
        super().__init__()
        c, h, w = data_shape
        chans = (c, channels, 2 * channels, 4 * channels)
        self.convs = ModuleList(Conv2d(a, b, 3, stride=2, padding=1, rng=rng)
                                for a, b in zip(chans[:-1], chans[1:]))
        for _ in range(3):
            h, w = (h + 1) // 2, (w + 1) // 2  # 28 -> 14 -> 7 -> 4
        self.proj = Linear(chans[-1] * h * w, embed_dim, rng=rng)

    def forward(self, x):
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.proj(F.flatten(x, 1))


class TextEncoder(Module):
    """(B, T) ids -> (B, D): causal transformer, read out at each row's <eot> token."""

    def __init__(self, vocab_size: int, context: int, embed_dim: int, width: int = 64,
                 layers: int = 2, heads: int = 4, eot: int = 2, rng=None):
        super().__init__()
        self.context, self.eot = int(context), int(eot)
        self.tok_emb = Embedding(vocab_size, width, rng=rng)
        self.pos_emb = Parameter(xp.zeros((context, width), dtype=xp.float32))
        init.normal_(self.tok_emb.weight, 0.0, 0.02, rng=rng)
        init.normal_(self.pos_emb, 0.0, 0.01, rng=rng)
        self.blocks = ModuleList(TransformerBlock(width, heads, causal=True, rng=rng)
                                 for _ in range(layers))
        self.ln_f = LayerNorm(width)
        self.proj = Linear(width, embed_dim, bias=False, rng=rng)

    def tokens(self, ids):
        """The final layer's token features (B, T, W) of caption ids (B, T) (after LN), and
        the position (B,) of each row's first <eot>: what text-conditioned diffusion models
        (GLIDE, Imagen) attend to."""
        ids = asarray(ids)
        if ids.ndim != 2 or ids.shape[1] != self.context:
            raise ValueError(f"caption ids of shape {tuple(ids.shape)}: expected (B, {self.context})")
        has_eot = (ids == self.eot).any(axis=1)
        if not bool(has_eot.all()):
            raise ValueError("every caption needs an <eot> token (encode it with "
                             "refgen.data.captions.Tokenizer)")
        h = self.tok_emb(ids) + self.pos_emb  # (B, T, W)
        for block in self.blocks:
            h = block(h)
        return self.ln_f(h), (ids == self.eot).argmax(axis=1)  # first <eot> of each row

    def forward(self, ids):
        h, at = self.tokens(ids)
        return self.proj(h[xp.arange(h.shape[0]), at])  # (B, W) -> (B, D)


@register("clip")
class CLIP(Module):
    """Contrastive image-text model. ``loss(batch, rng)``: symmetric InfoNCE of the batch's
    (image, caption) pairs; ``encode_image``/``encode_text``: unit embeddings;
    ``zero_shot``/``clip_score``/``retrieve`` as in the paper's evaluations."""

    data_spec = DataSpec(kinds=("continuous",), ndims=(3,))
    default_train = dict(steps=3000, batch_size=256, lr=1e-3, schedule="cosine", warmup=100)

    def __init__(self, data_shape=(1, 28, 28), *, vocab_size=None, seed: int = 0,
                 embed_dim: int = 64, width: int = 64, layers: int = 2, heads: int = 4,
                 channels: int = 32, context: int = CONTEXT, init_temperature: float = 0.07):
        super().__init__()
        tok = Tokenizer()
        vocab_size = int(vocab_size or len(tok))
        g = init.get_rng(seed)
        self.data_shape = tuple(int(d) for d in data_shape)                # (C, H, W) it reads
        self.image_encoder = ImageEncoder(self.data_shape, embed_dim, channels, rng=g)
        self.text_encoder = TextEncoder(vocab_size, context, embed_dim, width, layers, heads,
                                        eot=tok.eot, rng=g)
        self.log_scale = Parameter(xp.asarray(math.log(1.0 / init_temperature), dtype=xp.float32))

    def logit_scale(self):
        """s = exp(min(t, log 100))."""
        return C.logit_scale(self.log_scale)

    def encode_image(self, x):
        """Unit image embeddings u (B, D)."""
        return C.normalize(self.image_encoder(x if isinstance(x, Tensor) else Tensor(asarray(x))))

    def encode_text(self, ids):
        """Unit text embeddings v (B, D) of caption ids (B, T)."""
        return C.normalize(self.text_encoder(ids))

    def loss(self, batch, rng):
        ids = batch.y
        if ids is None or getattr(ids, "ndim", 0) != 2:
            raise ValueError("clip trains on (image, caption ids) pairs; use --data mnist-captions")
        return C.info_nce(self.encode_image(batch.x), self.encode_text(ids), self.logit_scale())

    def class_embeddings(self, prompt_ids):
        """Class embeddings w (C, D) from prompt ids (C, P, T): P prompts per class."""
        c, p, t = prompt_ids.shape
        v = self.encode_text(asarray(prompt_ids).reshape(c * p, t))
        return C.class_embeddings(F.reshape(v, (c, p, -1)))

    def zero_shot(self, x, prompt_ids):
        """Predicted classes (N,) of images x by the prompt ensemble ``prompt_ids`` (C, P, T)."""
        with no_grad():
            logits = C.zero_shot_logits(self.encode_image(x), self.class_embeddings(prompt_ids))
        return xp.argmax(logits.data, axis=1)

    def clip_score(self, x, ids):
        """2.5 max(cos(u_i, v_i), 0) per (image, caption) pair (N,) (Hessel et al. 2021)."""
        with no_grad():
            return C.clip_score(self.encode_image(x), self.encode_text(ids)).data
