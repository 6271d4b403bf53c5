"""PixelCNN and Gated PixelCNN: masks, receptive fields (the blind spot and its fix),
exact normalisation on small domains, sampling against log_prob."""
import numpy as np
import pytest

import refgen.functional as F
from refgen.autograd import Tensor
from refgen.models import create, get
from refgen.models.autoregressive import pixelcnn_mask
from refgen.backend import default_rng, to_numpy, use_backend
from refgen.testing import check_vjp

SMALL = {"pixelcnn": dict(channels=8, blocks=2, head_channels=8),
         "gated-pixelcnn": dict(channels=8, layers=3, first_kernel=7, head_channels=8)}


def _logit_jacobian(ar, model, shape):
    """|d logit(x)[pos i] / d x[pos j]| over flattened (C, H, W) positions, float64."""
    model.double()
    n = int(np.prod(shape))
    x0 = np.random.default_rng(0).random((1, n))

    def f(t):
        lg = model.logits(t.reshape(1, *shape))                      # (1, C, K, H, W)
        return lg[:, :, 0].reshape(1, n)
    return ar.input_jacobian(f, x0)


def test_registered():
    assert get("pixelcnn").__name__ == "PixelCNN"
    assert get("gated-pixelcnn").__name__ == "GatedPixelCNN"


