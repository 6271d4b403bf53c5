"""DALL-E (Ramesh et al. 2021, "Zero-Shot Text-to-Image Generation", sec. 2.2-2.5): one
transformer models text and image tokens as a single stream.

    s = [t_1 .. t_T ; z_1 .. z_N]     T caption ids (<sot> words <eot>, padded to T) and the
                                      N = h w image tokens of a frozen dVAE, raster order
    p(t, z) = prod_{i=2}^{T} p(t_i | t_<i)  prod_{j=1}^{N} p(z_j | t, z_<j)          (joint)

(t_1 = <sot> is given.) The attention layout: text positions attend causally to text, image
positions to the whole text and to earlier image positions. With the text first, that is the
lower-triangular (causal) mask over the concatenation (``attention_layout``), so refgen's
causal TransformerBlock implements it, and its key/value cache gives incremental decoding.
Padding: each text position has its own position embedding, so the <pad> token at position
i is a padding token of its own, as the paper's per-position padding tokens.

Each kind of token has its own embedding and its own read-out: text logits over the
vocabulary V, image logits over the K codes, so each factor above is normalised over the
tokens of its kind. The loss weights the mean cross-entropy of each kind:

    loss = w_t CE_text / (T - 1) + w_z CE_image / N,    w_t = 1/8, w_z = 7/8           (sec. 2.2)

Sampling: the prompt's T ids, then z_1..z_N drawn one at a time from softmax(logits / temp)
restricted to the top-k codes, and the dVAE's decoder maps z to an image. Re-ranking (sec.
2.5): draw ``candidates`` images per prompt and keep the one a CLIP model scores highest
against the prompt.
"""
from __future__ import annotations

import refgen.functional as F
from refgen.autograd import no_grad
from refgen.backend import asarray, to_numpy, xp
from refgen.data.captions import CONTEXT, DIGIT_WORDS, Tokenizer
from refgen.models import register
from refgen.models.autoregressive.gpt import filter_logits
from refgen.models.base import DataSpec
from refgen.nn import Embedding, LayerNorm, Linear, Module, ModuleList, Parameter, TransformerBlock, init

__all__ = ["attention_layout", "DalleTransformer", "DALLE"]


def attention_layout(text_len: int, image_len: int):
    """Boolean (L, L), L = T + N, True where position i may attend to position j: text rows
    causal over the text only; image rows all of the text and the image up to themselves."""
    # Ramesh et al. 2021, attention layout
    i = xp.arange(text_len + image_len)[:, None]
    j = xp.arange(text_len + image_len)[None, :]
    text_row, text_col = i < text_len, j < text_len
    return xp.where(text_row, text_col & (j <= i), text_col | (j <= i))


