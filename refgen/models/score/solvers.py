"""ODE solvers for dy/dt = f(t, y) on an xp array y: fixed-step RK4 and adaptive Dormand-Prince.

RK4 (the classical Runge-Kutta method), step h:

    k1 = f(t, y)                  k2 = f(t + h/2, y + h/2 k1)
    k3 = f(t + h/2, y + h/2 k2)   k4 = f(t + h, y + h k3)
    y <- y + h/6 (k1 + 2 k2 + 2 k3 + k4)                    global error O(h^4)

RK45 (Dormand & Prince 1980, "A family of embedded Runge-Kutta formulae"): seven stages
(the last reused as the next step's first, FSAL), a 5th-order solution y5 and an embedded
4th-order one y4. The error estimate err = y5 - y4 is measured against the tolerance
elementwise, sc = atol + rtol max(|y|, |y5|), ||err / sc||_RMS <= 1 accepts the step, and the
next step is h <- h min(5, max(0.2, 0.9 ||err / sc||^(-1/5))). A step size that falls below
``min_step`` (or a non-finite f) raises ODESolverError naming t and h: the solver never
returns an answer it could not make meet its tolerance.
"""
from __future__ import annotations

import math

from refgen.backend import xp

__all__ = ["rk4", "rk45", "ODESolverError", "ODEStats"]


class ODESolverError(ArithmeticError):
    """The adaptive solver could not meet its tolerance."""


class ODEStats(dict):
    """nfev, steps, rejected: what a solve cost."""


def rk4(f, y, t0: float, t1: float, n_steps: int, callback=None):
    """y(t1) from y(t0) in n_steps classical RK4 steps (t1 < t0 integrates backwards)."""
    if int(n_steps) < 1:
        raise ValueError(f"rk4 needs n_steps >= 1, got {n_steps}")
    h = (t1 - t0) / int(n_steps)
    t = t0
    for i in range(int(n_steps)):
        k1 = f(t, y)
        k2 = f(t + h / 2, y + (h / 2) * k1)
        k3 = f(t + h / 2, y + (h / 2) * k2)
        k4 = f(t + h, y + h * k3)
        y = y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
        t = t0 + (i + 1) * h
        if callback is not None:
            callback(i + 1, n_steps, t)
    return y, ODEStats(nfev=4 * int(n_steps), steps=int(n_steps), rejected=0)


# Dormand-Prince tableau: nodes c, stage weights A, 5th-order b5, 4th-order b4
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = ((),
      (1 / 5,),
      (3 / 40, 9 / 40),
      (44 / 45, -56 / 15, 32 / 9),
      (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
      (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
      (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84))
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)


def _rms(a):
    return float(xp.sqrt(xp.mean(a * a)))


def rk45(f, y, t0: float, t1: float, rtol: float = 1e-5, atol: float = 1e-5, h0=None,
         min_step: float = 1e-10, max_steps: int = 100_000, callback=None):
    """y(t1) from y(t0) by adaptive Dormand-Prince; returns (y, ODEStats)."""
    if rtol <= 0 or atol <= 0:
        raise ValueError(f"rk45 needs rtol > 0 and atol > 0, got rtol={rtol}, atol={atol}")
    direction = 1.0 if t1 >= t0 else -1.0
    span = abs(t1 - t0)
    t, k1 = t0, f(t0, y)
    nfev, steps, rejected = 1, 0, 0
    if h0 is None:  # a first guess from the size of y and of its derivative (Hairer et al.)
        d0, d1 = _rms(y / (atol + rtol * xp.abs(y))), _rms(k1 / (atol + rtol * xp.abs(y)))
        h0 = 0.01 * d0 / d1 if d0 > 1e-5 and d1 > 1e-5 else 1e-6
    h = min(float(h0), span)
    while direction * (t1 - t) > 0:
        if steps + rejected >= max_steps:
            raise ODESolverError(f"rk45 took more than {max_steps} steps without reaching "
                                 f"t={t1:g}: stuck at t={t:.9g}, step size {h:.3g} (a stiff or "
                                 f"singular drift; loosen rtol/atol or raise max_steps)")
        h = min(h, abs(t1 - t))
        if h < min_step and abs(t1 - t) > min_step:
            raise ODESolverError(f"rk45 cannot meet rtol={rtol:g}, atol={atol:g}: at t={t:.9g}, "
                                 f"step size {h:.3g} < min_step={min_step:g}")
        hs = direction * h
        k = [k1]
        for i in range(1, 7):                                            # stages 2..7
            yi = y + hs * sum(a * kj for a, kj in zip(_A[i], k) if a != 0.0)
            k.append(f(t + _C[i] * hs, yi))
        nfev += 6
        y5 = y + hs * sum(b * kj for b, kj in zip(_B5, k) if b != 0.0)   # stage 7 is at y5
        err = hs * sum((b5 - b4) * kj for b5, b4, kj in zip(_B5, _B4, k) if b5 != b4)
        sc = atol + rtol * xp.maximum(xp.abs(y), xp.abs(y5))
        e = _rms(err / sc)
        if not math.isfinite(e):
            raise ODESolverError(f"rk45: the derivative is not finite at t={t:.9g}, "
                                 f"step size {h:.3g}")
        if e <= 1.0:
            t, y, k1 = t + hs, y5, k[6]                                  # FSAL
            steps += 1
            if callback is not None:
                callback(steps, None, t)
        else:
            rejected += 1
        h = h * min(5.0, max(0.2, 0.9 * (e if e > 0 else 1e-10) ** -0.2))
    return y, ODEStats(nfev=nfev, steps=steps, rejected=rejected)
