"""Every trained DDPM is a VP-SDE score model (the derivation's eq. (21); Song et al. 2021,
Appendix B).

DDPM's chain of N steps is the Euler discretisation of the VP SDE with beta(t) ~ N beta_i at
t = i / N. refgen maps it exactly rather than in the limit: ``VPSDE.from_schedule`` takes
B(t) = -log alpha_bar(t) interpolated linearly between the grid points t_i = i / N, so

    m(t_i)^2 = alpha_bar_i,   s(t_i)^2 = 1 - alpha_bar_i      (the kernel is eq. (3))

and the network is asked at the continuous time N t (its sinusoidal time embedding is
defined for any real t; at t_i it is told i, exactly what it was trained on). Its score is

    s(x, t) = -eps_theta(x, N t) / sqrt(1 - alpha_bar(t))                               (21)

(for a network predicting x_0 or v, eps is recovered first by eq. (11)). With data_scale c
the model works on x / c: scores are divided by c and log-densities lose D log c.
``DDPMScore`` exposes the SDE samplers and the PF-ODE likelihood on the checkpoint unchanged.
"""
from __future__ import annotations

import math

from refgen.autograd import as_tensor, no_grad
from refgen.backend import xp
from refgen.models.score.sampling import sde_log_likelihood, sde_sample
from refgen.models.score.sde import VPSDE

__all__ = ["DDPMScore"]


class DDPMScore:
    """A ``ddpm`` model seen as a VP-SDE score model: ``sde``, ``score(x, t)``, ``sample``,
    ``log_prob``."""

    def __init__(self, ddpm):
        if getattr(ddpm, "registry_name", None) != "ddpm":
            raise ValueError(f"DDPMScore wraps a 'ddpm' model, got {type(ddpm).__name__}")
        self.ddpm = ddpm
        self.sde = VPSDE.from_schedule(ddpm.schedule)
        self.N = ddpm.T
        self.c = ddpm.data_scale
        self.data_shape = ddpm.data_shape

    def eps(self, z, t):
        """eps_theta(z, N t) for the model's own variables z = x / c (Tensor), t (B,) floats."""
        d = self.ddpm
        b = z.shape[0]
        y = None if d.num_classes is None else xp.full((b,), d.num_classes, dtype=xp.int64)
        out = d.net(z, self.N * t, y)                                    # the network at time N t
        ch = d.data_shape[0]
        if d.learn_sigma:                                                 # learned variance (eq. 23): keep the mean half
            out = out[:, :ch]
        m, s = self.sde.marginal(t)
        m = m.reshape((b,) + (1,) * (len(z.shape) - 1)).astype(z.dtype)
        s = s.reshape((b,) + (1,) * (len(z.shape) - 1)).astype(z.dtype)
        if d.parameterization == "x0":                                    # eps from x_0, as eq. 11 relates them
            return (z - out * m) * (1.0 / s)
        if d.parameterization == "v":                                     # v = m eps - s x_0
            return out * m + z * s
        return out

    def _score_z(self, z, t):
        b = z.shape[0]
        t = xp.broadcast_to(xp.asarray(t, dtype=xp.float64), (b,))
        s = self.sde.marginal(t)[1].reshape((b,) + (1,) * (len(z.shape) - 1)).astype(z.dtype)
        return self.eps(z, t) * (-1.0 / s)                                # (21)

    def score(self, x, t):
        """grad_x log p_t(x) in data space: s(x / c, t) / c."""
        return self._score_z(as_tensor(x) * (1.0 / self.c), t) * (1.0 / self.c)

    def sample(self, n, *, rng, sampler: str = "pc", steps=None, **kw):
        with no_grad():
            z = sde_sample(self.sde, self._score_z, (n,) + self.data_shape, rng, sampler, steps,
                           **kw)
        return z * self.c

    def log_prob(self, x, *, rng, divergence: str = "auto", **kw):
        """log p(x) per example by the PF-ODE of the DDPM's VP SDE (density of the continuous
        x; for 8-bit images use refgen.models.score.sampling.sde_bits_per_dim)."""
        xa = as_tensor(x).data / self.c
        logp = sde_log_likelihood(self.sde, self._score_z, xa, rng, divergence, **kw)
        return logp - math.prod(self.data_shape) * math.log(self.c)
