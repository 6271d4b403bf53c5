"""Linear models, where every quantity has a closed form: the tied linear autoencoder is PCA,
and the linear-Gaussian VAE (probabilistic PCA) has an exact marginal and posterior, so the
ELBO identity, the tightness of the ELBO and the IWAE limit can be checked to the digit."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refgen import optim
from refgen.autograd import Tensor, no_grad
from refgen.backend import default_rng
from refgen.models import create
from refgen.models.base import Batch
from refgen.models.vae import LinearAutoencoder, LinearGaussianVAE, ppca_mle


pytestmark = pytest.mark.usefixtures("numpy_backend")  # closed forms and finite differences: float64 NumPy

D, d = 5, 2


def _ppca_data(n=2000, seed=0):
    """x = W z + b + sigma eps from a PPCA model with a clear eigengap."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((D, d)) * np.array([2.0, 1.2])
    b = rng.standard_normal(D)
    z, eps = rng.standard_normal((n, d)), rng.standard_normal((n, D))
    return z @ W.T + b + 0.3 * eps


def _mvn_logpdf(x, mean, cov):
    diff = x - mean
    _, logdet = np.linalg.slogdet(cov)
    maha = np.einsum("bi,ij,bj->b", diff, np.linalg.inv(cov), diff)
    return -0.5 * (maha + logdet + x.shape[1] * math.log(2 * math.pi))


def _kl_diag_vs_full(m, s2, mp, Sp):
    """KL(N(m, diag s2) || N(mp, Sp)) per row, closed form, float64."""
    Sp_inv = np.linalg.inv(Sp)
    diff = mp - m
    return 0.5 * (np.sum(np.diag(Sp_inv) * s2)                      # tr(Sp^-1 diag(s2))
                  + np.einsum("bi,ij,bj->b", diff, Sp_inv, diff) - len(s2)
                  + np.linalg.slogdet(Sp)[1] - np.log(s2).sum())


def _random_linear_vae(seed):
    rng = np.random.default_rng(seed)
    m = LinearGaussianVAE((D,), latent_dim=d, seed=seed).double()
    m.decoder.weight.data = rng.standard_normal((D, d))
    m.decoder.bias.data = rng.standard_normal(D)
    m.likelihood.log_sigma.data = np.asarray(rng.uniform(-1.0, 0.5))
    m.encoder.mean.weight.data = rng.standard_normal((d, D)) * 0.5
    m.encoder.mean.bias.data = rng.standard_normal(d)
    m.encoder.logvar.data = rng.uniform(-2.0, 1.0, d)
    return m


# --------------------------------------------------------------------- autoencoder = PCA
def test_linear_tied_autoencoder_spans_the_principal_subspace():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    x = (rng.standard_normal((400, 6)) * np.sqrt([6.0, 3.0, 0.5, 0.3, 0.2, 0.1])) @ q.T + 1.5
    ae = LinearAutoencoder((6,), latent_dim=2, seed=0, init_std=0.3).double()
    opt = optim.Adam(list(ae.parameters()), lr=0.05)
    batch = Batch(Tensor(x))
    for step in range(300):
        opt.lr = 0.05 * 0.5 * (1 + math.cos(math.pi * step / 300))
        loss = ae.loss(batch, default_rng(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
    xc = x - x.mean(0)
    evals, evecs = np.linalg.eigh(xc.T @ xc / len(x))
    top = evecs[:, -2:]                                       # principal subspace, (6, 2)
    P_ae, P_pca = ae.principal_subspace() @ ae.principal_subspace().T, top @ top.T
    assert np.abs(P_ae - P_pca).max() < 1e-3
    # and the loss is PCA's: the variance left in the discarded directions
    np.testing.assert_allclose(float(loss.data), evals[:-2].sum(), rtol=1e-4)


# --------------------------------------------------------------------- the linear-Gaussian VAE
def test_exact_marginal_and_posterior_match_numpy():
    m = _random_linear_vae(3)
    x = np.random.default_rng(1).standard_normal((7, D))
    W, b = m.W.data, m.b.data
    s2 = float(np.exp(2 * m.likelihood.log_sigma.data))
    np.testing.assert_allclose(m.log_prob(Tensor(x)).data,
                               _mvn_logpdf(x, b, W @ W.T + s2 * np.eye(D)), rtol=1e-10)
    # Bayes: p(z | x) p(x) = p(z) p(x | z) at an arbitrary z
    mean, cov = m.posterior(Tensor(x))
    z = np.random.default_rng(2).standard_normal((7, d))
    lhs = _mvn_logpdf(z, mean.data, cov.data) + m.log_prob(Tensor(x)).data
    rhs = (_mvn_logpdf(z, np.zeros(d), np.eye(d))
           + np.array([_mvn_logpdf(x[i:i + 1], W @ z[i] + b, s2 * np.eye(D))[0] for i in range(7)]))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10)


@given(seed=st.integers(0, 10_000))
def test_elbo_identity_log_p_minus_posterior_kl(seed):
    """log p(x) - KL(q(z|x) || p(z|x)) = ELBO(x), for any encoder q, every term exact (V1)."""
    m = _random_linear_vae(seed)
    x = np.random.default_rng(seed + 1).standard_normal((4, D)) * 2
    with no_grad():
        mu, logvar = m.encode(Tensor(x))
        post_mean, post_cov = m.posterior(Tensor(x))
        kl_post = _kl_diag_vs_full(mu.data, np.exp(m.encoder.logvar.data), post_mean.data, post_cov.data)
        lhs = m.log_prob(Tensor(x)).data - kl_post
        np.testing.assert_allclose(m.elbo_exact(Tensor(x)).data, lhs, rtol=1e-9, atol=1e-9)


def test_one_sample_elbo_is_unbiased_for_the_closed_form():
    m = _random_linear_vae(5)
    noise = default_rng(0)
    x = np.random.default_rng(6).standard_normal((3, D))
    S = 4000
    with no_grad():
        draws = m.elbo(Tensor(np.tile(x, (S, 1))), rng=noise).data.reshape(S, len(x))  # S draws of each
        exact = m.elbo_exact(Tensor(x)).data
    se = draws.std(0) / math.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(0) - exact) < 4.5 * se)


