"""RealNVP (Dinh et al. 2016): affine couplings, checkerboard and channel masks, multi-scale.

Vectors: ``couplings`` affine couplings (MLP conditioners) with alternating masks.

Images, each scale but the last (RealNVP's recipe):

    3 affine couplings, checkerboard masks (alternating)       on (C, H, W)
    squeeze                                                    -> (4C, H/2, W/2)
    3 affine couplings, channel masks (alternating)
    factor out half the channels                               -> (2C, H/2, W/2) go on

and the last scale is 4 checkerboard couplings. On MNIST, 2 scales: 1x28x28, then
2x14x14; 3 scales add 4x7x7. Images are first taken to logit space (preprocess.py).

Each image coupling is followed by an ActNorm (actnorm.py), a per-channel affine map. The
paper puts a batch normalisation layer, used as a bijection, in that place; ActNorm is
Glow's replacement for it, with the same diagonal Jacobian and no batch statistics at test
time. It matters: the couplings' log-scales are bounded (s = scale * tanh(.)), and without a
free per-channel scale the flow cannot stretch the narrow peak of the background pixels
(logit(0.05 + 0.9 u / 256) spans 0.035 for u in [0, 1)) to the width of N(0, 1); on MNIST
it took an 800-step probe from 2.227 to 1.931 bits/dim (docs/flows.md). ``actnorm=False``
drops it. (The number of scales matters for samples: with 2 on MNIST the last couplings see
5x5 of a 14x14 grid and samples are specks; 3 scales give strokes.)
"""
from __future__ import annotations

from refgen.models import register
from refgen.models.base import DataSpec
from refgen.models.flows.actnorm import ActNorm
from refgen.models.flows.base import Flow, FlowSequence
from refgen.models.flows.coupling import AffineCoupling
from refgen.models.flows.masks import channel_mask, checkerboard_mask
from refgen.models.flows.multiscale import MultiScale
from refgen.models.flows.nets import conditioner
from refgen.models.flows.preprocess import LogitTransform
from refgen.models.flows.reshape import Flatten, Squeeze
from refgen.nn import init

__all__ = ["RealNVP", "realnvp_scales"]


def _couplings(shape, mask_fn, n, hidden, rng, actnorm=False):
    """n affine couplings with alternating masks, each followed by an ActNorm if asked."""
    layers = []
    for i in range(n):
        layers.append(AffineCoupling(mask_fn(shape, i % 2), conditioner(shape, 2, hidden, rng)))
        if actnorm:
            layers.append(ActNorm(shape))
    return layers


def realnvp_scales(shape, scales: int, hidden, rng, actnorm: bool = True):
    """The multi-scale RealNVP flow of images of ``shape`` (C, H, W), ending in a flat z."""
    c, h, w = shape
    if scales == 1:
        return FlowSequence(_couplings(shape, checkerboard_mask, 4, hidden, rng, actnorm)
                            + [Flatten(shape)])
    if h % 2 or w % 2:
        raise ValueError(f"cannot squeeze {h}x{w} images: use fewer scales")
    squeezed = (4 * c, h // 2, w // 2)
    steps = FlowSequence(_couplings(shape, checkerboard_mask, 3, hidden, rng, actnorm) + [Squeeze()]
                         + _couplings(squeezed, channel_mask, 3, hidden, rng, actnorm))
    rest = realnvp_scales((2 * c, h // 2, w // 2), scales - 1, hidden, rng, actnorm)
    return MultiScale(steps, rest, squeezed)


@register("realnvp")
class RealNVP(Flow):
    """RealNVP on vectors (MLP couplings) or images (multi-scale, CNN couplings).

    couplings: number of couplings for vectors. hidden: MLP sizes (default [128, 128]) or
    CNN channels (default 32). scales: number of scales for images. logit_alpha: the
    [0, 1] -> R transform of images. actnorm: an ActNorm after each image coupling (the
    paper's batch normalisation layer; see the module docstring).
    """

    data_spec = DataSpec(kinds=("continuous",), ndims=(1, 3), image_range=(0.0, 1.0))
    default_train = dict(steps=1500, batch_size=256, lr=1e-3, schedule="cosine")  # 2D: ~15 s idle
    demo = True

    def __init__(self, data_shape, *, seed=0, couplings: int = 8, hidden=None, scales: int = 2,
                 logit_alpha: float = 0.05, actnorm: bool = True):
        shape = tuple(int(s) for s in data_shape)
        g = init.get_rng(int(seed))
        if len(shape) == 1:
            hidden = hidden if hidden is not None else [128, 128]
            layers = _couplings(shape, checkerboard_mask, int(couplings), hidden, g)
        else:
            hidden = hidden if hidden is not None else 32
            layers = [LogitTransform(logit_alpha), realnvp_scales(shape, int(scales), hidden, g, bool(actnorm))]
        super().__init__(layers, shape)
