"""Noise-contrastive estimation (Gutmann & Hyvarinen 2010) with a learned log Z.

The model is made self-normalised by a learned constant c: log p_theta(x) = -E_theta(x) - c.
With data x and as many noise draws y from a known q, logistic regression on the log-ratio

    G(x) = log p_theta(x) - log q(x)

minimises

    L = -mean log sigma(G(x)) - mean log(1 - sigma(G(y)))     (nce_loss)
      =  mean softplus(-G(x)) + mean softplus(G(y))

whose minimiser over (theta, c) is p_theta = p_data with c = log Z_theta: NCE estimates the
normaliser as a parameter (tests/models/energy: c recovers log Z of a Gaussian).
The noise q is N(0, noise_std^2 I), which covers the toy data's square.
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen.autograd import Tensor
from refgen.backend import xp
from refgen.models import register
from refgen.models.energy.base import EnergyModel
from refgen.nn import Parameter

__all__ = ["EBMNCE", "nce_loss", "gaussian_log_prob"]


def nce_loss(g_data, g_noise):
    """-mean log sigma(G(x)) - mean log(1 - sigma(G(y))), from log-ratios G (B,) each."""
    return F.softplus(-g_data).mean() + F.softplus(g_noise).mean()


def gaussian_log_prob(x, std):
    """log N(x; 0, std^2 I) of a Tensor (B, D) -> (B,)."""
    d = x.shape[1]
    return -0.5 * (x * x).sum(1) / std ** 2 - d * math.log(std) - 0.5 * d * math.log(2 * math.pi)


@register("ebm-nce")
class EBMNCE(EnergyModel):
    """Energy model fitted by NCE against N(0, noise_std^2 I), with a learned log Z (``log_z``)."""

    data_spec = EnergyModel.data_spec._replace(ndims=(1,))
    default_train = dict(steps=4000, batch_size=256, lr=1e-3)

    def __init__(self, data_shape, *, seed=0, hidden=(128, 128), base_std=3.0, init_range=4.5,
                 noise_std=2.0, sampler="mala", sample_steps=300, sample_step_size=1e-2):
        super().__init__(data_shape, seed=seed, hidden=hidden, base_std=base_std,
                         init_range=init_range, sampler=sampler, sample_steps=sample_steps,
                         sample_step_size=sample_step_size)
        self.noise_std = float(noise_std)
        self.log_z = Parameter(xp.zeros((), dtype=xp.float32))       # c, learned

    def log_ratio(self, x):
        """G(x) = -E(x) - c - log q(x), (B,)."""
        return -self.energy(x) - self.log_z - gaussian_log_prob(x, self.noise_std)

    def loss(self, batch, rng):
        y = self.noise_std * rng.standard_normal(batch.x.shape, dtype=xp.float32)
        return nce_loss(self.log_ratio(batch.x), self.log_ratio(Tensor(y)))
