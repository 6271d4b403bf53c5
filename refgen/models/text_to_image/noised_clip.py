"""A noised-image CLIP (Nichol et al. 2022, "GLIDE", sec. 2.4): CLIP whose image encoder also
reads the diffusion time t and is trained on noised images, so that its similarity can guide a
diffusion sampler at every step.

    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,   eps ~ N(0, I)              (3)
    u = f(x_t, t) / |f(x_t, t)|,   v = g(c) / |g(c)|
    loss = symmetric InfoNCE(u, v),  t ~ U{0, ..., T}  (t = 0: the clean image)

The encoder is CLIP's (three stride-2 convolutions, ReLU, a linear map) with a learned
embedding of t (sinusoids -> Linear -> SiLU -> Linear, refgen.nn.TimeEmbedding) added to
every convolution's output channels. The schedule is the diffusion models' (refgen.models.
diffusion.make_schedule), alpha_bar indexed by t with alpha_bar_0 = 1.

Guidance reads ``guidance_grad(x_t, t, ids)`` = grad_{x_t} (u . v): GLIDE's CLIP guidance
shifts the reverse-process mean by s Sigma times this gradient.
"""
from __future__ import annotations

import refgen
import refgen.functional as F
from refgen.autograd import Tensor, as_tensor
from refgen.backend import asarray, xp
from refgen.data.captions import CONTEXT
from refgen.models import register
from refgen.models.diffusion import make_schedule
from refgen.models.text_to_image import contrastive as C
from refgen.models.text_to_image.clip import CLIP
from refgen.nn import Conv2d, Linear, Module, ModuleList, TimeEmbedding, init

__all__ = ["NoisedImageEncoder", "NoisedCLIP"]


class NoisedImageEncoder(Module):
    """(x_t (B, C, H, W), t (B,)) -> (B, D): CLIP's conv encoder, each convolution's output
    shifted per channel by a projection of the time embedding."""

    def __init__(self, data_shape, embed_dim: int, channels: int = 32, time_dim: int = 64, rng=None):
        super().__init__()
        c, h, w = data_shape
        chans = (c, channels, 2 * channels, 4 * channels)
        self.time = TimeEmbedding(time_dim, time_dim, rng=rng)
        self.convs = ModuleList(Conv2d(a, b, 3, stride=2, padding=1, rng=rng)
                                for a, b in zip(chans[:-1], chans[1:]))
        self.shifts = ModuleList(Linear(time_dim, b, rng=rng) for b in chans[1:])
        for _ in range(3):
            h, w = (h + 1) // 2, (w + 1) // 2  # 28 -> 14 -> 7 -> 4
        self.proj = Linear(chans[-1] * h * w, embed_dim, rng=rng)

    def forward(self, x, t):
        e = F.silu(self.time(t))                                             # (B, time_dim)
        for conv, shift in zip(self.convs, self.shifts):
            h = conv(x)                                                      # (B, c, h, w)
            x = F.relu(h + F.reshape(shift(e), (h.shape[0], h.shape[1], 1, 1)))
        return self.proj(F.flatten(x, 1))


@register("clip-noised")
class NoisedCLIP(CLIP):
    """CLIP on noised images: ``loss(batch, rng)`` noises each image at a random t;
    ``encode_image(x, t=0)``; ``guidance_grad(x_t, t, ids)``."""

    def __init__(self, data_shape=(1, 28, 28), *, vocab_size=None, seed: int = 0,
                 schedule: str = "cosine", T: int = 1000, embed_dim: int = 64, width: int = 64,
                 layers: int = 2, heads: int = 4, channels: int = 32, context: int = CONTEXT,
                 init_temperature: float = 0.07):
        super().__init__(data_shape, vocab_size=vocab_size, seed=seed, embed_dim=embed_dim,
                         width=width, layers=layers, heads=heads, channels=channels,
                         context=context, init_temperature=init_temperature)
        self.schedule, self.T = make_schedule(schedule, T), int(T)
        self.image_encoder = NoisedImageEncoder(tuple(data_shape), embed_dim, channels,
                                                rng=init.get_rng(int(seed) + 1))

    def noise(self, x0, t, eps):
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t (B,) in 0..T      (3)"""
        # (3)
        ab = self.schedule.alpha_bar[asarray(t)].reshape((-1,) + (1,) * (x0.ndim - 1))
        return (xp.sqrt(ab) * x0 + xp.sqrt(1.0 - ab) * eps).astype(x0.dtype)

    def encode_image(self, x, t=None):
        """Unit embeddings (B, D) of images x_t at times t (B,) (default 0: clean images)."""
        x = as_tensor(x)
        t = xp.zeros(x.shape[0], dtype=xp.int64) if t is None else asarray(t)
        return C.normalize(self.image_encoder(x, t))

    def loss(self, batch, rng):
        # Nichol et al. 2022, noised CLIP: InfoNCE of noised images at random t
        ids = batch.y
        if ids is None or getattr(ids, "ndim", 0) != 2:
            raise ValueError("clip-noised trains on (image, caption ids) pairs; use --data mnist-captions")
        x0 = batch.x.data if isinstance(batch.x, Tensor) else asarray(batch.x)
        t = rng.integers(0, self.T + 1, size=x0.shape[0])                           # t ~ U{0..T}
        eps = rng.standard_normal(x0.shape, dtype=xp.float32)
        u = self.encode_image(self.noise(x0, t, eps), t)
        return C.info_nce(u, self.encode_text(ids), self.logit_scale())

    def guidance_grad(self, x_t, t, ids):
        """grad_{x_t} (u(x_t, t) . v(c)) per image (B, C, H, W): the direction that raises the
        similarity of each noised image to its caption."""
        # Nichol et al. 2022, CLIP guidance: grad_{x_t} (u . v)
        x = Tensor(asarray(x_t), requires_grad=True)
        sim = F.sum(self.encode_image(x, t) * self.encode_text(ids))
        return refgen.grad(sim, [x])[0].data
