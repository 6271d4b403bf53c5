"""NICE (Dinh et al. 2014): additive couplings and a final diagonal scaling.

    h = additive couplings (log|det| = 0 each: the map preserves volume)
    z = exp(s) * h                     log|det| = sum_d s_d

Without the scaling NICE could not change volume at all: the diagonal scaling is the only
place where the density gets concentrated, one learned factor per dimension, and the
dimensions with large s carry little information (the paper reads it as a learned
spectrum). The paper's MNIST model uses a logistic prior; we follow it for images.

Vectors: couplings with MLPs and alternating feature masks. Images: the logit transform,
couplings with CNNs and alternating checkerboard masks, then the scaling per pixel.
"""
from __future__ import annotations

import refgen.functional as F
from refgen.autograd import as_tensor
from refgen.backend import xp
from refgen.models import register
from refgen.models.base import DataSpec
from refgen.models.flows.base import Flow, FlowLayer, constant_logdet
from refgen.models.flows.coupling import AdditiveCoupling
from refgen.models.flows.masks import checkerboard_mask
from refgen.models.flows.nets import conditioner
from refgen.models.flows.preprocess import LogitTransform
from refgen.models.flows.reshape import Flatten
from refgen.nn import Parameter, init

__all__ = ["DiagonalScaling", "NICE"]


class DiagonalScaling(FlowLayer):
    """z = exp(s) * x, one learned s per dimension of the example; log|det| = sum s."""

    def __init__(self, shape, dtype=xp.float32):
        super().__init__()
        self.s = Parameter(xp.zeros(tuple(int(d) for d in shape), dtype=dtype))

    def forward(self, x):
        x = as_tensor(x)
        return x * F.exp(self.s), constant_logdet(self.s.sum(), x)

    def inverse(self, y):
        return as_tensor(y) * F.exp(-self.s)


@register("nice")
class NICE(Flow):
    """NICE on vectors (MLP couplings) or images (CNN couplings, checkerboard masks).

    couplings: number of additive coupling layers. hidden: MLP sizes (vectors, default
    [128, 128]) or CNN channels (images, default 64). prior: 'normal' or 'logistic'
    (default: normal for vectors, logistic for images, as in the paper).
    logit_alpha: the [0, 1] -> R transform of images (preprocess.py).
    """

    data_spec = DataSpec(kinds=("continuous",), ndims=(1, 3), image_range=(0.0, 1.0))
    default_train = dict(steps=2000, batch_size=256, lr=1e-3, schedule="cosine")  # 2D: ~30 s idle

    def __init__(self, data_shape, *, seed=0, couplings: int = 6, hidden=None,
                 prior: str | None = None, logit_alpha: float = 0.05):
        shape = tuple(int(s) for s in data_shape)
        image = len(shape) == 3
        g = init.get_rng(int(seed))
        hidden = hidden if hidden is not None else (64 if image else [128, 128])
        layers = [LogitTransform(logit_alpha)] if image else []
        layers += [AdditiveCoupling(checkerboard_mask(shape, i % 2), conditioner(shape, 1, hidden, g))
                   for i in range(int(couplings))]
        layers += [DiagonalScaling(shape), Flatten(shape)]
        super().__init__(layers, shape, base=prior or ("logistic" if image else "normal"))
