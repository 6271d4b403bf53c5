"""Discriminator rejection sampling: with the optimal discriminator's logit log p - log q, the
kept samples are p's, the kept share is e^-M, and gamma moves the acceptance as its formula
says. The generator is made exactly linear (G(z) = s z + mu, so q = N(mu, s^2)) and the
discriminator is the exact log density ratio, so every number has a closed form."""
import math

import numpy as np
import pytest

from refgen import models, nn
from refgen.autograd import Tensor
from refgen.backend import default_rng, to_numpy
from refgen.models.gan import RejectionSampler, acceptance, fit_discriminator, minimax_copy
from refgen.models.gan.nets import Discriminator

pytestmark = pytest.mark.usefixtures("numpy_backend")
MU_Q, SD_Q, SD_P = 0.5, 1.2, 0.7
MU_P = {0: -0.6, 1: 0.9}               # p(x | y) of the conditional test; MU_P[0] unconditional


def _log_normal(x, mu, sd):
    return -0.5 * ((x - mu) / sd) ** 2 - math.log(sd * math.sqrt(2 * math.pi))


def _sup_log_ratio(mu_p):
    """sup_x log N(x; mu_p, SD_P^2) - log N(x; MU_Q, SD_Q^2), by a fine grid."""
    x = np.linspace(-10, 10, 400_001)
    return float((_log_normal(x, mu_p, SD_P) - _log_normal(x, MU_Q, SD_Q)).max())


def _normal_cdf(x, mu, sd):
    return 0.5 * (1 + np.vectorize(math.erf)((x - mu) / (sd * math.sqrt(2))))


def _ks(x, mu, sd):
    v = np.sort(np.asarray(x, dtype=np.float64))
    F, n = _normal_cdf(v, mu, sd), len(v)
    return max((np.arange(1, n + 1) / n - F).max(), (F - np.arange(n) / n).max())


class _ExactLogit(nn.Module):
    """a(x, y) = log p(x | y) - log q(x): the optimal discriminator's logit."""

    def forward(self, x, y=None):
        x = np.asarray(x.data[:, 0], dtype=np.float64)
        mu = MU_P[0] if y is None else np.vectorize(MU_P.get)(to_numpy(y))
        return Tensor(_log_normal(x, mu, SD_P) - _log_normal(x, MU_Q, SD_Q))


def _linear_gan(name="nsgan", **kw):
    """A 1D GAN whose G is s z + mu exactly: s relu(z) - s relu(-z) + mu, labels ignored."""
    model = models.create(name, data_shape=(1,), seed=0, hidden=[2], z_dim=1, **kw)
    first = model.G.layers[0]
    first.weight.data[...] = 0.0
    first.weight.data[:, 0] = [1.0, -1.0]
    first.bias.data[...] = 0.0
    model.G.out.weight.data[...] = [[SD_Q, -SD_Q]]
    model.G.out.bias.data[...] = MU_Q
    model.D = _ExactLogit()
    return model


def test_the_generator_stand_in_is_the_normal_q():
    x = to_numpy(_linear_gan().sample(20_000, rng=default_rng(0)))[:, 0]
    assert _ks(x, MU_Q, SD_Q) < 1.95 / math.sqrt(len(x))


def test_rejection_with_the_optimal_logit_samples_p_and_keeps_e_to_the_minus_m():
    model = _linear_gan()
    drs = RejectionSampler(model, burn_in=20_000)
    # the burn-in's largest logit is the closed-form sup of log p / q (its maximum is flat)
    m = _sup_log_ratio(MU_P[0])
    assert m - 0.01 < drs.estimate_bound(default_rng(5)) <= m + 1e-9
    x = to_numpy(drs.sample(8000, rng=default_rng(1)))[:, 0]
    n = len(x)
    # Kolmogorov-Smirnov at alpha = 0.001: the kept samples are p's, not q's
    assert _ks(x, MU_P[0], SD_P) < 1.95 / math.sqrt(n)
    assert _ks(x, MU_Q, SD_Q) > 5 * 1.95 / math.sqrt(n)
    assert drs.max_logit == pytest.approx(m, abs=0.01)
    # the kept share, E_q[e^{a - M}] = e^{-M} int p = e^{-M}, within 4 binomial s.e.
    rate = math.exp(-m)
    assert abs(drs.acceptance_rate - rate) < 4 * math.sqrt(rate * (1 - rate) / drs.proposed)
    assert drs.accepted == n and drs.proposed > 2 * n


