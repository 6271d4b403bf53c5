"""conv2d, conv_transpose2d, pools and interpolate against direct nested-loop definitions,
plus first- and second-order gradient checks."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import refgen
import refgen.functional as F
from refgen.functional import conv as conv_module
from refgen.testing import check_grads, on_backend



# --- direct definitions (loops over output positions and kernel offsets) -------------------

def ref_conv2d(x, w, b, stride, padding, dilation, groups):
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    og = o // groups
    y = np.zeros((n, o, ho, wo))
    for g in range(groups):
        xs, os_ = slice(g * cg, (g + 1) * cg), slice(g * og, (g + 1) * og)
        for r in range(ho):
            for q in range(wo):
                for i in range(kh):
                    for j in range(kw):
                        hh, ww = r * sh - ph + i * dh, q * sw - pw + j * dw
                        if 0 <= hh < h and 0 <= ww < wd:
                            y[:, os_, r, q] += x[:, xs, hh, ww] @ w[os_, :, i, j].T
    if b is not None:
        y += b[None, :, None, None]
    return y


def ref_conv_transpose2d(x, w, b, stride, padding, output_padding, groups, dilation):
    """Scatter form: each input pixel adds its kernel-weighted copy into the output."""
    (sh, sw), (ph, pw), (oh, ow), (dh, dw) = stride, padding, output_padding, dilation
    n, c, h, wd = x.shape
    _, cog, kh, kw = w.shape
    ho = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oh + 1
    wo = (wd - 1) * sw - 2 * pw + dw * (kw - 1) + ow + 1
    cg = c // groups
    y = np.zeros((n, cog * groups, ho, wo))
    for g in range(groups):
        xs, ys = slice(g * cg, (g + 1) * cg), slice(g * cog, (g + 1) * cog)
        for r in range(h):
            for q in range(wd):
                for i in range(kh):
                    for j in range(kw):
                        hh, ww = r * sh - ph + i * dh, q * sw - pw + j * dw
                        if 0 <= hh < ho and 0 <= ww < wo:
                            y[:, ys, hh, ww] += x[:, xs, r, q] @ w[xs, :, i, j]
    if b is not None:
        y += b[None, :, None, None]
    return y


def ref_pool(x, k, s, p, reduce, pad_value):
    n, c, h, w = x.shape
    xpad = np.full((n, c, h + 2 * p[0], w + 2 * p[1]), pad_value)
    xpad[:, :, p[0]:p[0] + h, p[1]:p[1] + w] = x
    ho = (h + 2 * p[0] - k[0]) // s[0] + 1
    wo = (w + 2 * p[1] - k[1]) // s[1] + 1
    y = np.zeros((n, c, ho, wo))
    for r in range(ho):
        for q in range(wo):
            y[:, :, r, q] = reduce(xpad[:, :, r * s[0]:r * s[0] + k[0], q * s[1]:q * s[1] + k[1]], axis=(2, 3))
    return y


def ref_nearest(x, size):
    n, c, h, w = x.shape
    y = np.zeros((n, c) + tuple(size))
    for r in range(size[0]):
        for q in range(size[1]):
            y[:, :, r, q] = x[:, :, (r * h) // size[0], (q * w) // size[1]]
    return y


# --- strategies ----------------------------------------------------------------------------

@st.composite
def conv_configs(draw, transpose=False):
    """A small conv geometry whose output is at least 1x1, with every knob in play."""
    groups = draw(st.integers(1, 2))
    cfg = dict(groups=groups, n=draw(st.integers(1, 2)),
               cin=groups * draw(st.integers(1, 2)), cout=groups * draw(st.integers(1, 2)))
    axes = []
    for _ in range(2):
        k, s, d = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
        p = draw(st.integers(0, 2))
        if transpose:
            p = min(p, (d * (k - 1)) // 2)  # keeps the output size positive for 1-pixel inputs
            n = draw(st.integers(1, 4))
            op = draw(st.integers(0, max(s, d) - 1))
        else:
            n = draw(st.integers(max(1, d * (k - 1) + 1 - 2 * p), d * (k - 1) + 5))
            op = 0
        axes.append((k, s, d, p, n, op))
    for name, i in [("kernel", 0), ("stride", 1), ("dilation", 2), ("padding", 3), ("size", 4),
                    ("output_padding", 5)]:
        cfg[name] = (axes[0][i], axes[1][i])
    cfg["bias"] = draw(st.booleans())
    return cfg


def conv_arrays(cfg, rng, transpose=False):
    kh, kw = cfg["kernel"]
    x = rng.standard_normal((cfg["n"], cfg["cin"]) + cfg["size"])
    if transpose:
        w = rng.standard_normal((cfg["cin"], cfg["cout"] // cfg["groups"], kh, kw))
    else:
        w = rng.standard_normal((cfg["cout"], cfg["cin"] // cfg["groups"], kh, kw))
    b = rng.standard_normal(cfg["cout"]) if cfg["bias"] else None
    return x, w, b


def conv_call(cfg):
    return lambda x, w, b=None: F.conv2d(x, w, b, cfg["stride"], cfg["padding"], cfg["dilation"],
                                         cfg["groups"])


def conv_t_call(cfg):
    return lambda x, w, b=None: F.conv_transpose2d(x, w, b, cfg["stride"], cfg["padding"],
                                                   cfg["output_padding"], cfg["groups"],
                                                   cfg["dilation"])


# --- conv2d --------------------------------------------------------------------------------

@given(conv_configs(), st.integers(0, 2**32 - 1))
def test_conv2d_matches_direct_definition(cfg, seed):
    x, w, b = conv_arrays(cfg, np.random.default_rng(seed))
    y = conv_call(cfg)(refgen.tensor(x), refgen.tensor(w), None if b is None else refgen.tensor(b))
    want = ref_conv2d(x, w, b, cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"])
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-10, atol=1e-10)


@given(conv_configs(), st.integers(0, 2**32 - 1))
def test_conv2d_gradients_and_double_backward(cfg, seed):
    x, w, b = conv_arrays(cfg, np.random.default_rng(seed))
    check_grads(conv_call(cfg), [x, w] + ([] if b is None else [b]), rng=np.random.default_rng(seed))


def test_conv2d_input_gradient_is_conv_transpose2d():
    rng = np.random.default_rng(0)
    x = refgen.tensor(rng.standard_normal((2, 4, 9, 8)), requires_grad=True)
    w = refgen.tensor(rng.standard_normal((6, 2, 3, 3)))
    y = F.conv2d(x, w, stride=2, padding=1, groups=2)
    gy = rng.standard_normal(y.shape)
    (gx,) = refgen.grad(y, [x], refgen.tensor(gy))
    # output_padding recovers the odd input height 9 (stride 2 maps 9 and 10 to the same 5)
    want = F.conv_transpose2d(refgen.tensor(gy), w, stride=2, padding=1, output_padding=(0, 1), groups=2)
    assert want.shape == x.shape
    np.testing.assert_allclose(gx.numpy(), want.numpy(), rtol=1e-12, atol=1e-12)


def test_conv2d_float32_stays_float32():
    rng = np.random.default_rng(0)
    x = refgen.tensor(rng.standard_normal((2, 3, 6, 6)).astype(np.float32), requires_grad=True)
    w = refgen.tensor(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), requires_grad=True)
    b = refgen.tensor(np.zeros(4, np.float32), requires_grad=True)
    y = F.conv2d(x, w, b, padding=1)
    assert y.dtype == np.float32
    y.backward(refgen.tensor(np.ones(y.shape, np.float32)))
    assert x.grad.dtype == w.grad.dtype == b.grad.dtype == np.float32
    z = F.conv_transpose2d(x, refgen.tensor(rng.standard_normal((3, 2, 2, 2)).astype(np.float32)), stride=2)
    assert z.dtype == np.float32
    for f in (lambda t: F.avg_pool2d(t, 2), lambda t: F.max_pool2d(t, 2),
              lambda t: F.interpolate(t, scale_factor=2), lambda t: F.interpolate(t, size=(7, 5))):
        assert f(x).dtype == np.float32


@on_backend("numpy")  # compares with NumPy in float64 / finite differences: run there
def test_chunked_columns_give_the_same_result(monkeypatch):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((5, 4, 7, 6)), rng.standard_normal((6, 2, 3, 2))
    gy = rng.standard_normal((5, 6, 4, 4))
    geom = ((2, 1), (1, 0), (1, 2), 2)

    def all_three():
        return (conv_module._conv2d_raw(x, w, None, geom, (4, 4)),
                conv_module._conv_transpose_raw(gy, w, None, geom, (7, 6)),
                conv_module._conv2d_weight_raw(x, gy, (3, 2), geom))

    whole = all_three()
    monkeypatch.setattr(conv_module, "CHUNK_BYTES", 1)  # one batch item per chunk
    for a, b in zip(whole, all_three()):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@on_backend("numpy")  # compares with NumPy in float64 / finite differences: run there
@pytest.mark.parametrize("pad,dil,out_extra", [((0, 0), (1, 1), (0, 0)), ((1, 2), (1, 1), (0, 0)),
                                               ((2, 3), (2, 1), (1, 0)), ((0, 1), (2, 2), (1, 1))])
def test_stride1_transpose_as_flipped_convolution_equals_col2im(pad, dil, out_extra):
    rng = np.random.default_rng(0)
    y, w = rng.standard_normal((2, 4, 5, 6)), rng.standard_normal((4, 3, 3, 2))
    geom = ((1, 1), pad, dil, 2)
    out_hw = tuple(n - 2 * p + d * (k - 1) + e for n, p, d, k, e in zip((5, 6), pad, dil, (3, 2), out_extra))
    a = conv_module._conv_transpose_flipped(y, w, None, geom, out_hw)
    b = conv_module._conv_transpose_col2im(y, w, None, geom, out_hw)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


# --- the shifted algorithm (stride 1, one group) against im2col -----------------------------

class algorithm:
    """Force conv.ALGORITHM (and CHUNK_BYTES) inside a with block."""

    def __init__(self, alg, chunk=None):
        self.alg, self.chunk = alg, chunk

    def __enter__(self):
        self.old = conv_module.ALGORITHM, conv_module.CHUNK_BYTES
        conv_module.ALGORITHM = self.alg
        conv_module.CHUNK_BYTES = self.chunk or conv_module.CHUNK_BYTES

    def __exit__(self, *exc):
        conv_module.ALGORITHM, conv_module.CHUNK_BYTES = self.old


@st.composite
def shifted_configs(draw):
    """A stride-1 one-group geometry with its own (top, bottom, left, right) padding."""
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    size = tuple(draw(st.integers(max(1, d * (k - 1) + 1 - a - b), d * (k - 1) + 4))
                 for k, d, a, b in zip(kernel, dilation, pads[::2], pads[1::2]))
    n, c, o = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    chunk = draw(st.sampled_from([1, 200, 1 << 20]))  # one item per chunk, a few, all at once
    return kernel, dilation, pads, size, n, c, o, chunk


@on_backend("numpy")  # compares the algorithms in float64
@pytest.mark.parametrize("shifted", ["shifted", "stacked"])
@given(cfg=shifted_configs(), seed=st.integers(0, 2**32 - 1))
def test_shifted_kernels_equal_im2col(shifted, cfg, seed):
    """Forward (any of its four paddings) and weight gradient: the shifted GEMMs, per tap or
    stacked into one, give what im2col gives."""
    kernel, dilation, pads, size, n, c, o, chunk = cfg
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((n, c) + size), rng.standard_normal((o, c) + kernel)
    out_hw = tuple(s + a + b - d * (k - 1) for s, a, b, d, k in zip(size, pads[::2], pads[1::2], dilation, kernel))
    geom = ((1, 1), (0, 0), dilation, 1)
    sym_pad = (max(pads[:2]), max(pads[2:]))  # the weight gradient's padding is symmetric
    sym = ((1, 1), sym_pad, dilation, 1)
    out_sym = tuple(s + 2 * a - d * (k - 1) for s, a, d, k in zip(size, sym_pad, dilation, kernel))
    gy = rng.standard_normal((n, o) + out_sym)
    got = {}
    for alg in ("im2col", shifted):
        with algorithm(alg, chunk):
            got[alg] = (conv_module._conv2d_raw(x, w, None, geom, out_hw, pads=pads),
                        conv_module._conv2d_weight_raw(x, gy, kernel, sym))
    for a, b in zip(got["im2col"], got[shifted]):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[shifted][0], ref_conv2d(np.pad(x, ((0, 0), (0, 0), pads[:2], pads[2:])),
                                                             w, None, (1, 1), (0, 0), dilation, 1),
                               rtol=1e-10, atol=1e-10)


@on_backend("numpy")
@pytest.mark.parametrize("shifted", ["shifted", "stacked"])
def test_shifted_kernels_with_a_shorter_last_chunk(shifted):
    """Three images in chunks of two: the last chunk is shorter than the buffers made for the
    first, and forward and weight gradient still equal im2col's."""
    rng = np.random.default_rng(11)
    x, w = rng.standard_normal((3, 2, 5, 6)), rng.standard_normal((4, 2, 3, 3))
    gy = rng.standard_normal((3, 4, 5, 6))
    geom = ((1, 1), (1, 1), (1, 1), 1)
    rows = 2 * (9 if shifted == "stacked" else 1) + 4  # the chunk's rows of Hp*Wp numbers
    chunk = 2 * rows * 7 * 8 * x.itemsize  # two images per chunk
    got = {}
    for alg in ("im2col", shifted):
        with algorithm(alg, chunk):
            got[alg] = (conv_module._conv2d_raw(x, w, None, geom, (5, 6)),
                        conv_module._conv2d_weight_raw(x, gy, (3, 3), geom))
    for a, b in zip(got["im2col"], got[shifted]):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)


