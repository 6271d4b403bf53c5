"""InfoGAN: the mutual-information bound (Chen et al., 2016, eq. 5) against the mutual
information by quadrature, both losses of eq. 6 against a hand computation (on the minimax
game and on the Wasserstein critic with its gradient penalty), labels never read, and a code
that the trained posterior Q reads back."""
import math

import numpy as np
import pytest

from refgen import backend, models
from refgen.autograd import Tensor
from refgen.backend import default_rng, to_numpy
from refgen.cli import main
from refgen.data.datasets import Dataset
from refgen.models.base import Batch
from refgen.models.gan import losses as L
from refgen.train import _make_optimizers, train

CODED = ["infogan", "infowgan-gp"]
pytestmark = pytest.mark.usefixtures("numpy_backend")

MU, S = np.array([-1.3, 0.4, 2.1]), 0.7          # x | c ~ N(mu_c, S^2), c uniform on 3 values


def _log_normal(x, mu, s):
    return -0.5 * ((x - mu) / s) ** 2 - math.log(s * math.sqrt(2 * math.pi))


def _mutual_information():
    """I(c; x) = H(x) - H(x | c) by quadrature on a fine grid, for the mixture above."""
    x = np.linspace(-8, 10, 200_001)
    px = np.exp(_log_normal(x[:, None], MU, S)).mean(1)
    h_x = -np.trapezoid(px * np.log(np.maximum(px, 1e-300)), x)
    h_x_given_c = 0.5 * math.log(2 * math.pi * math.e * S ** 2)
    return h_x - h_x_given_c


def _draws(n=200_000, seed=0):
    r = np.random.default_rng(seed)
    c = r.integers(0, 3, n)
    return c, MU[c] + S * r.standard_normal(n)


def _terms(logits, c):
    """log Q(c | x) + log K per sample, in NumPy: the terms whose mean is eq. 5's bound."""
    logq = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    return logq[np.arange(len(c)), c] + math.log(logits.shape[1])


def _bound(logits, c):
    """info_bound, and the per-sample terms whose mean it is."""
    return float(L.info_bound(Tensor(logits), backend.asarray(c)).item()), _terms(logits, c)


def test_info_bound_equals_the_mutual_information_at_the_exact_posterior():
    """Q(c | x) = p(c | x) makes eq. 5 an equality: the Monte Carlo bound matches I(c; x)
    from quadrature within four standard errors."""
    c, x = _draws()
    exact = _log_normal(x[:, None], MU, S)                 # log p(x | c) + const = log p(c | x) + const'
    value, per = _bound(exact, c)
    se = per.std() / math.sqrt(len(c))
    mi = _mutual_information()
    assert 0.3 < mi < math.log(3) - 0.1                    # neither independent nor separable
    assert abs(value - mi) < 4 * se + 1e-4, (value, mi, se)


@pytest.mark.parametrize("wrong", ["flat", "tempered", "shifted"])
def test_any_other_posterior_gives_less(wrong):
    """The bound is below the exact posterior's by E KL(p(c | x) || Q(c | x)): a uniform Q
    gives exactly 0, a tempered or mis-centred Q less than the exact one by many standard
    errors of the paired difference."""
    c, x = _draws(seed=1)
    exact, per_exact = _bound(_log_normal(x[:, None], MU, S), c)
    logits = {"flat": np.zeros((len(c), 3)),
              "tempered": 0.4 * _log_normal(x[:, None], MU, S),
              "shifted": _log_normal(x[:, None], MU + np.array([0.5, -0.3, 0.2]), S)}[wrong]
    value, per = _bound(logits, c)
    if wrong == "flat":
        assert value == pytest.approx(0.0, abs=1e-9)
    gap = per_exact - per                                  # per-sample log p(c | x) - log Q(c | x)
    assert exact - value == pytest.approx(gap.mean(), abs=1e-6)
    assert gap.mean() > 10 * gap.std() / math.sqrt(len(c)) and gap.mean() > 0.02


def _blob(n=2048, seed=0, labels=False):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, 2)).astype(np.float32)
    y = r.integers(0, 4, n) if labels else None
    return Dataset("blob", "train", x, y, "continuous", (2,), num_classes=4 if labels else None)


def _softplus(a):
    return np.logaddexp(0.0, a)


