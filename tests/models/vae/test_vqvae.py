"""VQ-VAE: nearest-code quantisation, the straight-through gradient, where each loss term
sends its gradient, the EMA codebook update, codebook perplexity and the PixelCNN prior."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import refgen
import refgen.functional as F
from refgen.autograd import Tensor, no_grad
from refgen.backend import default_rng
from refgen.models import create
from refgen.models.base import Batch
from refgen.models.vae import nearest_code, perplexity
from refgen.testing import on_backend


IMG = (1, 8, 8)  # -> a 2 x 2 code grid


def _model(**kw):
    kw.setdefault("num_codes", 6)
    return create("vqvae", data_shape=IMG, seed=0, code_dim=3, channels="4,8",
                  prior_channels=8, prior_blocks=1, **kw)


def _x(n=4, seed=0):
    return (np.random.default_rng(seed).random((n,) + IMG) < 0.4).astype(np.float32)


@on_backend("numpy")  # compares with NumPy in float64 / finite differences: run there
@given(seed=st.integers(0, 10_000), n=st.integers(1, 20), k=st.integers(1, 9))
def test_quantisation_picks_the_nearest_code(seed, n, k):
    rng = np.random.default_rng(seed)
    z, book = rng.normal(size=(n, 3)), rng.normal(size=(k, 3))
    brute = np.argmin(((z[:, None, :] - book[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(nearest_code(z, book), brute)


def test_model_quantises_every_grid_cell_to_its_nearest_code():
    m = _model()
    with no_grad():
        z_e = m.encode(Tensor(_x())).data                                   # (4, 3, 2, 2)
    k = m.quantize(Tensor(z_e))
    assert k.shape == (4, 2, 2)
    cells = np.moveaxis(z_e, 1, -1)                                         # (4, 2, 2, 3)
    d = ((cells[..., None, :] - m.codebook.data) ** 2).sum(-1)             # (4, 2, 2, K)
    np.testing.assert_array_equal(k, d.argmin(-1))
    np.testing.assert_array_equal(m.lookup(k).data, np.moveaxis(m.codebook.data[k], -1, 1))


def test_straight_through_passes_the_decoder_gradient_to_the_encoder_unchanged():
    m = _model()
    x = Tensor(_x())
    target = Tensor(np.random.default_rng(1).normal(size=(4,) + IMG).astype(np.float32))
    z_e = m.encode(x)
    z_q = m.lookup(m.quantize(z_e))
    # dL/dz_q with z_q as a leaf...
    leaf = Tensor(z_q.data, requires_grad=True)
    (g_leaf,) = refgen.grad(((m.decode(leaf) - target) ** 2).sum(), [leaf])
    # ...is exactly dL/dz_e through the straight-through input
    (g_e,) = refgen.grad(((m.decode(F.straight_through(z_q, z_e)) - target) ** 2).sum(), [z_e])
    np.testing.assert_array_equal(g_e.data, g_leaf.data)
    # and the encoder's parameters receive that gradient by the chain rule
    enc = list(m.encoder.parameters()) + list(m.to_code.parameters())
    via_st = refgen.grad(((m.decode(F.straight_through(z_q, z_e)) - target) ** 2).sum(), enc)
    via_chain = refgen.grad((z_e * g_leaf.detach()).sum(), enc)
    for a, b in zip(via_st, via_chain):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-5, atol=1e-6)


def test_loss_trains_autoencoder_codebook_and_prior():
    m = _model()
    loss = m.loss(Batch(Tensor(_x())), default_rng(0))
    loss.backward()
    assert np.any(m.codebook.grad.data) and np.any(m.encoder.conv1.weight.grad.data)
    assert np.any(m.prior.input_conv.weight.grad.data)
    assert set(m.last_stats) == {"rec", "commit", "prior_nll", "perplexity"}
    prior_only = _model(train_autoencoder=False)
    prior_only.loss(Batch(Tensor(_x())), default_rng(0)).backward()
    assert prior_only.codebook.grad is None and prior_only.prior.head2.weight.grad is not None


@pytest.mark.parametrize("commitment", [0.37, None])   # None: the default, beta = 0.25
@on_backend("numpy")
def test_loss_value_and_gradients_against_an_independent_computation(commitment):
    """m.loss itself, at a generic commitment weight beta = 0.37 and at the default 0.25 (van
    den Oord et al. 2017), against NumPy: the value is
    rec + beta ||z_e - e_k||^2 + ||z_e - e_k||^2 + prior NLL (per image, batch mean); the
    codebook's gradient is (2 / B) sum_{cells with code j} (e_j - z_e) (the codebook term
    alone); the encoder's is the chain rule with dL/dz_e = dL_rec/dz_q + beta 2 (z_e - e_k) / B
    (straight-through, commitment), taken from arrays, not through stop-gradients."""
    beta, x = commitment or 0.25, _x()
    b = len(x)
    m = _model() if commitment is None else _model(commitment=commitment)
    loss = m.loss(Batch(Tensor(x)), default_rng(0))
    loss.backward()
    with no_grad():
        z_e = m.encode(Tensor(x)).data.astype(np.float64)                 # (B, D, h, w)
    book = m.codebook.data.astype(np.float64)                             # (K, D)
    cells = np.moveaxis(z_e, 1, -1)                                       # (B, h, w, D)
    k = ((cells[..., None, :] - book) ** 2).sum(-1).argmin(-1)            # (B, h, w)
    z_q = np.moveaxis(book[k], -1, 1)                                     # (B, D, h, w)
    leaf = Tensor(z_q.astype(np.float32), requires_grad=True)
    logits = m.decode(leaf)
    rec = F.binary_cross_entropy_with_logits(logits, Tensor(x), reduction="sum") * (1.0 / b)
    (g_rec,) = refgen.grad(rec, [leaf])
    l = logits.data.astype(np.float64)
    rec_np = (np.logaddexp(0, l) - x * l).sum() / b
    sq = ((z_e - z_q) ** 2).sum((1, 2, 3)).mean()
    prior = -float(m.prior_log_prob(k).data.mean())
    want = rec_np + beta * sq + sq + prior
    assert float(loss.data) == pytest.approx(want, rel=1e-5)
    assert m.last_stats["rec"] == pytest.approx(rec_np, rel=1e-5)
    assert m.last_stats["commit"] == pytest.approx(sq, rel=1e-5)
    g_book = np.zeros_like(book)
    np.add.at(g_book, k.reshape(-1), (2.0 / b) * (book[k] - cells).reshape(-1, book.shape[1]))
    np.testing.assert_allclose(m.codebook.grad.data, g_book, rtol=1e-4, atol=1e-6)
    enc = list(m.encoder.parameters()) + list(m.to_code.parameters())
    g_z = g_rec.data.astype(np.float64) + beta * 2.0 * (z_e - z_q) / b
    want_enc = refgen.grad((m.encode(Tensor(x)) * Tensor(g_z.astype(np.float32))).sum(), enc)
    for p, w in zip(enc, want_enc):
        np.testing.assert_allclose(p.grad.data, w.data, rtol=1e-4, atol=1e-6)


def test_ema_update_with_no_memory_is_a_k_means_step():
    m = _model(ema=True, ema_decay=0.0)
    assert not any(p is m.codebook for p in m.parameters())                 # a buffer
    x = Tensor(_x(16))
    with no_grad():
        z_e = m.encode(x).data
    k = m.quantize(Tensor(z_e)).reshape(-1)
    cells = np.moveaxis(z_e, 1, -1).reshape(-1, 3)
    m.loss(Batch(x), default_rng(0))
    for j in np.unique(k):                                                  # used codes -> means
        np.testing.assert_allclose(m.codebook[j], cells[k == j].mean(0), rtol=1e-3, atol=1e-5)


@on_backend("numpy")
def test_ema_update_at_a_generic_decay_with_laplace_smoothing():
    """(Q3) at gamma = 0.6 from a known state, in float64: N_j <- g N_j + (1 - g) n_j,
    m_j <- g m_j + (1 - g) sum_{k_i = j} z_i, e_j = m_j / N~_j with the Laplace-smoothed
    N~_j = (N_j + eps) / (n + K eps) n, n = sum_j N_j, eps = 1e-5 (Sonnet's VQ-VAE)."""
    g, eps, K = 0.6, 1e-5, 6
    m = _model(ema=True, ema_decay=g)
    rng = np.random.default_rng(2)
    m.ema_count = (rng.random(K) * 3).astype(np.float32)
    m.ema_sum = rng.normal(size=(K, 3)).astype(np.float32)
    count0, sum0 = m.ema_count.astype(np.float64), m.ema_sum.astype(np.float64)
    x = Tensor(_x(1))                                                       # 4 cells
    with no_grad():
        z_e = m.encode(x).data
    k = m.quantize(Tensor(z_e)).reshape(-1)
    cells = np.moveaxis(z_e, 1, -1).reshape(-1, 3).astype(np.float64)
    m.loss(Batch(x), default_rng(0))
    onehot = (k[:, None] == np.arange(K)).astype(np.float64)
    count = g * count0 + (1 - g) * onehot.sum(0)
    sums = g * sum0 + (1 - g) * onehot.T @ cells
    n = count.sum()
    smoothed = (count + eps) / (n + K * eps) * n
    np.testing.assert_allclose(m.ema_count, count, rtol=1e-6)
    np.testing.assert_allclose(m.ema_sum, sums, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(m.codebook, sums / smoothed[:, None], rtol=1e-6, atol=1e-7)


def test_perplexity_measures_codebook_usage():
    assert perplexity(np.zeros(50, int), 8) == pytest.approx(1.0)
    assert perplexity(np.arange(64) % 8, 8) == pytest.approx(8.0)
    p = np.array([0.5, 0.25, 0.25])
    idx = np.repeat(np.arange(3), (p * 400).astype(int))
    assert perplexity(idx, 3) == pytest.approx(math.exp(-(p * np.log(p)).sum()))


def test_prior_scores_and_samples_the_code_grid():
    m = _model()
    k = m.codes(Tensor(_x()))
    lp = m.prior_log_prob(k)
    assert lp.shape == (4,) and np.all(lp.data < 0)
    # the PixelCNN's K-way softmax is normalised: the total over all 6^4 grids is 1
    grids = np.stack(np.meshgrid(*[np.arange(6)] * 4, indexing="ij"), -1).reshape(-1, 2, 2)
    with no_grad():
        total = np.exp(m.prior_log_prob(grids).data.astype(np.float64)).sum()
    assert total == pytest.approx(1.0, rel=1e-4)
    s = m.sample(3, rng=default_rng(0))
    assert s.shape == (3,) + IMG and 0 <= s.min() and s.max() <= 1
    np.testing.assert_array_equal(s, m.sample(3, rng=default_rng(0)))
