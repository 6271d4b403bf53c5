"""The energy models: the density and its quadrature normaliser, the losses as the modules
write them, training through the one loop (resume bit-for-bit with every chain's state),
bad input."""
import json
import math

import numpy as np
import pytest

from refgen import io, models
from refgen.autograd import Tensor, grad
from refgen.backend import default_rng
from refgen.data import Dataset, toy2d
from refgen.data.augment import random_shift
from refgen.models.base import Batch
from refgen.models.energy import (EBM, EBMFCE, EBMNCE, EBMSM, JEM, contrastive_loss,
                                  grid_log_normalizer, nce_loss)
from refgen.optim import SGD
from refgen.samplers import langevin
from refgen.train import TrainingDiverged, train

pytestmark = pytest.mark.usefixtures("numpy_backend")
SMALL = dict(hidden=(16, 16))


def _toy(n=64, name="8gaussians"):
    return Dataset(name, "train", toy2d.sample(name, n, 0).astype(np.float32), None,
                   "continuous", (2,))


# ----------------------------------------------------------------------------- density
def test_quadrature_gives_the_gaussian_normaliser():
    # E(x) = |x - m|^2 / (2 s^2) + 0.3: log Z = log(2 pi s^2) - 0.3
    m, s = Tensor(np.array([0.5, -1.0])), 0.8
    energy = lambda x: ((x - m) ** 2).sum(1) / (2 * s ** 2) + 0.3
    log_z, edge = grid_log_normalizer(energy, (2,), dtype=np.float64)
    assert log_z == pytest.approx(math.log(2 * math.pi * s ** 2) - 0.3, abs=1e-9)
    assert edge < 1e-30


def test_quadrature_refuses_mass_outside_the_grid_and_other_shapes():
    wide = lambda x: (x * x).sum(1) / (2 * 4.0 ** 2)                # 3.2 sd to the strip
    with pytest.raises(ValueError, match=r"mass at the edge of the quadrature grid \[-14, 14\]\^2"):
        grid_log_normalizer(wide, (2,))
    with pytest.raises(ValueError, match="normalises 2D densities only"):
        grid_log_normalizer(wide, (3,))
    with pytest.raises(ValueError, match="normalises 2D densities only"):
        EBM((1, 8, 8), channels=4).log_normalizer()
    assert not hasattr(EBM((1, 8, 8), channels=4), "log_prob")       # evaluate() skips the NLL


def test_the_model_density_integrates_to_one():
    model = EBM((2,), seed=3, base_std=1.5, **SMALL).double()
    c = -9 + 0.05 * (np.arange(360) + 0.5)                            # another grid than log Z's
    x = np.stack(np.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)
    mass = np.exp(model.log_prob(Tensor(x)).data).sum() * 0.05 ** 2
    assert mass == pytest.approx(1.0, abs=1e-4)
    e = model.energy(Tensor(x[:5])).data
    want = model.net(Tensor(x[:5])).data + (x[:5] ** 2).sum(1) / (2 * 1.5 ** 2)
    np.testing.assert_allclose(e, want, rtol=1e-12)


# ----------------------------------------------------------------------------- losses
def test_ebm_loss_is_the_contrastive_loss_on_its_chains():
    model = EBM((2,), seed=0, alpha=0.2, mcmc_steps=3, buffer_size=50, **SMALL).double()
    noise = default_rng(0)
    x = Tensor(toy2d.sample("8gaussians", 8, 1))
    before = model.buffer.chains.copy()
    loss = model.loss(Batch(x), noise).item()
    _, idx = model.buffer.draw(8, default_rng(0), model.noise)       # the same chains again
    x_neg = model.buffer.chains[idx]                                  # where they ended
    want = contrastive_loss(model.energy(x), model.energy(Tensor(x_neg)), 0.2).item()
    assert loss == pytest.approx(want, rel=1e-12)
    assert np.any(model.buffer.chains != before)


