"""The registered models (ncsn, sde-ve, sde-vp, sde-subvp) and the DDPM bridge: NCSNv2's
rules, the model contract, a short training run, a DDPM checkpoint as a VP-SDE score model."""
import math

import numpy as np
import pytest

from refgen import models
from refgen.autograd import Tensor, no_grad
from refgen.backend import default_rng
from refgen.data import load
from refgen.models.base import Batch
from refgen.models.score import DDPMScore
from refgen.models.score.ncsn import (geometric_sigmas, level_ratio, sigma_max_from_data,
                                      step_size_rule)
from refgen.models.diffusion.process import q_sample

pytestmark = pytest.mark.usefixtures("numpy_backend")


def test_sigma_max_is_the_largest_pairwise_distance():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 3))
    want = max(np.linalg.norm(a - b) for a in x for b in x)
    assert np.isclose(sigma_max_from_data(x), want)


def test_level_ratio_meets_technique_2():
    from math import erf, sqrt
    Phi = lambda z: 0.5 * (1 + erf(z / sqrt(2)))  # noqa: E731
    for d in (784, 3072):
        g = level_ratio(d)
        r = sqrt(2 * d)
        assert 1 < g < 1.2
        assert abs(Phi(r * (g - 1) + 3 * g) - Phi(r * (g - 1) - 3 * g) - 0.5) < 1e-6
    assert level_ratio(2) is None          # no ratio brings two dimensions down to 0.5


def test_step_size_rule_minimises_technique_4():
    s, g, T = 0.01, 1.8, 50

    def lhs(eps):
        a = 1 - eps / s ** 2
        c = 2 * eps / (s ** 2 - s ** 2 * a ** 2)
        return a ** (2 * T) * (g ** 2 - c) + c
    eps = step_size_rule(s, g, T)
    assert lhs(eps) <= min(lhs(eps * 1.05), lhs(eps / 1.05)) + 1e-9
    assert abs(lhs(eps) - 1) < 0.05


def test_ncsn_sets_its_ladder_from_the_first_batch():
    m = models.create("ncsn", data_shape=(2,), seed=0)
    with pytest.raises(ValueError, match="sigma_max='auto'"):
        m.sigmas
    x = np.random.default_rng(1).standard_normal((64, 2)).astype(np.float32)
    m.loss(Batch(Tensor(x)), default_rng(0))
    s = m.sigmas
    assert np.isclose(s[0], sigma_max_from_data(x)) and np.isclose(s[-1], 0.01) and len(s) == 10
    assert np.allclose(s[:-1] / s[1:], s[0] / s[1])                   # geometric
    assert "sigma_max" in m.state_dict()                               # kept in the checkpoint


def test_ncsn_score_is_net_over_sigma():
    m = models.create("ncsn", data_shape=(2,), seed=0, sigma_max=5.0, num_levels=4)
    for p in m.net.out.parameters():                                   # not the zero init
        p.data[...] = np.random.default_rng(2).standard_normal(p.data.shape)
    x = Tensor(np.ones((3, 2), dtype=np.float32))
    idx = np.array([0, 1, 3])
    out = m.net(x, idx).data / m.sigmas[idx][:, None]
    assert np.abs(out).min() > 1e-3
    assert np.allclose(m.score(x, idx).data, out, rtol=1e-6)
    assert np.allclose(m.sigmas, geometric_sigmas(5.0, 0.01, 4))


