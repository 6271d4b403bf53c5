"""MCMC on any differentiable log-density: Langevin (ULA), MALA, random-walk Metropolis,
and the replay buffer of persistent chains.

Every sampler runs N chains at once: ``x`` is an xp array (N, *shape), and ``log_prob`` is
any function taking a Tensor (N, *shape) to a Tensor (N,) of unnormalised log-densities
(an energy model passes ``lambda x: -model.energy(x)``); ``score`` is the same for a function
returning grad_x log p directly (a score network), as an xp array of x's shape.

Legend (the symbols of Song & Kingma 2021, "How to train your energy-based models"):

    eps      step_size        the Langevin step
    sigma    noise_scale      the noise multiplier; sqrt(eps) unless set (tempered form)
    z        standard normal noise, one per chain and coordinate

The unadjusted Langevin algorithm (ULA), the discretised Langevin diffusion:

    x' = x + eps/2 grad log p(x) + sqrt(eps) z                              (Langevin step)

Its chain's stationary law tends to p as eps -> 0. For p = N(0, s^2) it is exactly
N(0, s^2 / (1 - eps / (4 s^2))) (tests/test_samplers.py). Many EBM codes write the step
with two free knobs, x' = x + eps/2 grad log p + sigma z: with sigma^2 != eps the chain
samples (for small eps) p^(eps / sigma^2), a tempered density, not p; ``noise_scale`` is
that sigma. The untempered form is the default. The step written as
x' = x + eps/2 grad log p + eps z (noise eps beside a drift of eps/2) is the tempered form
with sigma = eps: its stationary variance on N(0, s^2) is eps s^2 / (1 - eps / (4 s^2)),
which goes to 0, not s^2, as eps -> 0.

MALA (Roberts & Tweedie 1996) makes the Langevin step a Metropolis-Hastings proposal, so p is
left exactly invariant at any eps:

    y = x + eps/2 grad log p(x) + sqrt(eps) z
    log q(y | x) = -|y - x - eps/2 grad log p(x)|^2 / (2 eps)  (+ const)
    accept with probability min(1, p(y) q(x | y) / (p(x) q(y | x)))

Random-walk Metropolis: y = x + scale z, accepted with probability min(1, p(y) / p(x)).
"""
from __future__ import annotations

import math
from typing import NamedTuple

from refgen.autograd import Tensor, enable_grad, grad, no_grad
from refgen.backend import default_rng, xp
from refgen.nn import Module

__all__ = ["NonFiniteEnergy", "MCMCResult", "log_prob_and_grad", "langevin_step", "langevin",
           "mala", "mala_log_acceptance", "mala_transition_log_density", "random_walk_metropolis",
           "rwm_transition_log_density", "ReplayBuffer"]


class NonFiniteEnergy(FloatingPointError):
    """A chain reached a point where the log-density or its gradient is not finite."""


class MCMCResult(NamedTuple):
    x: object                # xp array (N, *shape): the chains' last states
    acceptance_rate: float   # fraction of proposals accepted (1.0 for ULA: no test)
    grad_norm: float | None = None  # ULA: mean over steps and chains of |grad log p(x)|


def _check_positive(name, v):
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}")


def _check_finite(what, a, step):
    bad = ~xp.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
    if bool(bad.any()):
        chain = int(xp.argmax(bad))
        raise NonFiniteEnergy(f"{what} is not finite for chain {chain} at sampler step {step}; "
                              "lower the step size or regularise the energy")


def log_prob_and_grad(log_prob, x, step=0):
    """(log p(x) (N,), grad_x log p(x) (N, *shape)) as xp arrays, for x an xp array.

    Raises NonFiniteEnergy naming the first chain where either is not finite."""
    with enable_grad():
        xt = Tensor(x, requires_grad=True)
        lp = log_prob(xt)                                       # (N,)
        (g,) = grad(lp.sum(), xt)                               # chains are independent
    _check_finite("the log-density", lp.data, step)
    _check_finite("the gradient of the log-density", g.data, step)
    return lp.data, g.data


