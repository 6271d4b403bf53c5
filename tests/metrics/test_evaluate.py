"""evaluate() picks the metrics that apply, with stand-in models whose answers are known."""
import dataclasses
import math

import numpy as np
import pytest

from refgen import data
from refgen.autograd import Tensor
from refgen.backend import asarray, to_numpy
from refgen.data import toy2d
from refgen.metrics import evaluate
from refgen.nn import Module


class TrueDensity(Module):
    """The data distribution itself: exact log p and exact samples of a toy2d data set."""

    def __init__(self, name):
        super().__init__()
        self.name = name

    def log_prob(self, x):
        return Tensor(toy2d.log_prob(self.name, to_numpy(x)))

    def sample(self, n, cond=None, *, rng):  # toy2d draws on the host: seed it from rng
        return asarray(toy2d.sample(self.name, n, np.random.default_rng(int(rng.integers(2 ** 31)))))


class LatentStandIn(Module):
    """elbo and iwae only, with known values: log p - 1 and log p - 1/k. Both name an
    ``rng``, as sampling estimators do, and note the first draw of each call's generator."""

    def __init__(self, name):
        super().__init__()
        self.name = name
        self.draws = []

    def _lp(self, x, rng):
        self.draws.append(float(to_numpy(rng.random())))
        return toy2d.log_prob(self.name, to_numpy(x))

    def elbo(self, x, *, rng):
        return Tensor(self._lp(x, rng) - 1.0)

    def iwae(self, x, k, *, rng):
        return Tensor(self._lp(x, rng) - 1.0 / k)


def test_true_density_on_8gaussians():
    ds = data.load("8gaussians", "test")
    model = TrueDensity("8gaussians")
    model.train()
    m = evaluate(model, ds, n_samples=2000)
    assert set(m) == {"test_nll_nats", "entropy_gap_nats", "modes_covered", "hq_fraction", "mmd"}
    lp = toy2d.log_prob("8gaussians", ds.x)
    se = lp.std() / math.sqrt(len(lp))  # the test-set mean is itself an estimate
    h, h_se = toy2d.entropy("8gaussians")
    assert m["test_nll_nats"] == pytest.approx(-lp.mean(), rel=1e-9)
    assert abs(m["entropy_gap_nats"]) < 4 * (se + h_se)
    assert m["modes_covered"] == 8
    assert abs(m["hq_fraction"] - (1 - math.exp(-4.5))) < 0.01
    assert abs(m["mmd"]) < 0.01
    assert model.training  # mode restored


def test_checkerboard_gap_is_exactly_zero_and_a_wrong_model_is_not():
    ds = data.load("checkerboard", "test")
    m = evaluate(TrueDensity("checkerboard"), ds, n_samples=500)
    assert set(m) == {"test_nll_nats", "entropy_gap_nats", "mmd"}  # no known modes
    assert m["entropy_gap_nats"] == pytest.approx(0.0, abs=1e-12)

    class Wrong(TrueDensity):  # a standard normal
        def log_prob(self, x):
            x = to_numpy(x)
            return Tensor(-0.5 * (x ** 2).sum(1) - math.log(2 * math.pi))

        def sample(self, n, cond=None, rng=None):
            return rng.standard_normal((n, 2))

    wrong = evaluate(Wrong("checkerboard"), ds, n_samples=500)
    assert wrong["entropy_gap_nats"] > 0.5
    assert wrong["mmd"] > m["mmd"]


def test_latent_variable_bounds_and_iwae_k():
    ds = data.load("8gaussians", "test")
    model = LatentStandIn("8gaussians")
    m = evaluate(model, ds, iwae_k=4, max_test=1000)
    assert set(m) == {"elbo_nats", "iwae_nats"}
    again = LatentStandIn("8gaussians")
    assert evaluate(again, ds, iwae_k=4, max_test=1000) == m
    assert model.draws == again.draws and len(set(model.draws)) == len(model.draws)  # one seeded stream
    lp = toy2d.log_prob("8gaussians", ds.x[:1000]).mean()
    assert m["elbo_nats"] == pytest.approx(lp - 1.0)
    assert m["iwae_nats"] == pytest.approx(lp - 0.25)


