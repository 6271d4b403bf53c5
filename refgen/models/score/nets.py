"""Score networks: the shared MLP (vectors) and U-Net (images) of refgen.nn, which the
diffusion family uses too, and the output scaling shared by the score models.

Both networks take (x, c) with c a number per example fed to a sinusoidal embedding:
the noise level's index for NCSN, 999 t for an SDE. A score model divides by the noise
scale, s(x, .) = net(x, c) / sigma (Song & Ermon 2020), so the network's output has unit
scale at every level.
"""
from refgen.nn import MLPDenoiser, UNet

__all__ = ["make_net"]


def make_net(data_shape, rng, hidden=128, depth=3, channels=32, channel_mult=None,
             num_res_blocks=2, attn_res=None, heads=1, groups=8, dropout=0.0):
    """An MLP for vectors (D,), a U-Net for images (C, H, W); output shaped like the input."""
    c = data_shape[0]
    if len(data_shape) == 3:
        return UNet(c, c, data_shape[-1], channels, channel_mult, num_res_blocks, attn_res, heads,
                    groups, dropout, None, rng=rng)
    return MLPDenoiser(c, c, hidden, depth, None, rng=rng)
