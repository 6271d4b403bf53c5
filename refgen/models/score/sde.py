"""Forward SDEs dx = f(x, t) dt + g(t) dw on t in [0, 1] (Song et al. 2021, "Score-Based
Generative Modeling through Stochastic Differential Equations", eqs. 9, 11 and 16-17).

Each SDE gives its drift f, diffusion g, perturbation kernel p_0t(x_t | x_0) = N(m(t) x_0,
s(t)^2 I), prior p_T and the prior's log-density:

    VE      dx = sqrt(d[sigma^2(t)]/dt) dw,         sigma(t) = sigma_min (sigma_max/sigma_min)^t
            m = 1,  s^2 = sigma(t)^2 - sigma_min^2,  prior N(0, sigma_max^2 I)
    VP      dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw,   B(t) = int_0^t beta(u) du
            m = exp(-B/2),  s^2 = 1 - exp(-B),     prior N(0, I)
    sub-VP  dx = -1/2 beta(t) x dt + sqrt(beta(t) (1 - exp(-2 B(t)))) dw
            m = exp(-B/2),  s^2 = (1 - exp(-B))^2,  prior N(0, I)

beta(t) is linear, beta_min + t (beta_max - beta_min) (the continuous limit of DDPM's linear
schedule, beta_min = T beta_1 = 0.1, beta_max = T beta_T = 20), or read off a discrete DDPM
schedule (``VPSDE.from_schedule``): B(t) interpolates B_i = -log alpha_bar_i through the
grid points t_i = i / N by a monotone cubic (Fritsch & Carlson 1980), so m(t_i)^2 =
alpha_bar_i exactly and the kernel at t_i *is* DDPM's q(x_i | x_0) (eq. (3)), while
beta(t) = dB/dt stays continuous (a piecewise-constant beta would put N jumps in the ODE's
right-hand side, which no Runge-Kutta error estimate sees).

From any of them (Song et al. 2021, eqs. 6 and 13):

    reverse SDE   dx = [f - g^2 grad log p_t(x)] dt + g dw_bar        (t runs from 1 to 0)
    PF-ODE        dx/dt = f - 1/2 g^2 grad log p_t(x)

Times t are floats or (B,) arrays; coefficients broadcast against x (B, ...). Everything is
float64 where it is computed from t.
"""
from __future__ import annotations

import math

from refgen.backend import xp

__all__ = ["SDE", "VESDE", "VPSDE", "SubVPSDE", "make_sde", "SDES"]

SDES = ("ve", "vp", "subvp")


def _col(a, x):
    """A scalar or (B,) coefficient shaped (B, 1, ..., 1) to broadcast against x (B, ...)."""
    a = xp.asarray(a, dtype=xp.float64)
    if a.ndim == 0:
        return a
    return a.reshape(a.shape + (1,) * (len(x.shape) - a.ndim))


class SDE:
    """The interface: drift, diffusion, marginal (m, s), prior_sample, prior_logp."""

    T = 1.0
    eps = 1e-5            # the likelihood integrates from t = eps (the kernel is singular at 0)
    sampling_eps = 1e-5   # samplers stop here (Song et al. 2021: 1e-5 for VE, 1e-3 for VP)

    def drift(self, x, t):
        raise NotImplementedError

    def diffusion(self, t):
        raise NotImplementedError

    def marginal(self, t):
        """(m(t), s(t)): p_0t(x_t | x_0) = N(m x_0, s^2 I)."""
        raise NotImplementedError

    def prior_std(self):
        raise NotImplementedError

    # ------------------------------------------------------------------ shared by all three
    def perturb(self, x0, t, z):
        """x_t = m(t) x_0 + s(t) z, a draw from the perturbation kernel given z ~ N(0, I)."""
        m, s = self.marginal(t)
        return _col(m, x0) * x0 + _col(s, x0) * z

    def kernel_score(self, xt, x0, t):
        """grad_{x_t} log p_0t(x_t | x_0) = -(x_t - m x_0) / s^2."""
        m, s = self.marginal(t)
        return -(xt - _col(m, xt) * x0) / _col(s, xt) ** 2

    def prior_sample(self, shape, rng, dtype=xp.float64):
        return self.prior_std() * rng.standard_normal(shape).astype(dtype)

    def prior_logp(self, z):
        """log N(z; 0, sigma_T^2 I) per example, (B,)."""
        s = self.prior_std()
        d = math.prod(z.shape[1:])
        sq = (xp.asarray(z, dtype=xp.float64).reshape(z.shape[0], -1) ** 2).sum(1)
        return -0.5 * d * math.log(2 * math.pi * s * s) - 0.5 * sq / (s * s)

    def reverse_drift(self, x, t, score):
        """f - g^2 s: the drift of the reverse-time SDE (Song et al. 2021, eq. 6)."""
        return self.drift(x, t) - _col(self.diffusion(t), x) ** 2 * score

    def ode_drift(self, x, t, score):
        """f - 1/2 g^2 s: the probability-flow ODE (Song et al. 2021, eq. 13)."""
        return self.drift(x, t) - 0.5 * _col(self.diffusion(t), x) ** 2 * score