def _score_fn(log_prob, score):
    if (log_prob is None) == (score is None):
        raise ValueError("give exactly one of log_prob (a log-density) and score (its gradient)")
    if score is not None:
        def s(x, step):
            g = score(x)
            _check_finite("the score", g, step)
            return g
        return s
    return lambda x, step: log_prob_and_grad(log_prob, x, step)[1]


def langevin_step(x, g, step_size, rng, noise_scale=None):
    """One ULA step from x with gradient g = grad log p(x): x + eps/2 g + sigma z."""
    sigma = math.sqrt(step_size) if noise_scale is None else noise_scale   # untempered: sqrt(eps)
    z = rng.standard_normal(x.shape, dtype=x.dtype)
    return x + (0.5 * step_size) * g + sigma * z                           # Langevin step


def langevin(x, *, log_prob=None, score=None, n_steps, step_size, noise_scale=None, rng=None):
    """``n_steps`` ULA steps from x (N, *shape); returns MCMCResult (acceptance 1.0, and the
    mean gradient norm along the chains, the diagnostic of Nijkamp et al. 2019).

    noise_scale: sigma of the tempered form (default sqrt(step_size), the untempered ULA).
    """
    _check_positive("step_size", step_size)
    if noise_scale is not None:
        _check_positive("noise_scale", noise_scale)
    s, rng = _score_fn(log_prob, score), default_rng(rng)
    norm_sum = 0.0
    for k in range(int(n_steps)):
        g = s(x, k)
        norm_sum = norm_sum + xp.sqrt((g * g).reshape(g.shape[0], -1).sum(1)).mean()
        x = langevin_step(x, g, step_size, rng, noise_scale)
    _check_finite("a chain's state", x, int(n_steps))
    return MCMCResult(x, 1.0, float(norm_sum) / int(n_steps) if n_steps else None)


def _sum_rest(a):
    return a.reshape(a.shape[0], -1).sum(axis=1)                            # (N, ...) -> (N,)


def _metropolis(x, lp, y, lp_y, log_alpha, rng):
    """Accept y where log u < log alpha (the log MH ratio), u ~ U(0, 1); (N,) each."""
    accept = xp.log(rng.random(lp.shape[0])) < log_alpha
    keep = accept.reshape((-1,) + (1,) * (x.ndim - 1))
    return xp.where(keep, y, x), xp.where(accept, lp_y, lp), accept


def _mala_log_q(y, x, g_x, step_size):
    """log q(y | x) = -|y - x - eps/2 grad log p(x)|^2 / (2 eps), up to a constant, (N,)."""
    return -_sum_rest((y - x - (0.5 * step_size) * g_x) ** 2) / (2.0 * step_size)


def mala_log_acceptance(lp_x, g_x, x, lp_y, g_y, y, step_size):
    """log of the MH ratio p(y) q(x | y) / (p(x) q(y | x)) for the Langevin proposal, (N,)."""
    return (lp_y - lp_x + _mala_log_q(x, y, g_y, step_size)
            - _mala_log_q(y, x, g_x, step_size))


def mala_transition_log_density(log_prob, x, y, step_size):
    """log [q(y | x) min(1, alpha(x, y))]: MALA's kernel density from x to y != x, (N,).

    Detailed balance is p(x) K(x -> y) = p(y) K(y -> x) for every pair: the exact identity
    tests/test_samplers.py checks."""
    lp_x, g_x = log_prob_and_grad(log_prob, x)
    lp_y, g_y = log_prob_and_grad(log_prob, y)
    log_alpha = mala_log_acceptance(lp_x, g_x, x, lp_y, g_y, y, step_size)
    return (_mala_log_q(y, x, g_x, step_size) - 0.5 * _sum_rest(xp.ones_like(x)) * math.log(2 * math.pi * step_size)
            + xp.minimum(log_alpha, 0.0))