def test_nce_loss_uses_the_learned_log_z_and_gaussian_noise():
    model = EBMNCE((2,), seed=0, noise_std=1.5, **SMALL).double()
    model.log_z.data = np.array(0.7)
    noise = default_rng(4)
    x = Tensor(toy2d.sample("8gaussians", 8, 1))
    got = model.loss(Batch(x), noise).item()
    y = 1.5 * default_rng(4).standard_normal((8, 2), dtype=np.float32).astype(np.float64)
    q = lambda t: -0.5 * (t ** 2).sum(1) / 1.5 ** 2 - 2 * math.log(1.5) - math.log(2 * math.pi)
    g = lambda t: -model.energy(Tensor(t)).data - 0.7 - q(t)
    want = nce_loss(Tensor(g(x.data)), Tensor(g(y))).item()
    assert got == pytest.approx(want, rel=1e-6)


def test_fce_steps_the_energy_down_and_the_flow_up_the_same_loss():
    model = EBMFCE((2,), seed=0, flow_couplings=2, flow_hidden=(8,), **SMALL).double()
    x = Tensor(toy2d.sample("8gaussians", 16, 1))
    groups = model.param_groups()
    loss, _ = model.value_loss(x, default_rng(0))
    loss.backward()
    grads = {id(p): p.grad.data.copy() for p in model.parameters()}
    before = {id(p): p.data.copy() for p in model.parameters()}
    opts = {"energy": SGD(groups["energy"], lr=1e-3), "flow": SGD(groups["flow"]["params"], lr=1e-3)}
    noise = default_rng(0)                                        # the same flow samples
    model.train_step(Batch(x), opts, noise)
    for p in groups["energy"]:
        np.testing.assert_allclose(p.data, before[id(p)] - 1e-3 * grads[id(p)], rtol=1e-10, atol=1e-14)
    for p in groups["flow"]["params"]:
        np.testing.assert_allclose(p.data, before[id(p)] + 1e-3 * grads[id(p)], rtol=1e-10, atol=1e-14)
    assert any(np.abs(grads[id(p)]).max() > 0 for p in groups["flow"]["params"])


def test_sm_uses_the_exact_trace_in_2d_and_the_sliced_one_above():
    from refgen.score_matching import energy_score, exact_score_matching, sliced_score_matching
    model = EBMSM((2,), seed=0, **SMALL).double()
    x = toy2d.sample("8gaussians", 8, 1)
    assert model.loss(Batch(Tensor(x)), default_rng(0)).item() == pytest.approx(
        exact_score_matching(energy_score(model.energy), x).item(), rel=1e-12)
    model = EBMSM((3,), seed=0, exact_max_dim=2, **SMALL).double()
    noise = default_rng(5)
    x = np.random.default_rng(0).standard_normal((8, 3))
    assert model.loss(Batch(Tensor(x)), noise).item() == pytest.approx(
        sliced_score_matching(energy_score(model.energy), x, rng=default_rng(5)).item(), rel=1e-12)


def test_jem_energies_are_minus_logsumexp_of_the_logits():
    model = JEM((2,), num_classes=3, seed=0, buffer_size=20, mcmc_steps=2, **SMALL).double()
    x = Tensor(np.random.default_rng(0).standard_normal((5, 2)))
    f = model.logits(x).data
    np.testing.assert_allclose(model.energy(x).data, -np.log(np.exp(f).sum(1)), rtol=1e-12)
    noise = default_rng(0)
    y = np.array([0, 2, 1, 1, 0])
    loss = model.loss(Batch(x, y), noise).item()
    ce = -(f[np.arange(5), y] - np.log(np.exp(f).sum(1))).mean()
    assert loss == pytest.approx(ce + model.energy(x).data.mean()
                                 - model.energy(Tensor(model.buffer.chains[_last_idx(model)])).data.mean(),
                                 rel=1e-9)
    with pytest.raises(ValueError, match="no labels"):
        model.loss(Batch(x), noise)
    with pytest.raises(ValueError, match="num_classes"):
        JEM((2,), num_classes=None)


