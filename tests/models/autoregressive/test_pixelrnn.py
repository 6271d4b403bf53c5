"""PixelRNN: skewing, causality of both LSTM variants, exact normalisation, sampling."""
import numpy as np
import pytest

from refgen.autograd import Tensor, no_grad
from refgen.backend import default_rng, to_numpy
from refgen.models import create, get
from refgen.models.autoregressive import skew, unskew
from refgen.testing import check_grads

pytestmark = pytest.mark.usefixtures("numpy_backend")

SMALL = dict(hidden=4, layers=2, first_kernel=3, head_channels=8)


def _model(variant, shape=(1, 3, 3), **kw):
    m = create("pixelrnn", data_shape=shape, seed=3, variant=variant, **{**SMALL, **kw})
    return m.double()


def test_registered_with_its_variants():
    assert get("pixelrnn").__name__ == "PixelRNN"
    with pytest.raises(ValueError, match="variant must be 'row' or 'diagonal'"):
        create("pixelrnn", data_shape=(1, 3, 3), variant="column")
    with pytest.raises(ValueError, match="one-channel"):
        create("pixelrnn", data_shape=(3, 3, 3))


def test_skew_places_row_i_shifted_by_i_and_unskew_inverts_it():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    s = to_numpy(skew(Tensor(x)).data)
    assert s.shape == (2, 3, 4, 5 + 4 - 1)
    want = np.zeros_like(s)
    for i in range(4):
        want[:, :, i, i:i + 5] = x[:, :, i]
    np.testing.assert_array_equal(s, want)
    np.testing.assert_array_equal(to_numpy(unskew(Tensor(s), 5).data), x)
    # the columns of the skewed map are the image's anti-diagonals i + j = t, rows i
    t = 4
    np.testing.assert_array_equal(s[0, 0, :, t], [x[0, 0, i, t - i] if 0 <= t - i < 5 else 0 for i in range(4)])


def test_skew_and_unskew_gradients():
    check_grads(lambda t: skew(t), [np.random.default_rng(1).standard_normal((1, 2, 3, 4))], order=2)
    check_grads(lambda t: unskew(t, 4), [np.random.default_rng(2).standard_normal((1, 2, 3, 6))], order=2)


def _jacobian(ar, model, shape):
    n = int(np.prod(shape))
    x0 = np.random.default_rng(0).random((1, n))

    def f(t):
        return model.logits(t.reshape(1, *shape))[:, :, 0].reshape(1, n)
    return ar.input_jacobian(f, x0)


@pytest.mark.parametrize("variant", ["row", "diagonal"])
def test_no_pixel_sees_itself_or_its_future(ar, variant):
    """d logit_i / d x_j == 0 exactly for every j >= i in raster order."""
    shape = (1, 5, 6)
    jac = _jacobian(ar, _model(variant, shape), shape)
    future = np.arange(30)[None, :] >= np.arange(30)[:, None]
    assert np.all(jac[future] == 0.0)
    assert np.all(jac[~future & (jac > 0)] > 0)     # and it does see something earlier
    assert (jac[~future] > 0).mean() > 0.5


