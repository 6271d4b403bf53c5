"""f-divergences and the variational bound f-GAN trains on (Nowozin et al., 2016).

For a convex f with f(1) = 0,  D_f(P || Q) = E_q[f(p(x) / q(x))].  With the convex conjugate
f*(t) = sup_u (t u - f(u)) (Fenchel), for every function T

    D_f(P || Q) >= E_p[T(x)] - E_q[f*(T(x))]                      (Nowozin et al., eq. 4)

with equality at T*(x) = f'(p(x) / q(x)). f-GAN's discriminator outputs a raw value V(x) and
T = g_f(V) with an output activation g_f that maps R into the domain of f*; the
discriminator ascends the bound (eq. 6), the generator descends it, or, as in the paper's
experiments, ascends E_q[g_f(V(G(z)))] instead (Sec. 3.2).

Each row of ``DIVERGENCES`` holds f, its conjugate f*, f' (so T* = f'(p/q)), g_f, and
f*(g_f(v)) written in a form finite for every v (the composition as written overflows for
some rows). The generator functions and the conjugates act on arrays, the activations on
Tensors. The "gan" row is the paper's: its f(1) = -log 4, so D_gan = 2 JSD - log 4.

    name               f(u)                              f*(t)              g_f(v)
    kl                 u log u                           exp(t - 1)         v
    reverse_kl         -log u                            -1 - log(-t)       -exp(-v)
    pearson            (u - 1)^2                         t^2 / 4 + t        v
    squared_hellinger  (sqrt(u) - 1)^2                   t / (1 - t)        1 - exp(-v)
    jensen_shannon     u log u - (u + 1) log((u + 1)/2)  -log(2 - exp(t))   log 2 - softplus(-v)
    gan                u log u - (u + 1) log(u + 1)      -log(1 - exp(t))   -softplus(-v)
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import refgen.functional as F
from refgen.backend import xp

__all__ = ["Divergence", "DIVERGENCES", "get", "variational_bound"]

LOG2 = math.log(2.0)


class Divergence(NamedTuple):
    name: str
    f: Callable                 # generator function, arrays u > 0
    f_conj: Callable            # convex conjugate f*, arrays t in dom f*
    f_prime: Callable           # f', arrays: T* = f'(p / q)
    activation: Callable        # g_f: R -> dom f*, Tensors
    conj_activation: Callable   # f*(g_f(v)), Tensors, finite for every v


DIVERGENCES = {d.name: d for d in [
    Divergence("kl",
               f=lambda u: u * xp.log(u),
               f_conj=lambda t: xp.exp(t - 1.0),
               f_prime=lambda u: 1.0 + xp.log(u),
               activation=lambda v: v,
               conj_activation=lambda v: F.exp(v - 1.0)),
    Divergence("reverse_kl",
               f=lambda u: -xp.log(u),
               f_conj=lambda t: -1.0 - xp.log(-t),
               f_prime=lambda u: -1.0 / u,
               activation=lambda v: -F.exp(-v),
               conj_activation=lambda v: v - 1.0),          # -1 - log(exp(-v))
    Divergence("pearson",
               f=lambda u: (u - 1.0) ** 2,
               f_conj=lambda t: 0.25 * t * t + t,
               f_prime=lambda u: 2.0 * (u - 1.0),
               activation=lambda v: v,
               conj_activation=lambda v: 0.25 * v * v + v),
    Divergence("squared_hellinger",
               f=lambda u: (xp.sqrt(u) - 1.0) ** 2,
               f_conj=lambda t: t / (1.0 - t),
               f_prime=lambda u: 1.0 - 1.0 / xp.sqrt(u),
               activation=lambda v: 1.0 - F.exp(-v),
               conj_activation=lambda v: F.exp(v) - 1.0),   # (1 - e^-v) / e^-v
    Divergence("jensen_shannon",
               f=lambda u: u * xp.log(u) - (u + 1.0) * xp.log((u + 1.0) / 2.0),
               f_conj=lambda t: -xp.log(2.0 - xp.exp(t)),
               f_prime=lambda u: xp.log(2.0 * u / (u + 1.0)),
               activation=lambda v: LOG2 - F.softplus(-v),
               conj_activation=lambda v: F.softplus(v) - LOG2),   # -log(2 - 2 sigmoid(v))
    Divergence("gan",
               f=lambda u: u * xp.log(u) - (u + 1.0) * xp.log(u + 1.0),
               f_conj=lambda t: -xp.log(1.0 - xp.exp(t)),
               f_prime=lambda u: xp.log(u / (u + 1.0)),
               activation=lambda v: -F.softplus(-v),
               conj_activation=lambda v: F.softplus(v)),    # -log(1 - sigmoid(v))
]}


def get(name: str) -> Divergence:
    if name not in DIVERGENCES:
        raise ValueError(f"unknown f-divergence {name!r}; accepted: {', '.join(DIVERGENCES)}")
    return DIVERGENCES[name]


def variational_bound(div: Divergence, v_real, v_fake):
    """E_p[g_f(V(x))] - E_q[f*(g_f(V(x)))] from the raw outputs V on real and generated data:
    the lower bound on D_f(P || Q) the discriminator ascends (Nowozin et al., eq. 6)."""
    return F.mean(div.activation(v_real)) - F.mean(div.conj_activation(v_fake))
