"""The GPT-style transformer: causality, exact normalisation, sampling, the KV cache, and a
character model that learns a Markov chain down to its entropy rate."""

import numpy as np

import refgen
from refgen.autograd import no_grad
from refgen.backend import asarray, default_rng, to_numpy, use_backend
from refgen.models import create, get
from refgen.models.autoregressive import filter_logits
from refgen.testing import check_vjp

TINY = dict(n_layer=2, n_head=2, n_embd=16)


def test_registered():
    assert get("gpt").__name__ == "GPTModel"


def test_causal_attention_through_autograd(ar):
    """Logits for x_i (at position i - 1) have zero gradient w.r.t. the embedding of every
    x_j, j >= i (positions >= i), and nonzero gradient w.r.t. every earlier one."""
    model = create("gpt", data_shape=(1, 2, 4), seed=0, **TINY).double()
    t, e = 8, 16
    h0 = np.random.default_rng(0).standard_normal((1, t * e))
    jac = ar.input_jacobian(lambda h: model.net.trunk(h.reshape(1, t, e))[:, :, 0], h0)
    per_pos = jac.reshape(t, t, e).sum(-1)            # (output position, input position)
    later = np.arange(t)[None, :] > np.arange(t)[:, None]
    assert np.all(per_pos[later] == 0.0)
    assert np.all(per_pos[~later] > 0.0)


def test_exact_normalisation_on_3x3(ar):
    x_all = ar.all_binary((1, 3, 3))
    model = create("gpt", data_shape=(1, 3, 3), seed=0, **TINY)
    assert abs(np.exp(ar.log_probs(model, x_all)).sum() - 1.0) < 1e-5
    ar.train_briefly(model, ar.target_data(), steps=40)
    p = np.exp(ar.log_probs(model, x_all))
    assert abs(p.sum() - 1.0) < 1e-5
    assert p.max() > 10.0 / 512


def test_samples_follow_log_prob(ar):
    model = create("gpt", data_shape=(1, 3, 3), seed=3, **TINY)
    ar.train_briefly(model, ar.target_data(), steps=40)
    p = np.exp(ar.log_probs(model, ar.all_binary((1, 3, 3))))
    s = model.sample(10000, rng=default_rng(11))          # with the KV cache
    counts = np.bincount(ar.config_index(s), minlength=512)
    pval, dof = ar.chi_square_pvalue(counts, p)
    assert dof > 20 and pval > 1e-3, (pval, dof)


def test_kv_cache_gives_the_uncached_logits():
    model = create("gpt", data_shape=(12,), vocab_size=7, seed=1, **TINY).double()
    ids = np.random.default_rng(0).integers(7, size=(3, 12))
    with no_grad():
        full = model.net(ids).data                                   # (3, 12, 7)
        caches = model.net.new_caches()
        parts = [model.net(ids[:, :4], caches).data]                 # a prompt of 4, then
        parts += [model.net(ids[:, t:t + 1], caches).data for t in range(4, 12)]  # one at a time
    np.testing.assert_allclose(np.concatenate(parts, 1), full, rtol=0, atol=1e-12)
    assert caches[0]["k"].shape[2] == 12                             # (B, H, T, D)


def test_cached_and_uncached_sampling_agree_past_the_block_size():
    model = create("gpt", data_shape=(6,), vocab_size=5, seed=2, **TINY)
    a = model.generate(np.zeros((4, 1), np.int64), 15, rng=np.random.default_rng(5))
    b = model.generate(np.zeros((4, 1), np.int64), 15, rng=np.random.default_rng(5), use_cache=False)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4, 16)


