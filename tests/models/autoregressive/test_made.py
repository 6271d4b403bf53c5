"""MADE: degree masks, the autoregressive property, exact normalisation, sampling, ensembles."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import refgen.functional as F
from refgen.autograd import Tensor, no_grad
from refgen.models import create, get
from refgen.models.autoregressive import (MADE, ensemble_log_prob, ensemble_sample,
                                          made_degrees, made_masks)
from refgen.backend import default_rng, to_numpy, use_backend
from refgen.testing import check_vjp


def test_registered():
    assert get("made").__name__ == "MADEDensity"


def test_degree_rule():
    raw = made_degrees(5, [7, 6], order=[2, 0, 4, 1, 3], rng=np.random.default_rng(1))
    deg = [to_numpy(d) for d in raw]
    np.testing.assert_array_equal(deg[0], [2, 4, 1, 5, 3])  # order[r] gets degree r + 1
    for lower, upper in zip(deg[:-1], deg[1:]):
        assert upper.min() >= min(lower.min(), 4) and upper.max() <= 4  # in [min below, D-1]
    masks = [to_numpy(m) for m in made_masks(raw, out_per_dim=2)]
    assert [m.shape for m in masks] == [(7, 5), (6, 7), (10, 6)]
    # the product of the masks counts paths; input j reaches output d only if m(j) < m(d)
    paths = masks[2] @ masks[1] @ masks[0]                      # (D*K, D)
    out_deg = np.repeat(deg[0], 2)
    assert np.all(paths[out_deg[:, None] <= deg[0][None, :]] == 0)


@pytest.mark.parametrize("num_masks", [1, 3])
def test_autoregressive_property_through_autograd(ar, num_masks):
    """d params_{o(i)} / d x_{o(j)} is exactly 0 for j >= i and nonzero for j < i."""
    d = 6
    net = MADE(d, (48, 48), out_per_dim=2, num_masks=num_masks, order=[3, 1, 5, 0, 2, 4],
               rng=0, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((1, d))
    for m in range(num_masks):
        rank = np.empty(d, dtype=int)
        rank[net.orders[m]] = np.arange(d)  # rank[j] = position of x_j in ordering o_m
        for c in range(2):  # each parameter of the conditional
            jac = ar.input_jacobian(lambda t: net(t, mask=m)[:, :, c], x)   # (D_out, D_in)
            later = rank[None, :] >= rank[:, None]                        # x_j at or after x_i
            assert np.all(jac[later] == 0.0)
            assert np.all(jac[~later] > 0.0)  # every earlier input reaches it (48 units/layer)


def test_made_vjp_float64():
    with use_backend("numpy"):  # the finite differences run on NumPy: build the nets there
        net = MADE(4, (8,), out_per_dim=3, num_masks=2, rng=3, dtype=np.float64)
        ctx = MADE(4, (8,), out_per_dim=1, cond_features=2, rng=3, dtype=np.float64)
        x = np.random.default_rng(1).standard_normal((3, 4))
        c = np.random.default_rng(2).standard_normal((3, 2))
        check_vjp(lambda t: net(t, mask=1), [x])
        check_vjp(lambda t, u: ctx(t, context=u), [x, c])


@pytest.mark.parametrize("num_masks", [1, 4])
def test_exact_normalisation_on_3x3(ar, num_masks):
    """sum over all 512 binary 3x3 images of p(x) is 1, before and after some training."""
    x_all = ar.all_binary((1, 3, 3))
    model = create("made", data_shape=(1, 3, 3), seed=0, hidden=(32,), num_masks=num_masks)
    assert abs(np.exp(ar.log_probs(model, x_all)).sum() - 1.0) < 1e-5
    ar.train_briefly(model, ar.target_data(), steps=40)
    p = np.exp(ar.log_probs(model, x_all))
    assert abs(p.sum() - 1.0) < 1e-5
    assert p.max() > 10.0 / 512  # training moved mass onto the data's prototypes


def test_ensemble_is_log_mean_exp_of_masks(ar):
    model = create("made", data_shape=(1, 3, 3), seed=1, hidden=(32,), num_masks=3)
    ar.train_briefly(model, ar.target_data(), steps=20)
    x = ar.all_binary((1, 3, 3))[::7]
    with no_grad():
        per = np.stack([to_numpy(model.log_prob_mask(x, m)) for m in range(3)]).astype(np.float64)
        ens = to_numpy(model.log_prob(x))
    want = np.log(np.exp(per).mean(0))
    np.testing.assert_allclose(ens, want, rtol=1e-5, atol=1e-5)
    with no_grad():  # averaging logits instead would give a different (unnormalised) model
        logits = np.mean([to_numpy(model.net(F.reshape(Tensor(x), (len(x), 9)), mask=m))[..., 0]
                          for m in range(3)], axis=0)
    avg_logit = -np.sum(np.logaddexp(0, -np.where(x.reshape(len(x), 9) > 0, logits, -logits)), 1)
    assert np.max(np.abs(avg_logit - want)) > 1e-3


def test_ensemble_of_separate_models_is_a_normalised_mixture(ar):
    """Two MADEs trained apart (raster and reverse raster order): their log-mean-exp
    sums to 1 over the 512 configurations, lies between the members' mean and max log p
    (Jensen), and a model ensembled with itself is that model."""
    a = create("made", data_shape=(1, 3, 3), seed=3, hidden=(32,))
    b = create("made", data_shape=(1, 3, 3), seed=4, hidden=(32,), order="reverse")
    np.testing.assert_array_equal(to_numpy(b.net.orders[0]), np.arange(9)[::-1])
    for m in (a, b):
        ar.train_briefly(m, ar.target_data(), steps=40)
    x = ar.all_binary((1, 3, 3))
    with no_grad():
        ens = to_numpy(ensemble_log_prob([a, b], x)).astype(np.float64)
        self_ens = to_numpy(ensemble_log_prob([a, a], x)).astype(np.float64)
    la, lb = ar.log_probs(a, x), ar.log_probs(b, x)
    assert abs(np.exp(ens).sum() - 1.0) < 1e-5
    np.testing.assert_allclose(ens, np.log(0.5 * (np.exp(la) + np.exp(lb))), rtol=1e-5, atol=1e-5)
    assert np.all(ens >= 0.5 * (la + lb) - 1e-5) and np.all(ens <= np.maximum(la, lb) + 1e-5)
    assert np.max(np.abs(ens - la)) > 1e-2  # the second member changes the model
    np.testing.assert_allclose(self_ens, la, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="at least one"):
        ensemble_log_prob([], x)


@pytest.mark.parametrize("num_masks", [1, 3])
def test_samples_follow_log_prob(ar, num_masks):
    """Chi-square test of 20,000 samples against p(x) over the 512 configurations."""
    model = create("made", data_shape=(1, 3, 3), seed=2, hidden=(32,), num_masks=num_masks)
    ar.train_briefly(model, ar.target_data(), steps=40)
    p = np.exp(ar.log_probs(model, ar.all_binary((1, 3, 3))))
    s = model.sample(20000, rng=default_rng(123))
    assert s.shape == (20000, 1, 3, 3) and set(np.unique(s)) <= {0.0, 1.0}
    counts = np.bincount(ar.config_index(s), minlength=512)
    pval, dof = ar.chi_square_pvalue(counts, p)
    assert dof > 20 and pval > 1e-3, (pval, dof)


def test_gaussian_mixture_conditionals_normalise_in_2d():
    """Continuous data: p(x) integrates to 1 over a grid covering its mass, samples are finite."""
    model = create("made", data_shape=(2,), seed=0, hidden=(16,), components=3)
    assert model.likelihood == "gaussian"
    t = np.linspace(-8, 8, 321)
    xx, yy = np.meshgrid(t, t)
    pts = np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float32)
    with no_grad():
        p = np.exp(model.log_prob(pts).data.astype(np.float64))
    assert abs(p.sum() * (t[1] - t[0]) ** 2 - 1.0) < 1e-3
    s = model.sample(500, rng=default_rng(0))
    assert s.shape == (500, 2) and np.isfinite(s).all()


def test_bernoulli_rejects_continuous_data():
    from refgen.models.base import Batch
    model = create("made", data_shape=(1, 3, 3), seed=0, hidden=(8,))
    with pytest.raises(ValueError, match="binary"):
        model.loss(Batch(Tensor(np.full((2, 1, 3, 3), 0.5, np.float32))), np.random.default_rng(0))
    with pytest.raises(ValueError, match="likelihood"):
        create("made", data_shape=(2,), likelihood="poisson")
    assert math.isfinite(float(model.loss(Batch(Tensor(np.ones((2, 1, 3, 3), np.float32))), np.random.default_rng(0)).item()))


@given(d=st.integers(1, 9), hidden=st.lists(st.integers(1, 12), min_size=1, max_size=3),
       seed=st.integers(0, 2**16), k=st.integers(1, 3))
def test_masks_never_connect_a_dimension_to_itself_or_later(d, hidden, seed, k):
    """For any ordering and hidden sizes, the product of the masks (a count of paths) is zero
    from input j to the outputs of every dimension generated at or before j."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(d)
    deg = made_degrees(d, hidden, order=order, rng=rng)
    paths = np.eye(d)
    for m in made_masks(deg, out_per_dim=k):
        paths = to_numpy(m) @ paths                                 # (D*K, D) at the end
    rank = np.empty(d, dtype=int)
    rank[order] = np.arange(d)
    later = np.repeat(rank, k)[:, None] <= rank[None, :]
    assert np.all(paths[later] == 0)


