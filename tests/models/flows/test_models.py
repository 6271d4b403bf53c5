"""The registered flows (nice, realnvp, glow, maf) as whole models: invertible, exact
log-determinants, normalised densities (untrained and briefly trained), model conventions."""
import math

import numpy as np
import pytest

from refgen import data
from refgen.autograd import Tensor, no_grad
from refgen.backend import default_rng, to_numpy
from refgen.models.base import Batch, constructor_kwargs
from refgen.models.flows import MAF, NICE, Glow, RealNVP

SMALL_2D = {  # small enough for unit tests
    "nice": lambda: NICE((2,), couplings=4, hidden=[16, 16]),
    "realnvp": lambda: RealNVP((2,), couplings=4, hidden=[16, 16]),
    "glow": lambda: Glow((2,), depth=3, hidden=[16, 16]),
    "maf": lambda: MAF((2,), layers=3, hidden=[16, 16]),
}
SMALL_IMAGE = {  # 1x4x4 images: two squeezes' worth of multi-scale
    "nice": lambda: NICE((1, 4, 4), couplings=2, hidden=4),
    "realnvp": lambda: RealNVP((1, 4, 4), scales=2, hidden=4),
    "glow": lambda: Glow((1, 4, 4), depth=2, levels=2, hidden=4),
    "glow-plain": lambda: Glow((1, 4, 4), depth=2, levels=2, hidden=4, lu=False),
    "glow-shift": lambda: Glow((1, 4, 4), depth=1, levels=1, hidden=4, logit_alpha=0),
    "realnvp-3scales": lambda: RealNVP((1, 4, 4), scales=3, hidden=4),
    "realnvp-no-actnorm": lambda: RealNVP((1, 4, 4), scales=2, hidden=4, actnorm=False),
    "maf": lambda: MAF((1, 4, 4), layers=2, hidden=[16]),
}
CLASSES = {"nice": NICE, "realnvp": RealNVP, "glow": Glow, "maf": MAF}


def _inputs(shape, n=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.02, 0.98, (n,) + shape) if len(shape) == 3 else rng.standard_normal((n,) + shape)