def test_jem_px_weight_scales_the_marginal_term_and_zero_is_the_classifier_alone():
    """loss = CE + px_weight (mean E(x+) - mean E(x-)); px_weight = 0 runs no chains."""
    x = Tensor(np.random.default_rng(0).standard_normal((5, 2)))
    y = np.array([0, 2, 1, 1, 0])
    for w in (1.0, 0.3, 0.0):
        model = JEM((2,), num_classes=3, seed=0, buffer_size=20, mcmc_steps=2, px_weight=w, **SMALL).double()
        before = model.buffer.chains.copy()
        loss = model.loss(Batch(x, y), default_rng(0)).item()
        f = model.logits(x).data
        ce = -(f[np.arange(5), y] - np.log(np.exp(f).sum(1))).mean()
        gap = model.energy(x).data.mean() - model.energy(Tensor(model.buffer.chains[_last_idx(model)])).data.mean()
        if w == 0:
            assert loss == pytest.approx(ce, rel=1e-12)
            np.testing.assert_array_equal(model.buffer.chains, before)      # no chain ran
        else:
            assert loss == pytest.approx(ce + w * gap, rel=1e-9)
            assert abs(gap) > 1e-3                                         # the weight is seen
    assert JEM((2,), num_classes=3).px_weight == 1.0
    with pytest.raises(ValueError, match="px_weight"):
        JEM((2,), num_classes=3, px_weight=-1)


def test_jem_augment_shift_translates_the_batch_for_both_terms():
    """With augment_shift = s, both the cross-entropy and E(x+) see random_shift(x, s, rng),
    drawn from the loss's rng before the chains'; the chains start where they would."""
    x = Tensor(np.random.default_rng(0).standard_normal((5, 1, 8, 8)))
    y = np.array([0, 2, 1, 1, 0])
    kw = dict(num_classes=3, seed=0, buffer_size=1000, mcmc_steps=2, channels=4, augment_shift=2)

    def ce(model, xx):
        f = model.logits(Tensor(xx)).data
        return -(f[np.arange(5), y] - np.log(np.exp(f).sum(1))).mean()
    alone = JEM((1, 8, 8), px_weight=0.0, **kw).double()
    xa = random_shift(x.data, 2, default_rng(0))
    loss = alone.loss(Batch(x, y), default_rng(0)).item()
    assert loss == pytest.approx(ce(alone, xa), rel=1e-12)
    assert abs(loss - ce(alone, x.data)) > 1e-6                            # the shift is seen
    model = JEM((1, 8, 8), **kw).double()
    rng = default_rng(0)
    random_shift(x.data, 2, rng)
    idx = rng.integers(0, 1000, 5)                                         # the buffer's draw
    assert len(set(idx.tolist())) == 5                                     # each chain once
    loss = model.loss(Batch(x, y), default_rng(0)).item()
    gap = model.energy(Tensor(xa)).data.mean() - model.energy(Tensor(model.buffer.chains[idx])).data.mean()
    assert model.last_stats["energy_gap"] == pytest.approx(gap, rel=1e-9)
    assert loss == pytest.approx(ce(model, xa) + gap, rel=1e-9)
    assert JEM((1, 8, 8), num_classes=3).augment_shift == 0
    with pytest.raises(ValueError, match="augment_shift must be an integer >= 0"):
        JEM((1, 8, 8), num_classes=3, augment_shift=-1)
    with pytest.raises(ValueError, match="augment_shift=0"):
        JEM((2,), num_classes=3, augment_shift=1)


def _last_idx(model, n=5):
    rng = default_rng(0)
    return rng.integers(0, model.buffer.chains.shape[0], n)


# ----------------------------------------------------------------------------- the loop
CASES = {"ebm": dict(mcmc_steps=3, buffer_size=40), "ebm-nce": {},
         "ebm-sm": {}, "ebm-fce": dict(flow_couplings=2, flow_hidden=(8,))}


