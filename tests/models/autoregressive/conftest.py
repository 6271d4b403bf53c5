"""Helpers shared by the autoregressive tests, handed out through the ``ar`` fixture.

The tiny binary domain: 3x3 images, 2^9 = 512 configurations, few enough to enumerate, so
normalisation (sum_x p(x) = 1) and sampling (a chi-square test of samples against p(x))
are checked exactly rather than estimated.
"""
import math
from types import SimpleNamespace

import numpy as np
import pytest

import refgen
from refgen import optim
from refgen.autograd import Tensor, no_grad
from refgen.models.base import Batch


def all_binary(shape=(1, 3, 3)) -> np.ndarray:
    """Every {0, 1} array of ``shape``, float32 (2^n, *shape); row k spells k in binary."""
    n = math.prod(shape)
    k = np.arange(2 ** n)[:, None]
    bits = (k >> np.arange(n - 1, -1, -1)[None, :]) & 1
    return bits.astype(np.float32).reshape((2 ** n,) + tuple(shape))


def target_data(n=256, shape=(1, 3, 3), seed=0) -> np.ndarray:
    """A non-uniform binary data set: three prototype images with 10% of pixels flipped."""
    rng = np.random.default_rng(seed)
    protos = rng.random((3,) + tuple(shape)) < 0.5
    x = protos[rng.integers(3, size=n)]
    flip = rng.random(x.shape) < 0.1
    return (x ^ flip).astype(np.float32)


def train_briefly(model, x, steps=40, lr=1e-2, batch_size=64, seed=0):
    """A few Adam steps on rows of ``x`` (a stand-in for refgen.train in unit tests)."""
    rng = np.random.default_rng(seed)
    opt = optim.Adam(model.parameters(), lr=lr)
    noise = refgen.backend.default_rng(seed)
    for _ in range(steps):
        xb = x[rng.integers(len(x), size=batch_size)]
        loss = model.loss(Batch(Tensor(xb)), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def log_probs(model, x) -> np.ndarray:
    with no_grad():
        return np.asarray(refgen.backend.to_numpy(model.log_prob(x).data), dtype=np.float64)


def chi_square_pvalue(observed, expected_probs, min_expected=5.0) -> tuple[float, int]:
    """Pearson's chi-square goodness of fit: (p-value, degrees of freedom).

    Cells whose expected count is below ``min_expected`` are pooled into one cell; the
    p-value of X^2 with k degrees of freedom uses the Wilson-Hilferty approximation
    (X^2/k)^(1/3) ~ N(1 - 2/(9k), 2/(9k)), accurate to ~1e-3 for k >= 10 (NumPy only).
    """
    observed = np.asarray(observed, dtype=np.float64)
    n = observed.sum()
    expected = n * np.asarray(expected_probs, dtype=np.float64) / np.sum(expected_probs)
    small = expected < min_expected
    obs = np.append(observed[~small], observed[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    x2 = float(np.sum((obs - exp) ** 2 / exp))
    k = len(obs) - 1
    z = ((x2 / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2)), k


def config_index(samples) -> np.ndarray:
    """Binary images (N, *shape) -> their row in :func:`all_binary` (N,)."""
    s = np.asarray(refgen.backend.to_numpy(samples)).reshape(len(samples), -1).round().astype(np.int64)
    n = s.shape[1]
    return s @ (1 << np.arange(n - 1, -1, -1))


def input_jacobian(f, x) -> np.ndarray:
    """|d f(x)[0, i] / d x[0, j]| for all i, j of a (1, N) -> (1, N) map f, via refgen.grad:
    (N_out, N_in), one backward pass per output."""
    x = Tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
    y = f(x)
    rows = []
    for i in range(y.shape[1]):
        g = np.zeros(y.shape)
        g[0, i] = 1.0
        (gx,) = refgen.grad([y], [x], [Tensor(g)], allow_unused=True)
        rows.append(np.zeros(x.shape[1]) if gx is None else np.abs(refgen.backend.to_numpy(gx.data))[0])
    return np.stack(rows)


@pytest.fixture
def ar():
    return SimpleNamespace(all_binary=all_binary, target_data=target_data,
                           train_briefly=train_briefly, log_probs=log_probs,
                           chi_square_pvalue=chi_square_pvalue, config_index=config_index,
                           input_jacobian=input_jacobian)