def test_both_losses_are_eq6_by_hand():
    """D's loss -V - info L_I and G's loss -E log D(G(z, c)) - info L_I, recomputed in NumPy
    from the same draws (c first, then z) for a generic info weight."""
    m = models.create("infogan", data_shape=(2,), codes=5, info=0.7, seed=3, hidden=[16, 8],
                      z_dim=3)
    x = _blob(32).x
    n = len(x)

    def parts(seed):
        r = default_rng(seed)
        c = to_numpy(r.integers(0, 5, size=n))
        z = to_numpy(r.standard_normal((n, 3), dtype=np.float32))
        fake = m.G(Tensor(z), backend.asarray(c))
        h = m.D.features(fake)
        return c, to_numpy(m.D.score(h).data), to_numpy(m.Q(h).data)

    c, a_fake, q = parts(7)
    a_real = to_numpy(m.D(Tensor(x)).data)
    want_d = _softplus(-a_real).mean() + _softplus(a_fake).mean() - 0.7 * _terms(q, c).mean()
    got_d = m.loss(Batch(Tensor(backend.asarray(x))), default_rng(7)).item()
    assert got_d == pytest.approx(want_d, rel=1e-5)
    c, a_fake, q = parts(8)
    want_g = _softplus(-a_fake).mean() - 0.7 * _terms(q, c).mean()
    assert m.g_loss(n, None, default_rng(8)).item() == pytest.approx(want_g, rel=1e-5)
    assert abs(0.7 * _terms(q, c).mean()) > 1e-3                   # the code term is not negligible here


def test_the_coded_critic_s_losses_are_eq6_on_the_wasserstein_objective_by_hand():
    """infowgan-gp: the critic's loss E_q f - E_p f + lambda E(||grad f(x_hat)|| - 1)^2 -
    info L_I and G's -E_q f - info L_I, recomputed from the same draws (c, z, then the
    interpolation weights e) with a generic lambda and info weight; the penalty's gradient
    norms by central differences of the critic in float64."""
    m = models.create("infowgan-gp", data_shape=(2,), codes=5, info=0.7, gp=3.0, seed=3,
                      hidden=[16, 8], z_dim=3)
    m.to(dtype=np.float64)
    x = _blob(16).x.astype(np.float64)
    n = len(x)

    def parts(seed):
        r = default_rng(seed)
        c = to_numpy(r.integers(0, 5, size=n))
        z = to_numpy(r.standard_normal((n, 3), dtype=np.float64))
        fake = to_numpy(m.G(Tensor(z), backend.asarray(c)).data)
        h = m.D.features(Tensor(fake))
        return c, fake, to_numpy(m.D.score(h).data), to_numpy(m.Q(h).data), r

    def f(points):
        return to_numpy(m.D(Tensor(backend.asarray(points))).data)

    c, fake, f_fake, q, r = parts(7)
    e = to_numpy(r.random((n, 1), dtype=np.float64))
    x_hat, eps = e * x + (1 - e) * fake, 1e-6
    grads = np.stack([(f(x_hat + eps * d) - f(x_hat - eps * d)) / (2 * eps)
                      for d in np.eye(2)], axis=1)                      # (n, 2)
    penalty = 3.0 * ((np.linalg.norm(grads, axis=1) - 1.0) ** 2).mean()
    want_d = f_fake.mean() - f(x).mean() + penalty - 0.7 * _terms(q, c).mean()
    got_d = m.loss(Batch(Tensor(backend.asarray(x))), default_rng(7)).item()
    assert got_d == pytest.approx(want_d, rel=1e-7)
    assert penalty > 1e-2 and abs(0.7 * _terms(q, c).mean()) > 1e-3   # neither term negligible
    c, _, f_fake, q, _ = parts(8)
    want_g = -f_fake.mean() - 0.7 * _terms(q, c).mean()
    assert m.g_loss(n, None, default_rng(8)).item() == pytest.approx(want_g, rel=1e-7)


def test_the_coded_critic_keeps_the_wasserstein_settings():
    """infowgan-gp is wgan-gp's critic and schedule (Adam betas (0, 0.9), five critic steps per
    generator step, lambda = 10, no clipping) with Q in the critic's optimizer; without its code
    term (info = 0) its losses are wgan-gp's on the same draws."""
    m = models.create("infowgan-gp", data_shape=(2,), seed=0, hidden=[8], z_dim=2, codes=3)
    assert (m.n_critic, m.gp, m.clip, m.betas, m.info) == (5, 10.0, None, (0.0, 0.9), 1.0)
    groups = m.param_groups()
    assert groups["D"]["optimizer"] == groups["G"]["optimizer"] == "adam"
    q_ids = {id(p) for p in m.Q.parameters()}
    assert q_ids <= {id(p) for p in groups["D"]["params"]}
    assert not q_ids & {id(p) for p in groups["G"]["params"]}
    zero = models.create("infowgan-gp", data_shape=(2,), seed=0, hidden=[8], z_dim=2, codes=3,
                         info=0.0)
    x = Tensor(backend.asarray(_blob(32).x))
    r = default_rng(4)
    fake, _ = zero.coded(32, r)
    want = zero.d_objective(zero.D(x), zero.D(Tensor(fake.data))) + zero.penalty(
        x, Tensor(fake.data), None, r)
    assert zero.loss(Batch(x), default_rng(4)).item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("name", CODED)