class DalleTransformer(Module):
    """(text ids (B, T), image tokens (B, N)) -> log p(t, z), trained by ``loss_terms``.

    Input position p holds s_p (0-based) and predicts s_{p+1}: positions 0..T-2 predict the
    text t_2..t_T, positions T-1..T+N-2 the image tokens z_1..z_N.
    """

    def __init__(self, vocab_size: int, text_len: int, num_codes: int, image_len: int,
                 width: int = 128, layers: int = 4, heads: int = 4, rng=None):
        super().__init__()
        g = init.get_rng(rng)
        self.text_len, self.image_len = int(text_len), int(image_len)
        self.vocab_size, self.num_codes = int(vocab_size), int(num_codes)
        self.text_emb = Embedding(self.vocab_size, width, rng=g)
        self.image_emb = Embedding(self.num_codes, width, rng=g)
        self.pos_emb = Parameter(xp.zeros((self.text_len + self.image_len, width), dtype=xp.float32))
        for p in (self.text_emb.weight, self.image_emb.weight, self.pos_emb):
            init.normal_(p, 0.0, 0.02, rng=g)
        self.blocks = ModuleList(TransformerBlock(width, heads, causal=True, rng=g) for _ in range(layers))
        self.ln_f = LayerNorm(width)
        self.text_head = Linear(width, self.vocab_size, bias=False, rng=g)
        self.image_head = Linear(width, self.num_codes, bias=False, rng=g)

    def embed(self, text, image=None, start: int = 0):
        """Token + position embeddings (B, L, E) of text ids (B, Tt) then image tokens (B, Nz),
        sitting at positions start..start+L-1."""
        parts = []
        if text is not None and text.shape[1]:
            parts.append(self.text_emb(asarray(text)))
        if image is not None and image.shape[1]:
            parts.append(self.image_emb(asarray(image)))
        h = parts[0] if len(parts) == 1 else F.cat(parts, dim=1)
        return h + self.pos_emb[start:start + h.shape[1]]

    def hidden(self, h, caches=None):
        """Embeddings (B, L, E) -> final features (B, L, E) through the causal blocks."""
        for i, block in enumerate(self.blocks):
            h = block(h, cache=None if caches is None else caches[i])
        return self.ln_f(h)

    def nll_terms(self, text, image):
        """(-log prod_i p(t_i | t_<i), -log prod_j p(z_j | t, z_<j)), each (B,), nats."""
        # Ramesh et al. 2021, sec. 2.2: -log p(t, z) as two sums of cross-entropies
        text, image = asarray(text), asarray(image)
        t = self.text_len
        h = self.hidden(self.embed(text, image[:, :-1]))                      # (B, T + N - 1, E)
        text_logits = self.text_head(h[:, :t - 1])                            # (B, T - 1, V)
        image_logits = self.image_head(h[:, t - 1:])                          # (B, N, K)
        ce_text = F.cross_entropy(F.transpose(text_logits, 1, 2), text[:, 1:], reduction="none").sum(1)
        ce_image = F.cross_entropy(F.transpose(image_logits, 1, 2), image, reduction="none").sum(1)
        return ce_text, ce_image

    def log_prob(self, text, image):
        """log p(t_2..t_T, z | t_1) (B,), nats: the joint model of the stream."""
        # Ramesh et al. 2021, sec. 2.2: the joint model
        ce_text, ce_image = self.nll_terms(text, image)
        return -(ce_text + ce_image)

    def generate(self, text, rng, temperature: float = 1.0, top_k=None):
        """Image tokens (n, N) drawn given text ids (n, T), one position at a time with the
        key/value cache (each step runs the network on the newest token only)."""
        # Ramesh et al. 2021, sampling: top-k, temperature, one position per step
        text = asarray(text)
        caches = [dict() for _ in self.blocks]
        with no_grad():
            h = self.hidden(self.embed(text), caches)                          # (n, T, E)
            z = xp.zeros((text.shape[0], 0), dtype=xp.int64)
            for j in range(self.image_len):
                logits = self.image_head(h[:, -1]).data                        # (n, K)
                if temperature == 0:
                    nxt = xp.argmax(logits, axis=-1)
                else:
                    nxt = F.gumbel_max(filter_logits(logits / float(temperature), top_k), rng)
                z = xp.concatenate([z, nxt[:, None].astype(xp.int64)], axis=1)
                if j + 1 < self.image_len:
                    h = self.hidden(self.embed(None, z[:, -1:], start=self.text_len + j), caches)
        return z