def test_connectivity_agnostic_masks_share_the_natural_order(ar):
    model = create("made", data_shape=(1, 3, 3), seed=0, hidden=(32,), num_masks=3,
                   random_order=False)
    np.testing.assert_array_equal(to_numpy(model.net.orders), np.tile(np.arange(9), (3, 1)))
    first = to_numpy(model.net.layers[0].mask)
    assert not np.array_equal(first[0], first[1])          # different hidden degrees
    assert abs(np.exp(ar.log_probs(model, ar.all_binary((1, 3, 3)))).sum() - 1.0) < 1e-5


def test_order_option():
    """'random' is a permutation fixed by the seed and mask set 0 follows it; an unknown
    name is refused."""
    a, b = (create("made", data_shape=(1, 3, 3), seed=s, hidden=(16,), order="random")
            for s in (5, 5))
    c = create("made", data_shape=(1, 3, 3), seed=6, hidden=(16,), order="random")
    np.testing.assert_array_equal(a.net.orders[0], b.net.orders[0])
    assert sorted(a.net.orders[0].tolist()) == list(range(9))
    assert not np.array_equal(a.net.orders[0], c.net.orders[0])
    with pytest.raises(ValueError, match="order must be"):
        create("made", data_shape=(1, 3, 3), order="spiral")