def test_elbo_is_tight_at_the_ppca_optimum_set_analytically():
    """The ML PPCA decoder with the exact (diagonal) posterior as encoder: ELBO = log p(x).
    With q = p(z | x) every importance weight p(x, z) / q(z | x) equals p(x), so the Monte
    Carlo log weights and the IWAE bound have no variance at all."""
    x = _ppca_data()
    W, b, s2 = ppca_mle(x, d)
    assert np.abs(np.triu(W.T @ W, 1)).max() < 1e-9          # orthogonal columns: q can be exact
    m = LinearGaussianVAE((D,), latent_dim=d).double().set_ppca(W, b, s2)
    xt = Tensor(x)
    with no_grad():
        logp = m.log_prob(xt).data
        np.testing.assert_allclose(m.elbo_exact(xt).data, logp, atol=1e-8)
        np.testing.assert_allclose(m.log_weights(xt, 3, rng=default_rng(0)).data, np.tile(logp, (3, 1)), atol=1e-8)
        np.testing.assert_allclose(m.iwae(xt[:50], 7, rng=default_rng(0)).data, logp[:50], atol=1e-8)
    # and it is the maximum likelihood: the exact log-likelihood of the sample covariance fit
    cov = np.cov(x.T, bias=True)
    ml = -0.5 * (np.linalg.slogdet(cov)[1] + D + D * math.log(2 * math.pi))
    assert logp.mean() <= ml + 1e-9


def test_trained_linear_vae_reaches_the_maximum_likelihood():
    """Trained from a random start (full batch, closed-form expectation (L3), Adam): the mean
    ELBO ends within 0.01 nats of the exact maximum of the log-likelihood (PPCA's MLE)."""
    x = _ppca_data(n=500, seed=1)
    W, b, s2 = ppca_mle(x, d)
    best = float(LinearGaussianVAE((D,), latent_dim=d).double().set_ppca(W, b, s2)
                 .log_prob(Tensor(x)).data.mean())
    m = create("linear-vae", data_shape=(D,), latent_dim=d, seed=0, expectation="exact").double()
    opt = optim.Adam(list(m.parameters()), lr=0.2)
    batch = Batch(Tensor(x))
    steps = 200
    for step in range(steps):
        opt.lr = 0.2 * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = m.loss(batch, default_rng(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with no_grad():
        elbo = float(m.elbo_exact(Tensor(x)).data.mean())
        logp = float(m.log_prob(Tensor(x)).data.mean())
    assert elbo <= logp + 1e-9 and logp <= best + 1e-9
    assert best - elbo < 0.01, (best, logp, elbo)


def test_iwae_does_not_decrease_with_k_and_reaches_log_p():
    """A deliberately poor q (the exact posterior with its mean shifted by 0.7 posterior
    standard deviations and its variance doubled): E[L_k] climbs with k from the ELBO toward
    log p(x) (V7); L_1 is the ELBO in expectation."""
    x = _ppca_data(n=200, seed=2)[:40]
    W, b, s2 = ppca_mle(_ppca_data(seed=2), d)
    m = LinearGaussianVAE((D,), latent_dim=d).double().set_ppca(W, b, s2)
    post_std = np.exp(0.5 * m.encoder.logvar.data)
    m.encoder.logvar.data = m.encoder.logvar.data + math.log(2.0)
    m.encoder.mean.bias.data = m.encoder.mean.bias.data + 0.7 * post_std
    noise = default_rng(0)
    xt = Tensor(x)
    with no_grad():
        logp = m.log_prob(xt).data.mean()
        elbo = m.elbo_exact(xt).data.mean()
        lw1 = m.log_weights(xt, 400, rng=noise).data                        # (400, 40): L_1 draws
        lk = {k: np.mean([m.iwae(xt, k, rng=noise).data.mean() for _ in range(reps)])
              for k, reps in [(4, 50), (16, 20), (64, 10), (256, 4), (4096, 1)]}
    lk[1] = lw1.mean()
    assert abs(lk[1] - elbo) < 4 * lw1.mean(1).std() / math.sqrt(len(lw1))
    ks = sorted(lk)
    assert all(lk[a] < lk[c] for a, c in zip(ks, ks[1:])), lk
    assert logp - elbo > 0.2                                   # the gap to close is real
    assert abs(lk[4096] - logp) < 0.01, (lk, logp)