@pytest.mark.parametrize("layers", [1, 2])
def test_diagonal_bilstm_context_is_every_earlier_pixel_but_one(ar, layers):
    """Every j < i reaches output i (the right-to-left pass, shifted down, brings the rows
    above; the left-to-right pass the pixels to the left), with one exception at any depth:
    the last pixel of the row above, x(r - 1, W - 1), enters features only at row r
    (a feature never sees its own pixel), so pixel (r, c) sees it only through the first
    convolution's reach, c >= W - 1 - first_kernel // 2."""
    shape, w, k = (1, 5, 6), 6, 3
    jac = _jacobian(ar, _model("diagonal", shape, layers=layers, first_kernel=k), shape)
    i, j = np.arange(30)[:, None], np.arange(30)[None, :]
    earlier = j < i
    r, c = np.divmod(i, w)
    corner = (j == (r - 1) * w + (w - 1)) & (c < w - 1 - k // 2)
    np.testing.assert_array_equal(jac > 0, earlier & ~corner)


def test_row_lstm_context_is_the_triangle_above(ar):
    """Row LSTM, one layer, 1x1 first convolution: pixel (r, c) sees the pixels to its left
    on its row (the masked 1 x 3 input-to-state conv needs a first conv to pass the row on,
    here none: only c - 1) and the rows above within |dc| <= dr (k = 3 state-to-state)."""
    shape = (1, 5, 6)
    m = _model("row", shape, layers=1, first_kernel=1)
    jac = _jacobian(ar, m, shape)
    rows, cols = np.divmod(np.arange(30), 6)
    # the type A 1x1 first conv sees nothing of the image: no context at all
    assert not jac.any()
    m = _model("row", shape, layers=1, first_kernel=3)
    jac = _jacobian(ar, m, shape)
    dr = rows[:, None] - rows[None, :]       # output row - input row
    dc = cols[None, :] - cols[:, None]       # input column - output column
    # first conv (3x3 A): offsets (0, -1), (-1, -1..1); input-to-state 1x3 B: columns -1, 0;
    # state-to-state: one row up, columns -1..1 per step
    reach = np.zeros((30, 30), bool)
    base = {(0, -1), (1, -1), (1, 0), (1, 1)}       # (rows up, column shift) of the A conv
    for (up, sh) in base:
        for ist in (-1, 0):
            for steps in range(0, 5):
                reach |= (dr == up + steps) & (np.abs(dc - sh - ist) <= steps)
    np.testing.assert_array_equal(jac > 0, reach)


@pytest.mark.parametrize("variant", ["row", "diagonal"])
def test_normalises_over_all_binary_3x3_images(ar, variant):
    m = _model(variant)
    lp = ar.log_probs(m, ar.all_binary((1, 3, 3)).astype(np.float64))
    assert abs(np.exp(lp).sum() - 1.0) < 1e-10
    assert lp.std() > 0.05                     # not the uniform distribution


@pytest.mark.parametrize("variant", ["row", "diagonal"])
def test_categorical_output_normalises(variant):
    """levels=3 on 2x2 images: the 3^4 = 81 images in {-1, 0, 1} sum to probability 1."""
    m = _model(variant, (1, 2, 2), levels=3)
    grid = np.stack(np.meshgrid(*[[-1.0, 0.0, 1.0]] * 4, indexing="ij"), -1).reshape(-1, 1, 2, 2)
    with no_grad():
        lp = to_numpy(m.log_prob(Tensor(grid)).data)
    assert abs(np.exp(lp).sum() - 1.0) < 1e-10


def test_levels_256_output_shape_and_values():
    m = _model("row", (1, 3, 4), levels=256)
    x = np.random.default_rng(0).integers(0, 256, (2, 1, 3, 4)) / 255.0 * 2 - 1
    with no_grad():
        lg = m.logits(Tensor(x))
        lp = to_numpy(m.log_prob(Tensor(x)).data)
    assert lg.shape == (2, 1, 256, 3, 4)
    assert np.all(lp < 0) and np.all(np.isfinite(lp))


def test_samples_follow_log_prob(ar):
    """Diagonal BiLSTM, trained a little: samples' frequencies over the 512 images against
    exp(log_prob) by chi-square (the sampler runs the network on the rows drawn so far)."""
    m = _model("diagonal")
    ar.train_briefly(m, ar.target_data(shape=(1, 3, 3)).astype(np.float64), steps=30)
    p = np.exp(ar.log_probs(m, ar.all_binary((1, 3, 3)).astype(np.float64)))
    s = m.sample(3000, rng=default_rng(1))
    counts = np.bincount(ar.config_index(s), minlength=512)
    pval, _ = ar.chi_square_pvalue(counts, p)
    assert pval > 1e-3


def test_rejects_non_binary_data_for_levels_2():
    m = _model("row")
    with pytest.raises(ValueError, match="binary"):
        m.log_prob(Tensor(np.full((1, 1, 3, 3), 0.5)))