def test_ensemble_samples_follow_the_mixture(ar):
    """Chi-square test of 20,000 mixture samples against exp(ensemble_log_prob)."""
    a = create("made", data_shape=(1, 3, 3), seed=3, hidden=(32,))
    b = create("made", data_shape=(1, 3, 3), seed=4, hidden=(32,), order="reverse")
    ar.train_briefly(a, ar.target_data(), steps=40)
    ar.train_briefly(b, ar.target_data(seed=1), steps=40)  # a different target: a real mixture
    with no_grad():
        p = np.exp(to_numpy(ensemble_log_prob([a, b], ar.all_binary((1, 3, 3)))).astype(np.float64))
    s = to_numpy(ensemble_sample([a, b], 20000, rng=default_rng(5)))
    assert s.shape == (20000, 1, 3, 3)
    counts = np.bincount(ar.config_index(s), minlength=512)
    pval, dof = ar.chi_square_pvalue(counts, p / p.sum())
    assert dof > 20 and pval > 1e-3, (pval, dof)


def test_image_evaluation_draws_1000_samples():
    """One pass per pixel: evaluate() draws 1,000 samples of an image MADE for its FID, not
    its default 10,000; 2D data keeps the default."""
    from refgen.data import Dataset
    from refgen.metrics import evaluate
    x = (np.random.default_rng(0).random((8, 1, 14, 14)) < 0.3).astype(np.float32)
    ds = Dataset("mnist-binary", "test", x, None, "binary", (1, 14, 14), value_range=(0.0, 1.0))
    out = evaluate(create("made", data_shape=ds.shape, seed=0, hidden=(16,)), ds)
    assert out["fid_n_samples"] == 1000 and np.isfinite(out["fid_mnist"])
    assert not hasattr(create("made", data_shape=(2,), seed=0, hidden=(8,)), "eval_samples")
