"""The VAE family: the closed-form KL, the two gradient estimators, the bounds' bookkeeping,
the variants (beta, conditional, IWAE objective), networks and the model conventions."""
import json
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import refgen
from refgen.autograd import Tensor, no_grad
from refgen.backend import default_rng
from refgen.data.datasets import Dataset
from refgen.distributions import Normal
from refgen.metrics.likelihood import iwae_bound
from refgen.models import create, get, names
from refgen.models.base import Batch, constructor_kwargs, hyperparameters
from refgen.models.vae import VAE, LinearGaussianVAE
from refgen.testing import check_grads, on_backend


IMG = (1, 6, 6)


def _binary(n, seed=0, shape=IMG):
    return (np.random.default_rng(seed).random((n,) + shape) < 0.4).astype(np.float32)


def _tiny(name="vae", **kw):
    kw.setdefault("hidden", "16")
    kw.setdefault("latent_dim", 3)
    return create(name, data_shape=IMG, seed=0, **kw)


# --------------------------------------------------------------------- conventions
def test_registered_with_the_model_conventions():
    assert {"vae", "beta-vae", "cvae", "iwae", "linear-vae", "autoencoder",
            "linear-autoencoder", "vqvae"} <= set(names())
    assert get("vae") is VAE and get("linear-vae") is LinearGaussianVAE
    # an unconditional model must not take num_classes, or the CLI would make it conditional
    kw = constructor_kwargs(get("vae"), data_shape=IMG, num_classes=10, seed=1)
    assert kw == {"data_shape": IMG, "seed": 1}
    kw = constructor_kwargs(get("cvae"), data_shape=IMG, num_classes=10, seed=1)
    assert kw["num_classes"] == 10
    assert hyperparameters(get("beta-vae"))["beta"] == 4.0
    assert hyperparameters(get("iwae"))["k"] == 5
    with pytest.raises(ValueError, match="cvae needs labelled data"):
        create("cvae", data_shape=IMG)
    with pytest.raises(ValueError, match="unknown objective"):
        create("vae", data_shape=IMG, objective="nope")


def test_seeded_initialisation_and_hidden_from_a_string():
    a, b = _tiny(hidden="16,8"), _tiny(hidden=[16, 8])
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_array_equal(v, w)
    assert [layer.out_features for layer in a.encoder.layers] == [16, 8]
    assert [layer.out_features for layer in a.decoder.layers] == [8, 16]    # mirrored


# --------------------------------------------------------------------- KL and gradients
@given(seed=st.integers(0, 10_000))
def test_closed_form_kl_equals_monte_carlo(seed):
    """KL(N(mu, sigma^2) || N(0, I)) (V5), summed over dims, against E_q[log q - log p]."""
    rng = np.random.default_rng(seed)
    mu, logvar = rng.normal(size=(3, 4)), rng.uniform(-2, 1, size=(3, 4))
    kl = VAE.kl(Tensor(mu), Tensor(logvar)).data
    q, p = Normal.from_logvar(Tensor(mu), Tensor(logvar)), Normal(0.0, 1.0)
    z = q.sample(default_rng(seed), sample_shape=20_000)                      # (S, 3, 4)
    diff = (q.log_prob(z) - p.log_prob(z)).sum(-1).data                       # (S, 3)
    se = diff.std(0) / math.sqrt(len(diff))
    assert np.all(np.abs(diff.mean(0) - kl) < 4.5 * se + 1e-12)


def _encoder_grads(m, fn):
    params = [m.encoder.mean.weight, m.encoder.mean.bias, m.encoder.logvar]
    return np.concatenate([g.data.ravel() for g in refgen.grad(fn(), params)])