class UniformImages(Module):
    """Uniform on the data's pixel box (a density), or on 256 pixel levels (``levels`` set: a
    probability). Either way the 8-bit pixels cost exactly 8 bits/dim."""

    def __init__(self, lo, hi, levels=None):
        super().__init__()
        self.lo, self.hi, self.inputs = lo, hi, []
        if levels is not None:
            self.levels = levels

    def log_prob(self, x):
        x = to_numpy(x)
        self.inputs.append(x)
        per_dim = math.log(self.levels) if hasattr(self, "levels") else math.log(self.hi - self.lo)
        return Tensor(np.full(len(x), -x[0].size * per_dim))


@pytest.mark.parametrize("name,lo,hi,levels,bpd", [
    ("mnist-dequantized", 0.0, 1.0, None, 8.0),  # density on [0, 1]^D: (nll + D log 256) / D ln 2
    ("mnist", -1.0, 1.0, 256, 8.0),              # discrete model: nll / (D ln 2)
    ("mnist", -1.0, 1.0, None, None),            # density at grid points: no bits/dim
])
def test_bits_per_dim_conventions(mnist_dir, name, lo, hi, levels, bpd):
    ds = data.load(name, "test", data_dir=mnist_dir)
    model = UniformImages(lo, hi, levels)
    m = evaluate(model, ds, max_test=50)
    if bpd is None:
        assert set(m) == {"test_nll_nats"}
    else:
        assert set(m) == {"test_nll_nats", "test_bpd"}
        assert m["test_bpd"] == pytest.approx(bpd, abs=1e-9)
    np.testing.assert_array_equal(np.concatenate(model.inputs), ds.x[:50])  # data as given


class LinearDensity(Module):
    """p(x) = prod_d (1/2 + x_d) on [0, 1]^D (each factor integrates to 1); a model with
    ``levels`` reads the same numbers as log P of 256-level pixels."""

    def __init__(self, levels=None):
        super().__init__()
        if levels is not None:
            self.levels = levels

    def log_prob(self, x):
        x = to_numpy(x).reshape(len(x), -1)
        return Tensor(np.log(0.5 + np.abs(x)).sum(1))


@pytest.mark.parametrize("name,kind,levels", [("mnist-dequantized", "continuous", None),
                                              ("mnist", "continuous", 256),
                                              ("mnist", "continuous", None),
                                              ("mnist-binary", "binary", None)])
def test_bits_per_dim_conventions_on_synthetic_data(name, kind, levels):
    """The conventions of test_bits_per_dim_conventions without the MNIST files, at a generic
    density: [0, 1] densities pay D log 256 for the 8-bit pixels, discrete models and binary
    data give nll / (D ln 2), a density on the [-1, 1] grid has no bits/dim."""
    rng = np.random.default_rng(0)
    shape, n = (1, 4, 3), 30
    x = {"mnist-dequantized": (rng.integers(0, 256, (n,) + shape) + rng.random((n,) + shape)) / 256,
         "mnist": rng.integers(0, 256, (n,) + shape) / 127.5 - 1.0,
         "mnist-binary": (rng.random((n,) + shape) < 0.3) * 1.0}[name].astype(np.float32)
    ds = data.Dataset(name=name, split="test", x=x, y=rng.integers(0, 10, n), kind=kind,
                      shape=shape, num_classes=10)
    m = evaluate(LinearDensity(levels), ds, max_test=n)
    d = 12
    nll = -np.log(0.5 + np.abs(x.astype(np.float64))).reshape(n, -1).sum(1).mean()
    assert m["test_nll_nats"] == pytest.approx(nll, rel=1e-6)
    if name == "mnist-dequantized":
        assert m["test_bpd"] == pytest.approx((nll + d * math.log(256)) / (d * math.log(2)),
                                              rel=1e-6)
    elif levels is not None or kind == "binary":
        assert m["test_bpd"] == pytest.approx(nll / (d * math.log(2)), rel=1e-6)
    else:
        assert "test_bpd" not in m


