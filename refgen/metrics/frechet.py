"""The Fréchet distance between two Gaussians (the number behind FID).

For N(mu1, S1) and N(mu2, S2) the squared 2-Wasserstein distance is

    d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}).

S1 S2 is not symmetric, but with A = S1^{1/2} and B = S1^{1/2} S2 it is AB, and AB has the
same eigenvalues as BA = M = S1^{1/2} S2 S1^{1/2}, a symmetric PSD matrix (no inverse needed).
So tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(M)). We take S1^{1/2} and
lambda(M) from two symmetric eigendecompositions (eigh) in float64, and set to 0 every
eigenvalue below the eigensolver's rounding level, d * machine-eps * max|lambda| (the tolerance
numpy.linalg.matrix_rank uses): negative ones are impossible for a PSD matrix, and tiny positive
ones are noise that the square root would blow up (sqrt(1e-16) = 1e-8 per null direction).
Nothing is ever inverted, so a singular or near-singular covariance (fewer samples than
features, rank-deficient features) needs no eps * I regularisation: the result stays finite
and >= 0, and equal rank-deficient Gaussians still give 0.

Features may come from either backend; all of this is small host-side linear algebra.
"""
from __future__ import annotations

import numpy as np

from refgen.backend import to_numpy

__all__ = ["frechet_distance", "gaussian_stats", "frechet_distance_from_features"]


def _clip_eigenvalues(w):
    """Eigenvalues of a PSD matrix with rounding noise (negative or tiny) set to 0."""
    tol = w.shape[0] * np.finfo(np.float64).eps * np.abs(w).max(initial=0.0)
    return np.where(w > tol, w, 0.0)


def _psd_sqrt(sigma):
    """Symmetric square root of a symmetric PSD matrix, (d, d) -> (d, d)."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(_clip_eigenvalues(w))) @ v.T


def _check(mu, sigma, which):
    mu = np.atleast_1d(np.asarray(to_numpy(mu), dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(to_numpy(sigma), dtype=np.float64))
    d = mu.shape[0]
    if mu.ndim != 1 or sigma.shape != (d, d):
        raise ValueError(f"{which}: expected mu of shape (d,) and sigma of shape (d, d), "
                         f"got {mu.shape} and {sigma.shape}")
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise ValueError(f"{which}: mean or covariance contains NaN or inf")
    return mu, 0.5 * (sigma + sigma.T)  # symmetrise away rounding asymmetry


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    mu: (d,), sigma: (d, d) symmetric PSD. Returns a Python float >= 0 (a result of
    -1e-15 from rounding is reported as 0).
    """
    mu1, s1 = _check(mu1, sigma1, "first Gaussian")
    mu2, s2 = _check(mu2, sigma2, "second Gaussian")
    if mu1.shape != mu2.shape:
        raise ValueError(f"dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}")
    r1 = _psd_sqrt(s1)                                   # S1^{1/2}
    m = r1 @ s2 @ r1                                     # S1^{1/2} S2 S1^{1/2}, PSD
    lam = np.linalg.eigvalsh(0.5 * (m + m.T))
    tr_sqrt = np.sqrt(_clip_eigenvalues(lam)).sum()      # tr((S1 S2)^{1/2})
    diff = mu1 - mu2
    d2 = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt
    return float(max(d2, 0.0))


def gaussian_stats(features):
    """Mean (d,) and unbiased covariance (d, d), float64, of features of shape (N, d), N >= 2."""
    f = np.asarray(to_numpy(features), dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must have shape (N, d) with N >= 2, got {f.shape}")
    mu = f.mean(axis=0)
    c = f - mu
    sigma = (c.T @ c) / (f.shape[0] - 1)
    return mu, sigma


def frechet_distance_from_features(f1, f2):
    """Fréchet distance between Gaussians fitted to two feature sets, (N1, d) and (N2, d)."""
    return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))
