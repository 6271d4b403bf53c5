"""Samplers: ancestral DDPM, strided schedules, DDIM, and thresholding of the predicted x_0.

Ancestral sampling runs the learned reverse chain from x_S ~ N(0, I):

    x_{t-1} = mu_theta(x_t, t) + sigma_t z,  z ~ N(0, I)  (no noise at the last step)    (17)

with sigma_t^2 = beta_t, beta_tilde_t, or the learned Sigma_theta of eq. (23). A strided
schedule (Schedule.strided) runs the same chain on S < T steps.

DDIM writes the step through the predicted x_0 and eps with a free noise level sigma_t:

    x_{t-1} = sqrt(alpha_bar_{t-1}) x0_theta + sqrt(1 - alpha_bar_{t-1} - sigma_t^2) eps_theta
              + sigma_t z                                                                 (27)
    sigma_t = eta * sqrt(beta_tilde_t)              (Song et al. 2021, DDIM, eq. 16)

eta = 0 is deterministic; eta = 1 gives back the ancestral step with beta_tilde. (Eq. (28)
of the derivation writes sigma_t^2 = eta * beta_tilde_t; the two agree at eta = 0 and 1, and
its eta is the square of this one in between. This eta is the paper's and its
implementations', so eta = 0.5 here means sigma_t = sqrt(beta_tilde_t) / 2.) On a strided
schedule alpha_bar_{t-1} is that of the previous kept step s < t, which is eq. (29).

Thresholding (Imagen) keeps x0_theta in the data range before it is used: static clips it to
[-1, 1]; dynamic takes s = the ``percentile`` of |x0_theta| per sample, s >= 1, and maps
x0 -> clip(x0, -s, s) / s. eps_theta is then recomputed from the thresholded x_0 by eq. (11),
so the step stays consistent.

``predict(x_t, t) -> Prediction`` (refgen.models.diffusion.process) is the model at step t of
the schedule it is given; guidance lives inside it (refgen.models.diffusion.guidance).
"""
from __future__ import annotations

from refgen.backend import xp
from refgen.models.diffusion.process import eps_from_x0, mean_from_eps

__all__ = ["threshold_x0", "ddpm_step", "ddim_step", "sample_loop", "SAMPLERS", "THRESHOLDS"]

SAMPLERS = ("ddpm", "ddim")
THRESHOLDS = (None, "static", "dynamic")


def threshold_x0(x0, kind=None, percentile: float = 0.995):
    """x0_theta kept in [-1, 1]: None (as is), 'static' (clip) or 'dynamic' (Imagen)."""
    if kind is None or kind == "none":
        return x0
    if kind == "static":
        return xp.clip(x0, -1.0, 1.0)
    if kind == "dynamic":
        flat = xp.abs(x0.reshape(x0.shape[0], -1))
        s = xp.maximum(xp.quantile(flat, percentile, axis=1), 1.0)        # (B,), s >= 1
        s = s.reshape((-1,) + (1,) * (x0.ndim - 1)).astype(x0.dtype)
        return xp.clip(x0, -s, s) / s
    raise ValueError(f"unknown threshold {kind!r}; accepted: none, static, dynamic")


def ddpm_step(sch, x, t, pred, z):
    """x_{t-1} from x_t by eq. (17); z is the noise (ignored at t = 1)."""
    mean = mean_from_eps(sch, x, t, pred.eps)                             # (12), (17)
    if t == 1:
        return mean
    return mean + xp.exp(0.5 * pred.log_var) * z                         # (6), (17)


def ddim_step(sch, x, t, pred, z, eta: float):
    """x_{t-1} (the previous kept step) from x_t by eqs. (27)-(29)."""
    ab_prev = float(sch.alpha_bar_prev[t])
    sigma = eta * float(sch.beta_tilde[t]) ** 0.5   # (28) as DDIM eq. 16 writes it (the seed: eta^2)
    x_prev = ab_prev ** 0.5 * pred.x0 + max(1.0 - ab_prev - sigma * sigma, 0.0) ** 0.5 * pred.eps  # (27), (29)
    if t > 1 and sigma > 0:
        x_prev = x_prev + sigma * z                                       # (29)
    return x_prev


def sample_loop(predict, sch, shape, rng, *, sampler: str = "ddpm", eta: float = 0.0,
                threshold=None, x_T=None, dtype=None, stop: int = 0):
    """Run the reverse chain of schedule ``sch`` from x_S ~ N(0, I) (or ``x_T``) to x_0
    (or, with ``stop`` = k > 0, only down to x_k: a truncated chain, for cascades).

    predict(x_t, t) -> Prediction for an int step t in S..1 of ``sch``. rng: a backend
    generator. Noise is drawn for every step t > 1 (by DDIM only when eta > 0), so DDPM and
    DDIM with eta = 1 driven by one seed see the same z's. Returns x_0 (shape) as an xp array.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; accepted: {', '.join(SAMPLERS)}")
    dtype = dtype or xp.float32
    x = rng.standard_normal(shape, dtype=dtype) if x_T is None else xp.asarray(x_T, dtype=dtype)
    noisy = sampler == "ddpm" or eta > 0
    for t in range(sch.T, int(stop), -1):
        pred = predict(x, t)
        if threshold is not None:
            x0 = threshold_x0(pred.x0, threshold)
            pred = pred._replace(x0=x0, eps=eps_from_x0(sch, x, t, x0))   # (11)
        z = rng.standard_normal(shape, dtype=dtype) if (noisy and t > 1) else None
        if sampler == "ddpm":
            x = ddpm_step(sch, x, t, pred, z)
        else:
            x = ddim_step(sch, x, t, pred, z, eta)
    return x