def test_filter_logits_top_k_and_nucleus():
    lg = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    lg = asarray(lg)                                   # logits live where the model does
    keep = lambda out: np.isfinite(to_numpy(out))[0].tolist()  # noqa: E731
    assert keep(filter_logits(lg, top_k=2)) == [True, True, False, False]
    assert keep(filter_logits(lg, top_p=0.7)) == [True, True, False, False]
    assert keep(filter_logits(lg, top_p=0.81)) == [True, True, True, False]
    assert keep(filter_logits(lg, top_p=0.1)) == [True, False, False, False]
    # sampled frequencies under top-k: the kept tokens renormalised (0.5 : 0.3)
    model = create("gpt", data_shape=(1, 1, 1), seed=0, levels=4, **TINY)
    model.net.head.weight.data[:] = 0
    from refgen.models.autoregressive.gpt import _sample_logits
    ids = _sample_logits(np.repeat(lg, 40000, 0), np.random.default_rng(0), top_k=2)
    freq = np.bincount(to_numpy(ids), minlength=4) / 40000
    np.testing.assert_allclose(freq, [0.625, 0.375, 0, 0], atol=0.01)
    # temperature -> 0 is greedy, and a low temperature sharpens
    assert (to_numpy(_sample_logits(np.repeat(lg, 5, 0), None, temperature=0)) == 0).all()
    cold = to_numpy(_sample_logits(np.repeat(lg, 20000, 0), np.random.default_rng(1), temperature=0.5))
    assert abs((cold == 0).mean() - 0.25 / (0.25 + 0.09 + 0.0225 + 0.0025)) < 0.015


def _markov_text(path, n, seed=0):
    """Text from a 3-state Markov chain over 'abc'; returns its entropy rate in nats."""
    P = np.array([[0.1, 0.8, 0.1],
                  [0.2, 0.1, 0.7],
                  [0.6, 0.3, 0.1]])
    w, v = np.linalg.eig(P.T)                       # stationary pi: pi P = pi
    pi = np.real(v[:, np.argmin(np.abs(w - 1))])
    pi /= pi.sum()
    rate = float(-np.sum(pi[:, None] * P * np.log(P)))  # H = -sum_i pi_i sum_j P_ij log P_ij
    rng = np.random.default_rng(seed)
    u = rng.random(n)
    cdf = np.cumsum(P, 1)
    s = np.empty(n, dtype=np.int64)
    s[0] = 0
    for t in range(1, n):
        s[t] = min(int(np.searchsorted(cdf[s[t - 1]], u[t], side="right")), 2)
    path.write_text("".join("abc"[i] for i in s))
    return rate


def test_character_model_reaches_the_markov_entropy_rate(tmp_path):
    """Cross-entropy on held-out text within 0.03 nats of the chain's entropy rate.

    Scored on every character that has at least one character of context (the window's
    first character has none, and costs the stationary entropy instead of the rate)."""
    from refgen.data import load
    from refgen.train import train
    path = tmp_path / "markov.txt"
    rate = _markov_text(path, 60000)
    train_ds = load(f"text:{path}", "train", block_size=16)
    test_ds = load(f"text:{path}", "test", block_size=16)
    model = create("gpt", data_shape=train_ds.shape, vocab_size=len(train_ds.vocab), seed=0,
                   n_layer=1, n_head=2, n_embd=16)
    train(model, train_ds, steps=300, batch_size=32, lr=1e-2, seed=0, out_dir=tmp_path / "run",
          progress=False, samples=False, schedule="cosine", log_every=100, ckpt_every=10**6)
    starts = np.arange(0, len(test_ds.x) - 17, 17)
    windows = test_ds.x[starts[:, None] + np.arange(17)]               # (N, 17) held out
    with no_grad():
        ll = refgen.backend.to_numpy(model.log_prob(windows).data)     # x_2..x_17 | x_1
    ce = -float(ll.sum()) / (windows.shape[0] * 16)
    assert abs(ce - rate) < 0.03, (ce, rate)
    print(f"held-out cross-entropy {ce:.4f} nats, entropy rate {rate:.4f}")
    text = test_ds.decode(model.sample(2, rng=default_rng(0))[0])
    assert len(text) == 16 and set(text) <= set("abc")


def test_block_vjp_float64():
    from refgen.models.autoregressive import Block
    with use_backend("numpy"):  # check_vjp differentiates on NumPy: build the block there
        block = Block(8, 2, rng=0, dtype=np.float64)
        check_vjp(block, [np.random.default_rng(0).standard_normal((2, 5, 8))])