def test_conditional_rejection_gives_each_slot_its_labels_density():
    model = _linear_gan("cgan", num_classes=2)
    y = np.repeat([0, 1], 4000)
    x = to_numpy(RejectionSampler(model, burn_in=20_000).sample(8000, cond=y, rng=default_rng(2)))[:, 0]
    for k in (0, 1):
        assert _ks(x[y == k], MU_P[k], SD_P) < 1.95 / math.sqrt(4000), k
    assert abs(x[y == 0].mean() - x[y == 1].mean()) > 1.0  # not one density for both


def test_gamma_shifts_the_acceptance_logit():
    u = np.array([-6.0, -2.3, -0.4, 0.0])
    np.testing.assert_allclose(acceptance(u), np.exp(u), rtol=1e-12)       # gamma = 0: e^{a - M}
    for g in (-1.7, 0.8):
        logit = u - np.log(-np.expm1(np.minimum(u, -1e-300)))             # logit(e^u)
        np.testing.assert_allclose(acceptance(u, g)[:3], 1 / (1 + np.exp(-(logit[:3] - g))),
                                   rtol=1e-10)
        assert acceptance(u, g)[3] == 1.0                                  # at the bound
    assert (acceptance(u[:3], -1.0) > np.exp(u[:3])).all()                 # gamma < 0 keeps more
    # more kept with gamma < 0, the share measured through the sampler
    model = _linear_gan()
    exact = RejectionSampler(model, max_logit=_sup_log_ratio(MU_P[0]))
    loose = RejectionSampler(model, max_logit=_sup_log_ratio(MU_P[0]), gamma=-2.0)
    exact.sample(3000, rng=default_rng(3))
    loose.sample(3000, rng=default_rng(3))
    assert loose.acceptance_rate > exact.acceptance_rate + 0.1


def test_models_without_a_density_ratio_logit_are_refused():
    for name, kw, match in (("wgan-gp", {}, "needs a minimax discriminator"),
                            ("fgan", {}, "needs a minimax discriminator"),
                            ("nsgan", {"pack": 2}, "pack=2")):
        model = models.create(name, data_shape=(2,), seed=0, hidden=[4], **kw)
        with pytest.raises(ValueError, match=match):
            RejectionSampler(model)
    model = models.create("nsgan", data_shape=(2,), seed=0, hidden=[4])
    with pytest.raises(ValueError, match="gamma="):
        RejectionSampler(model, gamma=float("nan"))
    with pytest.raises(ValueError, match="burn_in="):
        RejectionSampler(model, burn_in=0)


def test_sample_with_drs_is_the_rejection_sampler_and_refuses_truncation_beside_it():
    model = _linear_gan()
    x = to_numpy(model.sample(600, rng=default_rng(4), drs=-0.5))
    np.testing.assert_array_equal(
        x, to_numpy(RejectionSampler(model, gamma=-0.5).sample(600, rng=default_rng(4))))
    assert not np.array_equal(x, to_numpy(model.sample(600, rng=default_rng(4))))
    with pytest.raises(ValueError, match="truncation and drs together"):
        model.sample(4, rng=default_rng(0), truncation=1.0, drs=0.0)


