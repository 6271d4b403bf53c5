"""VQ-VAE-2: where each level's straight-through, commitment and codebook terms send their
gradients (against a hand chain rule), the EMA update of both codebooks, the two-level
prior p(k_t) p(k_b | k_t) (normalised, conditioned, sampled from what it scores), the two
training stages and the command line."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import refgen
import refgen.functional as F
from refgen.autograd import Tensor, no_grad
from refgen.backend import asarray, default_rng
from refgen.models import create
from refgen.models.autoregressive.gated_pixelcnn import GatedLayer
from refgen.models.base import Batch
from refgen.testing import check_grads, on_backend
from refgen.testing.stats import chi2_sf

IMG = (1, 8, 12)   # -> a 2 x 3 bottom grid and a 1 x 2 top grid


def _model(img=IMG, **kw):
    kw.setdefault("num_codes", 5)
    kw.setdefault("top_codes", 3)
    return create("vqvae2", data_shape=img, seed=0, code_dim=3, top_code_dim=2, channels="4,8",
                  prior_channels=8, prior_layers=2, prior_first_kernel=3, **kw)


def _x(n=4, seed=0, img=IMG):
    return (np.random.default_rng(seed).random((n,) + img) < 0.4).astype(np.float32)


def _nearest(z_e, book):
    """NumPy (Q1): z_e (B, D, h, w), book (K, D) -> k (B, h, w), e_k (B, D, h, w)."""
    cells = np.moveaxis(z_e, 1, -1)
    k = ((cells[..., None, :] - book) ** 2).sum(-1).argmin(-1)
    return k, np.moveaxis(book[k], -1, 1)


def _bottom_input(m, h_b, e_t):
    """z_eb = W [h_b ; relu(D_t e_t)] (Algorithm 1), from the model's layers."""
    return m.to_code(F.cat([h_b, F.relu(m.decoder_top(e_t))], 1))


@pytest.mark.parametrize("ema,commitment", [(False, 0.37), (True, 0.37), (None, None)])
@on_backend("numpy")
def test_loss_value_and_gradients_per_level_against_a_hand_chain_rule(ema, commitment):
    """m.loss at beta = 0.37 against NumPy: the value is rec + sum_l beta ||z_el - e_l||^2
    (+ ||z_el - e_l||^2 without EMA) + the priors' NLL; each codebook's gradient is
    (2 / B) sum_{cells with code j} (e_j - z_e) (its codebook term alone; none with EMA, where
    the codebooks are buffers); the encoders' gradients follow the chain rule with
        dL/dz_eb = dL_rec/de_b + 2 beta (z_eb - e_b) / B
        dL/dz_et = dL_rec/de_t + (dz_eb/de_t)^T dL/dz_eb + 2 beta (z_et - e_t) / B
    (straight-through at both levels: the decoder's and the bottom encoder's gradient with
    respect to e_t is handed to z_et), taken from leaves and arrays, not stop-gradients.
    (None, None): the defaults, the paper's EMA codebooks and beta = 0.25."""
    x = _x()
    b = len(x)
    kw = {k: v for k, v in dict(ema=ema, commitment=commitment).items() if v is not None}
    m = _model(**kw)
    beta, ema = commitment or 0.25, True if ema is None else ema
    assert m.ema == ema
    m.eval()                              # no EMA step inside the loss: the codebooks stay put
    loss = m.loss(Batch(Tensor(x)), default_rng(0))
    loss.backward()
    book_t = m.quant_top.codebook
    book_b = m.quant.codebook
    book_t, book_b = [np.asarray(getattr(bk, "data", bk), dtype=np.float64) for bk in (book_t, book_b)]
    with no_grad():
        h_b = m.encoder(Tensor(x))
        z_et = m.to_code_top(F.relu(m.encoder_top(h_b))).data.astype(np.float64)
    k_t, e_t = _nearest(z_et, book_t)
    e_t_leaf = Tensor(e_t.astype(np.float32), requires_grad=True)
    z_eb_t = _bottom_input(m, h_b, e_t_leaf)                          # a function of e_t
    z_eb = z_eb_t.data.astype(np.float64)
    k_b, e_b = _nearest(z_eb, book_b)
    e_b_leaf = Tensor(e_b.astype(np.float32), requires_grad=True)
    logits = m.decode(e_t_leaf, e_b_leaf)
    rec = F.binary_cross_entropy_with_logits(logits, Tensor(x), reduction="sum") * (1.0 / b)
    g_rec_t, g_rec_b = refgen.grad(rec, [e_t_leaf, e_b_leaf])
    assert np.abs(g_rec_t.data).max() > 1e-4        # the decoder reads the top level too
    lg = logits.data.astype(np.float64)
    rec_np = (np.logaddexp(0, lg) - x * lg).sum() / b
    sq_t = ((z_et - e_t) ** 2).sum((1, 2, 3)).mean()
    sq_b = ((z_eb - e_b) ** 2).sum((1, 2, 3)).mean()
    prior = -float(m.prior_log_prob(k_t, k_b).data.mean())
    want = rec_np + beta * (sq_t + sq_b) + (0.0 if ema else sq_t + sq_b) + prior
    assert float(loss.data) == pytest.approx(want, rel=1e-5)
    assert m.last_stats["commit_top"] == pytest.approx(sq_t, rel=1e-5)
    assert m.last_stats["commit"] == pytest.approx(sq_b, rel=1e-5)
    # codebooks: the codebook term alone, or nothing (EMA buffers)
    for q, book, k, cells in ((m.quant_top, book_t, k_t, z_et), (m.quant, book_b, k_b, z_eb)):
        if ema:
            assert not any(p is q.codebook for p in m.parameters())
            continue
        g = np.zeros_like(book)
        flat = np.moveaxis(cells, 1, -1).reshape(-1, book.shape[1])
        np.add.at(g, k.reshape(-1), (2.0 / b) * (book[k.reshape(-1)] - flat))
        np.testing.assert_allclose(q.codebook.grad.data, g, rtol=1e-4, atol=1e-6)
    # encoders: the hand chain rule through both straight-through estimators
    g_b = g_rec_b.data.astype(np.float64) + beta * 2.0 * (z_eb - e_b) / b            # dL/dz_eb
    (via_b,) = refgen.grad((z_eb_t * Tensor(g_b.astype(np.float32))).sum(), [e_t_leaf])
    g_t = (g_rec_t.data.astype(np.float64) + via_b.data + beta * 2.0 * (z_et - e_t) / b)  # dL/dz_et
    enc = [m.encoder, m.encoder_top, m.to_code_top, m.decoder_top, m.to_code]
    params = [p for mod in enc for p in mod.parameters()]
    hb = m.encoder(Tensor(x))
    surrogate = ((m.to_code_top(F.relu(m.encoder_top(hb))) * Tensor(g_t.astype(np.float32))).sum()
                 + (_bottom_input(m, hb, Tensor(e_t.astype(np.float32))) * Tensor(g_b.astype(np.float32))).sum())
    want_g = refgen.grad(surrogate, params)
    for p, w in zip(params, want_g):
        np.testing.assert_allclose(p.grad.data, w.data, rtol=2e-4, atol=1e-6)


