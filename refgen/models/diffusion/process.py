"""The forward process q, its posterior, and how a network's output defines the reverse p_theta.

Forward (fixed, no parameters):

    q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)                              (1)
    q(x_t | x_0)     = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)                      (3)

Posterior, tractable once x_0 is known:

    q(x_{t-1} | x_t, x_0) = N(mu_tilde_t(x_t, x_0), beta_tilde_t I)                       (7)
    mu_tilde_t = sqrt(alpha_t)(1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
               + sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0                      (10)
    x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)                           (11)
    mu_tilde_t = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t)               (12)

Reverse (learned): p_theta(x_{t-1} | x_t) = N(mu_theta(x_t, t), Sigma_theta(x_t, t))     (6)
with mu_theta from eq. (12) with eps_theta in place of eps                                 (17)
and Sigma_theta fixed to beta_t or beta_tilde_t, or learned by interpolation               (23)

    Sigma_theta = exp(var_frac log beta_t + (1 - var_frac) log beta_tilde_t)

(the paper's v, named var_frac here so that v names only the v-prediction target below).
The network may predict eps, x_0 or v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0;
each converts to the others through eq. (11). Its score estimate is eq. (21):
s_theta(x_t, t) = -eps_theta(x_t, t) / sqrt(1 - alpha_bar_t).

Every function takes a Schedule ``sch``, integer steps ``t`` (an int or a (B,) array of
indices into the schedule, 1..S) and Tensors or plain arrays alike: coefficients are gathered
at t, shaped to broadcast against x (B, ...), in x's dtype.
"""
from __future__ import annotations

from typing import NamedTuple

from refgen.backend import xp

__all__ = ["coef", "q_step", "q_sample", "q_mean_var", "q_posterior", "x0_from_eps",
           "eps_from_x0", "mean_from_eps", "v_from", "x0_eps_from_v", "score_from_eps",
           "model_log_variance", "Prediction", "interpret", "PARAMETERIZATIONS", "VARIANCES"]

PARAMETERIZATIONS = ("eps", "x0", "v")
VARIANCES = ("beta", "beta_tilde", "learned")


def coef(a, t, x):
    """a[t] for steps t, shaped (B, 1, ..., 1) (or a scalar) to broadcast against x, in x's
    dtype; x is read for its ndim and dtype only (a Tensor in training, an array in sampling)."""
    a_t = a[t]
    if getattr(a_t, "ndim", 0):
        a_t = a_t.reshape(a_t.shape + (1,) * (x.ndim - a_t.ndim))
    return xp.asarray(a_t, dtype=x.dtype)


# ----------------------------------------------------------------------------- forward
def q_step(sch, x_prev, t, eps):
    """One forward step x_t ~ q(x_t | x_{t-1}), with the noise eps given."""
    return coef(xp.sqrt(sch.alpha), t, x_prev) * x_prev \
        + coef(xp.sqrt(sch.beta), t, x_prev) * eps                        # (1)


def q_sample(sch, x0, t, eps):
    """x_t ~ q(x_t | x_0) in one jump, with the noise eps given."""
    return coef(sch.sqrt_alpha_bar, t, x0) * x0 \
        + coef(sch.sqrt_one_minus_alpha_bar, t, x0) * eps                 # (2), (3)


def q_mean_var(sch, x0, t):
    """Mean and variance of q(x_t | x_0)."""
    return coef(sch.sqrt_alpha_bar, t, x0) * x0, coef(1.0 - sch.alpha_bar, t, x0)  # (3)


# ----------------------------------------------------------------------------- posterior
def q_posterior(sch, x0, xt, t):
    """Mean and variance of q(x_{t-1} | x_t, x_0): (mu_tilde_t, beta_tilde_t)."""
    mean = coef(sch.posterior_coef_xt, t, xt) * xt + coef(sch.posterior_coef_x0, t, xt) * x0  # (10)
    return mean, coef(sch.beta_tilde, t, xt)                              # (7), (10)