def test_cli_samples_with_drs_and_refuses_a_packed_discriminator_in_one_line(tmp_path, capsys):
    from refgen.cli import main
    runs = {}
    for pack in (1, 2):
        runs[pack] = tmp_path / f"pack{pack}"
        assert main(["train", "nsgan", "--data", "ring8", "--steps", "20", "--batch-size", "32",
                     "--out", str(runs[pack]), "-q", "--set", f"pack={pack}",
                     "--set", "hidden=[16]"]) == 0
    capsys.readouterr()
    for name, extra in (("d.png", ["--drs", "0"]), ("u.png", [])):
        assert main(["sample", str(runs[1]), "-n", "300", "-q", "--out", str(tmp_path / name)]
                    + extra) == 0
    d, u = (tmp_path / "d.png").read_bytes(), (tmp_path / "u.png").read_bytes()
    assert d[:4] == b"\x89PNG" and d != u             # the flag reaches the model: other points
    assert main(["sample", str(runs[2]), "--drs", "0", "-q", "--out", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("refgen: error: ") and "pack=2" in err[0], err
    assert not (tmp_path / "p.png").exists()


def test_fit_discriminator_reaches_the_log_density_ratio_and_drs_then_samples_p():
    """D trained alone against the fixed G (fit_discriminator) approaches a* = log p - log q;
    its -V approaches log 4 - 2 JSD (Goodfellow et al., Thm. 1), and rejection with the fitted
    logit gives p's samples."""
    model = _linear_gan()
    model.D = Discriminator((1,), hidden=(32, 32), arch="mlp", rng=0)   # room for a quadratic
    model.eval()
    x = (MU_P[0] + SD_P * np.random.default_rng(7).standard_normal((20_000, 1))).astype(np.float32)
    losses = fit_discriminator(model, x, steps=2000, rng=default_rng(8), batch_size=256, lr=3e-3)
    grid = np.linspace(-2.0, 1.5, 36)                       # where p and q both have mass
    a = model.D(Tensor(grid[:, None].astype(np.float32))).data
    true = _log_normal(grid, MU_P[0], SD_P) - _log_normal(grid, MU_Q, SD_Q)
    assert np.abs(a - true).max() < 0.2                     # the log ratio spans 4.8 nats here
    g = np.linspace(-12.0, 12.0, 200_001)
    p, q = np.exp(_log_normal(g, MU_P[0], SD_P)), np.exp(_log_normal(g, MU_Q, SD_Q))
    jsd = 0.5 * np.sum(p * np.log(2 * p / (p + q)) + q * np.log(2 * q / (p + q))) * (g[1] - g[0])
    assert np.mean(losses[-200:]) == pytest.approx(math.log(4) - 2 * jsd, abs=0.03)
    assert np.mean(losses[:20]) > np.mean(losses[-200:]) + 0.05
    xs = to_numpy(RejectionSampler(model, burn_in=20_000).sample(4000, rng=default_rng(9)))[:, 0]
    assert _ks(xs, MU_P[0], SD_P) < 1.95 / math.sqrt(4000)
    assert _ks(xs, MU_Q, SD_Q) > 5 * 1.95 / math.sqrt(4000)


def test_a_critic_is_thinned_through_a_minimax_copy_fitted_to_log_p_over_q():
    """A WGAN-GP critic's score is no log ratio, so the model is refused as it is; a copy of
    the critic with a new zero head (a = 0 everywhere) fitted against the fixed G on -V
    approaches a* = log p - log q, rejection with it gives p's samples, and the critic
    itself is left as it was."""
    model = _linear_gan("wgan-gp")
    model.D = Discriminator((1,), hidden=(32, 32), arch="mlp", rng=0)   # the critic
    model.eval()
    critic = [p.data.copy() for p in model.D.parameters()]
    with pytest.raises(ValueError, match="needs a minimax discriminator"):
        RejectionSampler(model)
    d = minimax_copy(model)
    grid = np.linspace(-2.0, 1.5, 36)
    g32 = Tensor(grid[:, None].astype(np.float32))
    assert np.abs(model.D(g32).data).max() > 1e-3            # the critic scores, the copy not yet
    np.testing.assert_array_equal(d(g32).data, np.zeros(36, np.float32))
    x = (MU_P[0] + SD_P * np.random.default_rng(7).standard_normal((20_000, 1))).astype(np.float32)
    losses = fit_discriminator(model, x, steps=2000, rng=default_rng(8), batch_size=256, lr=3e-3,
                               discriminator=d)
    true = _log_normal(grid, MU_P[0], SD_P) - _log_normal(grid, MU_Q, SD_Q)
    assert np.abs(d(g32).data - true).max() < 0.2
    assert losses[0] == pytest.approx(math.log(4), abs=1e-6)             # -V at a = 0
    assert np.mean(losses[-200:]) < math.log(4) - 0.1
    xs = to_numpy(RejectionSampler(model, burn_in=20_000, discriminator=d)
                  .sample(4000, rng=default_rng(9)))[:, 0]
    assert _ks(xs, MU_P[0], SD_P) < 1.95 / math.sqrt(4000)
    assert _ks(xs, MU_Q, SD_Q) > 5 * 1.95 / math.sqrt(4000)
    for before, p in zip(critic, model.D.parameters()):
        np.testing.assert_array_equal(before, p.data)


def test_a_packed_discriminator_given_is_refused():
    model = _linear_gan("wgan-gp")
    packed = Discriminator((1,), hidden=(4,), arch="mlp", pack=2, rng=0)
    with pytest.raises(ValueError, match="pack=2"):
        RejectionSampler(model, discriminator=packed)


def test_fit_discriminator_refuses_what_it_cannot_fit():
    x = np.zeros((8, 2), np.float32)
    with pytest.raises(ValueError, match="needs a minimax discriminator"):
        fit_discriminator(models.create("wgan-gp", data_shape=(2,), seed=0, hidden=[4]), x,
                          steps=1, rng=default_rng(0))
    with pytest.raises(ValueError, match="give y"):
        fit_discriminator(models.create("cgan", data_shape=(2,), num_classes=3, seed=0,
                                        hidden=[4]), x, steps=1, rng=default_rng(0))
    with pytest.raises(ValueError, match="steps=0"):
        fit_discriminator(models.create("nsgan", data_shape=(2,), seed=0, hidden=[4]), x,
                          steps=0, rng=default_rng(0))
