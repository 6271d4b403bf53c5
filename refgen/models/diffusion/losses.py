"""Training objectives: the variational bound L_VLB, its simplification L_simple, and L_hybrid.

The bound, eqs. (13)-(16):

    -log p_theta(x_0) <= L_VLB = L_T + sum_{t=2}^T L_{t-1} + L_0
    L_T     = KL(q(x_T | x_0) || p(x_T))                     no parameters; ~1e-5 bits/dim
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))    two Gaussians, closed form
    L_0     = -log p_theta(x_0 | x_1)                        the decoder

With Sigma_theta = sigma_t^2 I fixed and mu_theta from eq. (17), L_{t-1} is a weighted
epsilon error (plus a constant that is 0 when sigma_t^2 = beta_tilde_t):

    L_{t-1} = beta_t^2 / (2 alpha_t (1 - alpha_bar_t) sigma_t^2) || eps - eps_theta(x_t, t) ||^2   (18)

and dropping the weight gives

    L_simple = E_{t, x_0, eps} || eps - eps_theta(x_t, t) ||^2,
               x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps                       (19)

(for a network that predicts x_0 or v, the same squared error on its own target).
Improved DDPM learns Sigma_theta (eq. (23)) with L_hybrid = L_simple + lambda L_VLB,
lambda = 0.001, where the L_VLB term sees the mean through a stop-gradient: it trains only
the variance. Here both terms are per dimension: L_VLB is estimated as T L_{t-1} at the
sampled t (unbiased for the sum over t), in nats, divided by D.

Decoders for L_0: images in [-1, 1] on the 8-bit grid use the discretized Gaussian (256
bins, refgen.distributions.DiscretizedGaussian), so L_VLB bounds the NLL of the discrete
pixels; continuous data (the 2D toys) use the Gaussian density N(x_0; mu_theta(x_1, 1), sigma_1^2).
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen.autograd import Tensor, as_tensor, no_grad
from refgen.backend import xp
from refgen.distributions import DiscretizedGaussian, Normal, kl_normal_logvar
from refgen.models.diffusion.process import (coef, interpret, mean_from_eps, q_mean_var,
                                             q_posterior, q_sample, v_from)

__all__ = ["regression_target", "l_simple", "eps_weight", "prior_kl", "decoder_nll", "vlb_term",
           "hybrid_loss", "vlb"]


def regression_target(sch, x0, t, eps, parameterization: str = "eps"):
    """What the network regresses at x_t = q_sample(x0, t, eps): eps, x_0, or v."""
    if parameterization == "eps":
        return eps
    if parameterization == "x0":
        return x0
    return v_from(sch, x0, t, eps)


def l_simple(target, output):
    """|| target - output ||^2, averaged over batch and dimensions; with target eps, eq. (19)."""
    d = target - output
    return F.mean(d * d)                                                  # (19)


def eps_weight(sch, t, log_var, like):
    """The weight of eq. (18): beta_t^2 / (2 alpha_t (1 - alpha_bar_t) sigma_t^2).

    The derivation's display divides by ||Sigma_theta||_2^2; with Sigma_theta = sigma_t^2 I
    the KL between the two Gaussians divides by sigma_t^2 (once, not squared), as Ho et al.
    (2020) write it, and that is what this computes. log_var: log sigma_t^2 as an array (a
    weight: nothing here is differentiated); like: x_t, for the shape and dtype."""
    w = sch.beta ** 2 / (2.0 * sch.alpha * xp.maximum(1.0 - sch.alpha_bar, 1e-300))
    return coef(w, t, like) / xp.exp(log_var)                             # (18)


def prior_kl(sch, x0):
    """L_T = KL(q(x_T | x_0) || N(0, I)) in nats per example: (B, ...) -> (B,)."""
    x0 = as_tensor(x0)
    T = sch.T
    mean, var = q_mean_var(sch, x0, T)                                   # (3) at t = T
    kl = kl_normal_logvar(mean, as_tensor(xp.log(var)), 0.0, 0.0)       # (16)
    return F.sum_except_batch(kl)


def decoder_nll(x0, mean, log_var, discrete: bool):
    """L_0 = -log p_theta(x_0 | x_1) in nats per example: (B, ...) -> (B,)."""
    x0 = as_tensor(x0)
    if discrete:
        lp = DiscretizedGaussian(mean, 0.5 * as_tensor(log_var, like=x0)).log_prob(x0)
    else:
        lp = Normal.from_logvar(mean, as_tensor(log_var, like=x0)).log_prob(x0)
    return -F.sum_except_batch(lp)                                                # (16)


def vlb_term(sch, x0, xt, t, pred, discrete: bool):
    """L_{t-1} (t >= 2) or L_0 (t = 1) in nats per example, for steps t (B,) ints.

    L_{t-1} compares the true posterior (10) with p_theta's Gaussian (mean (17), variance
    pred.log_var) in closed form; L_0 is the decoder's negative log-likelihood."""
    mu_q, _ = q_posterior(sch, x0, xt, t)                                 # (10)
    mu_p = mean_from_eps(sch, xt, t, pred.eps)                            # (17)
    log_var_q = coef(sch.log_beta_tilde_clipped, t, xt)                  # log beta_tilde_t, t >= 2
    kl = F.sum_except_batch(kl_normal_logvar(mu_q, as_tensor(log_var_q), mu_p, pred.log_var))  # (16)
    first = xp.asarray(t) == 1
    if not bool(first.any()):
        return kl
    nll = decoder_nll(x0, mu_p, pred.log_var, discrete)                  # (16), L_0
    return F.where(first, nll, kl)