def test_mask_types():
    a = to_numpy(pixelcnn_mask(1, 1, 3, 3, "A")[0, 0])
    b = to_numpy(pixelcnn_mask(1, 1, 3, 3, "B")[0, 0])
    np.testing.assert_array_equal(a, [[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(b, [[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    # colour groups at the centre: A lets G see R and B see R, G; B adds each group itself
    ca = to_numpy(pixelcnn_mask(3, 3, 1, 1, "A", data_channels=3)[:, :, 0, 0])
    cb = to_numpy(pixelcnn_mask(3, 3, 1, 1, "B", data_channels=3)[:, :, 0, 0])
    np.testing.assert_array_equal(ca, np.tril(np.ones((3, 3)), -1))
    np.testing.assert_array_equal(cb, np.tril(np.ones((3, 3))))


def _reachable_offsets(model):
    """Offsets (dr, dc) a stack of masked convs can carry information over: the Minkowski sum
    of each layer's kernel taps (residual paths add nothing: type B holds the centre)."""
    reach = {(0, 0)}
    for conv in [model.input_conv] + [b.conv for b in model.blocks]:
        m = np.asarray(conv.mask)[0, 0]
        k = m.shape[0] // 2
        taps = {(int(r) - k, int(c) - k) for r, c in zip(*np.nonzero(m))}
        reach = {(a + p, b + q) for a, b in reach for p, q in taps}
    return reach


def test_pixelcnn_blind_spot_is_exactly_the_predicted_one(ar):
    """Plain PixelCNN: the gradient is zero for every j >= i, and for j < i it is nonzero
    exactly on the left-leaning cone of the stacked masks. The pixels above and to the right
    outside that cone are the blind spot: earlier in raster order, yet never seen."""
    model = create("pixelcnn", data_shape=(1, 5, 6), seed=0, channels=8, blocks=2,
                   first_kernel=3, kernel=3, head_channels=8)
    jac = _logit_jacobian(ar, model, (1, 5, 6))
    reach = _reachable_offsets(model)
    rows, cols = np.divmod(np.arange(30), 6)
    predicted = np.array([[(rows[j] - rows[i], cols[j] - cols[i]) in reach for j in range(30)]
                          for i in range(30)])
    earlier = np.arange(30)[None, :] < np.arange(30)[:, None]
    assert not np.any(predicted & ~earlier)            # the masks are autoregressive
    np.testing.assert_array_equal(jac > 0, predicted)  # autograd agrees with the cone exactly
    blind = earlier & ~predicted
    assert blind.any()
    # e.g. pixel (3, 0) never sees (2, 4): one row up, four columns right
    assert blind[3 * 6 + 0, 2 * 6 + 4]


def test_gated_pixelcnn_sees_every_earlier_pixel(ar):
    model = create("gated-pixelcnn", data_shape=(1, 5, 5), seed=0, channels=8, layers=3,
                   head_channels=16)
    jac = _logit_jacobian(ar, model, (1, 5, 5))
    earlier = np.arange(25)[None, :] < np.arange(25)[:, None]
    assert np.all(jac[~earlier] == 0.0)   # j >= i: exactly zero
    assert np.all(jac[earlier] > 0.0)     # j < i: every one reaches i (no blind spot)


@pytest.mark.parametrize("k,layers,size", [(3, 1, 5), (11, 1, 5), (3, 2, 7), (5, 3, 9)])
def test_gated_receptive_field(ar, k, layers, size):
    """A k x k first layer (r = k//2) and then L - 1 3x3 layers see exactly r + L rows above,
    r + L - 1 columns either side of them, and r + L - 1 pixels to the left: one layer sees
    r + 1 rows (the vertical kernel's r and its own, shifted down one), and each 3x3 layer
    adds a row, a column each side and a pixel to the left. So the reach of a shallow stack is
    set by its first layer: the benchmark's 27 on 28x28 sees 14 rows above from layer one.
    A first kernel wider than the image (11 on 5x5) is still exactly autoregressive, and then
    one layer alone sees every earlier pixel."""
    n = size * size
    model = create("gated-pixelcnn", data_shape=(1, size, size), seed=0, channels=8,
                   layers=layers, first_kernel=k, head_channels=16)
    jac = _logit_jacobian(ar, model, (1, size, size))                 # (n out, n in)
    rows, cols = np.divmod(np.arange(n), size)
    dr, dc = rows[None, :] - rows[:, None], cols[None, :] - cols[:, None]
    r, grow = k // 2, layers - 1
    reach = (((dr < 0) & (-dr <= r + 1 + grow) & (np.abs(dc) <= r + grow))
             | ((dr == 0) & (dc < 0) & (-dc <= r + grow)))
    earlier = np.arange(n)[None, :] < np.arange(n)[:, None]
    assert np.all(jac[~earlier] == 0.0)
    np.testing.assert_array_equal(jac > 0, reach)
    assert np.array_equal(reach, earlier) == (k == 11)   # only 11 on 5x5 covers the whole past


def test_colour_channels_are_ordered_within_a_pixel(ar):
    # wide enough that no colour group's ReLUs are all off at a pixel (which would cut a path)
    model = create("pixelcnn", data_shape=(3, 2, 2), seed=1, channels=48, blocks=1,
                   first_kernel=3, head_channels=24)
    jac = _logit_jacobian(ar, model, (3, 2, 2))          # positions flattened (C, H, W)
    c, pix = np.divmod(np.arange(12), 4)
    rank = pix * 3 + c                                    # raster order: pixel, then R, G, B
    later = rank[None, :] >= rank[:, None]
    assert np.all(jac[later] == 0.0)
    assert np.all(jac[~later] > 0.0)
    # and the 4096 configurations of (3, 2, 2) sum to one
    p = np.exp(ar.log_probs(model.float(), ar.all_binary((3, 2, 2))))
    assert abs(p.sum() - 1.0) < 1e-5


@pytest.mark.parametrize("name", ["pixelcnn", "gated-pixelcnn"])
def test_exact_normalisation_on_3x3(ar, name):
    x_all = ar.all_binary((1, 3, 3))
    model = create(name, data_shape=(1, 3, 3), seed=0, **SMALL[name])
    assert abs(np.exp(ar.log_probs(model, x_all)).sum() - 1.0) < 1e-5
    ar.train_briefly(model, ar.target_data(), steps=25)
    p = np.exp(ar.log_probs(model, x_all))
    assert abs(p.sum() - 1.0) < 1e-5
    assert p.max() > 10.0 / 512


@pytest.mark.parametrize("name", ["pixelcnn", "gated-pixelcnn"])
def test_categorical_levels_normalise(ar, name):
    """levels=4 on 2x2 images: 4^4 = 256 configurations of data in [-1, 1]."""
    model = create(name, data_shape=(1, 2, 2), seed=0, levels=4, **SMALL[name])
    k = np.stack(np.meshgrid(*[np.arange(4)] * 4, indexing="ij"), -1).reshape(-1, 1, 2, 2)
    x = (k * (2.0 / 3) - 1).astype(np.float32)
    p = np.exp(ar.log_probs(model, x))
    assert abs(p.sum() - 1.0) < 1e-5
    s = model.sample(50, rng=default_rng(0))
    assert set(np.round((s + 1) * 1.5, 5).ravel()) <= {0.0, 1.0, 2.0, 3.0}


@pytest.mark.parametrize("name", ["pixelcnn", "gated-pixelcnn"])
def test_samples_follow_log_prob(ar, name):
    model = create(name, data_shape=(1, 3, 3), seed=2, **SMALL[name])
    ar.train_briefly(model, ar.target_data(), steps=25)
    p = np.exp(ar.log_probs(model, ar.all_binary((1, 3, 3))))
    s = model.sample(8000, rng=default_rng(7))
    counts = np.bincount(ar.config_index(s), minlength=512)
    pval, dof = ar.chi_square_pvalue(counts, p)
    assert dof > 10 and pval > 1e-3, (pval, dof)


def test_bad_data_is_refused_in_one_line():
    from refgen.models.base import Batch
    model = create("pixelcnn", data_shape=(1, 3, 3), **SMALL["pixelcnn"])
    with pytest.raises(ValueError, match="levels=256"):
        model.loss(Batch(Tensor(np.full((2, 1, 3, 3), 0.5, np.float32))), np.random.default_rng(0))
    with pytest.raises(ValueError, match="one-channel"):
        create("gated-pixelcnn", data_shape=(3, 4, 4))


def test_layers_vjp_float64():
    from refgen.models.autoregressive import GatedLayer, MaskedConv2d
    with use_backend("numpy"):  # check_vjp differentiates on NumPy: build the layers there
        rng = np.random.default_rng(0)
        conv = MaskedConv2d(2, 4, 3, "B", rng=0, dtype=np.float64)
        check_vjp(conv, [rng.standard_normal((2, 2, 4, 4))])
        for first in (True, False):
            layer = GatedLayer(4, 4, 3, first=first, rng=0).double()
            check_vjp(lambda v, h: F.stack(layer(v, h), 0),
                      [rng.standard_normal((2, 4, 4, 4)), rng.standard_normal((2, 4, 4, 4))])


def _levels4_all():
    k = np.stack(np.meshgrid(*[np.arange(4)] * 4, indexing="ij"), -1).reshape(-1, 1, 2, 2)
    return (k * (2.0 / 3) - 1).astype(np.float32)


def test_one_hot_input_normalises_and_samples_its_levels(ar):
    model = create("pixelcnn", data_shape=(1, 2, 2), seed=0, levels=4, one_hot=True,
                   **SMALL["pixelcnn"])
    assert model.input_conv.weight.shape[1] == 4            # one input channel per level
    x = _levels4_all()
    assert abs(np.exp(ar.log_probs(model, x)).sum() - 1.0) < 1e-5
    ar.train_briefly(model, np.repeat(x[:3], 30, 0), steps=25)
    p = np.exp(ar.log_probs(model, x))
    assert abs(p.sum() - 1.0) < 1e-5 and p[:3].sum() > 10 * 3 / 256   # it learned something
    s = model.sample(50, rng=default_rng(0))
    assert set(np.round((s + 1) * 1.5, 5).ravel()) <= {0.0, 1.0, 2.0, 3.0}


def test_one_hot_logits_see_only_earlier_cells():
    """With one-hot input the gradient path to the data is cut, so check the autoregressive
    property by perturbation: changing cell j moves the logits of cell i only when j < i."""
    model = create("pixelcnn", data_shape=(1, 3, 3), seed=1, levels=5, one_hot=True,
                   **SMALL["pixelcnn"])
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 5, (1, 1, 3, 3)) * 0.5 - 1).astype(np.float32)
    base = model.logits(Tensor(x)).data.reshape(5, 9)          # (K, cells)
    for j in range(9):
        y = x.copy().reshape(9)
        y[j] = -1.0 if y[j] != -1.0 else 1.0                    # another level at cell j
        moved = np.abs(model.logits(Tensor(y.reshape(1, 1, 3, 3))).data.reshape(5, 9) - base).max(0)
        assert np.all(moved[:j + 1] == 0.0), (j, moved)         # cells i <= j do not see j
        if j < 8:
            assert moved[j + 1:].max() > 0, j                   # and later cells do


def test_one_hot_reads_levels_as_categories_not_numbers():
    """Keep only the first layer's weights from level 2's input channel: through the model's
    own logits, a later cell then tells 'cell 0 is level 2' apart from every other level,
    and cannot tell levels 0, 1 and 3 apart. Read as intensities, 0, 1 and 3 would differ."""
    with pytest.raises(ValueError, match="levels > 2"):
        create("pixelcnn", data_shape=(1, 2, 2), levels=2, one_hot=True)
    model = create("pixelcnn", data_shape=(1, 2, 2), seed=0, levels=4, one_hot=True,
                   **SMALL["pixelcnn"])
    w = model.input_conv.weight.data
    keep = np.zeros_like(w)
    keep[:, 2] = w[:, 2]
    model.input_conv.weight.data = keep
    x = np.full((4, 1, 2, 2), -1.0, np.float32)
    x[:, 0, 0, 0] = np.arange(4) * (2.0 / 3) - 1                    # cell 0 at levels 0..3
    later = model.logits(Tensor(x)).data[:, 0, :, 0, 1]             # (4 levels, K) at cell 1
    np.testing.assert_array_equal(later[0], later[1])
    np.testing.assert_array_equal(later[0], later[3])
    assert np.abs(later[2] - later[0]).max() > 1e-4


def test_evaluation_draws_few_samples():
    """Sampling costs H * W passes: evaluate() must not draw its default 10,000 (hours on a
    28x28 model); the pixel models ask for 100, and the FID is computed from them."""
    from refgen.data import Dataset
    from refgen.metrics import evaluate
    x = (np.random.default_rng(0).random((8, 1, 14, 14)) < 0.3).astype(np.float32)
    ds = Dataset("mnist-binary", "test", x, None, "binary", (1, 14, 14), value_range=(0.0, 1.0))
    model = create("gated-pixelcnn", data_shape=ds.shape, seed=0, **SMALL["gated-pixelcnn"])
    out = evaluate(model, ds)
    assert out["fid_n_samples"] == 100 and np.isfinite(out["fid_mnist"])
