"""Imagen (Saharia et al. 2022, "Photorealistic Text-to-Image Diffusion Models with Deep
Language Understanding"): a frozen, separately trained text encoder, a U-Net that reads its
token features, classifier-free guidance at large weights made usable by dynamic thresholding.

    caption ids c (B, L) -> the text tower of a trained CLIP run, frozen (no gradient, never
                            updated): tokens h(c) (B, L, W) and the unit embedding v(c) (B, D)
    U-Net  eps_theta(x_t, t, c): e = MLP(sinusoid(t)) + W_g v(c) in every (AdaGN) ResBlock,
           cross-attention to h(c) (pads masked) at every attention resolution
    train  L_simple (19), captions dropped to the empty caption with probability p_uncond
    sample eps_bar = (w + 1) eps_theta(x_t, t, c) - w eps_theta(x_t, t, null)        (26)
           x0 = clip(x0, -s, s) / s,  s = max(percentile_p |x0|, 1)   per sample  (dynamic thresholding)

Imagen's encoder is T5-XXL, a language model trained on text alone; refgen has no such model
at MNIST scale, so the frozen encoder here is the text tower of ``clip`` (trained by
``refgen train clip --data mnist-captions``), which is what Imagen compares T5 with. What
matters is the same: the encoder is trained elsewhere and not touched by the diffusion loss.
It is held outside Imagen's module tree (not in ``parameters()``, the optimizer, the EMA or
the checkpoint); a run reads it again from ``clip`` when it is loaded.

Large w pushes the guided x_0 prediction far outside [-1, 1]; static clipping then gives
saturated, flat images, while dynamic thresholding rescales each sample by its own
percentile s (p = 0.995) so the pixels stay in range without flattening (refgen.models.
diffusion.sampling.threshold_x0, applied by the sampler at every step).

Options: clip (a run directory, or a CLIP model); p_uncond; the diffusion's schedule, T,
parameterization, variance; the U-Net's options of NetworkConfig (arch=imagen gives the
efficient U-Net's block layout; scale_shift on by default); sampling defaults sampler,
sample_steps, eta, guidance (5), threshold (dynamic).
"""
from __future__ import annotations

import dataclasses

from refgen.autograd import Tensor, no_grad
from refgen.backend import xp
from refgen.models import register
from refgen.models.text_to_image.contrastive import normalize
from refgen.models.text_to_image.text_diffusion import NETWORK, SAMPLING, TextDiffusion
from refgen.nn import init

__all__ = ["Imagen", "load_clip", "attach_frozen_clip"]

IMAGEN_SAMPLING = dataclasses.replace(SAMPLING, guidance=5.0, threshold="dynamic")


def load_clip(clip):
    """A CLIP model from a run directory (its EMA weights when it has them), or ``clip`` itself
    when it is one; ValueError in one line otherwise."""
    from refgen.runs import load_component
    return load_component(clip, who="imagen", option="clip", kinds="clip",
                          hint=f"train one with: refgen train clip --data mnist-captions --out {clip}")


def attach_frozen_clip(owner, clip):
    """load_clip(clip), frozen and in eval mode, set as ``owner.clip`` outside the module tree
    (never trained, averaged or saved: a run reloads it from ``clip``); returns it."""
    frozen = load_clip(clip).requires_grad_(False).eval()
    object.__setattr__(owner, "clip", frozen)
    return frozen


@register("imagen")
class Imagen(TextDiffusion):
    """Text-to-image diffusion on a frozen CLIP text tower (see the module docstring).
    ``sample(n, cond=caption ids (n, L), *, rng, guidance=w)``."""

    def __init__(self, data_shape=(1, 14, 14), *, seed: int = 0, clip="runs/clip",
                 schedule: str = "cosine", T: int = 1000, parameterization: str = "eps",
                 variance: str = "beta_tilde", p_uncond: float = 0.1,
                 network=NETWORK, sampling=IMAGEN_SAMPLING, **options):
        super().__init__()
        self._setup(data_shape, schedule, T, parameterization, variance, p_uncond, network,
                    sampling, options)
        text = attach_frozen_clip(self, clip).text_encoder
        self._build_unet(context_dim=text.pos_emb.shape[1], pooled_dim=text.proj.out_features,
                         rng=init.get_rng(int(seed)))

    def encode(self, ids):
        """h(c) (B, L, W) and v(c) (B, D) of the frozen encoder (constants), mask (B, L)."""
        with no_grad():
            h, at = self.clip.text_encoder.tokens(ids)                    # (B, L, W), (B,)
            v = normalize(self.clip.text_encoder.proj(h[xp.arange(h.shape[0]), at]))  # (B, D)
        mask = xp.arange(h.shape[1])[None, :] <= at[:, None]              # (B, L)
        return Tensor(h.data), Tensor(v.data), mask
