"""GLIDE (Nichol et al. 2022, "GLIDE: Towards Photorealistic Image Generation and Editing with
Text-Guided Diffusion Models"): a text transformer trained together with the diffusion U-Net,
and classifier-free guidance.

    caption ids c (B, L) -> token + position embeddings -> causal TransformerBlocks -> LN
                         -> tokens h(c) (B, L, W);  pooled g(c) = W_p h(c)_<eot> (B, W)
    U-Net  eps_theta(x_t, t, c): e = MLP(sinusoid(t)) + W_g g(c) in every ResBlock,
           cross-attention to h(c) (pads masked) at every attention resolution
    train  L_simple (19), the caption replaced by the null caption with probability p_uncond
    sample eps_bar = (w + 1) eps_theta(x_t, t, c) - w eps_theta(x_t, t, null)        (26)

The text transformer is CLIP's (refgen.models.text_to_image.clip.TextEncoder), causal so that
the padding after <eot> changes nothing, trained from scratch with the U-Net's loss: its
<eot> feature plays the role of GLIDE's final-token embedding, its token features those GLIDE
projects into every attention layer (text_diffusion.py says how refgen's separate
cross-attention relates to GLIDE's concatenation of the token keys and values to the
self-attention's). GLIDE writes the guidance as eps(null) + s (eps(c) - eps(null)); its
scale s is w + 1 here.

Options: text_width, text_layers, text_heads (the transformer); schedule, T,
parameterization, variance, p_uncond (the diffusion); the U-Net's options of
refgen.models.diffusion.config.NetworkConfig (channels, channel_mult, num_res_blocks,
attn_res, heads, dropout, groups, arch and its switches; scale_shift, AdaGN as in GLIDE, on
by default); sampling defaults sampler, sample_steps, eta, guidance, threshold.
"""
from __future__ import annotations

from refgen.backend import xp
from refgen.models import register
from refgen.models.text_to_image.clip import TextEncoder
from refgen.models.text_to_image.text_diffusion import NETWORK, SAMPLING, TextDiffusion
from refgen.nn import init

__all__ = ["GLIDE"]


@register("glide")
class GLIDE(TextDiffusion):
    """Text-to-image diffusion with a jointly trained text transformer (see the module
    docstring). ``sample(n, cond=caption ids (n, L), *, rng, guidance=w)``."""

    def __init__(self, data_shape=(1, 14, 14), *, vocab_size=None, seed: int = 0,
                 text_width: int = 64, text_layers: int = 2, text_heads: int = 4,
                 schedule: str = "cosine", T: int = 1000, parameterization: str = "eps",
                 variance: str = "beta_tilde", p_uncond: float = 0.2,
                 network=NETWORK, sampling=SAMPLING, **options):
        super().__init__()
        self._setup(data_shape, schedule, T, parameterization, variance, p_uncond, network,
                    sampling, options)
        g = init.get_rng(int(seed))
        vocab_size = int(vocab_size or len(self.tok))
        self.text = TextEncoder(vocab_size, self.tok.context, int(text_width), int(text_width),
                                int(text_layers), int(text_heads), eot=self.tok.eot, rng=g)
        self._build_unet(context_dim=text_width, pooled_dim=text_width, rng=g)

    def encode(self, ids):
        """h(c) (B, L, W), g(c) = W_p h(c)_<eot> (B, W), mask (B, L): True up to <eot>."""
        h, at = self.text.tokens(ids)                                     # (B, L, W), (B,)
        pooled = self.text.proj(h[xp.arange(h.shape[0]), at])            # (B, W)
        mask = xp.arange(h.shape[1])[None, :] <= at[:, None]              # (B, L)
        return h, pooled, mask