def mala(x, *, log_prob, n_steps, step_size, rng=None):
    """``n_steps`` Metropolis-adjusted Langevin steps; returns MCMCResult with the mean
    acceptance rate over chains and steps."""
    _check_positive("step_size", step_size)
    rng = default_rng(rng)
    lp, g = log_prob_and_grad(log_prob, x, 0)
    accepted = 0.0
    for k in range(int(n_steps)):
        z = rng.standard_normal(x.shape, dtype=x.dtype)
        y = x + (0.5 * step_size) * g + math.sqrt(step_size) * z           # Langevin proposal
        lp_y, g_y = log_prob_and_grad(log_prob, y, k + 1)
        log_alpha = mala_log_acceptance(lp, g, x, lp_y, g_y, y, step_size)
        x, lp, accept = _metropolis(x, lp, y, lp_y, log_alpha, rng)
        g = xp.where(accept.reshape((-1,) + (1,) * (x.ndim - 1)), g_y, g)
        accepted += float(accept.mean())
    return MCMCResult(x, accepted / max(int(n_steps), 1))


def random_walk_metropolis(x, *, log_prob, n_steps, scale, rng=None):
    """``n_steps`` random-walk Metropolis steps y = x + scale z; returns MCMCResult."""
    _check_positive("scale", scale)
    rng = default_rng(rng)
    lp = _log_prob_values(log_prob, x, 0)
    accepted = 0.0
    for k in range(int(n_steps)):
        y = x + scale * rng.standard_normal(x.shape, dtype=x.dtype)
        lp_y = _log_prob_values(log_prob, y, k + 1)
        x, lp, accept = _metropolis(x, lp, y, lp_y, lp_y - lp, rng)        # q symmetric
        accepted += float(accept.mean())
    return MCMCResult(x, accepted / max(int(n_steps), 1))


def rwm_transition_log_density(log_prob, x, y, scale):
    """log [q(y | x) min(1, p(y) / p(x))]: random-walk Metropolis's kernel density, (N,)."""
    lp_x, lp_y = _log_prob_values(log_prob, x, 0), _log_prob_values(log_prob, y, 0)
    d = _sum_rest(xp.ones_like(x))
    log_q = -_sum_rest((y - x) ** 2) / (2.0 * scale ** 2) - 0.5 * d * math.log(2 * math.pi * scale ** 2)
    return log_q + xp.minimum(lp_y - lp_x, 0.0)


def _log_prob_values(log_prob, x, step):
    with no_grad():
        lp = log_prob(Tensor(x)).data
    # -inf is a valid log-density (outside the support: always rejected); nan and +inf are not
    bad = xp.isnan(lp) | (lp == xp.inf)
    if bool(bad.any()):
        raise NonFiniteEnergy(f"the log-density is {float(lp[int(xp.argmax(bad))])} for chain "
                              f"{int(xp.argmax(bad))} at sampler step {step}")
    return lp


class ReplayBuffer(Module):
    """Persistent chains (Du & Mordatch 2019; Grathwohl et al. 2020): ``size`` stored states.

    ``draw(n, rng, noise)`` starts n chains from stored states picked at random, each
    replaced by fresh noise with probability ``reinit``; ``push(idx, x)`` stores where they
    ended. The states are a registered buffer (``chains``), so they are in ``state_dict``
    and every checkpoint. ``noise(n, rng) -> (n, *shape)`` draws starting points.
    """

    def __init__(self, size: int, initial, reinit: float = 0.05):
        super().__init__()
        if not 0.0 <= float(reinit) <= 1.0:
            raise ValueError(f"reinit must be a fraction in [0, 1], got {reinit!r}")
        if int(size) < 1 or initial.shape[0] != int(size):
            raise ValueError(f"the buffer needs {size} > 0 initial states, got {initial.shape[0]}")
        self.reinit = float(reinit)
        self.register_buffer("chains", initial)                 # (size, *shape)

    def draw(self, n, rng, noise):
        """(x0 (n, *shape), idx (n,)): stored states, a ``reinit`` fraction of them fresh noise."""
        idx = rng.integers(0, self.chains.shape[0], int(n))
        fresh = rng.random(int(n)) < self.reinit
        keep = fresh.reshape((-1,) + (1,) * (self.chains.ndim - 1))
        return xp.where(keep, noise(int(n), rng), self.chains[idx]), idx

    def push(self, idx, x):
        self.chains[idx] = x
