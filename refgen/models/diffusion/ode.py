"""The probability-flow ODE of an epsilon-network, written in sigma-time, and its solvers.

A variance-preserving x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (3), divided by
sqrt(alpha_bar_t), is x = x_0 + sigma eps with

    sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)          x = x_t / sqrt(alpha_bar_t)

(Karras et al. 2022, "Elucidating the design space of diffusion-based generative models"). In
these variables the probability-flow ODE of Song et al. 2021 has the simplest drift there is:

    dx/dsigma = -sigma grad_x log p_sigma(x) = eps(x, sigma)                  Phi of eq. (31)

(the score is -eps / sigma, eq. (21) in these variables). Its solution from x(sigma_max) ~ the
prior to sigma = 0 is a deterministic sampler; one of its steps is the Phi of consistency
distillation, eq. (31), whose paper (Song et al. 2023, "Consistency models") calls sigma "t".
Legend: sigma <-> t of the consistency-model paper; eps(x, sigma) <-> -t s_phi(x, t).

    Euler   x' = x + (sigma' - sigma) d,            d = eps(x, sigma)
    Heun    x' = x + (sigma' - sigma) (d + d') / 2, d' = eps(x + (sigma' - sigma) d, sigma')
            (the last step to sigma' = 0 is Euler's: eps(., 0) is not defined)

on the rho-spaced grid sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) -
sigma_max^(1/rho)))^rho, i = 0..n-1, then 0 (Karras et al. 2022, eq. (5), rho = 7).

A DDPM knows eps only at its integer steps t; ``eps_in_sigma`` asks its network at the
fractional t whose sigma_t interpolates sigma linearly in log sigma between the steps.
"""
from __future__ import annotations

import math

from refgen.autograd import Tensor, no_grad
from refgen.backend import xp

__all__ = ["schedule_sigmas", "sigma_to_t", "karras_sigmas", "eps_in_sigma", "eps_fn",
           "euler_step", "heun_step", "ode_solve", "ode_sample", "METHODS"]

METHODS = ("euler", "heun")


def schedule_sigmas(sch):
    """(T+1,) float64 sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t), t = 0..T (sigma_0 = 0)."""
    return xp.sqrt((1.0 - sch.alpha_bar) / sch.alpha_bar)


def sigma_to_t(sch, sigma):
    """The fractional step t(sigma) of schedule ``sch``: linear in log sigma between the
    integer steps 1..T (clamped to [1, T]); sigma: a float or an array."""
    s = schedule_sigmas(sch)[1:]
    log_sigma = xp.log(xp.maximum(xp.asarray(sigma, dtype=xp.float64), 1e-300))
    return xp.interp(log_sigma, xp.log(s), xp.arange(1, sch.T + 1, dtype=xp.float64))


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, zero=True):
    """(n [+1],) float64, decreasing: the rho-spaced grid from sigma_max to sigma_min, then 0
    when ``zero`` (Karras et al. 2022, eq. (5))."""
    n = int(n)
    if n < 1 or not 0 < sigma_min <= sigma_max:
        raise ValueError(f"karras_sigmas needs n >= 1 and 0 < sigma_min <= sigma_max, got "
                         f"n={n}, sigma_min={sigma_min}, sigma_max={sigma_max}")
    i = xp.arange(n, dtype=xp.float64) / max(n - 1, 1)
    hi, lo = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    s = (hi + i * (lo - hi)) ** rho
    return xp.concatenate([s, xp.zeros(1, dtype=xp.float64)]) if zero else s


