"""Bits/dim, dequantization conventions and the IWAE bound against closed forms."""
import math

import numpy as np
import pytest

from refgen.backend import to_numpy
from refgen.metrics import (bits_per_dim, discrete_nll_from_continuous, iwae, iwae_bound,
                            nll_to_bpd)

LN2 = math.log(2.0)


pytestmark = pytest.mark.usefixtures("numpy_backend")  # NumPy in float64, as the references


def test_bits_per_dim_is_nats_over_d_ln2():
    assert bits_per_dim(784 * LN2, 784) == pytest.approx(1.0, rel=1e-15)
    a = np.array([0.0, 10.0 * LN2])
    np.testing.assert_allclose(bits_per_dim(a, 10), [0.0, 1.0], rtol=1e-15)


@pytest.mark.parametrize("D", [1, 784])
def test_uniform_dequantized_density_is_8_bits_per_dim_in_every_convention(D):
    # Uniform over the data range: density 1/width^D, so nll = D log width.
    for data_range, width in [("[0,1]", 1.0), ("[-1,1]", 2.0), ("[0,256]", 256.0)]:
        nll = D * math.log(width)
        assert nll_to_bpd(nll, D, data_range) == pytest.approx(8.0, rel=1e-14)
    # And for 5-bit data (32 levels) it is 5 bits/dim.
    assert nll_to_bpd(0.0, D, "[0,1]", num_levels=32) == pytest.approx(5.0, rel=1e-14)


def test_conventions_differ_by_the_jacobian():
    D, nll01 = 10, 3.7
    # nll_[0,256] = nll_[0,1] + D ln 256, nll_[0,1] = nll_[-1,1] - D ln 2
    b01 = nll_to_bpd(nll01, D, "[0,1]")
    assert nll_to_bpd(nll01 + D * math.log(256), D, "[0,256]") == pytest.approx(b01, rel=1e-14)
    assert nll_to_bpd(nll01 + D * LN2, D, "[-1,1]") == pytest.approx(b01, rel=1e-14)
    assert discrete_nll_from_continuous(-nll01, D, 1 / 256) == pytest.approx(nll01 + D * math.log(256))


def _normal_cdf(x):
    return 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _discrete_gaussian(mu, sigma):
    """P(x) for x in 0..255: the mass of N(mu, sigma^2) on [x, x+1), renormalised."""
    edges = _normal_cdf((np.arange(257.0) - mu) / sigma)
    p = np.diff(edges)
    return p / p.sum()


def test_piecewise_constant_density_gives_the_exact_discrete_nll():
    # p_v(v) = P(floor(v)) on [0, 256) has discrete NLL exactly -log P(x) for every u.
    P = _discrete_gaussian(100.3, 7.0)
    rng = np.random.default_rng(0)
    D, B = 3, 50
    x = rng.choice(256, size=(B, D), p=P)
    exact_bpd = -np.log2(P[x]).sum(axis=1) / D
    log_pv = np.log(P[x]).sum(axis=1)                                  # any u, same value
    for data_range, h in [("[0,1]", 1 / 256), ("[-1,1]", 2 / 256), ("[0,256]", 1.0)]:
        log_py = log_pv - D * math.log(h)                              # p_y = p_v / h^D
        np.testing.assert_allclose(nll_to_bpd(-log_py, D, data_range), exact_bpd, rtol=1e-12)


def test_smooth_gaussian_dequantized_bound_is_above_and_close_to_discrete_nll():
    # Integers x carry P(x) = mass of N(mu, s^2) on [x, x+1); the continuous density scored at
    # x + u, averaged over u, bounds -log P(x) from above (Jensen). log N is quadratic, so the
    # gap is Var_u(log N(x+u)) / 2 + O(s^-4) = f'(x + 1/2)^2 / 24 + O(s^-4), f' = -(v - mu)/s^2.
    mu, s = 127.6, 9.0
    xs = np.arange(90, 170)
    P = _normal_cdf((xs + 1 - mu) / s) - _normal_cdf((xs - mu) / s)
    u = (np.arange(2000) + 0.5) / 2000                                 # midpoint rule on [0,1)
    for data_range, a, b in [("[0,256]", 1.0, 0.0), ("[0,1]", 1 / 256, 0.0), ("[-1,1]", 2 / 256, -1.0)]:
        y = a * (xs[:, None] + u[None, :]) + b                          # dequantized, rescaled
        my, sy = a * mu + b, a * s
        log_py = -0.5 * ((y - my) / sy) ** 2 - math.log(sy * math.sqrt(2 * math.pi))
        bound = nll_to_bpd(-log_py.mean(axis=1), 1, data_range)        # bits, D = 1
        exact = -np.log2(P)
        gap_nats = (bound - exact) * LN2
        assert np.all(gap_nats > 0)
        second_order = ((xs + 0.5 - mu) / s**2) ** 2 / 24
        np.testing.assert_allclose(gap_nats, second_order, rtol=0, atol=1 / s**4)


def test_bad_data_range_is_refused():
    with pytest.raises(ValueError, match="data_range"):
        nll_to_bpd(1.0, 1, "[0,255]")