def hybrid_loss(sch, x0, t, eps, out, parameterization: str, discrete: bool, lam: float = 0.001):
    """L_hybrid = L_simple + lam L_VLB, L_VLB estimated as T L_{t-1} per dimension.

    out: the network's output (B, 2C, ...) at x_t = q_sample(x0, t, eps). Returns the
    Tensors (loss, l_simple, l_vlb); l_vlb's graph reaches only the var_frac half of ``out``."""
    xt = q_sample(sch, x0, t, eps)                                        # (3)
    c = out.shape[1] // 2                                                 # (B, 2C, ...): mean part, var_frac
    simple = l_simple(regression_target(sch, x0, t, eps, parameterization), out[:, :c])  # (19)
    frozen = interpret(out, xt, t, sch, parameterization, "learned", stop_mean_grad=True)
    d = math.prod(x0.shape[1:])
    l_vlb = F.mean(vlb_term(sch, x0, xt, t, frozen, discrete)) * (sch.T / d)
    return simple + lam * l_vlb, simple, l_vlb


def vlb(predict, sch, x0, rng, discrete: bool, timesteps: int | None = None):
    """L_VLB of each example in nats, with its parts: a dict of (B,) float64 arrays
    'vlb', 'prior' (L_T), 'terms' (sum of L_{t-1}, t >= 2) and 'decoder' (L_0).

    predict(x_t, t) -> Prediction for a (B,) array of steps t. Each L_{t-1} is estimated with
    one x_t ~ q(x_t | x_0). timesteps: None sums every t = 2..T; K < T - 1 draws, for each
    example, one t from each of K equal strata of 2..T and weights it by the stratum's size
    (unbiased, cheaper, and noisier: the small-t terms vary fastest). L_0 and L_T are
    always exact in t.
    """
    x0 = as_tensor(x0)
    B, T = x0.shape[0], sch.T
    with no_grad():
        def term(t):
            t = xp.broadcast_to(xp.asarray(t, dtype=xp.int64), (B,))
            eps = rng.standard_normal(x0.shape, dtype=x0.dtype)
            xt = q_sample(sch, x0, t, Tensor(eps))                        # (3)
            return vlb_term(sch, x0, xt, t, predict(xt, t), discrete).data.astype(xp.float64)

        decoder = term(1)                                                 # L_0
        terms = xp.zeros(B, dtype=xp.float64)
        if T >= 2:
            if timesteps is None or int(timesteps) >= T - 1:
                for t in range(2, T + 1):
                    terms += term(t)                                      # L_{t-1}
            else:  # one t per example in each stratum [lo, hi) of 2..T, weighted by its size
                edges = xp.rint(xp.linspace(2, T + 1, int(timesteps) + 1)).astype(xp.int64)
                for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist()):
                    if hi > lo:
                        terms += (hi - lo) * term(lo + rng.integers(0, hi - lo, size=B))
        prior = prior_kl(sch, x0).data.astype(xp.float64)                 # L_T
    # (16): L_VLB = L_T + sum_{t>=2} L_{t-1} + L_0, >= -log p_theta(x_0) by eqs. (13)-(15)
    return {"vlb": prior + terms + decoder, "prior": prior, "terms": terms, "decoder": decoder}
