"""Glow (Kingma & Dhariwal 2018): steps of actnorm, invertible 1x1 conv and affine coupling.

One step of flow, on (C, H, W) (or a vector, C = D and H = W = 1):

    actnorm          y = x exp(log_s) + b                log|det| = H W sum log_s   (actnorm.py)
    1x1 conv         y = W x at every pixel              log|det| = H W log|det W|  (invconv.py)
    affine coupling  on halves of the channels           log|det| = sum s          (coupling.py)

The 1x1 convolution is a learned generalisation of RealNVP's fixed channel reversal: the
coupling can always split channels first-half / second-half because W learns which
combinations go where.

Images: L levels, each a squeeze, K steps, then (but for the last level) a split whose
factored-out half gets the learned conditional prior N(mu(h), sigma(h)^2) (multiscale.py).
On MNIST 28 = 4 * 7 allows L = 2: 4x14x14 and 8x7x7.
"""
from __future__ import annotations

from refgen.models import register
from refgen.models.base import DataSpec
from refgen.models.flows.actnorm import ActNorm
from refgen.models.flows.base import Flow, FlowSequence
from refgen.models.flows.coupling import AffineCoupling
from refgen.models.flows.invconv import InvConv1x1, InvConv1x1LU
from refgen.models.flows.masks import channel_mask
from refgen.models.flows.multiscale import ConditionalPrior, MultiScale
from refgen.models.flows.nets import conditioner
from refgen.models.flows.preprocess import LogitTransform, Shift
from refgen.models.flows.reshape import Flatten, Squeeze
from refgen.nn import init

__all__ = ["glow_step", "glow_levels", "Glow"]


def glow_step(shape, hidden, rng, lu: bool = True, parity: int = 0):
    """actnorm -> invertible 1x1 conv (LU or plain) -> affine coupling, on ``shape``."""
    conv = InvConv1x1LU(shape, rng=rng) if lu else InvConv1x1(shape, rng=rng)
    coupling = AffineCoupling(channel_mask(shape, parity), conditioner(shape, 2, hidden, rng))
    return FlowSequence([ActNorm(shape), conv, coupling])


def glow_levels(shape, levels: int, depth: int, hidden, rng, lu: bool = True):
    """The multi-scale Glow flow of images (C, H, W), ending in a flat z."""
    c, h, w = shape
    if h % 2 or w % 2:
        raise ValueError(f"cannot squeeze {h}x{w} images: use fewer levels")
    squeezed = (4 * c, h // 2, w // 2)
    body = [Squeeze()] + [glow_step(squeezed, hidden, rng, lu) for _ in range(depth)]
    if levels == 1:
        return FlowSequence(body + [Flatten(squeezed)])
    kept = (2 * c, h // 2, w // 2)
    prior = ConditionalPrior(kept, kept[0], rng=rng)  # p(z_i | h), z_i and h both 2C channels
    rest = glow_levels(kept, levels - 1, depth, hidden, rng, lu)
    return MultiScale(FlowSequence(body), rest, squeezed, prior=prior)


@register("glow")
class Glow(Flow):
    """Glow on vectors (K steps with MLP couplings) or images (L levels of K steps).

    depth: K, steps of flow per level (not to be confused with training steps). levels: L
    (images). hidden: MLP sizes (vectors,
    default [128, 128]) or CNN channels (images, default 32). lu: LU-parameterised 1x1
    convolutions (else plain). logit_alpha: the [0, 1] -> R transform of images (0: just
    x - 1/2, Glow's own preprocessing).
    """

    data_spec = DataSpec(kinds=("continuous",), ndims=(1, 3), image_range=(0.0, 1.0))
    default_train = dict(steps=2000, batch_size=256, lr=1e-3, schedule="cosine")  # 2D: ~30 s idle

    def __init__(self, data_shape, *, seed=0, depth: int = 8, levels: int = 2, hidden=None,
                 lu: bool = True, logit_alpha: float = 0.05):
        shape = tuple(int(s) for s in data_shape)
        g = init.get_rng(int(seed))
        if len(shape) == 1:
            hidden = hidden if hidden is not None else [128, 128]
            # vectors: alternate which half the coupling changes (with D = 2 the 2x2 "1x1 conv"
            # alone would have to learn the swap)
            layers = [glow_step(shape, hidden, g, bool(lu), parity=i % 2) for i in range(int(depth))]
        else:
            hidden = hidden if hidden is not None else 32
            pre = LogitTransform(logit_alpha) if logit_alpha else Shift()
            layers = [pre, glow_levels(shape, int(levels), int(depth), hidden, g, bool(lu))]
        super().__init__(layers, shape)