@on_backend("numpy")  # compares with NumPy in float64 / finite differences: run there
def test_reparameterized_gradient_equals_score_function_gradient():
    """d/dphi E_q[log p(x | z)] two ways, each unbiased (statistical test, fixed seed):
    reparameterized, grad of f(mu + sigma eps) (V4); and score-function,
    E[(f(z) - b) grad log q(z | x)] with a leave-one-out baseline b. Both also match the
    exact gradient of the closed form (L3) of the linear-Gaussian model."""
    m = LinearGaussianVAE((4,), latent_dim=2, seed=0).double()
    rng = np.random.default_rng(1)
    m.decoder.weight.data = rng.normal(size=(4, 2))
    m.encoder.mean.weight.data = 0.3 * rng.normal(size=(2, 4))
    m.encoder.logvar.data = np.array([-0.5, 0.3])
    x = Tensor(rng.normal(size=(1, 4)))
    exact = _encoder_grads(m, lambda: m.expected_log_likelihood(x).sum())

    def reparam():
        mu, logvar = m.encode(x)
        z = m.reparameterize(mu, logvar, noise, k=S)                                 # (S, 1, 2)
        return m.likelihood.log_prob(x, m.decode(z)).mean()

    def score():
        mu, logvar = m.encode(x)
        z = m.reparameterize(mu, logvar, noise, k=S).detach()                        # no path through z
        f = m.likelihood.log_prob(x, m.decode(z)).data                        # (S, 1)
        baseline = (f.sum(0) - f) / (S - 1)                                   # leave-one-out
        log_q = Normal.from_logvar(mu, logvar).log_prob(z).sum(-1)            # (S, 1)
        return (Tensor(f - baseline) * log_q).mean()

    S, groups = 1000, 30
    est = {}
    for name, fn in (("reparam", reparam), ("score", score)):
        g = []
        for i in range(groups):
            noise = default_rng(100 + i)
            g.append(_encoder_grads(m, fn))
        g = np.array(g)
        est[name] = (g.mean(0), g.std(0, ddof=1) / math.sqrt(groups))
    (r, se_r), (s, se_s) = est["reparam"], est["score"]
    assert np.all(np.abs(r - s) <= 4.5 * np.sqrt(se_r ** 2 + se_s ** 2))
    assert np.all(np.abs(r - exact) <= 4.5 * se_r + 1e-12)
    assert np.all(np.abs(s - exact) <= 4.5 * se_s)
    assert np.all(se_r <= se_s + 1e-12)          # and the reason for the trick: lower variance


@on_backend("numpy")  # compares with NumPy in float64 / finite differences: run there
def test_elbo_gradients_pass_the_oracle():
    """x -> ELBO(x) with the noise fixed is a smooth function: first and second derivatives
    against finite differences (refgen.testing), through encoder, sampling and decoder."""
    m = create("vae", data_shape=(3,), seed=0, hidden="5", latent_dim=2, activation="tanh",
               likelihood="gaussian").double()

    def f(x):
        noise = default_rng(0)
        return m.elbo(x, rng=noise)

    check_grads(f, [np.random.default_rng(0).normal(size=(2, 3))], order=2)


# --------------------------------------------------------------------- bounds and objectives
def test_elbo_and_iwae_per_example_and_ordered():
    m = _tiny()
    x = Tensor(_binary(8))
    noise = default_rng(0)
    with no_grad():
        elbo = np.mean([m.elbo(x, rng=noise).data for _ in range(20)], 0)
        l1, l50 = m.iwae(x, 1, rng=noise).data, m.iwae(x, 50, chunk=7, rng=noise).data               # chunks of 7
    assert elbo.shape == l1.shape == l50.shape == (8,)
    assert np.all(np.isfinite(l50)) and np.all(l50 <= 0)
    assert l50.mean() > elbo.mean()


def test_loss_is_minus_elbo_with_beta_on_the_kl():
    m, x = _tiny(beta=3.0), Tensor(_binary(8))
    noise = default_rng(5)
    loss = m.loss(Batch(x), noise).data
    noise = default_rng(5)
    rec, kl = m.elbo_terms(x, rng=noise)
    np.testing.assert_allclose(loss, -(rec.data - 3.0 * kl.data).mean(), rtol=1e-6)
    assert set(m.last_stats) == {"rec", "kl"}