@on_backend("numpy")  # finite differences in float64
@pytest.mark.parametrize("shifted", ["shifted", "stacked"])
@given(cfg=shifted_configs(), bias=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_shifted_gradients_and_double_backward(shifted, cfg, bias, seed):
    """conv2d and conv_transpose2d with every raw kernel on the shifted path (per tap or
    stacked): gradients of first and second order."""
    kernel, dilation, pads, size, n, c, o, chunk = cfg
    rng = np.random.default_rng(seed)
    padding = (min(pads[0], dilation[0] * (kernel[0] - 1) // 2), min(pads[2], dilation[1] * (kernel[1] - 1) // 2))
    size = tuple(s + d * (k - 1) for s, d, k in zip(size, dilation, kernel))  # conv2d fits
    x, w = rng.standard_normal((n, c) + size), rng.standard_normal((o, c) + kernel)
    b = [rng.standard_normal(o)] if bias else []
    with algorithm(shifted, chunk):
        check_grads(lambda x, w, *b: F.conv2d(x, w, *b, padding=padding, dilation=dilation),
                    [x, w] + b, rng=np.random.default_rng(seed))
        wt = rng.standard_normal((c, o) + kernel)
        check_grads(lambda x, w, *b: F.conv_transpose2d(x, w, *b, padding=padding, dilation=dilation),
                    [x, wt] + b, rng=np.random.default_rng(seed))


@on_backend("numpy")
@pytest.mark.parametrize("shifted", ["shifted", "stacked"])
def test_forcing_shifted_leaves_strided_grouped_and_cropping_convs_to_im2col(shifted):
    """The shifted algorithms are only for stride 1, one group, non-negative padding; the
    rest stay exact under ALGORITHM = "shifted" or "stacked"."""
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((2, 4, 7, 6)), rng.standard_normal((6, 2, 3, 2))
    with algorithm(shifted):
        for stride, groups in [((2, 1), 1), ((1, 1), 2), ((1, 2), 2)]:
            wg = w if groups == 2 else rng.standard_normal((6, 4, 3, 2))
            y = F.conv2d(x, wg, stride=stride, padding=1, groups=groups)
            np.testing.assert_allclose(y.numpy(), ref_conv2d(x, wg, None, stride, (1, 1), (1, 1), groups),
                                       rtol=1e-10, atol=1e-10)
        # padding 2 > d(k - 1) = 1: the transpose's flipped convolution crops (negative pads)
        wt = rng.standard_normal((4, 3, 2, 2))
        y = F.conv_transpose2d(x, wt, padding=(2, 1))
        np.testing.assert_allclose(y.numpy(), ref_conv_transpose2d(x, wt, None, (1, 1), (2, 1), (0, 0), 1, (1, 1)),
                                   rtol=1e-10, atol=1e-10)


@st.composite
def nhwc_configs(draw):
    """A one-group geometry with any stride and its own (top, bottom, left, right) padding,
    negative (cropping, as the transpose's flipped convolution does) included."""
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pads = tuple(draw(st.integers(-1, 2)) for _ in range(4))
    size = tuple(draw(st.integers(max(1 - min(a, 0) - min(b, 0), d * (k - 1) + 1 - a - b), d * (k - 1) + 5))
                 for k, d, a, b in zip(kernel, dilation, pads[::2], pads[1::2]))
    n, c, o = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    chunk = draw(st.sampled_from([1, 200, 1 << 20]))
    return kernel, dilation, stride, pads, size, n, c, o, chunk


@on_backend("numpy")  # compares the two algorithms in float64
@given(nhwc_configs(), st.integers(0, 2**32 - 1))
def test_nhwc_kernels_equal_im2col(cfg, seed):
    """Forward (any stride, any of its four paddings, cropping included) and weight gradient:
    the channels-last columns give what im2col and the direct loop give."""
    kernel, dilation, stride, pads, size, n, c, o, chunk = cfg
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((n, c) + size), rng.standard_normal((o, c) + kernel)
    out_hw = tuple((s + a + b - d * (k - 1) - 1) // st_ + 1
                   for s, a, b, d, k, st_ in zip(size, pads[::2], pads[1::2], dilation, kernel, stride))
    geom = (stride, (0, 0), dilation, 1)
    sym_pad = (max(pads[:2] + (0,)), max(pads[2:] + (0,)))  # the weight gradient's padding
    sym = (stride, sym_pad, dilation, 1)
    out_sym = tuple((s + 2 * a - d * (k - 1) - 1) // st_ + 1
                    for s, a, d, k, st_ in zip(size, sym_pad, dilation, kernel, stride))
    gy = rng.standard_normal((n, o) + out_sym)
    got = {}
    for alg in ("im2col", "nhwc"):
        with algorithm(alg, chunk):
            got[alg] = (conv_module._conv2d_raw(x, w, None, geom, out_hw, pads=pads),
                        conv_module._conv2d_weight_raw(x, gy, kernel, sym))
    for a, b in zip(got["im2col"], got["nhwc"]):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)
    cropped = x[:, :, max(-pads[0], 0):size[0] - max(-pads[1], 0), max(-pads[2], 0):size[1] - max(-pads[3], 0)]
    padded = np.pad(cropped, ((0, 0), (0, 0), (max(pads[0], 0), max(pads[1], 0)), (max(pads[2], 0), max(pads[3], 0))))
    np.testing.assert_allclose(got["nhwc"][0], ref_conv2d(padded, w, None, stride, (0, 0), dilation, 1),
                               rtol=1e-10, atol=1e-10)


@on_backend("numpy")  # finite differences in float64
@given(nhwc_configs(), st.booleans(), st.integers(0, 2**32 - 1))
def test_nhwc_gradients_and_double_backward(cfg, bias, seed):
    """conv2d and conv_transpose2d (strided) with every one-group raw kernel channels-last:
    gradients of first and second order."""
    kernel, dilation, stride, pads, size, n, c, o, chunk = cfg
    rng = np.random.default_rng(seed)
    padding = tuple(min(max(p, 0), d * (k - 1) // 2) for p, d, k in zip(pads[::2], dilation, kernel))
    size = tuple(s + d * (k - 1) for s, d, k in zip(size, dilation, kernel))  # conv2d fits
    x, w = rng.standard_normal((n, c) + size), rng.standard_normal((o, c) + kernel)
    b = [rng.standard_normal(o)] if bias else []
    with algorithm("nhwc", chunk):
        check_grads(lambda x, w, *b: F.conv2d(x, w, *b, stride=stride, padding=padding, dilation=dilation),
                    [x, w] + b, rng=np.random.default_rng(seed))
        wt = rng.standard_normal((c, o) + kernel)
        check_grads(lambda x, w, *b: F.conv_transpose2d(x, w, *b, stride=stride, padding=padding,
                                                        dilation=dilation),
                    [x, wt] + b, rng=np.random.default_rng(seed))


@on_backend("numpy")
def test_forcing_nhwc_leaves_grouped_convs_to_im2col():
    """The channels-last algorithm is for one group; a grouped conv stays exact under it."""
    rng = np.random.default_rng(6)
    x, w = rng.standard_normal((2, 4, 7, 6)), rng.standard_normal((6, 2, 3, 2))
    with algorithm("nhwc"):
        assert conv_module._plan("forward", 4, 6, (3, 2), (9, 8), (1, 1), 2, (1, 1, 1, 1))[0] == "im2col"
        y = F.conv2d(x, w, stride=(2, 1), padding=1, groups=2)
    np.testing.assert_allclose(y.numpy(), ref_conv2d(x, w, None, (2, 1), (1, 1), (1, 1), 2), rtol=1e-10, atol=1e-10)


@on_backend("numpy")
@pytest.mark.parametrize("kernel_family", sorted(conv_module.MEASURED_BY_KERNEL))
def test_measured_table_shapes_equal_im2col(kernel_family, monkeypatch):
    """Every shape each kernel family's table names, at batch 2: forward and weight gradient
    under the chosen algorithm as im2col gives them (float32, as trained)."""
    rng = np.random.default_rng(0)
    table = conv_module.MEASURED_BY_KERNEL[kernel_family]
    assert table, "the measured table is empty"
    monkeypatch.setattr(conv_module, "MEASURED", table)
    for (kind, c, o, kh, kw, hp, wp, sh, sw), (alg, chunk) in table.items():
        assert alg in ("im2col", "shifted", "stacked", "nhwc") and chunk > 0
        assert alg not in ("shifted", "stacked") or (sh, sw) == (1, 1)
        pad = (min(1, hp - kh), min(1, wp - kw))  # a padding the shape allows, within it
        x = rng.standard_normal((2, c, hp - 2 * pad[0], wp - 2 * pad[1])).astype(np.float32)
        w = rng.standard_normal((o, c, kh, kw)).astype(np.float32)
        geom = ((sh, sw), pad, (1, 1), 1)
        out_hw = ((hp - kh) // sh + 1, (wp - kw) // sw + 1)
        gy = rng.standard_normal((2, o) + out_hw).astype(np.float32)
        assert conv_module._plan(kind, c, o, (kh, kw), (hp, wp), (sh, sw), 1, (pad[0],) * 2 + (pad[1],) * 2) \
            == (alg, chunk)
        run = {"forward": lambda: conv_module._conv2d_raw(x, w, None, geom, out_hw),
               "weight": lambda: conv_module._conv2d_weight_raw(x, gy, (kh, kw), geom)}[kind]
        got = run()
        with algorithm("im2col"):
            want = run()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


@pytest.mark.parametrize("kernel,dilation", [((3, 3), 1), ((2, 4), 1), ((3, 2), 2)])
def test_conv2d_padding_same_and_valid(kernel, dilation):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 2, 6, 7)), rng.standard_normal((3, 2) + kernel)
    y = F.conv2d(x, w, padding="same", dilation=dilation)
    assert y.shape == (1, 3, 6, 7)
    # torch's rule: total padding d(k-1), the odd one out at the bottom/right
    th, tw = (dilation * (k - 1) for k in kernel)
    xp_ = np.pad(x, ((0, 0), (0, 0), (th // 2, th - th // 2), (tw // 2, tw - tw // 2)))
    np.testing.assert_allclose(y.numpy(), ref_conv2d(xp_, w, None, (1, 1), (0, 0), (dilation,) * 2, 1),
                               rtol=1e-10, atol=1e-10)
    assert F.conv2d(x, w, padding="valid").shape == F.conv2d(x, w).shape
    check_grads(lambda x, w: F.conv2d(x, w, padding="same", dilation=dilation), [x, w])


def test_unbatched_input():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 5, 5)), rng.standard_normal((3, 2, 3, 3))
    assert F.conv2d(x, w).shape == (3, 3, 3)
    assert F.conv_transpose2d(x, np.transpose(w, (1, 0, 2, 3))).shape == (3, 7, 7)
    assert F.max_pool2d(x, 2).shape == F.avg_pool2d(x, 2).shape == (2, 2, 2)


@pytest.mark.parametrize("call,match", [
    (lambda: F.conv2d(np.zeros((1, 3, 5, 5)), np.zeros((4, 3, 3, 3)), groups=2), "groups"),
    (lambda: F.conv2d(np.zeros((1, 3, 5, 5)), np.zeros((4, 2, 3, 3))), "does not fit"),
    (lambda: F.conv2d(np.zeros((1, 3, 2, 2)), np.zeros((4, 3, 3, 3))), "does not fit"),
    (lambda: F.conv2d(np.zeros((1, 3, 5, 5)), np.zeros((4, 3, 3, 3)), np.zeros(3)), "bias"),
    (lambda: F.conv2d(np.zeros((1, 3, 5, 5)), np.zeros((4, 3, 3, 3)), stride=2, padding="same"), "stride 1"),
    (lambda: F.conv_transpose2d(np.zeros((1, 3, 5, 5)), np.zeros((3, 2, 3, 3)), stride=2,
                                output_padding=2), "output_padding"),
    (lambda: F.max_pool2d(np.zeros((1, 1, 4, 4)), 2, padding=2), "padding"),
    (lambda: F.interpolate(np.zeros((1, 1, 4, 4)), scale_factor=2, mode="bilinear"), "nearest"),
    (lambda: F.interpolate(np.zeros((1, 1, 4, 4))), "exactly one"),
])
def test_bad_arguments_are_refused_with_a_reason(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- conv_transpose2d ----------------------------------------------------------------------

@given(conv_configs(transpose=True), st.integers(0, 2**32 - 1))
def test_conv_transpose2d_matches_direct_definition(cfg, seed):
    x, w, b = conv_arrays(cfg, np.random.default_rng(seed), transpose=True)
    y = conv_t_call(cfg)(refgen.tensor(x), refgen.tensor(w), None if b is None else refgen.tensor(b))
    want = ref_conv_transpose2d(x, w, b, cfg["stride"], cfg["padding"], cfg["output_padding"],
                                cfg["groups"], cfg["dilation"])
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-10, atol=1e-10)


@given(conv_configs(transpose=True), st.integers(0, 2**32 - 1))
def test_conv_transpose2d_gradients_and_double_backward(cfg, seed):
    x, w, b = conv_arrays(cfg, np.random.default_rng(seed), transpose=True)
    check_grads(conv_t_call(cfg), [x, w] + ([] if b is None else [b]), rng=np.random.default_rng(seed))


def test_weight_gradient_differentiates_to_third_order():
    """d/dw conv2d is itself a differentiable op: check its double backward too."""
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((2, 2, 5, 4)), rng.standard_normal((2, 1, 2, 3))

    def weight_grad(x, w):
        if not w.requires_grad:  # the oracle's first call only asks for the output's shape
            w = refgen.tensor(w.data, requires_grad=True)
        y = F.conv2d(x, w, stride=(2, 1), padding=1, dilation=(1, 2), groups=2)
        v = refgen.tensor(np.random.default_rng(9).standard_normal(y.shape))
        return refgen.grad(F.sum(y * y * v), [w], create_graph=True)[0]

    check_grads(weight_grad, [x, w])


# --- pools and interpolate -----------------------------------------------------------------

@st.composite
def pool_configs(draw):
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = draw(st.one_of(st.none(), st.tuples(st.integers(1, 2), st.integers(1, 2))))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    size = tuple(draw(st.integers(max(1, kk - 2 * pp), 6)) for kk, pp in zip(k, p))
    return k, s, p, size


@given(pool_configs(), st.integers(0, 2**32 - 1))
def test_pools_match_direct_definition_and_differentiate(cfg, seed):
    k, s, p, size = cfg
    x = np.random.default_rng(seed).standard_normal((2, 3) + size)
    s_ = k if s is None else s
    got_avg = F.avg_pool2d(x, k, s, p).numpy()
    got_max = F.max_pool2d(x, k, s, p).numpy()
    np.testing.assert_allclose(got_avg, ref_pool(x, k, s_, p, np.mean, 0.0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_max, ref_pool(x, k, s_, p, np.max, -np.inf), rtol=0, atol=0)
    check_grads(lambda t: F.avg_pool2d(t, k, s, p), [x])
    check_grads(lambda t: F.max_pool2d(t, k, s, p), [x])


def test_max_pool_gradient_goes_to_the_first_tied_maximum():
    x = refgen.tensor(np.array([[[[1.0, 3.0, 3.0, 0.0],
                                  [3.0, 2.0, 5.0, 5.0]]]]), requires_grad=True)
    y = F.max_pool2d(x, 2)
    np.testing.assert_array_equal(y.numpy(), [[[[3.0, 5.0]]]])
    y.backward(refgen.tensor(np.array([[[[1.0, 2.0]]]])))
    np.testing.assert_array_equal(x.grad.numpy(), [[[[0, 1, 0, 0], [0, 0, 2, 0]]]])


@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3),
       st.integers(0, 2**32 - 1))
def test_interpolate_integer_scale_is_repetition(h, w, rh, rw, seed):
    x = np.random.default_rng(seed).standard_normal((2, 2, h, w))
    y = F.interpolate(x, scale_factor=(rh, rw)).numpy()
    np.testing.assert_array_equal(y, np.repeat(np.repeat(x, rh, axis=2), rw, axis=3))
    np.testing.assert_array_equal(F.interpolate(x, size=(h * rh, w * rw)).numpy(), y)
    check_grads(lambda t: F.interpolate(t, scale_factor=(rh, rw)), [x])


@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 7), st.integers(1, 7),
       st.integers(0, 2**32 - 1))
def test_interpolate_any_size_matches_direct_definition(h, w, oh, ow, seed):
    x = np.random.default_rng(seed).standard_normal((1, 2, h, w))
    y = F.interpolate(x, size=(oh, ow))
    np.testing.assert_array_equal(y.numpy(), ref_nearest(x, (oh, ow)))
    check_grads(lambda t: F.interpolate(t, size=(oh, ow)), [x])


def test_interpolate_backward_is_sum_pooling():
    x = refgen.tensor(np.zeros((1, 1, 2, 3)), requires_grad=True)
    g = np.arange(24.0).reshape(1, 1, 4, 6)
    F.interpolate(x, scale_factor=2).backward(refgen.tensor(g))
    want = g.reshape(1, 1, 2, 2, 3, 2).sum(axis=(3, 5))
    np.testing.assert_array_equal(x.grad.numpy(), want)
    # and a 1-D signal, scale_factor as a float
    assert F.interpolate(np.zeros((1, 1, 3)), scale_factor=2.0).shape == (1, 1, 6)
    assert math.isclose(float(F.interpolate(np.ones((1, 1, 3)), scale_factor=1.5).numpy().sum()), 4.0)


def _plan_under_kernel(coretype):
    """(blas_core(), the weight-gradient plan at a shape where the kernels' tables disagree)
    in a fresh process whose OpenBLAS runs the named kernel family."""
    import os
    import subprocess
    import sys
    code = ("from refgen.backend import blas_core; from refgen.functional import conv as c; "
            "print(blas_core(), c._plan('weight', 32, 32, (3, 3), (30, 30), (1, 1), 1, (1, 1, 1, 1))[0])")
    env = dict(os.environ, OPENBLAS_CORETYPE=coretype, REFGEN_BACKEND="numpy")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], out[1]