@pytest.mark.parametrize("name", sorted(CASES))
def test_resume_is_bit_for_bit(name, tmp_path):
    ds = _toy()
    common = dict(batch_size=8, lr=1e-3, seed=0, progress=False, samples=False, ckpt_every=2)
    a = models.create(name, data_shape=(2,), seed=0, **SMALL, **CASES[name])
    train(a, ds, steps=4, out_dir=tmp_path / "a", **common)
    b = models.create(name, data_shape=(2,), seed=0, **SMALL, **CASES[name])
    train(b, ds, steps=2, out_dir=tmp_path / "b", **common)
    b = models.create(name, data_shape=(2,), seed=0, **SMALL, **CASES[name])
    train(b, ds, steps=4, out_dir=tmp_path / "b", resume=True, **common)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
    if name == "ebm":
        arrays, _ = io.load_checkpoint(tmp_path / "a" / "checkpoint.npz")
        np.testing.assert_array_equal(arrays["model/buffer.chains"], a.buffer.chains)


class _Poisoned(EBM):
    """An EBM whose weights turn to inf at its third loss: its chains must stop there."""

    calls = 0

    def loss(self, batch, rng):
        self.calls += 1
        if self.calls == 3:
            self.net.layers[0].weight.data[:] = np.inf
        return super().loss(batch, rng)


def test_a_non_finite_energy_stops_training_and_keeps_the_checkpoint(tmp_path):
    model = _Poisoned((2,), seed=0, mcmc_steps=3, buffer_size=40, **SMALL)
    with pytest.raises(TrainingDiverged, match=r"chain \d+ at sampler step 0"):
        train(model, _toy(), steps=5, batch_size=8, lr=1e-3, out_dir=tmp_path, progress=False,
              samples=False, ckpt_every=1)
    _, meta = io.load_checkpoint(tmp_path / "checkpoint.npz")
    assert meta["step"] == 2


def test_mala_negatives_log_their_acceptance_rate_and_ula_logs_none(tmp_path):
    for mcmc in ("mala", "ula"):
        model = EBM((2,), seed=0, mcmc=mcmc, mcmc_steps=3, buffer_size=40, **SMALL)
        train(model, _toy(), steps=2, batch_size=8, lr=1e-3, out_dir=tmp_path / mcmc,
              progress=False, samples=False, log_every=1)
        log = [json.loads(x) for x in (tmp_path / mcmc / "log.jsonl").read_text().splitlines()]
        if mcmc == "mala":
            assert all(0.0 < r["acceptance_rate"] <= 1.0 for r in log)
        else:
            assert not any("acceptance_rate" in r for r in log)
            assert all(r["chain_grad_norm"] > 0.0 for r in log)
        assert all(math.isfinite(r["energy_gap"]) for r in log)


def test_the_logged_energy_gap_and_grad_norm_are_the_chains():
    """energy_gap = mean E(x+) - mean E(x-) on the step's negatives (the loss at alpha = 0,
    not at alpha > 0); chain_grad_norm = the mean |grad_x E| over the ULA steps and chains."""
    x = Tensor(toy2d.sample("8gaussians", 8, 1))
    for alpha in (0.0, 0.3):
        model = EBM((2,), seed=0, alpha=alpha, mcmc_steps=3, buffer_size=50, **SMALL).double()
        x0, _ = model.buffer.draw(8, default_rng(0), model.noise)         # the chains' starts
        loss = model.loss(Batch(x), default_rng(0)).item()
        x_neg = model.buffer.chains[_last_idx(model, 8)]
        gap = model.energy(x).data.mean() - model.energy(Tensor(x_neg)).data.mean()
        assert model.last_stats["energy_gap"] == pytest.approx(gap, rel=1e-12)
        assert (loss == pytest.approx(gap, rel=1e-12)) == (alpha == 0.0)
    rng = default_rng(0)
    rng.integers(0, 50, 8), rng.random(8), model.noise(8, rng)          # what draw() consumed
    norms, xk = [], x0
    for _ in range(3):                                                  # the same 3 ULA steps
        xt = Tensor(xk, requires_grad=True)
        (g,) = grad((-model.energy(xt)).sum(), xt)
        norms.append(np.sqrt((g.data ** 2).sum(1)).mean())
        xk = xk + 0.5 * model.mcmc_step_size * g.data + math.sqrt(model.mcmc_step_size) * \
            rng.standard_normal(xk.shape, dtype=xk.dtype)
    np.testing.assert_allclose(xk, x_neg, rtol=1e-12)
    assert model.last_stats["chain_grad_norm"] == pytest.approx(np.mean(norms), rel=1e-12)


