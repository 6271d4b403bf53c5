"""Score matching objectives, on a score function s(x) (or s(x, sigma), s(x, t)) directly.

Every function returns one value per example, (B,), so a caller averages (or weights) them.

Denoising score matching (Vincent 2011), one noise level sigma, as the derivation writes it:

    l(theta; sigma) = E_x E_{x~ ~ N(x, sigma^2 I)} || s(x~, sigma) + (x~ - x) / sigma^2 ||^2

and over the ladder sigma_1 > ... > sigma_L with lambda(sigma) = sigma^2 (Song & Ermon 2019):

    L(theta) = 1/L sum_i lambda(sigma_i) l(theta; sigma_i)
             = 1/L sum_i E || sigma_i s(x + sigma_i z, sigma_i) + z ||^2,   z ~ N(0, I)

estimated without bias by drawing one level per example, uniformly. (Song & Ermon write 1/2
in front of l; the derivation and refgen leave it out: a constant factor.) Its minimiser is
the score of the noised density q_sigma(x~) = int N(x~; x, sigma^2 I) p(x) dx, because
l(theta; sigma) = E || s(x~) - grad log q_sigma(x~) ||^2 + C with C independent of theta.

The same loss in continuous time for an SDE with kernel N(m(t) x_0, s(t)^2 I) (Song et al.
2021, eq. 7): lambda(t) E || s(x_t, t) - grad log p_0t(x_t | x_0) ||^2, t ~ U(eps, 1), with
lambda(t) = s(t)^2 ("sigma2") or the likelihood weighting lambda(t) = g(t)^2 (Song, Durkan,
Murray & Ermon 2021, whose weighted loss bounds the KL divergence, hence the NLL).

Explicit (Hyvarinen 2005) and sliced (Song, Garg, Shi & Ermon 2019) score matching, which
need no noise, live in refgen.score_matching, shared with the energy family.
"""
from __future__ import annotations

from refgen.autograd import as_tensor

__all__ = ["dsm", "annealed_dsm", "sde_dsm", "WEIGHTINGS"]

WEIGHTINGS = ("sigma2", "likelihood")


def _sq(a):
    """||a||^2 per example: (B, ...) -> (B,)."""
    return (a * a).reshape(a.shape[0], -1).sum(1)


def _col(a, x):
    return a.reshape(a.shape + (1,) * (len(x.shape) - a.ndim))


def dsm(score_fn, x, sigma: float, z):
    """l(theta; sigma) per example: || s(x~) + (x~ - x) / sigma^2 ||^2 with x~ = x + sigma z.

    score_fn(x~) -> s (B, ...); z ~ N(0, I) like x."""
    x = as_tensor(x)
    x_tilde = x + sigma * z                                               # x~ ~ N(x, sigma^2 I)
    return _sq(score_fn(x_tilde) + (x_tilde - x) * (1.0 / sigma ** 2))


def annealed_dsm(score_fn, x, sigmas, idx, z):
    """lambda(sigma_i) l(theta; sigma_i) per example at level idx (B,) with lambda = sigma^2:
    || sigma s(x + sigma z, i) + z ||^2. score_fn(x~, idx) -> s. The batch mean estimates
    L(theta) when idx ~ U{0..L-1}."""
    x = as_tensor(x)
    sigma = _col(sigmas[idx], x).astype(x.dtype)                          # (B, 1, ...)
    x_tilde = x + z * sigma
    return _sq(score_fn(x_tilde, idx) * sigma + z)                        # sigma^2 ||s + z / sigma||^2


def sde_dsm(score_fn, sde, x0, t, z, weighting: str = "sigma2"):
    """lambda(t) || s(x_t, t) + z / s(t) ||^2 per example, x_t = m(t) x_0 + s(t) z (Song et al.
    2021, eq. 7); weighting 'sigma2' (lambda = s(t)^2) or 'likelihood' (lambda = g(t)^2)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; accepted: {', '.join(WEIGHTINGS)}")
    x0 = as_tensor(x0)
    m, std = sde.marginal(t)
    m, std = _col(m, x0).astype(x0.dtype), _col(std, x0).astype(x0.dtype)
    xt = x0 * m + z * std
    err = _sq(score_fn(xt, t) + z / std)                                  # grad log p_0t = -z / s
    lam = std.reshape(-1) ** 2 if weighting == "sigma2" else sde.diffusion(t) ** 2
    return err * lam.astype(x0.dtype)