class VESDE(SDE):
    """Variance exploding: the continuous limit of NCSN's noise ladder."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"VE SDE needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.log_ratio = math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t):
        return self.sigma_min * xp.exp(xp.asarray(t, dtype=xp.float64) * self.log_ratio)

    def drift(self, x, t):
        return x * 0.0

    def diffusion(self, t):
        return self.sigma(t) * math.sqrt(2 * self.log_ratio)          # sqrt(d sigma^2 / dt)

    def marginal(self, t):
        s2 = self.sigma(t) ** 2 - self.sigma_min ** 2                  # int_0^t g^2
        return xp.ones_like(s2), xp.sqrt(s2)

    def prior_std(self):
        return self.sigma_max

    def __repr__(self):
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


class VPSDE(SDE):
    """Variance preserving: the continuous limit of DDPM."""

    # s(t) ~ sqrt(beta_min t) is 1e-3 at t = 1e-5: a learned score net / s(t) is then too
    # steep for the sampler's last steps, so sampling stops at t = 1e-3 as Song et al. do
    sampling_eps = 1e-3

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, *, log_alpha_bar=None):
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"VP SDE needs 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self._grid = None
        if log_alpha_bar is not None:   # (N + 1,) values of log alpha_bar_i at t_i = i / N
            lab = xp.asarray(log_alpha_bar, dtype=xp.float64)
            self._grid = -lab                                           # B(t_i)
            self.N = int(lab.shape[0]) - 1
            delta = xp.diff(self._grid) * self.N                        # secant slopes (N,)
            if not bool((delta > 0).all()):
                raise ValueError("alpha_bar must decrease strictly along the schedule")
            d = xp.concatenate([delta[:1], 2.0 / (1.0 / delta[:-1] + 1.0 / delta[1:]), delta[-1:]])
            self._slope = d                                             # dB/dt at t_i (N + 1,)

    @classmethod
    def from_schedule(cls, schedule):
        """The VP SDE whose kernel at t = i / N equals a DDPM schedule's q(x_i | x_0) (eq. (3))."""
        sde = cls(log_alpha_bar=xp.log(schedule.alpha_bar))
        return sde

    def _hermite(self, t, derivative):
        """The monotone cubic through (t_i, B_i) with slopes d_i, or its derivative."""
        h = 1.0 / self.N
        k = xp.clip(xp.floor(t * self.N).astype(xp.int64), 0, self.N - 1)   # t in [t_k, t_k+1]
        s = t * self.N - k
        b0, b1 = self._grid[k], self._grid[k + 1]
        d0, d1 = self._slope[k] * h, self._slope[k + 1] * h
        if derivative:
            return ((6 * s * s - 6 * s) * (b0 - b1) + (3 * s * s - 4 * s + 1) * d0
                    + (3 * s * s - 2 * s) * d1) / h
        return ((2 * s ** 3 - 3 * s * s + 1) * b0 + (s ** 3 - 2 * s * s + s) * d0
                + (3 * s * s - 2 * s ** 3) * b1 + (s ** 3 - s * s) * d1)

    def B(self, t):
        """int_0^t beta(u) du."""
        t = xp.asarray(t, dtype=xp.float64)
        if self._grid is None:
            return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t
        return self._hermite(t, False)

    def beta(self, t):
        t = xp.asarray(t, dtype=xp.float64)
        if self._grid is None:
            return self.beta_min + t * (self.beta_max - self.beta_min)
        return self._hermite(t, True)

    def drift(self, x, t):
        return -0.5 * _col(self.beta(t), x) * x

    def diffusion(self, t):
        return xp.sqrt(self.beta(t))

    def marginal(self, t):
        b = self.B(t)
        return xp.exp(-0.5 * b), xp.sqrt(-xp.expm1(-b))

    def prior_std(self):
        return 1.0

    def __repr__(self):
        if self._grid is not None:
            return f"VPSDE(from a {self.N}-step schedule)"
        return f"VPSDE(beta_min={self.beta_min}, beta_max={self.beta_max})"


class SubVPSDE(VPSDE):
    """sub-VP: VP's drift with a smaller diffusion; its variance is below VP's at every t."""

    def diffusion(self, t):
        return xp.sqrt(self.beta(t) * -xp.expm1(-2.0 * self.B(t)))

    def marginal(self, t):
        b = self.B(t)
        return xp.exp(-0.5 * b), -xp.expm1(-b)                            # s = 1 - exp(-B)

    def __repr__(self):
        return f"SubVPSDE(beta_min={self.beta_min}, beta_max={self.beta_max})"


def make_sde(kind: str, **kw) -> SDE:
    if kind == "ve":
        return VESDE(**kw)
    if kind == "vp":
        return VPSDE(**kw)
    if kind == "subvp":
        return SubVPSDE(**kw)
    raise ValueError(f"unknown SDE {kind!r}; accepted: {', '.join(SDES)}")
