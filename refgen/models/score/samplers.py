"""Samplers from a score: Langevin, annealed Langevin, reverse-SDE Euler-Maruyama,
predictor-corrector and the probability-flow ODE.

Legend: s(x, .) the score model, sigma_1 > ... > sigma_L the noise ladder, eps the Langevin
base step, T steps per level, z ~ N(0, I) fresh at every step, t the SDE time (1 -> eps),
dt = -(1 - eps) / N for N steps (eps the SDE's sampling_eps), f and g the SDE's drift and
diffusion.

Score functions take and return xp arrays: ``score(x, i)`` (i the level, for the ladder) or
``score(x, t)`` (t a (B,) array of times, for an SDE).
"""
from __future__ import annotations

import math

from refgen.backend import xp
from refgen.progress import SolverProgress
from refgen.models.score.solvers import rk4, rk45

__all__ = ["check_sigmas", "langevin", "annealed_langevin", "euler_maruyama",
           "predictor_corrector", "ode_sample", "SDE_SAMPLERS"]

SDE_SAMPLERS = ("em", "pc", "ode")


def check_sigmas(sigmas):
    """A noise ladder as float64 (L,), refused unless positive and strictly decreasing."""
    s = xp.asarray(sigmas, dtype=xp.float64).reshape(-1)
    if s.shape[0] < 1 or not bool((s > 0).all()) or not bool((xp.diff(s) < 0).all()):
        raise ValueError(f"the noise levels must be positive and strictly decreasing "
                         f"(sigma_1 > ... > sigma_L > 0), got {[round(float(v), 4) for v in s]}")
    return s


def _noise(rng, x):
    return rng.standard_normal(x.shape).astype(x.dtype)


def langevin(score, x, step: float, n_steps: int, rng):
    """Langevin dynamics (eq. (4)): x <- x + delta/2 s(x) + sqrt(delta) z, n_steps times."""
    for _ in range(int(n_steps)):
        x = x + (step / 2) * score(x) + math.sqrt(step) * _noise(rng, x)   # (4)
    return x


def annealed_langevin(score, x, sigmas, eps: float, T: int, rng, denoise: bool = True,
                      progress=None):
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1), then (denoise) one
    Tweedie step x <- x + sigma_L^2 s(x, sigma_L) (Jolicoeur-Martineau et al. 2021, as NCSNv2).

        for i = 1..L:  alpha_i = eps sigma_i^2 / sigma_L^2
            for T steps:  x <- x + alpha_i / 2 s(x, sigma_i) + sqrt(alpha_i) z
    """
    sigmas = check_sigmas(sigmas)
    L = sigmas.shape[0]
    bar = SolverProgress("annealed Langevin", L * int(T), progress)
    for i in range(L):
        alpha = eps * float(sigmas[i] / sigmas[-1]) ** 2                  # alpha_i
        for j in range(int(T)):
            x = x + (alpha / 2) * score(x, i) + math.sqrt(alpha) * _noise(rng, x)
            bar(i * int(T) + j + 1)
    bar.close()
    if denoise:
        x = x + float(sigmas[-1]) ** 2 * score(x, L - 1)                  # E[x | x~] (Tweedie)
    return x


def _times(sde, steps: int):
    if int(steps) < 1:
        raise ValueError(f"a sampler needs steps >= 1, got {steps}")
    return (xp.linspace(sde.T, sde.sampling_eps, int(steps)),
            (sde.T - sde.sampling_eps) / int(steps))


def _col(a, x):
    return xp.asarray(a, dtype=x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))


def _predictor(sde, score, x, t, dt, rng):
    """One Euler-Maruyama step of the reverse SDE, t -> t - dt; returns (x, its mean)."""
    tb = xp.full((x.shape[0],), t)
    mean = x - sde.reverse_drift(x, tb, score(x, tb)).astype(x.dtype) * dt   # dx = [f - g^2 s] dt
    g = _col(sde.diffusion(tb), x)
    return mean + g * math.sqrt(dt) * _noise(rng, x), mean                     # + g dw_bar


def euler_maruyama(sde, score, shape, rng, steps: int = 1000, x=None, progress=None,
                   dtype=xp.float32):
    """Reverse-SDE sampling by Euler-Maruyama from the prior at t = 1 to t = sampling_eps;
    the last step returns its mean (no noise is added after the final step)."""
    ts, dt = _times(sde, steps)
    x = sde.prior_sample(shape, rng, dtype) if x is None else x
    bar = SolverProgress("reverse SDE (Euler-Maruyama)", len(ts), progress)
    mean = x
    for i, t in enumerate(ts):
        x, mean = _predictor(sde, score, x, float(t), dt, rng)
        bar(i + 1)
    bar.close()
    return mean


def langevin_corrector(score, x, t, snr: float, rng):
    """One Langevin step at a target signal-to-noise ratio (Song et al. 2021, Algorithm 5):
    step = 2 (snr ||z|| / ||s||)^2 with the norms averaged over the batch."""
    tb = xp.full((x.shape[0],), t)
    s = score(x, tb)
    z = _noise(rng, x)
    s_norm = float(xp.sqrt((s.reshape(s.shape[0], -1) ** 2).sum(1)).mean())
    z_norm = float(xp.sqrt((z.reshape(z.shape[0], -1) ** 2).sum(1)).mean())
    if s_norm == 0.0:                                  # no signal to correct with
        return x
    step = 2 * (snr * z_norm / s_norm) ** 2
    return x + step * s + math.sqrt(2 * step) * z


def predictor_corrector(sde, score, shape, rng, steps: int = 1000, snr: float = 0.16,
                        n_corrector: int = 1, x=None, progress=None, dtype=xp.float32):
    """PC sampling (Song et al. 2021, Algorithm 1): at each t, n_corrector Langevin corrector
    steps, then one reverse-SDE Euler-Maruyama predictor step; returns the final mean."""
    ts, dt = _times(sde, steps)
    x = sde.prior_sample(shape, rng, dtype) if x is None else x
    bar = SolverProgress("predictor-corrector", len(ts), progress)
    mean = x
    for i, t in enumerate(ts):
        for _ in range(int(n_corrector)):
            x = langevin_corrector(score, x, float(t), snr, rng)
        x, mean = _predictor(sde, score, x, float(t), dt, rng)
        bar(i + 1)
    bar.close()
    return mean


def ode_sample(sde, score, shape, rng, method: str = "rk45", steps: int = 100,
               rtol: float = 1e-5, atol: float = 1e-5, x=None, progress=None, dtype=xp.float32):
    """Integrate the probability-flow ODE dx/dt = f - 1/2 g^2 s from the prior at t = 1 to
    t = sampling_eps, with 'rk45' (adaptive, rtol/atol) or 'rk4' (fixed, ``steps`` steps)."""
    x = sde.prior_sample(shape, rng, dtype) if x is None else x
    shape = x.shape

    def f(t, y):
        tb = xp.full((shape[0],), t)
        return sde.ode_drift(y, tb, score(y, tb)).astype(y.dtype)

    bar = SolverProgress(f"probability-flow ODE ({method})", steps if method == "rk4" else None, progress)
    if method == "rk4":
        y, _ = rk4(f, x, sde.T, sde.sampling_eps, steps, callback=bar)
    elif method == "rk45":
        y, _ = rk45(f, x, sde.T, sde.sampling_eps, rtol=rtol, atol=atol, callback=bar)
    else:
        raise ValueError(f"unknown ODE method {method!r}; accepted: rk4, rk45")
    bar.close()
    return y