@on_backend("numpy")
def test_elbo_terms_and_log_weights_against_numpy():
    """The bounds' values from the encoder's and decoder's outputs, in NumPy: with the same
    noise eps, z = mu + exp(logvar / 2) eps (V4), rec = sum_d [x l - softplus(l)],
    KL = sum_j (mu^2 + e^logvar - 1 - logvar) / 2 (V5), and the importance weights
    log p(x | z) + log N(z; 0, I) - log N(z; mu, e^logvar)."""
    m, x = _tiny(), _binary(5)
    with no_grad():
        mu, logvar = (t.data.astype(np.float64) for t in m.encode(Tensor(x)))
        eps = np.random.default_rng(5).standard_normal((4,) + mu.shape, dtype=np.float32)
        z = (mu + np.exp(0.5 * logvar) * eps.astype(np.float64)).astype(np.float32)   # (4, B, J)
        logits = m.decode(Tensor(z)).data.astype(np.float64)                   # (4, B, *IMG)
        noise = default_rng(5)
        lw = m.log_weights(Tensor(x), 4, rng=noise).data
        noise = default_rng(5)
        rec, kl = m.elbo_terms(Tensor(x), rng=noise)
        # one draw of shape (B, J) from the same seed is eps[0] (the first B * J normals)
        one = m.decode(Tensor(z[0])).data.astype(np.float64)
    log_px = (x * logits - np.logaddexp(0, logits)).reshape(4, 5, -1).sum(-1)   # (4, B)
    zz = z.astype(np.float64)
    log_pz = (-0.5 * zz ** 2 - 0.5 * np.log(2 * np.pi)).sum(-1)
    log_qz = (-0.5 * (zz - mu) ** 2 / np.exp(logvar) - 0.5 * logvar
              - 0.5 * np.log(2 * np.pi)).sum(-1)
    np.testing.assert_allclose(lw, log_px + log_pz - log_qz, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(kl.data, 0.5 * (mu ** 2 + np.exp(logvar) - 1 - logvar).sum(-1),
                               rtol=1e-5, atol=1e-6)
    want_rec = (x * one - np.logaddexp(0, one)).reshape(5, -1).sum(-1)
    np.testing.assert_allclose(rec.data, want_rec, rtol=1e-5, atol=1e-4)


def test_iwae_objective_is_the_k_sample_bound():
    m, x = _tiny("iwae", k=4), Tensor(_binary(8))
    noise = default_rng(3)
    loss = m.loss(Batch(x), noise).data
    noise = default_rng(3)
    lw = m.log_weights(x, 4, rng=noise).data                                              # (4, 8)
    np.testing.assert_allclose(loss, -iwae_bound(lw).mean(), rtol=1e-6)
    loss_t = m.loss(Batch(x), noise)
    loss_t.backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_conditional_vae_uses_labels_and_marginalises_without_them():
    m, x = _tiny("cvae", num_classes=3), Tensor(_binary(4))
    y = np.array([0, 1, 2, 1])
    with no_grad():
        a = m.decode(Tensor(np.zeros((1, 3), np.float32)), np.array([0])).data
        b = m.decode(Tensor(np.zeros((1, 3), np.float32)), np.array([2])).data
        assert not np.allclose(a, b)
        with pytest.raises(ValueError, match="needs labels"):
            m.loss(Batch(x), default_rng(0))
        assert np.isfinite(float(m.loss(Batch(x, y), default_rng(0)).data))
        noise = default_rng(0)
        marginal = m.elbo(x, rng=noise).data
        noise = default_rng(0)
        per_class = np.stack([m.elbo(x, np.full(4, c), rng=noise).data for c in range(3)])
    expect = np.log(np.exp(per_class - per_class.max(0)).mean(0)) + per_class.max(0)
    np.testing.assert_allclose(marginal, expect, rtol=1e-5)
    s = m.sample(6, cond=np.array([0, 1, 2, 0, 1, 2]), rng=default_rng(1))
    assert s.shape == (6,) + IMG


# --------------------------------------------------------------------- likelihoods
@on_backend("numpy")  # compares with NumPy in float64 / finite differences: run there
def test_likelihood_formulas():
    rng = np.random.default_rng(0)
    out, x = rng.normal(size=(2, 5, 3)), (rng.random((5, 3)) < 0.5).astype(float)
    m = create("vae", data_shape=(3,), seed=0, hidden="4", latent_dim=2).double()
    lp = m.likelihood.log_prob(Tensor(x), Tensor(out)).data                   # (2, 5)
    p = 1 / (1 + np.exp(-out))
    np.testing.assert_allclose(lp, (x * np.log(p) + (1 - x) * np.log(1 - p)).sum(-1), rtol=1e-10)
    g = create("vae", data_shape=(3,), seed=0, hidden="4", latent_dim=2, likelihood="gaussian").double()
    g.likelihood.log_sigma.data = np.asarray(-0.7)
    s = math.exp(-0.7)
    want = (-0.5 * ((x - out) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)).sum(-1)
    np.testing.assert_allclose(g.likelihood.log_prob(Tensor(x), Tensor(out)).data, want, rtol=1e-10)


def test_bernoulli_rejects_data_outside_the_unit_interval():
    m = _tiny()
    with pytest.raises(ValueError, match="likelihood=gaussian"):
        m.loss(Batch(Tensor(2 * _binary(4) - 1)), default_rng(0))


# --------------------------------------------------------------------- networks and sampling
@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 14, 14), (3, 8, 12)])
def test_conv_networks_round_trip_the_image_shape(shape):
    m = create("vae", data_shape=shape, seed=0, arch="conv", hidden="8", latent_dim=2,
               channels="4,8", likelihood="gaussian")
    x = Tensor(np.zeros((2,) + shape, np.float32))
    mu, logvar = m.encode(x)
    assert mu.shape == logvar.shape == (2, 2)
    assert m.decode(Tensor(np.zeros((3, 2, 2), np.float32))).shape == (3, 2) + shape
    assert np.isfinite(float(m.loss(Batch(x), default_rng(0)).data))