@on_backend("numpy")
def test_ema_updates_both_codebooks_by_their_formula():
    """(Q3) at decay 0.7 from a known state, both levels, in the order of Algorithm 1: the
    top codebook moves first, and the bottom encoder reads the moved top codes."""
    g, eps = 0.7, 1e-5
    m = _model(ema=True, ema_decay=g)
    rng = np.random.default_rng(3)
    x = _x(3, seed=1)
    state = {}
    for name, q in (("top", m.quant_top), ("bottom", m.quant)):
        q.ema_count = (0.5 + rng.random(q.num_codes) * 3).astype(np.float32)
        q.ema_sum = rng.normal(size=(q.num_codes, q.code_dim)).astype(np.float32)
        q.codebook = rng.normal(size=(q.num_codes, q.code_dim)).astype(np.float32)
        state[name] = (q.ema_count.astype(np.float64), q.ema_sum.astype(np.float64),
                       q.codebook.astype(np.float64))
    with no_grad():
        h_b = m.encoder(Tensor(x))
        z_et = m.to_code_top(F.relu(m.encoder_top(h_b))).data.astype(np.float64)

    def expected(name, z_e):
        count0, sum0, book0 = state[name]
        k, _ = _nearest(z_e, book0)
        onehot = (k.reshape(-1)[:, None] == np.arange(len(count0))).astype(np.float64)
        cells = np.moveaxis(z_e, 1, -1).reshape(-1, sum0.shape[1])
        count = g * count0 + (1 - g) * onehot.sum(0)
        sums = g * sum0 + (1 - g) * onehot.T @ cells
        n = count.sum()
        return count, sums, sums / ((count + eps) / (n + len(count) * eps) * n)[:, None]

    m.loss(Batch(Tensor(x)), default_rng(0))                               # training mode
    for got, want in zip((m.quant_top.ema_count, m.quant_top.ema_sum, m.quant_top.codebook),
                         expected("top", z_et)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    k_t, _ = _nearest(z_et, state["top"][2])          # codes from the old top codebook ...
    e_t = m.quant_top.codebook[k_t]                    # ... looked up in the moved one
    with no_grad():
        z_eb = _bottom_input(m, h_b, Tensor(np.moveaxis(e_t, -1, 1))).data.astype(np.float64)
    for got, want in zip((m.quant.ema_count, m.quant.ema_sum, m.quant.codebook),
                         expected("bottom", z_eb)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    m.eval()                                            # evaluation leaves the codebooks alone
    before = [q.codebook.copy() for q in (m.quant_top, m.quant)]
    m.loss(Batch(Tensor(_x(3, seed=2))), default_rng(0))
    for q, b in zip((m.quant_top, m.quant), before):
        np.testing.assert_array_equal(q.codebook, b)


def _all_grids(k, shape):
    cells = int(np.prod(shape))
    return np.stack(np.meshgrid(*[np.arange(k)] * cells, indexing="ij"), -1).reshape((-1,) + shape)


def _generic(m, scale=0.4):
    """Priors with random weights and biases (the initial biases are zero, which makes the
    first cell's distribution uniform), so that every test distribution is a generic one."""
    g = np.random.default_rng(7)
    for p in m.prior.parameters():
        p.data = p.data + asarray((scale * g.normal(size=p.shape)).astype(p.data.dtype))
    return m


def test_the_two_level_prior_normalises_over_every_pair_of_code_grids():
    """sum over all 2^2 top grids (1 x 2) and 2^6 bottom grids (2 x 3) of
    p(k_t) p(k_b | k_t) = 1, and for each top grid the bottom conditionals sum to p(k_t)."""
    m = _generic(_model(num_codes=2, top_codes=2))
    tops, bottoms = _all_grids(2, (1, 2)), _all_grids(2, (2, 3))            # (4, 1, 2), (64, 2, 3)
    k_t = np.repeat(tops, len(bottoms), 0)
    k_b = np.tile(bottoms, (len(tops), 1, 1))
    with no_grad():
        joint = np.exp(m.prior_log_prob(k_t, k_b).data.astype(np.float64)).reshape(4, 64)
        p_top = np.exp(m.prior.top.log_prob(tops).data.astype(np.float64))
    assert joint.sum() == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(joint.sum(1), p_top, rtol=1e-5)
    assert p_top.std() > 1e-3                      # a generic distribution, not a uniform one


def test_the_bottom_prior_reads_the_top_codes():
    m = _generic(_model())
    k_b = np.random.default_rng(0).integers(0, 5, size=(3, 2, 3))
    a, b = np.array([[[0, 1]]] * 3), np.array([[[2, 0]]] * 3)
    with no_grad():
        lp_a = m.prior.bottom.log_prob(k_b, m.prior.condition(a)).data
        lp_b = m.prior.bottom.log_prob(k_b, m.prior.condition(b)).data
        # the joint's bottom part is that conditional
        joint = m.prior_log_prob(a, k_b).data - m.prior.top.log_prob(a).data
    assert np.all(np.abs(lp_a - lp_b) > 1e-4)
    np.testing.assert_allclose(joint, lp_a, rtol=1e-5, atol=1e-5)


def test_sampling_draws_code_grids_from_the_prior_it_scores():
    """Code grids from prior.sample (top, then bottom given top) against exp(log p): a chi^2
    test over all 3 x 2^4 grids of a 1 x 1 top and a 2 x 2 bottom grid."""
    m = _generic(_model((1, 8, 8), num_codes=2, top_codes=3))
    n = 6000
    k_t, k_b = m.prior.sample(n, rng=default_rng(5))
    assert k_t.shape == (n, 1, 1) and k_b.shape == (n, 2, 2)
    idx = k_t.reshape(-1) * 16 + (k_b.reshape(n, 4) * (8, 4, 2, 1)).sum(1)
    counts = np.bincount(idx, minlength=48)
    tops = np.repeat(np.arange(3).reshape(3, 1, 1), 16, 0)
    bottoms = np.tile(_all_grids(2, (2, 2)), (3, 1, 1))
    with no_grad():
        p = np.exp(m.prior_log_prob(tops, bottoms).data.astype(np.float64))
    assert p.sum() == pytest.approx(1.0, rel=1e-5)
    expect = n * p
    assert expect.min() > 5        # the chi^2 approximation holds
    stat = ((counts - expect) ** 2 / expect).sum()
    assert chi2_sf(stat, 47) > 1e-3


def test_sample_is_binary_image_means_and_deterministic_in_its_generator():
    m = _model()
    s = m.sample(5, rng=default_rng(1))
    assert s.shape == (5,) + IMG and 0 <= s.min() and s.max() <= 1
    np.testing.assert_array_equal(s, m.sample(5, rng=default_rng(1)))
    assert not np.array_equal(s, m.sample(5, rng=default_rng(2)))
    # the images are the decoder's means at the sampled codes
    k_t, k_b = m.prior.sample(5, rng=default_rng(1))
    with no_grad():
        np.testing.assert_allclose(s, F.sigmoid(m.decode_codes(k_t, k_b)).data, rtol=1e-6, atol=1e-7)


def test_the_two_stages_train_what_they_should():
    x = Batch(Tensor(_x()))
    ae = _model(ema=False, train_prior=False)
    loss = ae.loss(x, default_rng(0))
    loss.backward()
    assert "prior_nll" not in ae.last_stats
    assert ae.quant.codebook.grad is not None and ae.encoder.conv1.weight.grad is not None
    assert all(p.grad is None for p in ae.prior.parameters())
    pri = _model(ema=False, train_autoencoder=False)
    loss = pri.loss(x, default_rng(0))
    loss.backward()
    k_t, k_b = pri.codes(Tensor(_x()))
    assert float(loss.data) == pytest.approx(-float(pri.prior_log_prob(k_t, k_b).data.mean()), rel=1e-6)
    assert pri.quant.codebook.grad is None and pri.encoder.conv1.weight.grad is None
    assert pri.prior.bottom.layers[0].v_cond.weight.grad is not None
    assert pri.prior.cond_up.weight.grad is not None
    with pytest.raises(ValueError, match="nothing to train"):
        _model(train_autoencoder=False, train_prior=False)


@pytest.mark.parametrize("img", [(1, 30, 28), (1, 28, 10), (1, 4, 4)])
def test_image_sizes_that_do_not_make_two_grids_are_refused_in_one_line(img):
    with pytest.raises(ValueError, match="multiples of 4") as e:
        _model(img)
    assert "\n" not in str(e.value)


@on_backend("numpy")
@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 1000), first=st.booleans())
def test_the_conditional_gated_layer_gradients_and_formula(seed, first):
    """v_out = tanh(v_1 + V_1 s) . sigmoid(v_2 + V_2 s) (van den Oord et al. 2016, eq. 5,
    with a map s), the same for the horizontal stack; float64 first and second derivatives
    in the inputs and the map."""
    g = np.random.default_rng(seed)
    c_in = 3 if first else 2                                    # later layers: residual, c_in = c
    layer = GatedLayer(c_in, 2, 3, first, rng=refgen.nn.init.get_rng(seed), cond_channels=2)
    for p in layer.parameters():
        p.data = p.data.astype(np.float64)
    layer.h_mask = layer.h_mask.astype(np.float64)
    v_in, h_in, s = (g.normal(size=(2, c, 3, 4)) for c in (c_in, c_in, 2))
    check_grads(lambda a, b, c: layer(a, b, c)[0].sum() + (layer(a, b, c)[1] ** 2).sum(),
                [v_in, h_in, s], order=2)
    v_out, h_out = layer(Tensor(v_in), Tensor(h_in), Tensor(s))
    v0, h0 = layer(Tensor(v_in), Tensor(h_in))                  # the same layer without s
    with no_grad():
        pre_v = F.conv2d(F.pad(Tensor(v_in), (1, 1, 1, 0)), layer.v_conv.weight, layer.v_conv.bias)
        pre_v = pre_v.data + layer.v_cond(Tensor(s)).data
    gate = np.tanh(pre_v[:, :2]) / (1 + np.exp(-pre_v[:, 2:]))
    np.testing.assert_allclose(v_out.data, gate, rtol=1e-10, atol=1e-12)
    with no_grad():   # hh = W_h * h_in + W_vh shift_down(W_v * v_in) + V_h s; h_out = [h_in +] W_o gate(hh)
        v_only = F.conv2d(F.pad(Tensor(v_in), (1, 1, 1, 0)), layer.v_conv.weight, layer.v_conv.bias)
        pre_h = (F.conv2d(F.pad(Tensor(h_in), (1, 0, 0, 0)), layer.h_conv.weight * layer.h_mask,
                          layer.h_conv.bias)
                 + layer.v_to_h(F.pad(v_only, (0, 0, 1, 0))[:, :, :-1]) + layer.h_cond(Tensor(s))).data
        h_want = layer.h_out(Tensor(np.tanh(pre_h[:, :2]) / (1 + np.exp(-pre_h[:, 2:])))).data
    np.testing.assert_allclose(h_out.data, h_want + (0 if first else h_in), rtol=1e-10, atol=1e-12)
    assert not np.allclose(h_out.data, h0.data) and not np.allclose(v_out.data, v0.data)


def test_train_one_step_through_the_command_line(tmp_path, mnist_dir, monkeypatch):
    from refgen.cli import main
    monkeypatch.setenv("REFGEN_DATA_DIR", str(mnist_dir))
    out = tmp_path / "run"
    assert main(["train", "vqvae2", "--data", "mnist-binary", "--steps", "1", "--batch-size", "4",
                 "-q", "--no-eval", "--out", str(out), "--set", "channels=4,8",
                 "--set", "prior_channels=4", "--set", "prior_layers=1"]) == 0
    assert (out / "checkpoint.npz").is_file()
    png = tmp_path / "s.png"
    assert main(["sample", str(out), "-n", "2", "--out", str(png)]) == 0
    assert png.is_file()
