"""The multi-scale architecture (RealNVP, Glow): factor out half the variables at each scale.

After the layers of one scale, the representation y (B, C, H, W) is split by channels into
h (the first C/2, which continue through the next scales) and z_i (the last C/2, which
are final: part of the latent from here on):

    x --steps--> y = [h, z_i];   h --next scale--> z_rest;   z = [flatten(z_i), z_rest]

The split is a permutation (log|det| = 0), so the whole thing is still one bijection
x <-> z (B, D) and the log-determinants of the scales simply add. Later scales work on
fewer variables, which is where the savings come from; factored-out variables still
influence nothing downstream, so the early scales model local, fine structure.

Glow's learned conditional prior puts a density on z_i that depends on h:

    p(z_i | h) = N(z_i; mu(h), diag(sigma(h)^2))

Written as a flow layer this is an affine map of z_i given h into standard noise,

    eps = (z_i - mu(h)) * exp(-log sigma(h)),   log|det| = -sum log sigma(h),

whose Jacobian with respect to (h, z_i) is triangular, so log N(z_i; mu, sigma^2) =
log N(eps; 0, I) - sum log sigma: the base density stays a fixed standard normal.
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen.autograd import as_tensor
from refgen.backend import xp
from refgen.models.flows.base import FlowLayer
from refgen.models.flows.nets import zero_init
from refgen.nn import Conv2d, Linear, Module, init

__all__ = ["MultiScale", "ConditionalPrior"]


class ConditionalPrior(Module):
    """z_i -> eps = (z_i - mu(h)) exp(-log sigma(h)) given h; one zero-initialised layer
    (3x3 conv for images, linear for vectors) gives (mu, log sigma), so it starts as N(0, I).

    out_shape: one example of z_i; in_channels: channels (features) of h.
    """

    def __init__(self, out_shape, in_channels: int, rng=None, dtype=xp.float32):
        super().__init__()
        c = int(out_shape[0])
        g = init.get_rng(rng)
        if len(out_shape) == 1:
            self.net = zero_init(Linear(in_channels, 2 * c, rng=g, dtype=dtype))
        else:
            self.net = zero_init(Conv2d(in_channels, 2 * c, 3, padding=1, rng=g, dtype=dtype))

    def _mu_log_sigma(self, h):
        return F.chunk(self.net(h), 2, dim=1)

    def forward(self, z, h):
        """(z_i, h) -> (eps, log|det d eps / d z_i|) with the (B,) log-determinant."""
        mu, log_sigma = self._mu_log_sigma(as_tensor(h))
        return (as_tensor(z) - mu) * F.exp(-log_sigma), -F.sum_except_batch(log_sigma)

    def inverse(self, eps, h):
        mu, log_sigma = self._mu_log_sigma(as_tensor(h))
        return as_tensor(eps) * F.exp(log_sigma) + mu


class MultiScale(FlowLayer):
    """One scale: ``steps`` on x (B, C, H, W), then split; h (first C/2 channels) goes on
    through ``next`` (a flow ending in a flat latent), z_i (last C/2) is factored out,
    through ``prior`` (a ConditionalPrior) when given. Output: flat z (B, D).

    split_shape: shape of one example of y after ``steps`` (the layers may squeeze).
    """

    def __init__(self, steps: FlowLayer, next: FlowLayer, split_shape, prior=None):
        super().__init__()
        c, *rest = (int(s) for s in split_shape)
        if c < 2:
            raise ValueError(f"cannot split {c} channel(s) in half (shape {tuple(split_shape)})")
        self.keep = c // 2
        self.out_shape = (c - self.keep, *rest)                 # z_i, one example
        self.steps, self.next, self.prior = steps, next, prior

    def extra_repr(self):
        return f"factored_out={self.out_shape}"

    def forward(self, x):
        y, logdet = self.steps(as_tensor(x))                    # (B, C, H, W)
        h, z_i = y[:, :self.keep], y[:, self.keep:]             # (B, C/2, H, W) each
        if self.prior is not None:
            z_i, ld_prior = self.prior(z_i, h)
            logdet = logdet + ld_prior
        z_rest, ld_next = self.next(h)                          # (B, D_rest)
        z_i = F.reshape(z_i, (z_i.shape[0], -1))                # (B, C/2 * H * W)
        return F.cat([z_i, z_rest], dim=1), logdet + ld_next

    def inverse(self, z):
        z = as_tensor(z)
        n = math.prod(self.out_shape)
        z_i = F.reshape(z[:, :n], (z.shape[0],) + self.out_shape)
        h = self.next.inverse(z[:, n:])
        if self.prior is not None:
            z_i = self.prior.inverse(z_i, h)
        return self.steps.inverse(F.cat([h, z_i], dim=1))
