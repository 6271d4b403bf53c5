"""GLIDE's upsampler (Nichol et al. 2022): a text-conditioned super-resolution diffusion model,
the second stage of its cascade, with the noise conditioning augmentation of cascaded
diffusion (Ho et al. 2021; Imagen's super-resolution stages read the caption the same way).

    z = down(x)              the (C, H / f, W / f) low-resolution image (f x f average pooling)
    training   s ~ U{0, ..., aug_max},  z_s = sqrt(alpha_bar_s) z + sqrt(1 - alpha_bar_s) eps'   (3)
               t ~ U{1..T},  x_t by (3);  c dropped to the null caption with probability p_uncond
               loss = || eps - eps_theta([x_t, up(z_s)], t, s, c) ||^2                          (19)
    sampling   eps_bar = (w + 1) eps_theta(., c) - w eps_theta(., null), the same z_s in both  (26)

GLIDE's text transformer and U-Net (refgen.models.text_to_image.glide: tokens into every
attention layer, the pooled token into the time embedding) with two changes: the U-Net reads
[x_t, up(z_s)] on its channel axis, and the augmentation level s reaches it as a second time
embedding, as in refgen.models.diffusion.cascade.CascadeSR, the upsampler that reads the
low-resolution image alone. ``sample(n, cond=z (n, C, h, w), *, rng, caption=...)``: the
low-resolution images are the condition (as for cascade-sr, so that the evaluation and the
loop's sample grids upsample the test images' own low-resolution versions); the caption is
a keyword (None: the null caption, unguided).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import refgen.functional as F
from refgen.autograd import as_tensor
from refgen.backend import xp
from refgen.models import register
from refgen.models.diffusion.cascade import LowResConditioned, downsample, upsample
from refgen.models.text_to_image.glide import GLIDE
from refgen.models.text_to_image.text_diffusion import SAMPLING, TextDiffusion, caption_batch, drop_captions

__all__ = ["GlideUpsampler", "Upsampling"]

# unguided by default: the low-resolution image already fixes the content
UPSAMPLER_SAMPLING = dataclasses.replace(SAMPLING, guidance=0.0)


class Upsampling(NamedTuple):
    """The upsampler's condition for a batch: caption ids (B, L), up(z_s) (B, C, H, W) and the
    augmentation levels s (B,)."""
    ids: object
    low: object
    s: object


@register("glide-upsampler")
class GlideUpsampler(LowResConditioned, GLIDE):
    """p(x | z, c): GLIDE conditioned on a caption and on x's low-resolution version (see the
    module docstring). Takes GLIDE's options plus factor (2) and aug_max (the largest
    augmentation level, default T // 4; 0 trains without augmentation)."""

    demo = False

    def __init__(self, data_shape=(1, 28, 28), *, factor: int = 2, aug_max: int | None = None,
                 sampling=UPSAMPLER_SAMPLING, **options):
        super().__init__(self.check_shape(data_shape, factor), sampling=sampling, **options)
        self._init_low_res(factor, aug_max)

    def _build_unet(self, context_dim, pooled_dim, rng):
        # input [x_t, up(z_s)] on the channel axis; the level s as a second time embedding
        super()._build_unet(context_dim, pooled_dim, rng, c_in=2 * self.data_shape[0], aug_embed=True)

    # ------------------------------------------------------------------------- the condition
    def condition(self, cond, n: int):
        if not isinstance(cond, Upsampling) or cond.low.shape[0] != n:
            raise ValueError("glide-upsampler samples through sample(n, cond=low-resolution images "
                             f"(n, {', '.join(map(str, self.low_shape))}), caption=...)")
        return cond

    def drop(self, cond, rng):
        """Only the caption is dropped: the low-resolution image is always read."""
        return cond._replace(ids=drop_captions(cond.ids, self.p_uncond, self.null()[0], rng))

    def with_null(self, cond, n: int):
        """The same low-resolution images and levels twice, the second half with null captions."""
        return Upsampling(xp.concatenate([cond.ids, self.null(n)]), xp.concatenate([cond.low, cond.low]),
                          xp.concatenate([cond.s, cond.s]))

    def eps_net(self, xt, t_net, cond, rng=None):
        """eps_theta([x_t, up(z_s)], t, s, c): (B, C, H, W) -> (B, C, H, W)."""
        tokens, pooled, mask = self.encode(cond.ids)
        return self.unet(F.cat([as_tensor(xt), as_tensor(cond.low)], dim=1), t_net, pooled, rng,
                         context=tokens, context_mask=mask, aug=cond.s)

    # ------------------------------------------------------------------------- training
    def loss(self, batch, rng):
        """L_simple (19) of p(x | z_s, c), z_s the augmented low-res image, c the caption."""
        ids = self.captions(batch)
        x0 = as_tensor(batch.x)
        b = x0.shape[0]
        z = downsample(x0.data, self.factor)                              # (B, C, h, w)
        s = rng.integers(0, self.aug_max + 1, size=b)                     # s ~ U{0, ..., aug_max}
        z_s = self._augmented(z, s, rng)                                  # (3)
        return self.diffusion_loss(x0, Upsampling(ids, upsample(z_s, self.factor), s), rng)   # (19)

    # ------------------------------------------------------------------------- sampling
    def sample(self, n, cond=None, *, rng, caption=None, aug_level: int = 0, guidance=None, steps=None,
               sampler=None, eta=None, threshold=None, x_T=None):
        """n high-resolution images (n, C, H, W) given cond = the low-res images (n, C, h, w)
        and ``caption`` (ids (n, L) or (L,), or texts; None: the null caption, no guidance).
        aug_level s: cond corrupted to z_s ~ q(z_s | z) and the network told s (0: as it is).
        guidance w of (26) between the caption and the null caption on the same z_s."""
        if cond is None:
            raise ValueError("glide-upsampler draws a high-resolution image for each low-resolution "
                             f"one: pass cond (n, {', '.join(map(str, self.low_shape))})")
        self._check_level(aug_level)
        z = self._low(cond, n)
        s = xp.full((n,), int(aug_level), dtype=xp.int64)
        if aug_level > 0:
            z = self._augmented(z, s, rng)                                # (3)
        ids = self.null(n) if caption is None else caption_batch(caption, n, self.tok)
        w = 0.0 if caption is None else guidance
        return TextDiffusion.sample(self, n, Upsampling(ids, upsample(z, self.factor), s), rng=rng,
                                    guidance=w, steps=steps, sampler=sampler, eta=eta,
                                    threshold=threshold, x_T=x_T)