def test_sample_noise_scale_tempers_the_sampling_chain():
    """sample() with sample_noise_scale s is ULA from the same noise with sigma = s; JEM
    samples with its training step's sigma (0.01) by default; MALA cannot be tempered."""
    model = EBM((2,), seed=0, sampler="ula", sample_steps=4, sample_step_size=0.05,
                sample_noise_scale=0.02, **SMALL).double()
    got = model.sample(6, rng=default_rng(3))
    rng = default_rng(3)
    want = langevin(model.noise(6, rng), log_prob=lambda v: -model.energy(v), n_steps=4,
                    step_size=0.05, noise_scale=0.02, rng=rng).x
    np.testing.assert_allclose(got, want, rtol=1e-12)
    model.sample_noise_scale = None                                    # untempered: another chain
    assert not np.allclose(model.sample(6, rng=default_rng(3)), want, atol=1e-3)
    assert JEM((2,), num_classes=3).sample_noise_scale == 0.01
    with pytest.raises(ValueError, match="tempers ULA only"):
        EBM((2,), sampler="mala", sample_noise_scale=0.1)
    with pytest.raises(ValueError, match="sample_noise_scale must be a finite number > 0"):
        EBM((2,), sampler="ula", sample_noise_scale=0.0)


def test_samplers_and_bad_settings_are_one_clear_error():
    model = EBM((2,), seed=0, **SMALL)
    for sampler in ("mala", "ula", "rwm"):
        model.sampler = sampler
        x = model.sample(20, rng=default_rng(0), steps=5)
        assert x.shape == (20, 2) and np.all(np.isfinite(x))
    assert 0.0 < model.last_acceptance_rate <= 1.0
    with pytest.raises(ValueError, match="sampler must be one of"):
        EBM((2,), sampler="hmc")
    with pytest.raises(ValueError, match="mcmc must be one of"):
        EBM((2,), mcmc="gibbs")
    with pytest.raises(ValueError, match="sample_step_size must be a finite number > 0"):
        EBM((2,), sample_step_size=0.0)
    with pytest.raises(ValueError, match="mcmc_step_size must be a finite number > 0"):
        EBM((2,), mcmc_step_size=0.0)
    with pytest.raises(ValueError, match="step_size must be a finite number > 0"):
        model.run_chains(np.zeros((2, 2), np.float32), 1, -1.0, default_rng(0))
    with pytest.raises(ValueError, match="vectors or images"):
        EBM((4, 4))


def test_the_conv_energy_trains_on_images(tmp_path):
    ds = Dataset("mnist", "train", np.random.default_rng(0).uniform(-1, 1, (16, 1, 8, 8)).astype(np.float32),
                 np.arange(16) % 10, "continuous", (1, 8, 8), num_classes=10)
    for name, kw in (("ebm", dict(mcmc_steps=2, buffer_size=20)),
                     ("jem", dict(num_classes=10, mcmc_steps=2, buffer_size=20))):
        model = models.create(name, data_shape=(1, 8, 8), seed=0, channels=4, **kw)
        train(model, ds, steps=2, batch_size=4, lr=1e-3, out_dir=tmp_path / name, progress=False,
              samples=False)
        assert model.energy(Tensor(ds.x[:3])).shape == (3,)
        assert model.buffer.chains.shape == (20, 1, 8, 8)