@pytest.mark.parametrize("name", ["ncsn", "sde-ve", "sde-vp", "sde-subvp"])
def test_contract_and_a_short_run_lowers_the_loss(name):
    from refgen import optim
    m = models.create(name, data_shape=(2,), seed=0, hidden=32, depth=1)
    ds = load("8gaussians", "train")
    opt = optim.Adam(list(m.parameters()), lr=3e-3)
    rng = np.random.default_rng(0)
    held = Batch(Tensor(ds.x[:4000].astype(np.float32)))

    def held_out():                                   # the same noise every time
        noise = default_rng(11)
        with no_grad():
            return m.loss(held, noise).item()
    noise = default_rng(0)
    m.loss(Batch(Tensor(ds.x[:256].astype(np.float32))), noise)           # ncsn: sets its ladder
    before = held_out()
    assert np.isclose(before, 2.0, rtol=0.05)         # zero-initialised output: E||z||^2 = D
    noise = default_rng(1)
    for _ in range(200):
        xb = ds.x[rng.integers(0, len(ds.x), 128)].astype(np.float32)
        loss = m.loss(Batch(Tensor(xb)), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert held_out() < 0.85 * before
    kw = dict(steps=5) if name == "ncsn" else dict(steps=20, sampler="em")
    s = m.sample(7, **kw, rng=noise)
    assert s.shape == (7, 2) and np.isfinite(s).all()
    with pytest.raises(ValueError, match="unconditional"):
        m.sample(2, cond=np.zeros(2), rng=noise)


def test_sde_model_log_prob_matches_its_own_ode():
    """log_prob is the PF-ODE of the model's own score. An untrained net outputs zero, which
    leaves VP's linear drift dx/dt = -beta/2 x: x(1) = x exp(-(B(1) - B(eps)) / 2) and
    int div = -D (B(1) - B(eps)) / 2, in closed form."""
    m = models.create("sde-vp", data_shape=(2,), seed=0)
    for p in m.net.out.parameters():
        assert not np.any(p.data)                                      # zero-initialised output
    x = np.array([[0.3, -1.2], [2.0, 0.5]])
    sde = m.sde
    with no_grad():
        got = m.log_prob(x, rng=default_rng(0), rtol=1e-8, atol=1e-8)
    dB = float(sde.B(1.0) - sde.B(sde.eps))
    z = x * math.exp(-dB / 2)
    want = sde.prior_logp(z) - 2 * dB / 2
    assert np.allclose(got, want, atol=1e-5)


def test_sde_model_refuses_images_outside_its_range():
    m = models.create("sde-vp", data_shape=(1, 8, 8), seed=0, channels=8, groups=4,
                      channel_mult=(1,), num_res_blocks=1)
    with pytest.raises(ValueError, match=r"outside this model's range \[-1, 1\]"):
        m.log_prob(np.full((1, 1, 8, 8), 2.0), rng=default_rng(0))


# ----------------------------------------------------------------------------- the bridge
def tiny_ddpm(**kw):
    return models.create("ddpm", data_shape=(2,), seed=3, T=50, hidden=16, depth=1, **kw)


def test_bridge_kernel_is_ddpm_q_and_its_score_is_ddpm_eq21_at_every_step():
    """The VP-SDE read off a DDPM has DDPM's kernel q(x_t | x_0) at every step, and its score is
    eq. (21), -eps_theta / sqrt(1 - alpha_bar_t), of the same network."""
    d = tiny_ddpm()
    for p in d.net.out.parameters():                                   # a non-trivial network
        p.data[...] = np.random.default_rng(4).standard_normal(p.data.shape) * 0.3
    b = DDPMScore(d)
    rng = np.random.default_rng(5)
    x0 = rng.standard_normal((6, 2))
    eps = rng.standard_normal((6, 2))
    for i in (1, 7, 25, 50):
        t = np.full(6, i / 50)
        xt = b.sde.perturb(x0, t, eps)
        assert np.allclose(xt, q_sample(d.schedule, x0, i, eps), atol=1e-12)   # eq. (3)
        with no_grad():
            assert np.allclose(b.score(Tensor(xt.astype(np.float32)), t).data,
                               d.score(Tensor(xt.astype(np.float32)), i).data, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sampler", ["em", "pc", "ode"])
def test_samplers_run_on_a_ddpm_unchanged(sampler):
    b = DDPMScore(tiny_ddpm(data_scale=2.0))
    s = b.sample(5, rng=np.random.default_rng(0), sampler=sampler, steps=10)
    assert s.shape == (5, 2) and np.isfinite(s).all()


def test_likelihood_runs_on_a_ddpm_unchanged():
    b = DDPMScore(tiny_ddpm(data_scale=2.0))
    with no_grad():
        lp = b.log_prob(np.array([[0.1, 0.2], [1.0, -1.0]]), rng=default_rng(0), rtol=1e-8, atol=1e-8)
    # an untrained eps-network predicts 0: the flow is VP's linear drift (see above) and the
    # data scale c = 2 moves log p by -D log c
    sde = b.sde
    dB = float(sde.B(1.0) - sde.B(sde.eps))
    z = np.array([[0.1, 0.2], [1.0, -1.0]]) / 2 * math.exp(-dB / 2)
    assert np.allclose(lp, sde.prior_logp(z) - dB - 2 * math.log(2.0), atol=1e-4)


def test_bridge_refuses_other_models():
    with pytest.raises(ValueError, match="wraps a 'ddpm'"):
        DDPMScore(models.create("sde-vp", data_shape=(2,)))