def test_binary_bits_per_dim(mnist_dir):
    ds = data.load("mnist-binary", "test", data_dir=mnist_dir)

    class Bernoulli(Module):
        def log_prob(self, x):
            x = to_numpy(x).reshape(len(x), -1)
            p = 0.2
            return Tensor((x * math.log(p) + (1 - x) * math.log(1 - p)).sum(1))

    m = evaluate(Bernoulli(), ds, max_test=200)
    assert set(m) == {"test_nll_nats", "test_bpd"}
    assert m["test_bpd"] == pytest.approx(m["test_nll_nats"] / (784 * math.log(2)))


class ReplayDigits(Module):
    """A perfect class-conditional 'generator': it hands back real digits of a given class."""

    num_classes = 10

    def __init__(self, images, labels):
        super().__init__()
        self.images, self.labels = images, labels

    def sample(self, n, cond=None, rng=None):
        cond = to_numpy(cond)
        g = np.random.default_rng(int(to_numpy(rng.integers(0, 2**31))))
        out = np.empty((n, 1, 28, 28), dtype=np.float32)
        for c in np.unique(cond):  # loop over classes, not examples
            pool = np.flatnonzero(self.labels == c)
            where = np.flatnonzero(cond == c)
            out[where] = self.images[g.choice(pool, len(where), replace=False)]
        return out


def test_conditional_image_model_gets_fid_and_cond_accuracy(mnist_dir):
    test = data.load("mnist", "test", data_dir=mnist_dir)
    # a random split: the first and second 5,000 test digits come from different writers
    perm = np.random.default_rng(0).permutation(len(test.x))
    ref, pool = perm[:1000], perm[1000:]
    small_test = dataclasses.replace(test, x=test.x[ref], y=test.y[ref])
    pool_x, pool_y = test.x[pool], test.y[pool]  # other test digits than the reference
    model = ReplayDigits(pool_x, pool_y)
    m = evaluate(model, small_test, n_samples=1000)
    assert set(m) == {"fid_mnist", "fid_n_samples", "cond_accuracy", "kid_mnist", "kid_mnist_se",
                      "kid_n_samples", "precision", "recall", "pr_n_samples", "class_kl",
                      "class_kl_n_samples"}
    assert m["fid_n_samples"] == m["kid_n_samples"] == m["pr_n_samples"] == 1000
    assert m["class_kl_n_samples"] == 1000
    assert m["cond_accuracy"] >= 0.985
    # real digits against real digits: KID 0 within its s.e., both manifolds cover each other,
    # the balanced labels give a near-uniform class histogram
    assert abs(m["kid_mnist"]) < 3 * m["kid_mnist_se"], m
    assert m["precision"] > 0.8 and m["recall"] > 0.8, m
    assert m["class_kl"] < 0.01

    class Noisy(ReplayDigits):
        def sample(self, n, cond=None, rng=None):
            x = super().sample(n, cond, rng)
            return x + 0.5 * np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)

    bad = evaluate(Noisy(pool_x, pool_y), small_test, n_samples=1000)
    # 1,000 vs 1,000 real digits sit at the small-sample floor (~30); noise adds ~140
    assert m["fid_mnist"] < 0.35 * bad["fid_mnist"], (m, bad)
    assert bad["cond_accuracy"] < m["cond_accuracy"]
    assert bad["kid_mnist"] > 5 * bad["kid_mnist_se"], bad
    # noise shrinks the spread of the features (to 0.43 recall at 0.88 precision, against
    # 0.89 / 0.91 for clean digits): the noisy set no longer covers the data
    assert bad["recall"] < 0.6 * m["recall"], (m, bad)


