"""MAF (Papamakarios et al. 2017): a stack of MADEs with Gaussian conditionals.

Each layer is an autoregressive model with Gaussian conditionals, read as a flow:

    p(x_i | x_<i) = N(x_i; mu_i(x_<i), exp(alpha_i(x_<i))^2)
    z_i = (x_i - mu_i(x_<i)) * exp(-alpha_i(x_<i))

dz_i/dx_j = 0 for j > i, so the Jacobian is triangular with diagonal exp(-alpha_i):

    log |det dz/dx| = -sum_i alpha_i(x_<i)

One MADE (refgen.models.autoregressive.made.MADE) computes every mu_i, alpha_i from x in a
single masked pass, so the density costs one pass per layer. Sampling inverts
x_i = z_i exp(alpha_i(x_<i)) + mu_i(x_<i), which needs x_<i first: D sequential passes
per layer (we run D passes over all dimensions; after pass k the first k are exact).
Between layers the order is reversed, so each layer conditions on what the last could not.

The trade-off is IAF's mirror image: IAF (Kingma et al. 2016) makes the *generative*
direction x = z exp(alpha(z_<i)) + mu(z_<i) the masked one, so sampling takes one pass and
the density of an arbitrary x takes D. MAF suits density estimation (training on data,
scoring test sets); IAF suits sampling and variational posteriors, whose density is only
needed at the samples it drew itself.

log alpha is kept bounded as in the couplings, alpha = scale * tanh(raw), learned scale.
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen.autograd import as_tensor
from refgen.backend import xp
from refgen.models import register
from refgen.models.autoregressive.made import MADE
from refgen.models.base import DataSpec
from refgen.models.flows.base import Flow, FlowLayer
from refgen.models.flows.nets import zero_init
from refgen.models.flows.preprocess import LogitTransform
from refgen.models.flows.reshape import Flatten, Reverse
from refgen.nn import Parameter, init, parse_hidden

__all__ = ["AutoregressiveAffine", "MAF"]


class AutoregressiveAffine(FlowLayer):
    """One MAF layer on vectors (B, D): z = (x - mu(x_<i)) exp(-alpha(x_<i)), natural order."""

    def __init__(self, dim: int, hidden=(64, 64), rng=None, dtype=xp.float32):
        super().__init__()
        self.dim = int(dim)
        self.made = MADE(self.dim, hidden, out_per_dim=2, rng=init.get_rng(rng), dtype=dtype)
        zero_init(self.made.layers[-1])                           # starts as the identity
        self.scale = Parameter(xp.ones((self.dim,), dtype=dtype))

    def extra_repr(self):
        return f"dim={self.dim}"

    def _mu_alpha(self, x):
        params = self.made(x)                                     # (B, D, 2)
        mu, raw = params[..., 0], params[..., 1]                  # (B, D) each
        return mu, self.scale * F.tanh(raw)

    def forward(self, x):
        """The density pass: one MADE evaluation."""
        x = as_tensor(x)
        mu, alpha = self._mu_alpha(x)
        return (x - mu) * F.exp(-alpha), -F.sum_except_batch(alpha)

    def inverse(self, z):
        """The sampling pass: D MADE evaluations, x_i fixed after pass i."""
        z = as_tensor(z)
        x = z * 0.0
        for _ in range(self.dim):
            mu, alpha = self._mu_alpha(x)
            x = z * F.exp(alpha) + mu
        return x


@register("maf")
class MAF(Flow):
    """MAF on vectors, or on flattened images (after the logit transform).

    layers: number of MADE layers (order reversed between them). hidden: MADE hidden sizes
    (default [128, 128] for vectors, [1024] for images). logit_alpha: the [0, 1] -> R
    transform of images (MAF's paper uses 1e-6).
    """

    data_spec = DataSpec(kinds=("continuous",), ndims=(1, 3), image_range=(0.0, 1.0))
    default_train = dict(steps=2500, batch_size=256, lr=1e-3, schedule="cosine")  # 2D: ~15 s idle
    demo = True

    def __init__(self, data_shape, *, seed=0, layers: int = 5, hidden=None,
                 logit_alpha: float = 1e-6):
        shape = tuple(int(s) for s in data_shape)
        image = len(shape) == 3
        d = math.prod(shape)
        g = init.get_rng(int(seed))
        hidden = hidden if hidden is not None else ([1024] if image else [128, 128])
        hidden = parse_hidden(hidden)
        flow = [LogitTransform(logit_alpha), Flatten(shape)] if image else []
        for k in range(int(layers)):
            if k:
                flow.append(Reverse())
            flow.append(AutoregressiveAffine(d, hidden, rng=g))
        super().__init__(flow, shape)
        if image:  # sampling is D = 784 passes per layer: keep evaluation's FID sample small
            self.eval_samples = 200
