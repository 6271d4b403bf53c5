"""Noise schedules: beta_1..beta_T and every quantity derived from them, once, in float64.

    alpha_t = 1 - beta_t,    alpha_bar_t = prod_{i<=t} alpha_i                            (3)
    beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t                     (10)

Two families of betas:

    linear   beta_t from 1e-4 to 0.02 over T = 1000 steps (Ho et al.), both ends scaled by
             1000 / T for other T so that alpha_bar_T stays about the same;
    cosine   alpha_bar_t = f(t) / f(0),  f(t) = cos^2((t/T + s) / (1 + s) * pi/2),  s = 0.008,
             beta_t = min(1 - alpha_bar_t / alpha_bar_{t-1}, 0.999)                       (22)

Arrays are indexed by t itself: index 0 stands for t = 0 (beta_0 = 0, alpha_bar_0 = 1), so
``alpha_bar[t - 1]`` reads as alpha_bar_{t-1}. A schedule can be *strided* (``respace``): it
keeps the steps tau_1 < ... < tau_S of the full chain and redefines
beta_i = 1 - alpha_bar_{tau_i} / alpha_bar_{tau_{i-1}}, so every formula of the full chain
holds for the short one unchanged; ``net_t[i]`` = tau_i is the time the network is told.
"""
from __future__ import annotations

import math

from refgen.backend import xp

__all__ = ["Schedule", "linear_betas", "cosine_betas", "make_schedule", "strided_timesteps",
           "SCHEDULES"]

SCHEDULES = ("linear", "cosine")


def linear_betas(T: int):
    """(T,) float64: beta_t evenly from 1e-4 to 0.02, both scaled by 1000 / T."""
    scale = 1000.0 / T
    if scale * 0.02 >= 1:
        raise ValueError(f"the linear schedule needs T > 20 (beta_T = 20 / T), got T={T}")
    return xp.linspace(scale * 1e-4, scale * 0.02, T, dtype=xp.float64)


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999):
    """(T,) float64 betas of the cosine schedule, eq. (22)."""
    t = xp.arange(T + 1, dtype=xp.float64)
    f = xp.cos((t / T + s) / (1 + s) * (math.pi / 2)) ** 2          # f(t), t = 0..T
    alpha_bar = f / f[0]                                              # (22)
    return xp.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], max_beta)  # (22), clipped


def strided_timesteps(T: int, S: int):
    """S times 1 <= tau_1 < ... < tau_S = T spread evenly over the chain (int64 (S,)).

    tau_1 = 1 and tau_S = T for S >= 2, so a strided sampler still ends on the data step."""
    S = int(S)
    if not 1 <= S <= T:
        raise ValueError(f"a strided schedule needs 1 <= steps <= T={T}, got {S}")
    if S == 1:
        return xp.asarray([T], dtype=xp.int64)
    tau = xp.rint(xp.linspace(1, T, S)).astype(xp.int64)
    if len(xp.unique(tau)) != S:  # cannot happen for S <= T with rint of an even grid
        raise AssertionError("strided timesteps are not distinct")
    return tau


class Schedule:
    """beta_t for t = 1..S and everything derived from them, as float64 arrays of length S+1.

    betas: (S,) the betas of steps 1..S. net_t: (S,) the network's time for each step
    (default 1..S; a strided schedule keeps the times of the full chain).
    """

    def __init__(self, betas, net_t=None):
        betas = xp.asarray(betas, dtype=xp.float64)
        if betas.ndim != 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a 1-d array in (0, 1)")
        self.T = S = int(betas.shape[0])
        zero = xp.zeros(1, dtype=xp.float64)
        self.beta = xp.concatenate([zero, betas])                       # beta_0 = 0
        self.alpha = 1.0 - self.beta                                     # alpha_t = 1 - beta_t
        self.alpha_bar = xp.cumprod(self.alpha)                          # (3)
        self.alpha_bar_prev = xp.concatenate([zero + 1.0, self.alpha_bar[:-1]])  # alpha_bar_{t-1}
        self.beta_tilde = (1.0 - self.alpha_bar_prev) / xp.maximum(1.0 - self.alpha_bar, 1e-300) \
            * self.beta                                                  # (10); beta_tilde_1 = 0
        # log beta_tilde_1 = -inf: the reverse process uses beta_tilde_2 there instead (a
        # finite variance for the decoder step), as improved DDPM does
        bt = self.beta_tilde.copy()
        bt[0] = 1.0
        if S >= 2:
            bt[1] = bt[2]
        else:
            bt[1] = self.beta[1]
        self.log_beta_tilde_clipped = xp.log(bt)
        self.log_beta = xp.log(xp.where(self.beta > 0, self.beta, 1.0))
        # coefficients that the forward process and the posterior read, eqs. (3), (10)-(12)
        self.sqrt_alpha_bar = xp.sqrt(self.alpha_bar)
        self.sqrt_one_minus_alpha_bar = xp.sqrt(1.0 - self.alpha_bar)
        self.sqrt_alpha_bar_prev = xp.sqrt(self.alpha_bar_prev)
        den = xp.maximum(1.0 - self.alpha_bar, 1e-300)
        self.posterior_coef_x0 = self.sqrt_alpha_bar_prev * self.beta / den               # (10)
        self.posterior_coef_xt = xp.sqrt(self.alpha) * (1.0 - self.alpha_bar_prev) / den  # (10)
        net_t = xp.arange(1, S + 1) if net_t is None else xp.asarray(net_t)
        if net_t.shape != (S,):
            raise ValueError(f"net_t must have one time per step, shape ({S},), got {net_t.shape}")
        self.net_t = xp.concatenate([xp.zeros(1, dtype=xp.int64), net_t.astype(xp.int64)])

    def __len__(self):
        return self.T

    def respace(self, timesteps):
        """The strided schedule that keeps steps ``timesteps`` (increasing, in 1..T) of this one."""
        tau = xp.asarray(timesteps, dtype=xp.int64)
        if tau.ndim != 1 or len(tau) == 0 or int(tau[0]) < 1 or int(tau[-1]) > self.T \
                or bool((xp.diff(tau) <= 0).any()):
            raise ValueError(f"timesteps must increase strictly within 1..{self.T}")
        ab = self.alpha_bar[tau]                                          # alpha_bar_{tau_i}
        ab_prev = xp.concatenate([xp.ones(1, dtype=xp.float64), ab[:-1]])
        return Schedule(1.0 - ab / ab_prev, net_t=self.net_t[tau])       # beta_i of the short chain

    def strided(self, steps: int):
        """``respace`` onto ``steps`` evenly spread times (the full schedule when steps = T)."""
        if steps is None or int(steps) == self.T:
            return self
        return self.respace(strided_timesteps(self.T, steps))

    def __repr__(self):
        return f"Schedule(T={self.T}, alpha_bar_T={float(self.alpha_bar[-1]):.3e})"


def make_schedule(kind: str, T: int) -> Schedule:
    """The ``kind`` ('linear' or 'cosine') schedule of T steps."""
    T = int(T)
    if T < 1:
        raise ValueError(f"T must be a positive number of steps, got {T}")
    if kind == "linear":
        return Schedule(linear_betas(T))
    if kind == "cosine":
        return Schedule(cosine_betas(T))
    raise ValueError(f"unknown schedule {kind!r}; accepted: {', '.join(SCHEDULES)}")