def x0_from_eps(sch, xt, t, eps):
    """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
    s, a = coef(sch.sqrt_one_minus_alpha_bar, t, xt), coef(sch.sqrt_alpha_bar, t, xt)
    return (xt - s * eps) / a                                             # (11)


def eps_from_x0(sch, xt, t, x0):
    """eq. (11) solved for eps: eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t)."""
    s, a = coef(sch.sqrt_one_minus_alpha_bar, t, xt), coef(sch.sqrt_alpha_bar, t, xt)
    return (xt - a * x0) / s                                              # (11)


def mean_from_eps(sch, xt, t, eps):
    """mu = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t): eq. (12), and with
    eps_theta in place of eps, the reverse mean of eq. (17)."""
    k = coef(sch.beta / xp.maximum(sch.sqrt_one_minus_alpha_bar, 1e-300), t, xt)
    return (xt - k * eps) / coef(xp.sqrt(sch.alpha), t, xt)              # (12), (17)


def v_from(sch, x0, t, eps):
    """The v target: v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0."""
    return coef(sch.sqrt_alpha_bar, t, x0) * eps - coef(sch.sqrt_one_minus_alpha_bar, t, x0) * x0


def x0_eps_from_v(sch, xt, t, v):
    """(x_0, eps) from v and x_t: x_0 = sqrt(ab) x_t - sqrt(1-ab) v, eps = sqrt(1-ab) x_t + sqrt(ab) v
    (x_t and v are a rotation of (x_0, eps) by the angle with cos = sqrt(alpha_bar_t))."""
    a, s = coef(sch.sqrt_alpha_bar, t, xt), coef(sch.sqrt_one_minus_alpha_bar, t, xt)
    return a * xt - s * v, s * xt + a * v


def score_from_eps(sch, xt, t, eps):
    """grad_x log q(x_t) ~= -eps_theta(x_t, t) / sqrt(1 - alpha_bar_t)."""
    return -eps / coef(sch.sqrt_one_minus_alpha_bar, t, xt)             # (21)


# ----------------------------------------------------------------------------- reverse
def model_log_variance(sch, t, x, variance: str, var_frac=None):
    """log Sigma_theta(x_t, t): log beta_t, log beta_tilde_t (beta_tilde_1 -> beta_tilde_2, see
    Schedule), or the learned interpolation of eq. (23) with mixing weights ``var_frac`` (like x)."""
    if variance == "beta":
        return coef(sch.log_beta, t, x)
    if variance == "beta_tilde":
        return coef(sch.log_beta_tilde_clipped, t, x)
    if variance == "learned":
        return (var_frac * coef(sch.log_beta, t, x)
                + (1.0 - var_frac) * coef(sch.log_beta_tilde_clipped, t, x))  # (23)
    raise ValueError(f"unknown variance {variance!r}; accepted: {', '.join(VARIANCES)}")


class Prediction(NamedTuple):
    """What the reverse process needs at (x_t, t): eps_theta, the implied x_0, log Sigma_theta,
    and (learned variance only) the interpolation weights var_frac of eq. (23)."""
    eps: object
    x0: object
    log_var: object
    var_frac: object = None


def interpret(out, xt, t, sch, parameterization: str = "eps", variance: str = "beta_tilde",
              stop_mean_grad: bool = False):
    """A network's raw output at (x_t, t) as a Prediction.

    out: (B, C', ...) with C' = C (fixed variance) or 2 C (learned: the second half is the raw
    mixing weight in [-1, 1], mapped to var_frac = (raw + 1) / 2, so a zero output sits halfway
    between the two variances in log space).
    stop_mean_grad: cut the graph of the mean part (eps / x_0 / v), so that a loss of this
    Prediction trains only the variance (L_hybrid's VLB term).
    """
    if variance == "learned":
        c = out.shape[1] // 2
        out, raw = out[:, :c], out[:, c:]
        var_frac = (raw + 1.0) * 0.5
    else:
        var_frac = None
    if stop_mean_grad:
        out = out.detach()
    if parameterization == "eps":
        eps = out
        x0 = x0_from_eps(sch, xt, t, eps)                                 # (11)
    elif parameterization == "x0":
        x0 = out
        eps = eps_from_x0(sch, xt, t, x0)                                 # (11)
    elif parameterization == "v":
        x0, eps = x0_eps_from_v(sch, xt, t, out)
    else:
        raise ValueError(f"unknown parameterization {parameterization!r}; accepted: "
                         f"{', '.join(PARAMETERIZATIONS)}")
    return Prediction(eps, x0, model_log_variance(sch, t, xt, variance, var_frac), var_frac)