@on_backend("numpy")
def test_the_table_in_use_is_the_running_blas_kernels():
    """The algorithm planned for a shape follows the BLAS kernel family the process runs: at
    the 32-to-32-channel 28x28 weight gradient the AVX2 (Haswell) table picks channels-last
    and the AVX-512 (SkylakeX) one shifted; a family with no table of its own (Sandybridge,
    AVX) gets the AVX2 table."""
    import platform
    from refgen.backend import blas_core
    if blas_core() is None or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("NumPy's bundled OpenBLAS on x86-64 only")
    assert conv_module.MEASURED_BY_KERNEL["Haswell"][("weight", 32, 32, 3, 3, 30, 30, 1, 1)][0] == "nhwc"
    assert conv_module.MEASURED_BY_KERNEL["SkylakeX"][("weight", 32, 32, 3, 3, 30, 30, 1, 1)][0] == "shifted"
    assert _plan_under_kernel("Haswell") == ("Haswell", "nhwc")
    assert _plan_under_kernel("Sandybridge") == ("Sandybridge", "nhwc")
    try:
        with open("/proc/cpuinfo") as f:
            avx512 = " avx512f" in f.read()
    except OSError:
        avx512 = False
    if avx512:
        assert _plan_under_kernel("SkylakeX") == ("SkylakeX", "shifted")