# ---------------------------------------------------------------- IWAE

def test_iwae_bound_is_stable_logmeanexp():
    lw = np.array([[-1000.0, 0.0, -np.inf], [-1000.0 + math.log(3), 1000.0, -np.inf]])
    out = iwae_bound(lw)
    np.testing.assert_allclose(out[:2], [-1000.0 + math.log(2.0), 1000.0 - LN2], rtol=1e-15)
    assert out[2] == -np.inf
    rng = np.random.default_rng(1)
    lw = rng.normal(size=(7, 5))
    np.testing.assert_allclose(iwae_bound(lw), np.log(np.exp(lw).mean(axis=0)), rtol=1e-13)


S2 = 0.5 ** 2  # x | z ~ N(z, s^2), z ~ N(0, 1)  =>  x ~ N(0, 1 + s^2)


def _log_normal(x, m, v):
    return -0.5 * (np.log(2 * np.pi * v) + (x - m) ** 2 / v)


def _log_px(x):
    return _log_normal(x, 0.0, 1.0 + S2)


def _make_log_weight_fn(q_mean, q_var, rng):
    """log p(x, z) - log q(z | x), z ~ q(z | x) = N(q_mean(x), q_var(x)); x: (B,)."""
    def fn(x, n):
        m, v = q_mean(x), q_var(x)                                     # (B,)
        z = m + np.sqrt(v) * rng.standard_normal((n, len(x)))          # (n, B)
        return _log_normal(z, 0.0, 1.0) + _log_normal(x, z, S2) - _log_normal(z, m, v)
    return fn


def test_exact_posterior_gives_log_px_for_every_k():
    x = np.random.default_rng(2).normal(0.0, math.sqrt(1 + S2), size=300)
    post_mean = lambda x: x / (1 + S2)                                  # noqa: E731
    post_var = lambda x: np.full_like(x, S2 / (1 + S2))                 # noqa: E731
    fn = _make_log_weight_fn(post_mean, post_var, np.random.default_rng(3))
    for k in (1, 10, 1000):
        np.testing.assert_allclose(iwae(fn, x, k, chunk=64, batch_size=128), _log_px(x),
                                   rtol=0, atol=1e-10)


def test_imperfect_q_bound_is_below_log_px_and_rises_with_k():
    rng = np.random.default_rng(4)
    x = rng.normal(0.0, math.sqrt(1 + S2), size=2000)
    q_mean = lambda x: 0.6 * x + 0.3                                    # noqa: E731
    q_var = lambda x: np.full_like(x, 0.6)                              # noqa: E731
    fn = _make_log_weight_fn(q_mean, q_var, rng)
    log_px = _log_px(x).mean()
    means, ses = [], []
    for k in (1, 4, 32, 256):
        b = to_numpy(iwae(fn, x, k, chunk=50, batch_size=500)) - _log_px(x)   # gap per example
        means.append(b.mean())
        ses.append(b.std(ddof=1) / math.sqrt(len(b)))
    # k = 1 is the ELBO: log p(x) - KL(q || posterior), in closed form per example.
    pm, pv, qm, qv = x / (1 + S2), S2 / (1 + S2), q_mean(x), 0.6
    kl = 0.5 * (np.log(pv / qv) + (qv + (qm - pm) ** 2) / pv - 1.0)
    assert abs(means[0] + kl.mean()) < 4 * ses[0]
    for m, se in zip(means, ses):
        assert m < 4 * se                                                # below log p(x)
    for a, b, sa, sb in zip(means, means[1:], ses, ses[1:]):
        assert b > a - 4 * math.hypot(sa, sb)                            # non-decreasing
    assert means[-1] - means[0] > 10 * math.hypot(ses[0], ses[-1])       # and really rises
    assert means[-1] > -0.05 and log_px < 0


def test_chunked_and_unchunked_agree():
    # Deterministic log weights: sample i of example j is table[i, j], however it is chunked.
    k, N = 53, 41
    rng = np.random.default_rng(5)
    table = rng.normal(scale=30.0, size=(k, N))
    x = np.arange(N)

    def make_fn():
        used = np.zeros(N, dtype=int)                                    # samples handed out

        def fn(xb, n):
            i = used[xb[0]]
            used[xb] += n
            return np.ascontiguousarray(table[i:i + n, xb])              # same layout as table
        return fn

    ref = iwae_bound(table)
    whole = iwae(make_fn(), x, k, chunk=k, batch_size=N)
    np.testing.assert_array_equal(whole, ref)                            # one chunk: bit-identical
    for chunk, bs in [(1, 1), (7, 13), (52, 40), (100, 5)]:
        np.testing.assert_allclose(iwae(make_fn(), x, k, chunk=chunk, batch_size=bs), ref,
                                   rtol=1e-13, atol=0)


def test_iwae_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="shape"):
        iwae(lambda xb, n: np.zeros((len(xb), n + 1)), np.zeros(4), 3)
    with pytest.raises(ValueError, match="k must"):
        iwae(lambda xb, n: np.zeros((n, len(xb))), np.zeros(4), 0)
