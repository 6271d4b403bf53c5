"""Likelihood metrics: nats to bits/dim, dequantization, and the IWAE bound.

Dequantization (how a density model of continuous data scores discrete data)
---------------------------------------------------------------------------
Data are integers x in {0, ..., L-1}^D (L = 256 for 8-bit images). A continuous model is
trained on dequantized data v = x + u, u ~ U[0, 1)^D, which lives in [0, L]^D, or on an
affine image of it, y = h * v + c, where h is the width of one quantization bin in y-space
(h = 1/L for data in [0, 1], h = 2/L for data in [-1, 1], h = 1 for [0, L]).

Change of variables: p_v(v) = p_y(y) |dy/dv| = p_y(y) h^D, so

    -log p_v(v) = -log p_y(y) - D log h.

The discrete model P(x) = integral over the unit cube of p_v(x + u) du is a proper
distribution on {0..L-1}^D, and by Jensen's inequality

    -log P(x) <= E_u[-log p_v(x + u)] = E_u[-log p_y(y)] - D log h.

So a continuous NLL in y-space plus D log(1/h) is an upper bound on the discrete NLL, and
bits/dim of the discrete data is that number divided by D ln 2. For 8-bit data:
nll_[0,256] = nll_[0,1] + D ln 256 and nll_[0,1] = nll_[-1,1] - D ln 2.
A uniform density over the data range scores exactly log2 L = 8 bits/dim in every convention.
"""
from __future__ import annotations

import math

import numpy as np

from refgen.backend import xp

__all__ = ["bits_per_dim", "discrete_nll_from_continuous", "nll_to_bpd",
           "iwae_bound", "iwae", "DATA_RANGES"]

# Width of the data interval for each convention; one bin is (width / num_levels) wide.
DATA_RANGES = {"[0,1]": 1.0, "[-1,1]": 2.0, "[0,256]": 256.0}


def bits_per_dim(nll_nats, num_dims):
    """bits/dim = nll / (D ln 2); works on floats and on arrays of either backend."""
    return nll_nats / (num_dims * math.log(2.0))


def discrete_nll_from_continuous(log_density_nats, num_dims, scale):
    """Discrete NLL (nats) of quantized data from a continuous log-density of its dequantized form.

    ``log_density_nats`` is log p_y(y) (one value per example, any shape), ``num_dims`` is D and
    ``scale`` is h, the width of one quantization bin in the coordinates y the density lives in
    (1/256 for 8-bit data in [0, 1], 2/256 for [-1, 1], 1 for [0, 256]). Returns

        -log p_y(y) - D log h  >=  -log P(x)   (in expectation over the dequantization noise).
    """
    if not scale > 0:
        raise ValueError(f"scale (bin width) must be positive, got {scale!r}")
    return -log_density_nats - num_dims * math.log(scale)


def nll_to_bpd(nll_nats, num_dims, data_range="[0,1]", num_levels=256):
    """Bits/dim of the discrete data from a continuous NLL (nats) of dequantized data.

    ``data_range`` names the coordinates the continuous model sees: '[0,1]' (y = (x+u)/L),
    '[-1,1]' (y = 2(x+u)/L - 1) or '[0,256]' (y = x+u, the raw dequantized integers).
    The bin width is h = width(data_range) / num_levels, and

        bpd = (nll + D log(1/h)) / (D ln 2).
    """
    if data_range not in DATA_RANGES:
        raise ValueError(f"data_range={data_range!r} is not one of {sorted(DATA_RANGES)}")
    if data_range == "[0,256]" and num_levels != 256:
        raise ValueError("data_range='[0,256]' means 256 levels; pass num_levels=256")
    h = DATA_RANGES[data_range] / num_levels
    return bits_per_dim(discrete_nll_from_continuous(-nll_nats, num_dims, h), num_dims)


def iwae_bound(log_weights):
    """The k-sample importance-weighted bound from log weights.

    ``log_weights``: (k, B), log w_i = log p(x, z_i) - log q(z_i | x) with z_i ~ q(z | x).
    Returns (B,):  L_k = log (1/k) sum_i w_i = logsumexp_i(log w_i) - log k, computed with
    the max shifted out so that nothing overflows. An all -inf column gives -inf.
    """
    lw = xp.asarray(log_weights)
    if lw.ndim != 2:
        raise ValueError(f"log_weights must have shape (k, B), got {lw.shape}")
    m = lw.max(axis=0)                                   # (B,)
    shift = xp.where(xp.isfinite(m), m, 0.0)
    s = xp.exp(lw - shift).sum(axis=0)                   # (B,)
    with np.errstate(divide="ignore"):                   # log(0) = -inf is the right answer
        return xp.log(s) + shift - math.log(lw.shape[0])


def iwae(log_weight_fn, x, k, chunk=100, batch_size=100):
    """Per-example IWAE bound L_k (nats, shape (B,)), computed in chunks.

    ``log_weight_fn(x_batch, n)`` must draw n fresh z_i ~ q(z | x) for each example of
    ``x_batch`` (shape (b, ...)) and return log p(x, z_i) - log q(z_i | x) as an (n, b) array.
    Examples go ``batch_size`` at a time and samples ``chunk`` at a time, so peak memory is
    that of one (chunk, batch_size) call whatever k and B are. The logsumexp over the k
    samples is accumulated on the fly: with running max m and running sum s = sum exp(lw - m),
    a new chunk with max c gives m' = max(m, c), s' = s exp(m - m') + sum exp(lw_new - m').

    E[L_k] <= log p(x), and E[L_k] does not decrease with k (Burda et al., 2016).
    """
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k!r}")
    k, chunk, batch_size = int(k), max(1, int(chunk)), max(1, int(batch_size))
    n_examples = len(x)
    out = []
    for start in range(0, n_examples, batch_size):
        xb = x[start:start + batch_size]
        m = s = None
        done = 0
        while done < k:
            n = min(chunk, k - done)
            lw = xp.asarray(log_weight_fn(xb, n))
            if lw.shape != (n, len(xb)):
                raise ValueError(f"log_weight_fn returned shape {lw.shape}, expected {(n, len(xb))}")
            c = lw.max(axis=0)                                               # (b,)
            new_m = c if m is None else xp.maximum(m, c)
            shift = xp.where(xp.isfinite(new_m), new_m, 0.0)  # all -inf so far: shift by 0
            s_new = xp.exp(lw - shift).sum(axis=0)
            s = s_new if s is None else s * xp.exp(m - shift) + s_new        # rescale old sum
            m = new_m
            done += n
        with np.errstate(divide="ignore"):
            out.append(xp.log(s) + shift - math.log(k))
    return xp.concatenate(out) if out else xp.zeros((0,))
