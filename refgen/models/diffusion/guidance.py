"""Guidance: steering eps_theta towards a class y.

Classifier guidance (Dhariwal & Nichol) adds the gradient of a classifier f_phi(y | x_t, t)
trained on noisy images to the score. With eq. (21),

    grad log q(x_t, y) = grad log q(x_t) + grad log q(y | x_t)
                      ~= -(eps_theta(x_t, t) - sqrt(1 - alpha_bar_t) grad log f_phi(y | x_t))
                         / sqrt(1 - alpha_bar_t)                                           (24)

so the guided prediction, with a strength w, is

    eps_bar = eps_theta(x_t, t) - sqrt(1 - alpha_bar_t) w grad_{x_t} log f_phi(y | x_t)          (25)

Classifier-free guidance (Ho & Salimans) trains one network with and without the label (the
label is replaced by a null token with probability p_uncond) and uses the implicit classifier
p(y | x_t) ∝ p(x_t | y) / p(x_t):

    eps_bar = (w + 1) eps_theta(x_t, t, y) - w eps_theta(x_t, t)                                 (26)

w = 0 is the plain conditional model in eq. (26), and the unguided model in eq. (25).
The classifier itself (refgen.models.diffusion.classifier.NoisyClassifier) is trained on
x_t ~ q(x_t | x_0) at uniformly drawn t.
"""
from __future__ import annotations

import refgen.functional as F
from refgen.autograd import Tensor, enable_grad, grad
from refgen.backend import xp
from refgen.models.diffusion.process import coef

__all__ = ["classifier_guided_eps", "cfg_eps", "log_prob_grad", "drop_labels"]


def classifier_guided_eps(sch, xt, t, eps, grad_log_p, w: float):
    """eps_bar = eps - sqrt(1 - alpha_bar_t) w grad_{x_t} log f(y | x_t)."""
    return eps - coef(sch.sqrt_one_minus_alpha_bar, t, xt) * (w * grad_log_p)   # (25)


def cfg_eps(eps_cond, eps_uncond, w: float):
    """eps_bar = (w + 1) eps(x_t, t, y) - w eps(x_t, t, null)."""
    return (w + 1.0) * eps_cond - w * eps_uncond                          # (26)


def log_prob_grad(log_prob_fn, x, y):
    """grad_x log p(y | x) summed over the batch (each row only depends on its own x):
    log_prob_fn(x Tensor) -> log-probabilities (B, K); y: (B,) int array. Returns an array."""
    with enable_grad():
        xt = Tensor(xp.asarray(x), requires_grad=True)
        logp = F.log_softmax(log_prob_fn(xt), dim=-1)                    # (B, K)
        picked = F.sum(F.where(xp.arange(logp.shape[-1]) == xp.asarray(y)[:, None], logp, 0.0))
        (g,) = grad(picked, [xt])
    return g.data


def drop_labels(y, p_uncond: float, null: int, rng):
    """Labels with each replaced by the null token ``null`` with probability p_uncond: the
    training-time half of classifier-free guidance."""
    if p_uncond <= 0:
        return y
    keep = rng.random(y.shape) >= p_uncond
    return xp.where(keep, y, null)