def test_sample_means_draws_and_reproducibility():
    m = _tiny()
    a, b = m.sample(5, rng=default_rng(1)), m.sample(5, rng=default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (5,) + IMG and a.dtype == np.float32 and 0 < a.min() and a.max() < 1
    d = _tiny(sample_mean=False).sample(50, rng=default_rng(2))
    assert set(np.unique(d)) <= {0.0, 1.0}


def test_trains_in_the_loop_and_writes_a_run(tmp_path):
    from refgen.train import train
    x = np.tile(_binary(4, seed=3), (32, 1, 1, 1))                          # 4 patterns
    ds = Dataset("tiny", "train", x, None, "binary", IMG)
    m = _tiny(hidden="32", latent_dim=2)
    metrics = train(m, ds, steps=60, batch_size=32, lr=1e-2, out_dir=tmp_path,
                    progress=False, log_every=20)
    log = [line for line in (tmp_path / "log.jsonl").read_text().splitlines() if line]
    first, last = json.loads(log[0])["loss"], json.loads(log[-1])["loss"]
    assert last < 0.7 * first and metrics["steps"] == 60
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "checkpoint.npz").is_file()


# --------------------------------------------------------------------- the autoencoder
@on_backend("numpy")  # compares with NumPy in float64 / finite differences: run there
def test_autoencoder_loss_is_the_squared_reconstruction_error():
    m = create("autoencoder", data_shape=IMG, seed=0, hidden="8", latent_dim=2)
    x = _binary(4)
    loss = float(m.loss(Batch(Tensor(x)), default_rng(0)).data)
    np.testing.assert_allclose(loss, ((m.reconstruct(Tensor(x)) - x) ** 2).sum((1, 2, 3)).mean(),
                               rtol=1e-5)
    assert m.sample(3, rng=default_rng(0)).shape == (3,) + IMG
    with pytest.raises(ValueError, match="reconstruction"):
        create("autoencoder", data_shape=IMG, reconstruction="l1")