def test_labels_are_never_read(name):
    """Three runs of the same steps on the same images, with the true labels, shuffled labels
    and none, end with identical weights."""
    ends = []
    for y in ("true", "shuffled", None):
        ds = _blob(256, labels=True)
        labels = None if y is None else (ds.y if y == "true" else np.random.default_rng(5).permutation(ds.y))
        m = models.create(name, data_shape=(2,), codes=4, seed=0, hidden=[16], z_dim=2, n_critic=2)
        opts, _ = _make_optimizers(m, "adam", 1e-3)
        rng = default_rng(1)
        for i in range(4):
            sl = slice(64 * i, 64 * (i + 1))
            yb = None if labels is None else backend.asarray(labels[sl])
            m.train_step(Batch(Tensor(backend.asarray(ds.x[sl])), yb), opts, rng)
        ends.append([to_numpy(p.data).copy() for p in m.parameters()])
    for other in ends[1:]:
        for a, b in zip(ends[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name, steps", [("infogan", 300), ("infowgan-gp", 600)])
def test_training_makes_the_code_readable_from_d_features(name, steps, tmp_path):
    """On one Gaussian blob, which has no classes of its own, a few hundred steps (300
    generator steps for infogan, 120 for infowgan-gp's five critic steps each) bring the bound
    close to its ceiling log K: G gives each code its own region and Q (trained with D) reads it."""
    m = models.create(name, data_shape=(2,), codes=4, seed=0, hidden=[32, 32], z_dim=2)
    q_before = to_numpy(m.Q.weight.data).copy()
    c = backend.asarray(np.arange(2000) % 4)
    x = m.G(Tensor(m.noise(2000, default_rng(1))), c)
    assert m.info_bound(x, c).item() < 0.2                 # untrained: Q barely reads the code
    train(m, _blob(), steps=steps, batch_size=64, lr=2e-3, out_dir=tmp_path, progress=False,
          samples=False)
    assert not np.array_equal(q_before, to_numpy(m.Q.weight.data))   # Q is in D's optimizer
    x = m.sample(2000, cond=to_numpy(c), rng=default_rng(1))
    assert m.info_bound(Tensor(x), c).item() > 0.9 * math.log(4)


@pytest.mark.parametrize("name", CODED)
def test_sample_draws_codes_from_the_prior_unless_given(name):
    m = models.create(name, data_shape=(2,), codes=3, seed=0, hidden=[8], z_dim=2)
    a = to_numpy(m.sample(6, rng=default_rng(0)))
    r = default_rng(0)
    c = r.integers(0, 3, size=6)
    want = to_numpy(m.G(Tensor(m.noise(6, r)), c).data)
    np.testing.assert_array_equal(a, want)
    fixed = to_numpy(m.sample(6, cond=np.full(6, 2), rng=default_rng(0)))
    assert not np.array_equal(a, fixed)


@pytest.mark.parametrize("name, argv, words", [
    *((name, ["--set", "codes=1"], f"{name}: codes=1; accepted: an integer >= 2") for name in CODED),
    *((name, ["--set", "info=-0.5"], "info=-0.5; accepted: a weight >= 0") for name in CODED),
    ("infogan", ["--set", "info=nan"], "accepted: a weight >= 0"),
    *((name, ["--set", "pack=2"], "pack") for name in CODED),
    ("infowgan-gp", ["--set", "gp=0"], "needs a Lipschitz constraint"),
    ("infowgan-gp", ["--set", "d_norm=batch"], "gradient penalty on a batch-normalized critic"),
    ("infowgan-gp", ["--set", "clip=0.01"], "clip"),
])
def test_bad_options_get_one_line_and_no_run_directory(name, argv, words, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", name, "--data", "8gaussians", "--steps", "2", "--out", str(out),
                 "-q"] + argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and words in err, err
    assert not out.exists()