@pytest.mark.parametrize("name", sorted(SMALL_2D) + [f"img-{k}" for k in sorted(SMALL_IMAGE)])
def test_whole_flow_inverts_and_its_logdet_is_the_jacobians(name, fl):
    make = SMALL_IMAGE[name[4:]] if name.startswith("img-") else SMALL_2D[name]
    model = fl.randomize(make().double(), seed=1, scale=0.2)
    x = _inputs(model.data_shape)
    z, logdet = fl.forward(model, x)
    assert z.shape == (3, model.dim)
    np.testing.assert_allclose(fl.inverse(model, z), x, rtol=0, atol=1e-9)
    z2 = z + 0.05 * np.random.default_rng(1).standard_normal(z.shape)  # stays in the logit's range
    np.testing.assert_allclose(fl.forward(model, fl.inverse(model, z2))[0], z2, rtol=0, atol=1e-9)
    np.testing.assert_allclose(logdet[:2], fl.brute_logdet(model, x[:2]), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", sorted(SMALL_2D))
def test_2d_density_integrates_to_one_untrained_and_trained(name, fl):
    model = fl.randomize(SMALL_2D[name]().double(), seed=2, scale=0.2).eval()
    assert abs(fl.grid_integral(model) - 1.0) < 0.01
    model = SMALL_2D[name]()                                      # float32, as in training
    x = data.load("8gaussians", "train").x[:4096]
    before = -fl.log_probs(model, x[:1000]).mean()
    after = fl.train_briefly(model, x, steps=50)
    assert math.isfinite(after) and after < before - 0.3           # it did learn something
    assert abs(fl.grid_integral(model) - 1.0) < 0.01


def test_realnvp_puts_an_actnorm_after_each_image_coupling():
    from refgen.models.flows.actnorm import ActNorm
    from refgen.models.flows.coupling import AffineCoupling

    def count(model, cls):
        return sum(isinstance(m, cls) for m in model.modules())

    img = RealNVP((1, 4, 4), scales=2, hidden=4)
    assert count(img, AffineCoupling) == 3 + 3 + 4 == count(img, ActNorm)
    assert count(RealNVP((1, 4, 4), scales=2, hidden=4, actnorm=False), ActNorm) == 0
    assert count(RealNVP((2,), couplings=4, hidden=[8]), ActNorm) == 0   # vectors: as before
    # the first training batch sets every ActNorm, and the flow still inverts exactly after it
    x = np.random.default_rng(0).uniform(0.02, 0.98, (16, 1, 4, 4))
    img = img.double().train()
    with no_grad():
        z, _ = img.forward(Tensor(x))
        assert all(bool(m.initialized) for m in img.modules() if isinstance(m, ActNorm))
        np.testing.assert_allclose(to_numpy(img.inverse(z).data), x, rtol=0, atol=1e-9)


def test_image_models_at_mnist_size_score_and_sample():
    x = np.random.default_rng(0).uniform(0, 1, (2, 1, 28, 28)).astype(np.float32)
    for model in (NICE((1, 28, 28), couplings=2, hidden=8), RealNVP((1, 28, 28), hidden=8),
                  Glow((1, 28, 28), depth=2, hidden=8), MAF((1, 28, 28), layers=1, hidden=[32])):
        with no_grad():
            lp = to_numpy(model.log_prob(Tensor(x)).data)
        assert lp.shape == (2,) and lp.dtype == np.float32 and np.isfinite(lp).all()
        if not isinstance(model, MAF):                             # MAF: 784 passes, see test_maf
            s = model.sample(2, rng=default_rng(0))
            assert s.shape == (2, 1, 28, 28) and np.isfinite(to_numpy(s)).all()


@pytest.mark.parametrize("name", sorted(SMALL_2D))
def test_loss_sample_and_conventions(name):
    cls = CLASSES[name]
    assert cls.registry_name == name
    assert cls.data_spec.kinds == ("continuous",) and cls.data_spec.ndims == (1, 3)
    assert {"steps", "batch_size", "lr"} <= set(cls.default_train)
    assert getattr(cls, "demo", False) == (name in ("realnvp", "maf"))
    assert constructor_kwargs(cls, data_shape=(2,), num_classes=10, seed=3) == {"data_shape": (2,), "seed": 3}
    model = SMALL_2D[name]()
    x = Tensor(np.random.default_rng(0).standard_normal((8, 2)).astype(np.float32))
    loss = model.loss(Batch(x), default_rng(0))
    assert loss.dtype == np.float32 and math.isfinite(loss.item())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    s1, s2 = model.sample(4, rng=default_rng(5)), model.sample(4, rng=default_rng(5))
    assert s1.shape == (4, 2) and s1.dtype == np.float32
    np.testing.assert_array_equal(to_numpy(s1), to_numpy(s2))     # the noise is rng's alone
    with pytest.raises(TypeError, match="rng"):
        model.sample(4)                                           # no hidden generator
    cold = model.sample(4, rng=default_rng(5), temperature=0.0)
    np.testing.assert_allclose(to_numpy(cold), to_numpy(model.inverse(Tensor(np.zeros((1, 2), np.float32))).data)
                               .repeat(4, 0), atol=1e-6)
    # a generic temperature scales the base draw itself: x = f^-1(T z)
    warm = model.sample(4, rng=default_rng(5), temperature=0.6)
    z = model.base.sample((4, 2), default_rng(5), np.float32)
    with no_grad():
        want = model.inverse(Tensor(0.6 * z)).data
    np.testing.assert_allclose(to_numpy(warm), to_numpy(want), rtol=1e-5, atol=1e-6)


def test_logistic_base_density_and_sampler():
    """NICE's prior: log p(z) = sum_d log(sigmoid(z_d) (1 - sigmoid(z_d))) at generic z, a
    density integrating to 1 per dimension; its sampler's quantiles are logit(q)."""
    from refgen.models.flows.base import StandardLogistic
    base = StandardLogistic()
    z = np.array([[-2.3, 0.4, 1.7], [0.0, -0.9, 5.0]])
    s = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(to_numpy(base.log_prob(Tensor(z)).data),
                               np.log(s * (1 - s)).sum(1), rtol=1e-12)
    grid = np.linspace(-40, 40, 160001)[:, None]
    p = np.exp(to_numpy(base.log_prob(Tensor(grid)).data))
    assert abs(p.sum() * (grid[1, 0] - grid[0, 0]) - 1.0) < 1e-6
    draws = base.sample((200_000, 1), default_rng(0), np.float64)[:, 0]
    q = np.array([0.1, 0.3, 0.5, 0.8])
    np.testing.assert_allclose(np.quantile(to_numpy(draws), q), np.log(q / (1 - q)), atol=0.03)


def test_seeded_initialisation_is_reproducible():
    a, b, c = Glow((2,), seed=1), Glow((2,), seed=1), Glow((2,), seed=2)
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(to_numpy(v), to_numpy(b.state_dict()[k]))
    assert any(not np.array_equal(to_numpy(v), to_numpy(c.state_dict()[k]))
               for k, v in a.state_dict().items())


def test_a_checkpoint_restores_the_same_density():
    # actnorm's data-dependent init must not run again after loading (its flag is saved)
    x = Tensor(np.random.default_rng(0).standard_normal((16, 2)).astype(np.float32) * 3)
    a = Glow((2,), depth=2, hidden=[8], seed=1)
    a.log_prob(x)                                                  # initialises actnorm on x
    b = Glow((2,), depth=2, hidden=[8], seed=1)
    b.load_state_dict(a.state_dict())
    y = Tensor(to_numpy(x.data)[:4] + 1.0)
    np.testing.assert_array_equal(to_numpy(a.log_prob(y).data), to_numpy(b.log_prob(y).data))