@register("dalle")
class DALLE(Module):
    """DALL-E on captioned images: a frozen dVAE (``dvae``: a run directory, ``--set
    dvae=runs/dvae``) and a DalleTransformer over [caption ids; image tokens].

    Batches: images x (B, C, H, W) and caption ids y (B, T) (``--data mnist-captions``).
    clip: optionally a trained CLIP run for re-ranking (``sample(candidates=...)``).
    """

    data_spec = DataSpec(kinds=("continuous",), ndims=(3,), image_range=(-1.0, 1.0))
    default_train = dict(steps=3000, batch_size=64, lr=1e-3, schedule="cosine", warmup=100,
                         grad_clip=1.0)

    def __init__(self, data_shape=(1, 28, 28), *, vocab_size=None, seed: int = 0, dvae=None,
                 clip=None, width: int = 64, layers: int = 2, heads: int = 4,
                 text_weight: float = 1.0 / 8, context: int = CONTEXT):
        super().__init__()
        self.tokenizer = Tokenizer(context=context)
        from refgen.runs import load_component   # runs imports the registry: import late
        self.data_shape = tuple(int(s) for s in data_shape)
        self.dvae = load_component(dvae, who="dalle", option="dvae", kinds="dvae",
                                   data_shape=self.data_shape).requires_grad_(False)
        self.clip = None if clip is None else \
            load_component(clip, who="dalle", option="clip", kinds=("clip", "clip-noised")).requires_grad_(False)
        self.text_weight = float(text_weight)
        h, w = self.dvae.grid
        self.net = DalleTransformer(int(vocab_size or len(self.tokenizer)), int(context),
                                    self.dvae.num_codes, h * w, width, layers, heads,
                                    rng=init.get_rng(int(seed)))

    def image_tokens(self, x):
        """(B, C, H, W) -> the dVAE's tokens in raster order (B, N)."""
        z = self.dvae.tokens(x)
        return z.reshape(z.shape[0], -1)

    def loss(self, batch, rng):  # draws no noise: rng is the contract's, unused
        ids = batch.y
        if ids is None or getattr(ids, "ndim", 0) != 2:
            raise ValueError("dalle trains on (image, caption ids) pairs; use --data mnist-captions")
        ce_text, ce_image = self.net.nll_terms(ids, self.image_tokens(batch.x))
        t, n = self.net.text_len - 1, self.net.image_len
        self.last_stats = {"text_nats": float(ce_text.data.mean()) / t,
                           "image_nats": float(ce_image.data.mean()) / n}
        # Ramesh et al. 2021, 1/8 and 7/8: per-token cross-entropies, text weighted 1/8, image 7/8
        return self.text_weight * ce_text.mean() / t + (1.0 - self.text_weight) * ce_image.mean() / n

    def log_prob(self, x, ids):
        """log p(caption, image tokens of x) (B,), nats."""
        return self.net.log_prob(ids, self.image_tokens(x)).data

    def encode_prompt(self, text: str):
        """Caption ids (T,) of a prompt; ValueError in one line for an empty prompt, words outside
        the vocabulary or a prompt longer than the context."""
        return self.tokenizer.encode(text)

    def sample(self, n, cond=None, *, rng, temperature: float = 1.0, top_k=None,
               candidates: int = 1, clip=None):
        """Images (n, C, H, W) in [-1, 1] for caption ids ``cond`` ((n, T), or (T,) for one
        prompt repeated; None: a handwritten digit chosen at random per image).

        candidates > 1: draw that many per prompt and keep the highest CLIP score (``clip``, a
        CLIP model, or the run's ``clip``)."""
        # Ramesh et al. 2021, sec. 2.5: re-ranking by CLIP score
        n = int(n)
        if cond is None:
            digits = to_numpy(rng.integers(10, size=n)).tolist()
            cond = self.tokenizer.encode_batch([f"a handwritten {DIGIT_WORDS[d]}" for d in digits])
        ids = asarray(cond).astype(xp.int64)
        ids = xp.broadcast_to(ids, (n, ids.shape[-1])) if ids.ndim == 1 else ids
        if ids.shape[0] != n:
            raise ValueError(f"cond holds {ids.shape[0]} captions for n={n} images")
        c = int(candidates)
        clip = clip if clip is not None else self.clip
        if c > 1 and clip is None:
            raise ValueError("re-ranking needs a CLIP model: --set clip=RUN_DIR or sample(clip=...)")
        rep = xp.repeat(ids, c, axis=0)                                          # (n c, T)
        z = self.net.generate(rep, rng, temperature, top_k)                       # (n c, N)
        images = self.dvae.decode_tokens(z.reshape((n * c,) + self.dvae.grid))    # (n c, C, H, W)
        if c == 1:
            return images
        score = clip.clip_score(images, rep).reshape(n, c)                        # (n, c)
        best = xp.argmax(score, axis=1)
        return images.reshape((n, c) + images.shape[1:])[xp.arange(n), best]