class FirstFiveDigits(Module):
    """An unconditional 'generator' that drops half the modes: real digits 0-4 only."""

    def __init__(self, images):
        super().__init__()
        self.images = images

    def sample(self, n, cond=None, rng=None):
        g = np.random.default_rng(int(to_numpy(rng.integers(0, 2**31))))
        return self.images[g.choice(len(self.images), n, replace=False)]


def test_mode_dropping_shows_in_recall_and_class_kl_not_precision(mnist_dir):
    test = data.load("mnist", "test", data_dir=mnist_dir)
    perm = np.random.default_rng(0).permutation(len(test.x))
    ref, pool = perm[:1000], perm[1000:]
    small_test = dataclasses.replace(test, x=test.x[ref], y=test.y[ref])
    m = evaluate(FirstFiveDigits(test.x[pool][test.y[pool] < 5]), small_test, n_samples=1000)
    assert "cond_accuracy" not in m
    # five classes equally often: KL to uniform is log 10 - log 5 = log 2
    assert m["class_kl"] == pytest.approx(math.log(2), abs=0.03)
    assert m["precision"] > 0.8 and m["recall"] < 0.55, m
    assert m["kid_mnist"] > 10 * m["kid_mnist_se"], m


class DiscreteELBO(Module):
    """elbo only, as ddpm on images gives it: a bound on the log-probability of the 8-bit
    pixels, here exactly 256 levels per pixel and one nat of slack per image."""
    discrete = True

    def elbo(self, x):
        x = to_numpy(x)
        return Tensor(np.full(len(x), -x[0].size * math.log(256) - 1.0))


@pytest.mark.parametrize("name,bpd", [("mnist", 8.0 + 1.0 / (784 * math.log(2))),
                                      ("mnist-dequantized", None)])
def test_discrete_elbo_gives_bits_per_dim_on_8bit_pixels_only(mnist_dir, name, bpd):
    ds = data.load(name, "test", data_dir=mnist_dir)
    m = evaluate(DiscreteELBO(), ds, max_test=20)
    if bpd is None:   # a [0, 1] density bound is not a probability of the 8-bit pixels
        assert set(m) == {"elbo_nats"}
    else:
        assert set(m) == {"elbo_nats", "test_bpd"}
        assert m["test_bpd"] == pytest.approx(bpd, rel=1e-12)


def test_ddpm_on_images_declares_its_elbo_discrete():
    from refgen import models
    assert models.create("ddpm", data_shape=(1, 8, 8), channels=8, channel_mult=(1,),
                         num_res_blocks=1, groups=4).discrete is True
    assert models.create("ddpm", data_shape=(2,)).discrete is False


def test_few_or_non_finite_samples(mnist_dir):
    test = data.load("mnist", "test", data_dir=mnist_dir)
    small_test = dataclasses.replace(test, x=test.x[:50], y=test.y[:50])
    model = FirstFiveDigits(test.x[50:200])
    three = evaluate(model, small_test, n_samples=3)        # KID needs 3, precision/recall 4
    assert {"kid_mnist", "kid_mnist_se", "class_kl"} <= set(three)
    assert "precision" not in three and "pr_n_samples" not in three
    four = evaluate(model, small_test, n_samples=4)
    assert four["pr_n_samples"] == 4 and 0.0 <= four["precision"] <= 1.0

    class Broken(FirstFiveDigits):
        def sample(self, n, cond=None, rng=None):
            return np.full((n, 1, 28, 28), np.nan, dtype=np.float32)

    m = evaluate(Broken(test.x[:10]), small_test, n_samples=20)
    assert m["kid_n_samples"] == m["pr_n_samples"] == 20
    assert all(math.isnan(m[k]) for k in ("fid_mnist", "kid_mnist", "kid_mnist_se", "precision",
                                          "recall", "class_kl"))
