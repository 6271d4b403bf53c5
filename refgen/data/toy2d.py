"""Two-dimensional toy distributions, with exact log-densities where one exists.

``sample(name, n, rng) -> (n, 2) float64``, all roughly within [-4, 4]^2 (grid25's outer
modes sit on its edge).

Exact densities (``DENSITIES``; ``log_prob`` and ``entropy`` accept these):

  8gaussians    equal mixture of 8 isotropic Gaussians, centres on the circle of radius
                2*sqrt(2) at angles 2*pi*k/8, std 1/(2*sqrt(2)) ~ 0.354 (the FFJORD layout).
  grid25        equal mixture of 25 isotropic Gaussians, centres {-4,-2,0,2,4}^2, std 0.05
                (the 2D-grid of the mode-collapse benchmarks: PacGAN, Lin et al. 2018).
  ring8         equal mixture of 8 isotropic Gaussians, centres on the unit circle at angles
                2*pi*k/8, std 0.01 (PacGAN's 2D-ring).
  checkerboard  uniform on the 8 "black" 2x2 squares of a 4x4 board on [-4, 4]^2
                (square (i, j) is black when i + j is even, (0, 0) at the bottom left):
                p(x) = 1/32 there, so H = log 32 exactly.
  rings         rings of radius r_k in (1, 2, 3), chosen with weight w_k = r_k / 6 (equal
                density along the arc), angle ~ U[0, 2 pi), radius |r_k + 0.1 eps|,
                eps ~ N(0, 1).  In polar coordinates p(r, theta) = p_r(r) / (2 pi), and
                dx = r dr dtheta, so  p(x) = p_r(|x|) / (2 pi |x|)  with the folded normal
                p_r(r) = sum_k w_k [N(r; r_k, s^2) + N(r; -r_k, s^2)],  r > 0.

Sample-only: moons, circles, swissroll, pinwheel, 2spirals.

``entropy(name) -> (nats, standard_error)``: exact for checkerboard (error 0), otherwise the
Monte Carlo estimate -mean(log p(x_i)) over ``ENTROPY_N`` samples drawn with the fixed seed
``ENTROPY_SEED`` (computed once per process).  It is the floor a density model's test NLL
can reach.  ``modes(name) -> (centres (K, 2), std)`` for the mode-coverage metric.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from refgen.backend import to_numpy

__all__ = ["names", "sample", "log_prob", "entropy", "modes", "DENSITIES", "MODES",
           "ENTROPY_N", "ENTROPY_SEED"]

ENTROPY_N = 1_000_000
ENTROPY_SEED = 20240601
_CHUNK = 1 << 16  # rows per log_prob chunk: bounds the (rows, K, 2) temporaries

# 8gaussians: centres (8, 2) on radius 2*sqrt(2), std^2 = 1/8
_STD8 = 1.0 / (2.0 * math.sqrt(2.0))
_ANG8 = 2.0 * np.pi * np.arange(8) / 8
_CENTRES8 = 2.0 * math.sqrt(2.0) * np.stack([np.cos(_ANG8), np.sin(_ANG8)], axis=1)

# grid25: centres (25, 2) on {-4, -2, 0, 2, 4}^2, std 0.05 (PacGAN's 2D-grid)
_STD25 = 0.05
_G = np.arange(-4.0, 5.0, 2.0)
_CENTRES25 = np.stack(np.meshgrid(_G, _G, indexing="ij"), axis=-1).reshape(-1, 2)

# ring8: centres (8, 2) on the unit circle, std 0.01 (PacGAN's 2D-ring)
_STDR8 = 0.01
_CENTRESR8 = np.stack([np.cos(_ANG8), np.sin(_ANG8)], axis=1)

# rings
_RING_R = np.array([1.0, 2.0, 3.0])
_RING_W = _RING_R / _RING_R.sum()
_RING_STD = 0.1

# checkerboard: (i, j) indices of the 8 black squares, i along x, j along y
_BLACK = np.argwhere(np.add.outer(np.arange(4), np.arange(4)) % 2 == 0)


def _logsumexp(a, axis):
    m = a.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


# ----------------------------------------------------------------------------- samplers
def _moons(n, rng):
    upper = rng.random(n) < 0.5
    t = np.pi * rng.random(n)
    x = np.where(upper, np.cos(t), 1.0 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    pts = 2.0 * (np.stack([x, y], axis=1) - [0.5, 0.25])  # centred, x in [-3, 3]
    return pts + 0.1 * rng.standard_normal((n, 2))


def _circles(n, rng):
    r = np.where(rng.random(n) < 0.5, 3.0, 1.5)
    t = 2.0 * np.pi * rng.random(n)
    return r[:, None] * np.stack([np.cos(t), np.sin(t)], 1) + 0.1 * rng.standard_normal((n, 2))


def _gmm_sample(centres, std, n, rng):
    k = rng.integers(0, len(centres), n)
    return centres[k] + std * rng.standard_normal((n, 2))


def _checkerboard(n, rng):
    square = _BLACK[rng.integers(0, len(_BLACK), n)]  # (n, 2) board indices
    return -4.0 + 2.0 * (square + rng.random((n, 2)))


def _swissroll(n, rng):
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))  # t in [1.5 pi, 4.5 pi]
    pts = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / 5.0
    return pts + 0.2 * rng.standard_normal((n, 2))


def _pinwheel(n, rng, arms=5, radial_std=0.3, tangential_std=0.1, rate=0.25):
    arm = rng.integers(0, arms, n)
    f = rng.standard_normal((n, 2)) * [radial_std, tangential_std] + [1.0, 0.0]
    angle = 2.0 * np.pi * arm / arms + rate * np.exp(f[:, 0])  # arms curl outwards
    c, s = np.cos(angle), np.sin(angle)
    return 2.0 * np.stack([c * f[:, 0] - s * f[:, 1], s * f[:, 0] + c * f[:, 1]], axis=1)


def _two_spirals(n, rng):
    t = 3.0 * np.pi * np.sqrt(rng.random(n))  # denser where the arm is longer
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)[:, None]
    pts = sign * np.stack([-t * np.cos(t), t * np.sin(t)], axis=1) / 3.0
    return pts + 0.1 * rng.standard_normal((n, 2))


def _rings(n, rng):
    k = rng.choice(len(_RING_R), size=n, p=_RING_W)
    r = np.abs(_RING_R[k] + _RING_STD * rng.standard_normal(n))
    t = 2.0 * np.pi * rng.random(n)
    return r[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1)


_SAMPLERS = {
    "moons": _moons,
    "circles": _circles,
    "8gaussians": lambda n, rng: _gmm_sample(_CENTRES8, _STD8, n, rng),
    "checkerboard": _checkerboard,
    "swissroll": _swissroll,
    "pinwheel": _pinwheel,
    "2spirals": _two_spirals,
    "rings": _rings,
    "grid25": lambda n, rng: _gmm_sample(_CENTRES25, _STD25, n, rng),
    "ring8": lambda n, rng: _gmm_sample(_CENTRESR8, _STDR8, n, rng),
}


# ----------------------------------------------------------------------------- densities
def _gmm_log_prob(x, centres, std):
    # log (1/K) sum_k N(x; c_k, std^2 I), x (n, 2) -> (n,)
    d2 = ((x[:, None, :] - centres[None]) ** 2).sum(-1)  # (n, K)
    return (_logsumexp(-0.5 * d2 / std**2, axis=1)
            - math.log(len(centres)) - math.log(2.0 * np.pi * std**2))


def _checkerboard_log_prob(x):
    ij = np.floor((x + 4.0) / 2.0)
    inside = np.all((x >= -4.0) & (x < 4.0), axis=1) & (ij.sum(1) % 2 == 0)
    return np.where(inside, -math.log(32.0), -np.inf)


def _rings_log_prob(x):
    r = np.maximum(np.sqrt((x**2).sum(1)), np.finfo(np.float64).tiny)  # (n,)
    mu = np.concatenate([_RING_R, -_RING_R])  # folded normal: the mirror images
    logw = np.log(np.concatenate([_RING_W, _RING_W]))
    log_pr = _logsumexp(logw - 0.5 * ((r[:, None] - mu) / _RING_STD) ** 2, axis=1) \
        - math.log(math.sqrt(2.0 * np.pi) * _RING_STD)
    return log_pr - np.log(2.0 * np.pi * r)  # polar Jacobian: dx = r dr dtheta


_LOG_PROBS = {
    "8gaussians": lambda x: _gmm_log_prob(x, _CENTRES8, _STD8),
    "grid25": lambda x: _gmm_log_prob(x, _CENTRES25, _STD25),
    "checkerboard": _checkerboard_log_prob,
    "rings": _rings_log_prob,
    "ring8": lambda x: _gmm_log_prob(x, _CENTRESR8, _STDR8),
}
_MODES = {"8gaussians": (_CENTRES8, _STD8), "grid25": (_CENTRES25, _STD25),
          "ring8": (_CENTRESR8, _STDR8)}

DENSITIES = tuple(_LOG_PROBS)
MODES = tuple(_MODES)


def names() -> list[str]:
    """All toy dataset names."""
    return list(_SAMPLERS)


def _check(name, table, what):
    if name not in table:
        raise ValueError(f"toy2d {what} has no {name!r}; accepted: {', '.join(table)}")


def sample(name: str, n: int, rng=None) -> np.ndarray:
    """n samples, shape (n, 2) float64; rng is a numpy Generator (or a seed)."""
    _check(name, _SAMPLERS, "dataset")
    return _SAMPLERS[name](int(n), np.random.default_rng(rng)).astype(np.float64)


def log_prob(name: str, x) -> np.ndarray:
    """Exact log-density in nats, x (n, 2) (NumPy or backend array) -> (n,) float64 NumPy."""
    _check(name, _LOG_PROBS, "exact density")
    x = np.asarray(to_numpy(x), dtype=np.float64).reshape(-1, 2)
    f = _LOG_PROBS[name]
    return np.concatenate([f(x[i:i + _CHUNK]) for i in range(0, len(x), _CHUNK)] or
                          [np.zeros(0)])


@functools.lru_cache(maxsize=None)
def entropy(name: str) -> tuple[float, float]:
    """(differential entropy in nats, its standard error); exact for checkerboard."""
    _check(name, _LOG_PROBS, "exact density")
    if name == "checkerboard":
        return math.log(32.0), 0.0  # uniform on area 8 * 4 = 32
    lp = log_prob(name, sample(name, ENTROPY_N, np.random.default_rng(ENTROPY_SEED)))
    return float(-lp.mean()), float(lp.std(ddof=1) / math.sqrt(len(lp)))


def modes(name: str) -> tuple[np.ndarray, float]:
    """(mode centres (K, 2) float64, per-axis std) of a Gaussian-mixture dataset."""
    _check(name, _MODES, "mode list")
    centres, std = _MODES[name]
    return centres.copy(), float(std)
