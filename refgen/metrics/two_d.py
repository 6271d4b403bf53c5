"""Metrics for low-dimensional toy data: mode coverage, kernel MMD, entropy gap.

mode_stats: for a mixture of K isotropic Gaussians with centres c_k and std sigma, a sample
is *high quality* when it lies within 3 sigma of its nearest centre. For a sample that really
comes from a 2D component, ||x - c||^2 / sigma^2 ~ chi^2_2, so P(high quality) =
1 - exp(-9/2) ~= 0.9889 (other dimensions give other numbers: that of chi^2_d at 9).
A mode is *covered* when at least ``min_share`` of the high-quality samples sit at it.
``min_share=0`` is the published protocol of the mode-collapse papers (VEEGAN, Srivastava et
al. 2017; PacGAN, Lin et al. 2018): a mode is covered when it is the nearest mode of at
least one high-quality sample, counted over 2,500 samples. The default is stricter, so a
handful of stray samples does not count as a mode learned.

mmd: the unbiased estimator of the squared maximum mean discrepancy (Gretton et al., 2012)

    MMD_u^2 = 1/(m(m-1)) sum_{i!=j} k(x_i, x_j) + 1/(n(n-1)) sum_{i!=j} k(y_i, y_j)
              - 2/(mn) sum_{i,j} k(x_i, y_j),

with k the average of Gaussian kernels exp(-||a - b||^2 / (2 s^2)) over the bandwidths s.
Its expectation is exactly MMD^2, which is 0 when the two distributions are equal, so single
estimates can be slightly negative.
"""
from __future__ import annotations

import numpy as np

from refgen.backend import to_numpy, xp

__all__ = ["mode_stats", "mmd", "entropy_gap_nats"]


def mode_stats(samples, centres, std, min_share=None):
    """Mode coverage and sample quality for a Gaussian-mixture target.

    samples: (N, d); centres: (K, d); std: a scalar or (K,) per-mode std.
    min_share: a mode counts as covered when it holds at least this fraction of the
    high-quality samples; default 0.25 / K, a quarter of the uniform share, so samples from
    a uniform mixture cover every mode while a mode visited by a stray handful does not.
    min_share=0: the published rule, at least one high-quality sample.
    Returns {'modes_covered': int, 'hq_fraction': float}.
    """
    x = np.asarray(to_numpy(samples), dtype=np.float64)
    c = np.asarray(to_numpy(centres), dtype=np.float64)
    if x.ndim != 2 or c.ndim != 2 or x.shape[1] != c.shape[1]:
        raise ValueError(f"samples must be (N, d) and centres (K, d), got {x.shape} and {c.shape}")
    k = c.shape[0]
    std = np.broadcast_to(np.asarray(std, dtype=np.float64), (k,))
    min_share = 0.25 / k if min_share is None else float(min_share)
    d2 = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)             # (N, K)
    nearest = d2.argmin(axis=1)                                     # (N,)
    hq = d2[np.arange(len(x)), nearest] <= (3.0 * std[nearest]) ** 2
    counts = np.bincount(nearest[hq], minlength=k)                  # (K,)
    n_hq = int(hq.sum())
    covered = int((counts >= max(min_share * n_hq, 1)).sum()) if n_hq else 0
    return {"modes_covered": covered, "hq_fraction": float(hq.mean()) if len(x) else 0.0}


def _kernel_sum(a, b, gammas, chunk, same):
    """sum_{i,j} k(a_i, b_j) for (m, d) and (n, d) arrays, ``chunk`` rows of a at a time.

    With ``same`` (a is b) the diagonal terms are left out: sum_{i != j}.
    """
    bb = (b * b).sum(axis=1)                                        # (n,)
    total = 0.0
    for i in range(0, a.shape[0], chunk):
        ai = a[i:i + chunk]                                         # (c, d)
        d2 = (ai * ai).sum(axis=1)[:, None] + bb[None, :] - 2.0 * (ai @ b.T)   # (c, n)
        d2 = xp.maximum(d2, 0.0)
        rows = xp.arange(ai.shape[0])
        if same:
            d2[rows, rows + i] = xp.inf                             # k(a_i, a_i) -> 0
        for g in gammas:
            total += float(xp.exp(-g * d2).sum())
    return total / len(gammas)


def mmd(x, y, bandwidths=(0.05, 0.1, 0.2, 0.5, 1.0, 2.0), chunk=512):
    """Unbiased squared MMD between samples x (m, d) and y (n, d), m, n >= 2; a float.

    The kernel averages Gaussian kernels over ``bandwidths`` (the defaults span the scales of
    the toy2d datasets, whose spread is of order 1). Kernel matrices are built ``chunk`` rows
    at a time, so memory is O(chunk * max(m, n)): 10,000 vs 10,000 needs tens of MB.
    """
    x = xp.asarray(to_numpy(x), dtype=xp.float64)
    y = xp.asarray(to_numpy(y), dtype=xp.float64)
    x = x[:, None] if x.ndim == 1 else x                            # 1-D data: (m,) -> (m, 1)
    y = y[:, None] if y.ndim == 1 else y
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be (m, d) and (n, d), got {x.shape} and {y.shape}")
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 samples on each side, got {m} and {n}")
    gammas = [1.0 / (2.0 * float(s) ** 2) for s in bandwidths]
    chunk = max(1, int(chunk))
    kxx = _kernel_sum(x, x, gammas, chunk, same=True) / (m * (m - 1))
    kyy = _kernel_sum(y, y, gammas, chunk, same=True) / (n * (n - 1))
    kxy = _kernel_sum(x, y, gammas, chunk, same=False) / (m * n)
    return kxx + kyy - 2.0 * kxy


def entropy_gap_nats(test_nll_nats, entropy_nats):
    """Test NLL minus the data's true entropy (nats): the KL(p_data || p_model) when the NLL is
    the cross-entropy E_data[-log p_model], so 0 for a perfect model and >= 0 in expectation."""
    return test_nll_nats - entropy_nats