def eps_in_sigma(model, x, sigma, y=None):
    """eps_theta of a DDPM ``model`` at x = x_0 + sigma eps (x: an array (B, ...); sigma: a
    float or (B,)), as an array (no graph: this is the ODE's drift). The network sees x_t = x / sqrt(1 + sigma^2) at the
    fractional step t(sigma); its v or x_0 output is turned into eps with the continuous
    sqrt(alpha_bar) = 1 / sqrt(1 + sigma^2)."""
    n = x.shape[0]
    sig = xp.broadcast_to(xp.asarray(sigma, dtype=xp.float64), (n,))
    shape = (n,) + (1,) * (x.ndim - 1)
    a = (1.0 / xp.sqrt(1.0 + sig * sig)).reshape(shape).astype(x.dtype)  # sqrt(alpha_bar)
    s = (sig.reshape(shape) * a).astype(x.dtype)                           # sqrt(1 - alpha_bar)
    xt = x * a                                                             # x_t = sqrt(ab) x
    t_net = sigma_to_t(model.schedule, sig)                                # fractional steps
    with no_grad():
        out = model._net(Tensor(xt), t_net, model._labels(y, n)).data
    if model.learn_sigma:
        out = out[:, :out.shape[1] // 2]
    if model.parameterization == "eps":
        return out
    if model.parameterization == "v":
        return xt * s + out * a                                            # eps = s x_t + a v
    return (xt - out * a) / s                                              # (11)


def eps_fn(model, y=None):
    """(x, sigma) -> eps as an array: a DDPM as the drift of the ODE (no graph)."""
    return lambda x, sigma: eps_in_sigma(model, x, sigma, y)


def _h(sigma, sigma_next, x):
    """sigma' - sigma, shaped to broadcast against x (sigmas: floats or (B,) arrays)."""
    h = xp.asarray(sigma_next, dtype=xp.float64) - xp.asarray(sigma, dtype=xp.float64)
    return h.reshape(h.shape + (1,) * (x.ndim - h.ndim)).astype(x.dtype) if h.ndim else float(h)


def euler_step(f, x, sigma, sigma_next):
    """x(sigma_next) by one Euler step of dx/dsigma = f(x, sigma); sigmas: floats or (B,)."""
    return x + _h(sigma, sigma_next, x) * f(x, sigma)


def heun_step(f, x, sigma, sigma_next):
    """x(sigma_next) by one Heun step (Euler's when sigma_next = 0); sigmas: floats or (B,)."""
    h = _h(sigma, sigma_next, x)
    d = f(x, sigma)
    x_euler = x + h * d
    at_zero = xp.asarray(sigma_next) == 0
    if bool(at_zero.all()):
        return x_euler
    if bool(at_zero.any()):
        raise ValueError("heun_step: sigma_next is 0 for some examples only; step those with Euler")
    return x + h * 0.5 * (d + f(x_euler, sigma_next))


def ode_solve(f, x, sigmas, method: str = "heun"):
    """Integrate dx/dsigma = f(x, sigma) along the grid ``sigmas`` (x at sigmas[0])."""
    if method not in METHODS:
        raise ValueError(f"unknown ODE method {method!r}; accepted: {', '.join(METHODS)}")
    step = heun_step if method == "heun" else euler_step
    sigmas = [float(s) for s in sigmas]
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        x = step(f, x, s, s_next)
    return x


def ode_sample(model, n, rng, *, steps: int = 18, method: str = "heun", rho: float = 7.0,
               cond=None, x_T=None, dtype=None):
    """n samples of a DDPM by its probability-flow ODE: ``steps`` sigmas from the schedule's
    sigma_T to sigma_1 (rho-spaced), then 0. Heun costs 2 steps - 1 network evaluations.
    x_T (a draw of the prior N(0, I) at t = T) is scaled to x = sqrt(1 + sigma_T^2) x_T."""
    sig = schedule_sigmas(model.schedule)
    sigmas = karras_sigmas(steps, float(sig[1]), float(sig[-1]), rho)
    dtype = dtype or xp.float32
    shape = (n,) + tuple(model.data_shape)
    z = rng.standard_normal(shape, dtype=dtype) if x_T is None else xp.asarray(x_T, dtype=dtype)
    x = z * math.sqrt(1.0 + float(sig[-1]) ** 2)
    x = ode_solve(eps_fn(model, cond), x, sigmas, method)
    return x * model.data_scale
