"""Convolutions, pooling and nearest-neighbour resizing on NCHW arrays, torch-style.

Three linear maps share one geometry (stride, padding, dilation, groups) and are each
other's adjoints, so every backward pass is made of the other two and gradients of any
order come for free:

    conv2d(x, w)            x (N, C, H, W), w (O, C/g, kh, kw) -> y (N, O, Ho, Wo)
    conv_transpose2d(y, w)  y (N, O, Ho, Wo)                   -> x (N, C, H, W)   d<y', conv2d>/dx
    _Conv2dWeight(x, y)     x, y                               -> w (O, C/g, kh, kw) d<y, conv2d>/dw

conv2d is an im2col: a strided view of the padded input holding every kernel window,
contracted with the weight by BLAS. conv_transpose2d is the reverse: one matmul to columns,
then col2im adds each kernel offset's columns into a strided slice of the output (a loop of
kh*kw steps, never over pixels); at stride 1 it is instead a conv2d with the kernel flipped,
which needs no col2im and measured faster. The columns are materialised a batch chunk at a
time (at most ``CHUNK_BYTES``), so memory stays a small multiple of input + output.

At stride 1 with one group there is a second algorithm, "shifted": the padded input is laid
out channels-first, (C, n*Hp*Wp), so that kernel tap (i, j) of every window is ONE contiguous
slice of it, and the convolution is kh*kw GEMMs on those slices with no columns at all (the
weight gradient likewise); "stacked" copies those kh*kw slices into one (kh*kw*C, L) column
matrix (each a contiguous block copy) and makes one GEMM of depth kh*kw*C instead of kh*kw
GEMMs of depth C. With one group at any stride there is a fourth, "nhwc": im2col's
columns taken from the input laid out channels-last, so each window row is one contiguous
run and a batch chunk is one GEMM. Which runs, and in what chunk size, is read from
``MEASURED``, a table of the winners timed per shape on the CPU, one per OpenBLAS kernel
family; shapes not in it, and the GPU, take im2col.
"""
from __future__ import annotations

import math

from refgen.autograd import Function, as_tensor
from refgen.backend import batch_slices, blas_core, long_rows, xp, name as backend_name

__all__ = ["conv2d", "conv_transpose2d", "avg_pool2d", "max_pool2d", "interpolate"]

# Upper bound on one chunk of im2col columns. On the CPU: big enough for BLAS to run at full
# speed (hundreds of columns per GEMM), small enough to stay cache-warm and that the columns
# of a large batch are never all held at once (4 MiB measured fastest of 1-64 MiB). On a GPU,
# larger chunks mean fewer, fuller kernel launches.
CHUNK_BYTES = 4 << 20
GPU_CHUNK_BYTES = 256 << 20


# --- geometry ------------------------------------------------------------------------------

def _pair(v, what):
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"{what} must be an int or a pair of ints, got {v}")
    return v


def _out_size(n, k, s, p, d):
    """Number of windows along one axis: floor((n + 2p - d(k-1) - 1) / s) + 1."""
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


# None: each shape's measured winner (below); "im2col", "shifted", "stacked" or "nhwc" forces
# one wherever it applies (the tests, and benchmarks/conv_speed.py's before/after).
ALGORITHM = None

# (kind, C_in, C_out, kh, kw, Hp, Wp, sh, sw) -> (algorithm, chunk bytes), for kind "forward"
# (also the stride-1 input gradient, a forward conv with the flipped kernel) and "weight"; Hp,
# Wp are the padded input's size. Winners of `python benchmarks/conv_speed.py --tune` (every
# algorithm that applies at chunks of 256 KiB, 1 MiB and 4 MiB, the median CPU time of 11
# interleaved repeats after a warm-up, one BLAS thread, a 2-core Intel Xeon with AVX-512 and
# one other process) at the U-Net's (batch 64) and gated PixelCNN's (batch 16) shapes; only
# entries that beat im2col at CHUNK_BYTES by more than 10% are kept. One table per OpenBLAS
# kernel family (benchmarks/results/conv_tune_cpu_xeon.json with the AVX2 kernel,
# conv_tune_cpu_xeon_skylakex.json with the AVX-512 one), since the winners differ: the
# shifted weight gradient at 28x28 in 256 KiB chunks is 1.1-1.6x faster than the channels-last
# one with the AVX-512 kernel, and slower at three of those four shapes with the AVX2 kernel.
# The channels-last kernels at 14x14, 7x7 and stride 2 (long copy runs, one GEMM per chunk)
# win 1.2-2x with both; stacked takes the 16- and 32-channel 28x28 forward passes.
MEASURED_BY_KERNEL = {
    "Haswell": {
        ('forward', 16, 16, 3, 3, 30, 30, 1, 1): ('stacked', 1 << 20),
        ('forward', 16, 16, 3, 3, 30, 30, 2, 2): ('nhwc', 256 << 10),
        ('forward', 16, 32, 3, 3, 16, 16, 1, 1): ('nhwc', 256 << 10),
        ('forward', 32, 32, 3, 3, 16, 16, 1, 1): ('nhwc', 256 << 10),
        ('forward', 32, 32, 3, 3, 16, 16, 2, 2): ('nhwc', 1 << 20),
        ('forward', 32, 32, 3, 3, 9, 9, 1, 1): ('nhwc', 1 << 20),
        ('forward', 64, 32, 3, 3, 9, 9, 1, 1): ('nhwc', 256 << 10),
        ('forward', 64, 32, 3, 3, 16, 16, 1, 1): ('nhwc', 256 << 10),
        ('forward', 48, 32, 3, 3, 16, 16, 1, 1): ('nhwc', 256 << 10),
        ('forward', 32, 32, 3, 3, 30, 30, 1, 1): ('stacked', 1 << 20),
        ('forward', 48, 16, 3, 3, 30, 30, 1, 1): ('shifted', 1 << 20),
        ('forward', 32, 16, 3, 3, 30, 30, 1, 1): ('shifted', 1 << 20),
        ('forward', 16, 1, 3, 3, 30, 30, 1, 1): ('shifted', 1 << 20),
        ('forward', 16, 32, 3, 3, 30, 30, 1, 1): ('im2col', 256 << 10),
        ('forward', 16, 48, 3, 3, 30, 30, 1, 1): ('im2col', 256 << 10),
        ('forward', 32, 48, 3, 3, 16, 16, 1, 1): ('nhwc', 256 << 10),
        ('forward', 32, 64, 3, 3, 16, 16, 1, 1): ('nhwc', 256 << 10),
        ('forward', 32, 64, 3, 3, 9, 9, 1, 1): ('nhwc', 256 << 10),
        ('forward', 32, 16, 3, 3, 16, 16, 1, 1): ('nhwc', 1 << 20),
        ('weight', 16, 1, 3, 3, 30, 30, 1, 1): ('shifted', 1 << 20),
        ('weight', 16, 16, 3, 3, 30, 30, 1, 1): ('nhwc', 256 << 10),
        ('weight', 32, 16, 3, 3, 30, 30, 1, 1): ('nhwc', 1 << 20),
        ('weight', 48, 16, 3, 3, 30, 30, 1, 1): ('shifted', 1 << 20),
        ('weight', 32, 32, 3, 3, 30, 30, 1, 1): ('nhwc', 1 << 20),
        ('weight', 32, 32, 3, 3, 16, 16, 1, 1): ('nhwc', 1 << 20),
        ('weight', 48, 32, 3, 3, 16, 16, 1, 1): ('nhwc', 256 << 10),
        ('weight', 64, 32, 3, 3, 16, 16, 1, 1): ('nhwc', 256 << 10),
        ('weight', 32, 32, 3, 3, 9, 9, 1, 1): ('nhwc', 256 << 10),
        ('weight', 64, 32, 3, 3, 9, 9, 1, 1): ('nhwc', 256 << 10),
        ('weight', 32, 32, 3, 3, 16, 16, 2, 2): ('nhwc', 256 << 10),
        ('weight', 16, 32, 3, 3, 16, 16, 1, 1): ('nhwc', 1 << 20),
        ('weight', 16, 16, 3, 3, 30, 30, 2, 2): ('nhwc', 256 << 10),
        ('forward', 48, 24, 1, 2, 28, 30, 1, 1): ('shifted', 1 << 20),
        ('forward', 48, 24, 2, 3, 30, 32, 1, 1): ('shifted', 1 << 20),
    },
    "SkylakeX": {
        ('forward', 16, 16, 3, 3, 30, 30, 1, 1): ('stacked', 1 << 20),
        ('forward', 16, 16, 3, 3, 30, 30, 2, 2): ('nhwc', 256 << 10),
        ('forward', 16, 32, 3, 3, 16, 16, 1, 1): ('im2col', 1 << 20),
        ('forward', 32, 32, 3, 3, 16, 16, 1, 1): ('nhwc', 256 << 10),
        ('forward', 32, 32, 3, 3, 16, 16, 2, 2): ('nhwc', 256 << 10),
        ('forward', 32, 32, 3, 3, 9, 9, 1, 1): ('nhwc', 1 << 20),
        ('forward', 64, 32, 3, 3, 9, 9, 1, 1): ('nhwc', 256 << 10),
        ('forward', 64, 32, 3, 3, 16, 16, 1, 1): ('nhwc', 256 << 10),
        ('forward', 48, 32, 3, 3, 16, 16, 1, 1): ('nhwc', 256 << 10),
        ('forward', 32, 32, 3, 3, 30, 30, 1, 1): ('stacked', 1 << 20),
        ('forward', 48, 16, 3, 3, 30, 30, 1, 1): ('shifted', 1 << 20),
        ('forward', 32, 16, 3, 3, 30, 30, 1, 1): ('shifted', 1 << 20),
        ('forward', 16, 1, 3, 3, 30, 30, 1, 1): ('shifted', 1 << 20),
        ('forward', 16, 32, 3, 3, 30, 30, 1, 1): ('im2col', 1 << 20),
        ('forward', 16, 48, 3, 3, 30, 30, 1, 1): ('im2col', 1 << 20),
        ('forward', 32, 48, 3, 3, 16, 16, 1, 1): ('nhwc', 256 << 10),
        ('forward', 32, 64, 3, 3, 16, 16, 1, 1): ('nhwc', 1 << 20),
        ('forward', 32, 64, 3, 3, 9, 9, 1, 1): ('nhwc', 1 << 20),
        ('forward', 32, 16, 3, 3, 16, 16, 1, 1): ('nhwc', 256 << 10),
        ('weight', 16, 1, 3, 3, 30, 30, 1, 1): ('shifted', 1 << 20),
        ('weight', 16, 16, 3, 3, 30, 30, 1, 1): ('shifted', 256 << 10),
        ('weight', 32, 16, 3, 3, 30, 30, 1, 1): ('shifted', 256 << 10),
        ('weight', 48, 16, 3, 3, 30, 30, 1, 1): ('shifted', 256 << 10),
        ('weight', 32, 32, 3, 3, 30, 30, 1, 1): ('shifted', 256 << 10),
        ('weight', 32, 32, 3, 3, 16, 16, 1, 1): ('nhwc', 256 << 10),
        ('weight', 48, 32, 3, 3, 16, 16, 1, 1): ('nhwc', 256 << 10),
        ('weight', 64, 32, 3, 3, 16, 16, 1, 1): ('nhwc', 256 << 10),
        ('weight', 32, 32, 3, 3, 9, 9, 1, 1): ('nhwc', 256 << 10),
        ('weight', 64, 32, 3, 3, 9, 9, 1, 1): ('nhwc', 256 << 10),
        ('weight', 32, 32, 3, 3, 16, 16, 2, 2): ('nhwc', 256 << 10),
        ('weight', 16, 32, 3, 3, 16, 16, 1, 1): ('shifted', 256 << 10),
        ('weight', 16, 16, 3, 3, 30, 30, 2, 2): ('nhwc', 256 << 10),
        ('forward', 48, 24, 1, 2, 28, 30, 1, 1): ('shifted', 1 << 20),
        ('forward', 48, 24, 2, 3, 30, 32, 1, 1): ('shifted', 1 << 20),
        ('weight', 24, 48, 2, 3, 29, 30, 1, 1): ('im2col', 1 << 20),
    },
}
# The table in use: the running kernel family's, the AVX2 one for any other.
MEASURED = MEASURED_BY_KERNEL.get(blas_core(), MEASURED_BY_KERNEL["Haswell"])


def _plan(kind, c, o, kernel, padded_hw, stride, groups, pads):
    """(algorithm, chunk bytes) for one raw convolution."""
    if backend_name() != "numpy":
        return "im2col", GPU_CHUNK_BYTES
    allowed = {"im2col"}
    if groups == 1:
        allowed.add("nhwc")
        if stride == (1, 1) and min(pads) >= 0:
            allowed.update(("shifted", "stacked"))
    if ALGORITHM is not None:
        return (ALGORITHM if ALGORITHM in allowed else "im2col"), CHUNK_BYTES
    key = (kind, c, o) + tuple(kernel) + tuple(padded_hw) + tuple(stride)
    alg, chunk = MEASURED.get(key, ("im2col", CHUNK_BYTES))
    return (alg if alg in allowed else "im2col"), chunk


def _batch_chunks(n, bytes_per_item, limit=None):
    if limit is None:
        limit = CHUNK_BYTES if backend_name() == "numpy" else GPU_CHUNK_BYTES
    return batch_slices(n, bytes_per_item, limit)


def _padded(x, ph, pw, value=0):
    """(N, C, H, W) -> (N, C, H + 2ph, W + 2pw); ``x`` itself when there is no padding."""
    return _padded4(x, (ph, ph, pw, pw), value)


def _padded4(x, widths, value=0):
    """Pad (top, bottom, left, right); a negative width crops instead."""
    if not any(widths):
        return x
    n, c, h, w = x.shape
    t, b, l, r = widths
    out = xp.full((n, c, h + t + b, w + l + r), value, dtype=x.dtype)
    out[:, :, max(t, 0):max(t, 0) + h + min(t, 0) + min(b, 0),
        max(l, 0):max(l, 0) + w + min(l, 0) + min(r, 0)] = \
        x[:, :, max(-t, 0):h - max(-b, 0), max(-l, 0):w - max(-r, 0)]
    return out


def _windows(xpad, kernel, stride, dilation, out_hw, groups):
    """A strided VIEW (N, G, C/G, kh, kw, Ho, Wo) of every kernel window: no copy.

    Element [n, g, c, i, j, h, w] is xpad[n, g*C/G + c, h*sh + i*dh, w*sw + j*dw].
    """
    n, c, _, _ = xpad.shape
    sn, sc, sy, sx = xpad.strides
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dilation, out_hw
    shape = (n, groups, c // groups, kh, kw, ho, wo)
    strides = (sn, sc * (c // groups), sc, sy * dh, sx * dw, sy * sh, sx * sw)
    return xp.lib.stride_tricks.as_strided(xpad, shape=shape, strides=strides)


# --- the three raw kernels -----------------------------------------------------------------

def _conv2d_raw(x, w, b, geom, out_hw, pads=None):
    """y[n, o] = sum_{c,i,j} w[o, c, i, j] * xpad[n, c, h*s + i*d, w*s + j*d] (+ b[o]).

    pads: (top, bottom, left, right) instead of geom's symmetric padding.
    """
    stride, padding, dilation, groups = geom
    n = x.shape[0]
    o, cg, kh, kw = w.shape
    k, p = cg * kh * kw, out_hw[0] * out_hw[1]
    pads = pads if pads is not None else (padding[0], padding[0], padding[1], padding[1])
    padded_hw = (x.shape[2] + pads[0] + pads[1], x.shape[3] + pads[2] + pads[3])
    alg, chunk = _plan("forward", x.shape[1], o, (kh, kw), padded_hw, stride, groups, pads)
    if alg in ("shifted", "stacked", "nhwc"):
        y = (_conv2d_nhwc(x, w, pads, stride, dilation, out_hw, chunk) if alg == "nhwc"
             else _conv2d_shifted(x, w, pads, dilation, out_hw, chunk, alg == "stacked"))
        if b is not None:
            _add_bias(y, b)  # y is the algorithm's own new array
        return y
    xpad = _padded4(x, pads)
    cols = _windows(xpad, (kh, kw), stride, dilation, out_hw, groups)
    wm = w.reshape(groups, o // groups, k)  # (G, O/G, K)
    y = xp.empty((n, o) + tuple(out_hw), dtype=xp.result_type(x.dtype, w.dtype))
    for sl in _batch_chunks(n, groups * k * p * x.itemsize, chunk):
        c = xp.ascontiguousarray(cols[sl]).reshape(-1, groups, k, p)  # im2col: (n, G, K, P)
        # (G, O/G, K) @ (n, G, K, P) -> (n, G, O/G, P), written straight into y's NCHW layout
        xp.matmul(wm, c, out=y[sl].reshape(-1, groups, o // groups, p))
    if b is not None:
        _add_bias(y, b)
    return y


def _add_bias(y, b):
    """y[:, o] += b[o] in place: rows of H*W numbers (when y is contiguous), each against its
    channel's bias."""
    with long_rows(y.shape[2] * y.shape[3] if y.flags.c_contiguous and y.dtype == b.dtype else 0):
        y += b.reshape(1, -1, 1, 1)


def _conv_transpose_flipped(y, w, b, geom, out_hw):
    """Stride 1 only: the adjoint is itself a convolution, with the kernel flipped in space,
    its two channel axes swapped, and padding d(k-1) - p (more at the bottom/right for
    output_padding). One im2col + GEMM, and no col2im."""
    _, (ph, pw), (dh, dw), groups = geom
    o, cg, kh, kw = w.shape
    # wf[g*Cg + c, o, i, j] = w[g*Og + o, c, kh-1-i, kw-1-j]: (C, O/G, kh, kw)
    wf = w.reshape(groups, o // groups, cg, kh, kw).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
    wf = xp.ascontiguousarray(wf).reshape(groups * cg, o // groups, kh, kw)
    top, left = dh * (kh - 1) - ph, dw * (kw - 1) - pw
    pads = (top, out_hw[0] - y.shape[2] + ph, left, out_hw[1] - y.shape[3] + pw)
    return _conv2d_raw(y, wf, b, ((1, 1), (0, 0), (dh, dw), groups), out_hw, pads=pads)


def _conv_transpose_raw(y, w, b, geom, out_hw):
    """The adjoint of ``_conv2d_raw`` in x: (N, O, Ho, Wo) -> (N, C, H, W)."""
    if geom[0] == (1, 1):  # measured: 1.6x faster than col2im at 32 -> 64 channels, 28x28
        return _conv_transpose_flipped(y, w, b, geom, out_hw)
    return _conv_transpose_col2im(y, w, b, geom, out_hw)


def _conv_transpose_col2im(y, w, b, geom, out_hw):
    """Columns w^T y, then col2im: each kernel offset's columns added into a strided slice."""
    stride, (ph, pw), (dh, dw), groups = geom
    n, o, ho, wo = y.shape
    _, cg, kh, kw = w.shape
    h, wd = out_hw
    og, p = o // groups, ho * wo
    dtype = xp.result_type(y.dtype, w.dtype)
    xpad = xp.zeros((n, groups, cg, h + 2 * ph, wd + 2 * pw), dtype=dtype)
    # (O, C/G, kh, kw) -> (G, kh*kw*C/G, O/G): rows ordered (i, j, c) so each offset is a block
    wt = w.reshape(groups, og, cg, kh, kw).transpose(0, 3, 4, 2, 1).reshape(groups, kh * kw * cg, og)
    rows = slice(0, (ho - 1) * stride[0] + 1, stride[0])
    cols_ = slice(0, (wo - 1) * stride[1] + 1, stride[1])
    for sl in _batch_chunks(n, groups * kh * kw * cg * p * y.itemsize):
        cols = xp.matmul(wt, y[sl].reshape(-1, groups, og, p))  # (n, G, kh*kw*C/G, P)
        cols = cols.reshape(-1, groups, kh, kw, cg, ho, wo)
        for i in range(kh):  # col2im: kh*kw strided adds
            for j in range(kw):
                r = slice(i * dh + rows.start, i * dh + rows.stop, rows.step)
                q = slice(j * dw + cols_.start, j * dw + cols_.stop, cols_.step)
                xpad[sl, :, :, r, q] += cols[:, :, i, j]
    x = xpad.reshape(n, groups * cg, h + 2 * ph, wd + 2 * pw)[:, :, ph:ph + h, pw:pw + wd]
    if b is not None:
        _add_bias(x, b)
    return x


def _conv2d_weight_raw(x, gy, kernel, geom):
    """gw[o, c, i, j] = sum_{n,h,w} gy[n, o, h, w] * xpad[n, c, h*s + i*d, w*s + j*d]."""
    stride, padding, dilation, groups = geom
    n = x.shape[0]
    o, ho, wo = gy.shape[1:]
    cg = x.shape[1] // groups
    k, p = cg * kernel[0] * kernel[1], ho * wo
    pads = (padding[0], padding[0], padding[1], padding[1])
    padded_hw = (x.shape[2] + 2 * padding[0], x.shape[3] + 2 * padding[1])
    alg, chunk = _plan("weight", x.shape[1], o, kernel, padded_hw, stride, groups, pads)
    if alg in ("shifted", "stacked"):
        return _conv2d_weight_shifted(x, gy, kernel, pads, dilation, chunk, alg == "stacked")
    if alg == "nhwc":
        return _conv2d_weight_nhwc(x, gy, kernel, pads, stride, dilation, chunk)
    cols = _windows(_padded(x, *padding), kernel, stride, dilation, (ho, wo), groups)
    gwt = xp.zeros((groups, k, o // groups), dtype=xp.result_type(x.dtype, gy.dtype))
    for sl in _batch_chunks(n, groups * k * p * x.itemsize, chunk):
        c = xp.ascontiguousarray(cols[sl]).reshape(-1, groups, k, p)  # (n, G, K, P)
        g = gy[sl].reshape(-1, groups, o // groups, p)  # (n, G, O/G, P)
        # sum over the batch of (K, P) @ (P, O/G); gy's transpose is a BLAS flag, not a copy.
        # (Measured ~15% faster than (O/G, P) @ (P, K) with the columns transposed instead.)
        gwt += xp.matmul(c, g.transpose(0, 1, 3, 2)).sum(axis=0)
    gw = gwt.transpose(0, 2, 1)  # (G, O/G, K)
    return gw.reshape(o, cg, *kernel)


# --- the shifted algorithm: stride 1, one group ---------------------------------------------
#
# In a padded plane stored row after row, window (h, w) starts at flat position q = h*Wp + w
# and its tap (i, j) sits at q + i*dh*Wp + j*dw. Laying the batch's padded planes out
# channels-first, xflat (C, n*Hp*Wp), makes every tap of every window one contiguous slice,
#     y_flat[:, q] = sum_{i,j} W[:, :, i, j] @ xflat[:, q + off_ij],   off_ij = i*dh*Wp + j*dw,
# kh*kw GEMMs over slices of length L = n*Hp*Wp - off_max (the last window's last tap is the
# last element). Positions q with h >= Ho or w >= Wo straddle a row or image boundary: they are
# computed and discarded (the price: Hp*Wp / (Ho*Wo) times the multiply-adds).
# Stacked, the same sum is one GEMM: y_flat[:, :L] = W (O, kh*kw*C) @ cols, with cols' row
# block ij the slice xflat[:, off_ij : off_ij + L] and W's columns ordered (i, j, c) to match.

def _taps(kernel, dilation, wp):
    """off_ij = i*dh*Wp + j*dw for the kernel taps in row-major (i, j) order."""
    return [i * dilation[0] * wp + j * dilation[1] for i in range(kernel[0]) for j in range(kernel[1])]


def _planes(a, pads, buf):
    """a (m, C, H, W) into buf (C, m, Hp, Wp) at (top, left); buf's zero border is kept.
    Returns buf flat: (C, m*Hp*Wp)."""
    t, l = pads[0], pads[2]
    buf[:, :, t:t + a.shape[2], l:l + a.shape[3]] = a.transpose(1, 0, 2, 3)
    return buf.reshape(buf.shape[0], -1)


def _chunk_buffers(n, step, shapes, dtype):
    """For each batch chunk: its slice and zeroed buffers of the given leading shapes, the
    buffers allocated once and reused while the chunk size stays the same."""
    bufs, made = None, 0
    for i in range(0, n, step):
        m = min(n, i + step) - i
        if made != m:  # the first chunk, and a shorter last one
            bufs, made = [xp.zeros((s[0], m) + tuple(s[1:]), dtype=dtype) for s in shapes], m
        yield slice(i, i + m), bufs


def _stack_taps(xflat, taps, big, cols):
    """cols (kh*kw*C, L), row block a = xflat[:, off_a : off_a + L]: kh*kw block copies."""
    c = xflat.shape[0]
    for a, off in enumerate(taps):
        cols[a * c:(a + 1) * c] = xflat[:, off:off + big]
    return cols


def _conv2d_shifted(x, w, pads, dilation, out_hw, chunk, stacked=False):
    """conv2d at stride 1, one group: y_flat = sum_ij W_ij @ xflat[:, off_ij : off_ij + L]."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    hp, wp = h + pads[0] + pads[1], wd + pads[2] + pads[3]
    taps = _taps((kh, kw), dilation, wp)
    dtype = xp.result_type(x.dtype, w.dtype)
    wt = xp.ascontiguousarray(w.transpose(2, 3, 0, 1)).reshape(kh * kw, o, c)  # W_ij: (O, C)
    if stacked:
        wcat = wt.transpose(1, 0, 2).reshape(o, -1)  # (O, kh*kw*C), columns (i, j, c)
    y = xp.empty((n, o) + tuple(out_hw), dtype=dtype)
    rows = c * (len(taps) if stacked else 1) + o
    step = max(1, chunk // (rows * hp * wp * x.itemsize))
    cols = None
    for sl, (buf,) in _chunk_buffers(n, step, [(c, hp, wp)], dtype):
        xflat = _planes(x[sl], pads, buf)  # (C, m*Hp*Wp)
        m = buf.shape[1]
        big = m * hp * wp - taps[-1]  # L
        yflat = xp.empty((o, m * hp * wp), dtype=dtype)
        acc = yflat[:, :big]
        if stacked:
            if cols is None or cols.shape[1] != big:
                cols = xp.empty((len(taps) * c, big), dtype=dtype)
            xp.matmul(wcat, _stack_taps(xflat, taps, big, cols), out=acc)  # (O, L)
        else:
            xp.matmul(wt[0], xflat[:, taps[0]:taps[0] + big], out=acc)
            for a in range(1, len(taps)):
                acc += wt[a] @ xflat[:, taps[a]:taps[a] + big]
        # (O, m, Hp, Wp) -> the valid (Ho, Wo) corner, as (m, O, Ho, Wo)
        y[sl] = yflat.reshape(o, m, hp, wp)[:, :, :out_hw[0], :out_hw[1]].transpose(1, 0, 2, 3)
    return y


def _conv2d_weight_shifted(x, gy, kernel, pads, dilation, chunk, stacked=False):
    """gw[:, :, i, j] = gy_flat (O, L) @ xflat[:, off_ij : off_ij + L]^T, with gy laid on the
    padded grid at the window start positions (zero where no window starts); stacked, all
    taps at once: gw (O, kh*kw*C) = gy_flat @ cols^T."""
    n, c, h, wd = x.shape
    o, ho, wo = gy.shape[1:]
    hp, wp = h + pads[0] + pads[1], wd + pads[2] + pads[3]
    taps = _taps(kernel, dilation, wp)
    dtype = xp.result_type(x.dtype, gy.dtype)
    # (O, kh*kw*C) with columns (i, j, c) when stacked, else (kh*kw, O, C)
    gw = xp.zeros((o, len(taps) * c) if stacked else (len(taps), o, c), dtype=dtype)
    rows = c * (len(taps) if stacked else 1) + o
    step = max(1, chunk // (rows * hp * wp * x.itemsize))
    cols = None
    for sl, (buf, gbuf) in _chunk_buffers(n, step, [(c, hp, wp), (o, hp, wp)], dtype):
        xflat = _planes(x[sl], pads, buf)  # (C, m*Hp*Wp)
        gflat = _planes(gy[sl], (0, 0, 0, 0), gbuf)  # (O, m*Hp*Wp), zero past (Ho, Wo)
        big = gflat.shape[1] - taps[-1]  # L
        if stacked:
            if cols is None or cols.shape[1] != big:
                cols = xp.empty((len(taps) * c, big), dtype=dtype)
            gw += gflat[:, :big] @ _stack_taps(xflat, taps, big, cols).T
            continue
        for a, off in enumerate(taps):
            gw[a] += gflat[:, :big] @ xflat[:, off:off + big].T
    if stacked:
        gw = gw.reshape(o, len(taps), c).transpose(1, 0, 2)  # (kh*kw, O, C)
    return gw.reshape(kernel[0], kernel[1], o, c).transpose(2, 3, 0, 1)


# --- the channels-last algorithm: one group, any stride --------------------------------------
#
# The same columns as im2col, taken from the input laid out channels-last, (N, Hp, Wp, C): a
# window's row of kw taps is then kw*C contiguous numbers (C numbers at dilation > 1) instead
# of kw scattered ones, so the copy that builds the columns moves long runs, and the batch
# chunk is one GEMM, (m*Ho*Wo, kh*kw*C) @ (kh*kw*C, O), instead of m small ones. The price
# is a transpose of the input and of the output; it wins where the planes are small (14x14,
# 7x7, stride 2), where im2col's runs are shortest and its per-image GEMMs thinnest.

def _padded_nhwc(x, pads):
    """(N, C, H, W) -> (N, H + t + b, W + l + r, C), zero-padded (a negative width crops)."""
    n, c, h, w = x.shape
    t, b, l, r = pads
    out = xp.zeros((n, h + t + b, w + l + r, c), dtype=x.dtype)
    out[:, max(t, 0):max(t, 0) + h + min(t, 0) + min(b, 0),
        max(l, 0):max(l, 0) + w + min(l, 0) + min(r, 0)] = \
        x[:, :, max(-t, 0):h - max(-b, 0), max(-l, 0):w - max(-r, 0)].transpose(0, 2, 3, 1)
    return out


def _windows_nhwc(xpad, kernel, stride, dilation, out_hw):
    """A strided VIEW (N, Ho, Wo, kh, kw, C) of every window of a channels-last input:
    element [n, h, w, i, j, c] is xpad[n, h*sh + i*dh, w*sw + j*dw, c]."""
    sn, sy, sx, sc = xpad.strides
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dilation, out_hw
    shape = (xpad.shape[0], ho, wo, kh, kw, xpad.shape[3])
    return xp.lib.stride_tricks.as_strided(xpad, shape=shape, strides=(sn, sy * sh, sx * sw, sy * dh, sx * dw, sc))


def _conv2d_nhwc(x, w, pads, stride, dilation, out_hw, chunk):
    """conv2d, one group: per batch chunk, y^T = cols (m*P, K) @ W^T (K, O), K = (i, j, c)."""
    n, c = x.shape[:2]
    o, _, kh, kw = w.shape
    k, p = kh * kw * c, out_hw[0] * out_hw[1]
    win = _windows_nhwc(_padded_nhwc(x, pads), (kh, kw), stride, dilation, out_hw)
    wt = xp.ascontiguousarray(w.transpose(2, 3, 1, 0)).reshape(k, o)  # (K, O)
    y = xp.empty((n, o) + tuple(out_hw), dtype=xp.result_type(x.dtype, w.dtype))
    for sl in _batch_chunks(n, k * p * x.itemsize, chunk):
        cols = xp.ascontiguousarray(win[sl]).reshape(-1, k)  # (m*P, K)
        # (m*P, O) -> (m, O, Ho, Wo)
        y[sl] = (cols @ wt).reshape((-1,) + tuple(out_hw) + (o,)).transpose(0, 3, 1, 2)
    return y


def _conv2d_weight_nhwc(x, gy, kernel, pads, stride, dilation, chunk):
    """gw^T (K, O) = sum over batch chunks of cols^T (K, m*P) @ gy^T (m*P, O)."""
    n, c = x.shape[:2]
    o, ho, wo = gy.shape[1:]
    k, p = kernel[0] * kernel[1] * c, ho * wo
    win = _windows_nhwc(_padded_nhwc(x, pads), kernel, stride, dilation, (ho, wo))
    gwt = xp.zeros((k, o), dtype=xp.result_type(x.dtype, gy.dtype))
    for sl in _batch_chunks(n, k * p * x.itemsize, chunk):
        cols = xp.ascontiguousarray(win[sl]).reshape(-1, k)  # (m*P, K)
        gwt += cols.T @ xp.ascontiguousarray(gy[sl].transpose(0, 2, 3, 1)).reshape(-1, o)
    return gwt.reshape(kernel[0], kernel[1], c, o).transpose(3, 2, 0, 1)  # (O, C, kh, kw)


# --- the differentiable triple -------------------------------------------------------------

def _bias_grad(g, b):
    """sum of g over (N, H, W): sum_to's product with ones over each (H W) row, then over N."""
    from refgen.functional.shape import reshape, sum_to
    return reshape(sum_to(g, (1, g.shape[1], 1, 1)), (g.shape[1],)) if b.requires_grad else None


class _Conv2d(Function):
    """(x, w[, b]) -> y, cropped to ``out_hw`` windows (the natural count or fewer)."""

    def forward(self, x, w, *b, geom, out_hw):
        self.geom = geom
        return _conv2d_raw(x, w, b[0] if b else None, geom, out_hw)

    def backward(self, gy):
        x, w = self.inputs[:2]
        gx = _ConvTranspose2d.apply(gy, w, geom=self.geom, out_hw=x.shape[2:]) if x.requires_grad else None
        gw = _Conv2dWeight.apply(x, gy, geom=self.geom, kernel=w.shape[2:]) if w.requires_grad else None
        if len(self.inputs) == 3:
            return gx, gw, _bias_grad(gy, self.inputs[2])
        return gx, gw


class _ConvTranspose2d(Function):
    """(y, w[, b]) -> x of spatial size ``out_hw``: the adjoint of conv2d in its input."""

    def forward(self, y, w, *b, geom, out_hw):
        self.geom = geom
        return _conv_transpose_raw(y, w, b[0] if b else None, geom, out_hw)

    def backward(self, gx):
        y, w = self.inputs[:2]
        # <gx, conv2d^T(y, w)> = <conv2d(gx, w), y>
        gy = _Conv2d.apply(gx, w, geom=self.geom, out_hw=y.shape[2:]) if y.requires_grad else None
        gw = _Conv2dWeight.apply(gx, y, geom=self.geom, kernel=w.shape[2:]) if w.requires_grad else None
        if len(self.inputs) == 3:
            return gy, gw, _bias_grad(gx, self.inputs[2])
        return gy, gw


class _Conv2dWeight(Function):
    """(x, gy) -> d<gy, conv2d(x, w)>/dw, bilinear in (x, gy)."""

    def forward(self, x, gy, geom, kernel):
        self.geom = geom
        return _conv2d_weight_raw(x, gy, tuple(kernel), geom)

    def backward(self, ggw):
        x, gy = self.inputs
        # <ggw, conv2d_weight(x, gy)> = <gy, conv2d(x, ggw)>
        gx = _ConvTranspose2d.apply(gy, ggw, geom=self.geom, out_hw=x.shape[2:]) if x.requires_grad else None
        ggy = _Conv2d.apply(x, ggw, geom=self.geom, out_hw=gy.shape[2:]) if gy.requires_grad else None
        return gx, ggy


# --- public convolutions -------------------------------------------------------------------

def _batched(x, name):
    """Accept (C, H, W) like torch does; returns the 4-D tensor and whether to squeeze."""
    if x.ndim == 3:
        from refgen.functional.shape import unsqueeze
        return unsqueeze(x, 0), True
    if x.ndim != 4:
        raise ValueError(f"{name} expects input of shape (N, C, H, W) or (C, H, W), got {x.shape}")
    return x, False


def _unbatched(y, squeeze):
    if squeeze:
        from refgen.functional.shape import squeeze as _squeeze
        return _squeeze(y, 0)
    return y


def _check_weight(x, w, b, groups, in_axis, name):
    if w.ndim != 4:
        raise ValueError(f"{name} expects a 4-D weight, got shape {w.shape}")
    if groups < 1 or x.shape[1] % groups or (w.shape[0] % groups):
        raise ValueError(f"{name}: groups={groups} must divide the input channels ({x.shape[1]}) "
                         f"and the weight's first dimension ({w.shape[0]})")
    want = x.shape[1] if in_axis == 0 else x.shape[1] // groups
    if w.shape[in_axis] != want:
        raise ValueError(f"{name}: weight {w.shape} does not fit input {x.shape} with groups={groups}")
    out = w.shape[0] if in_axis == 1 else w.shape[1] * groups
    if b is not None and b.shape != (out,):
        raise ValueError(f"{name}: bias must have shape ({out},), got {b.shape}")


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation, as torch.nn.functional.conv2d.

    input (N, C, H, W) or (C, H, W); weight (O, C/groups, kh, kw); bias (O,) or None.
    padding: an int, a pair, 'valid' (0) or 'same' (stride 1; an odd total pads the
    bottom/right by one more, as torch does).
    Returns (N, O, Ho, Wo) with Ho = floor((H + 2p - d(kh-1) - 1) / s) + 1.
    """
    from refgen.functional.shape import pad as _pad
    x, squeeze = _batched(as_tensor(input), "conv2d")
    w = as_tensor(weight)
    b = None if bias is None else as_tensor(bias)
    _check_weight(x, w, b, groups, 1, "conv2d")
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    kernel = w.shape[2:]
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            if stride != (1, 1):
                raise ValueError("conv2d: padding='same' needs stride 1")
            total = [d * (k - 1) for d, k in zip(dilation, kernel)]
            if total[0] % 2 or total[1] % 2:  # asymmetric: the extra row/column goes last
                x = _pad(x, (total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2))
                padding = (0, 0)
            else:
                padding = (total[0] // 2, total[1] // 2)
        else:
            raise ValueError(f"conv2d: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    padding = _pair(padding, "padding")
    out_hw = tuple(_out_size(n, k, s, p, d) for n, k, s, p, d in
                   zip(x.shape[2:], kernel, stride, padding, dilation))
    if min(out_hw) < 1 or min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"conv2d: kernel {kernel} (dilation {dilation}) does not fit input "
                         f"{x.shape[2:]} with padding {padding}, stride {stride}")
    geom = (stride, padding, dilation, groups)
    ins = (x, w) if b is None else (x, w, b)
    return _unbatched(_Conv2d.apply(*ins, geom=geom, out_hw=out_hw), squeeze)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1):
    """2-D transposed convolution, as torch.nn.functional.conv_transpose2d.

    input (N, C_in, H, W); weight (C_in, C_out/groups, kh, kw); bias (C_out,) or None.
    Returns (N, C_out, Ho, Wo), Ho = (H - 1)s - 2p + d(kh-1) + output_padding + 1: the
    gradient of conv2d(., weight) with respect to an input of that size.
    """
    x, squeeze = _batched(as_tensor(input), "conv_transpose2d")
    w = as_tensor(weight)
    b = None if bias is None else as_tensor(bias)
    _check_weight(x, w, b, groups, 0, "conv_transpose2d")
    stride, padding = _pair(stride, "stride"), _pair(padding, "padding")
    dilation, output_padding = _pair(dilation, "dilation"), _pair(output_padding, "output_padding")
    for op, s, d in zip(output_padding, stride, dilation):
        if not 0 <= op < max(s, d):
            raise ValueError(f"conv_transpose2d: output_padding {output_padding} must be smaller "
                             f"than stride {stride} or dilation {dilation}")
    out_hw = tuple((n - 1) * s - 2 * p + d * (k - 1) + op + 1 for n, k, s, p, d, op in
                   zip(x.shape[2:], w.shape[2:], stride, padding, dilation, output_padding))
    if min(out_hw) < 1 or min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"conv_transpose2d: input {x.shape[2:]} with kernel {w.shape[2:]}, stride "
                         f"{stride}, padding {padding} gives output size {out_hw}")
    geom = (stride, padding, dilation, groups)
    ins = (x, w) if b is None else (x, w, b)
    return _unbatched(_ConvTranspose2d.apply(*ins, geom=geom, out_hw=out_hw), squeeze)


# --- pooling -------------------------------------------------------------------------------

def _pool_geometry(x, kernel_size, stride, padding, name):
    kernel = _pair(kernel_size, "kernel_size")
    stride = kernel if stride is None else _pair(stride, "stride")
    padding = _pair(padding, "padding")
    if any(p > k // 2 for p, k in zip(padding, kernel)) or min(padding) < 0:
        raise ValueError(f"{name}: padding {padding} must be at most half the kernel {kernel}")
    out_hw = tuple(_out_size(n, k, s, p, 1) for n, k, s, p in zip(x.shape[2:], kernel, stride, padding))
    if min(out_hw) < 1 or min(stride) < 1:
        raise ValueError(f"{name}: kernel {kernel} does not fit input {x.shape[2:]} with "
                         f"padding {padding}, stride {stride}")
    return kernel, stride, padding, out_hw


def _offsets(kernel, stride, out_hw):
    """For each kernel offset (i, j): the strided slices of the padded input it reads."""
    (kh, kw), (sh, sw), (ho, wo) = kernel, stride, out_hw
    return [(slice(i, i + (ho - 1) * sh + 1, sh), slice(j, j + (wo - 1) * sw + 1, sw))
            for i in range(kh) for j in range(kw)]


class _AvgPool2d(Function):
    """Mean over each window, zero padding counted (torch's count_include_pad=True)."""

    def forward(self, x, geom, out_hw):
        kernel, stride, padding = self.geom = geom
        xpad = _padded(x, *padding)
        y = xp.zeros(x.shape[:2] + tuple(out_hw), dtype=x.dtype)
        for r, q in _offsets(kernel, stride, out_hw):
            y += xpad[:, :, r, q]
        y *= 1.0 / (kernel[0] * kernel[1])
        return y

    def backward(self, gy):
        return _AvgPool2dAdjoint.apply(gy, geom=self.geom, in_hw=self.inputs[0].shape[2:])


class _AvgPool2dAdjoint(Function):
    """Spread each gradient evenly over its window (the transpose of _AvgPool2d)."""

    def forward(self, gy, geom, in_hw):
        kernel, stride, (ph, pw) = self.geom = geom
        h, w = in_hw
        gxpad = xp.zeros(gy.shape[:2] + (h + 2 * ph, w + 2 * pw), dtype=gy.dtype)
        g = gy * (1.0 / (kernel[0] * kernel[1]))
        for r, q in _offsets(kernel, stride, gy.shape[2:]):
            gxpad[:, :, r, q] += g
        return gxpad[:, :, ph:ph + h, pw:pw + w]

    def backward(self, ggx):
        return _AvgPool2d.apply(ggx, geom=self.geom, out_hw=self.inputs[0].shape[2:])


def avg_pool2d(input, kernel_size, stride=None, padding=0):
    """Average over kernel windows, as torch's avg_pool2d (zero padding counts in the mean)."""
    x, squeeze = _batched(as_tensor(input), "avg_pool2d")
    kernel, stride, padding, out_hw = _pool_geometry(x, kernel_size, stride, padding, "avg_pool2d")
    y = _AvgPool2d.apply(x, geom=(kernel, stride, padding), out_hw=out_hw)
    return _unbatched(y, squeeze)


def max_pool2d(input, kernel_size, stride=None, padding=0):
    """Maximum over kernel windows, as torch's max_pool2d (padding never wins: it is -inf).

    The whole gradient of a window goes to its maximum; among tied maxima, to the first in
    row-major window order. The pool is a gather of those positions, so it is written as
    ``getitem`` (whose adjoint is the scatter-add ``index_add``) and differentiates to any order.
    """
    from refgen.functional.shape import getitem, pad, reshape
    x, squeeze = _batched(as_tensor(input), "max_pool2d")
    kernel, stride, (ph, pw), out_hw = _pool_geometry(x, kernel_size, stride, padding, "max_pool2d")
    if ph or pw:
        x = pad(x, (pw, pw, ph, ph), value=-math.inf)
    n, c, hp, wp = x.shape
    # running max over the kh*kw offsets; strict '>' keeps the first maximum
    best = xp.full((n, c) + out_hw, -xp.inf, dtype=x.dtype)
    arg = xp.zeros((n, c) + out_hw, dtype=xp.int64)
    for a, (r, q) in enumerate(_offsets(kernel, stride, out_hw)):
        v = x.data[:, :, r, q]
        better = v > best
        best = xp.where(better, v, best)
        arg = xp.where(better, a, arg)
    # flat index into the padded (H+2ph)*(W+2pw) plane of each window's maximum
    rows = xp.arange(out_hw[0]).reshape(-1, 1) * stride[0] + arg // kernel[1]
    cols = xp.arange(out_hw[1]).reshape(1, -1) * stride[1] + arg % kernel[1]
    flat = rows * wp + cols  # (N, C, Ho, Wo)
    planes = reshape(x, (n, c, hp * wp))  # (N, C, Hp*Wp)
    index = (xp.arange(n).reshape(-1, 1, 1, 1), xp.arange(c).reshape(1, -1, 1, 1), flat)
    return _unbatched(getitem(planes, index), squeeze)


# --- resizing ------------------------------------------------------------------------------

def interpolate(input, size=None, scale_factor=None, mode="nearest"):
    """Nearest-neighbour resizing of (N, C, *spatial), as torch's interpolate(mode='nearest').

    Output element ``dst`` reads input ``floor(dst * in / out)`` (with ``size``) or
    ``floor(dst / scale_factor)`` (with ``scale_factor``). Integer upsampling is a broadcast
    (its gradient is sum-pooling, via sum_to); anything else is a gather (getitem).
    """
    from refgen.functional.shape import broadcast_to, getitem, reshape
    if mode != "nearest":
        raise ValueError(f"interpolate: mode {mode!r} is not supported; only 'nearest'")
    x = as_tensor(input)
    nd = x.ndim - 2
    if nd < 1:
        raise ValueError(f"interpolate expects (N, C, *spatial), got shape {x.shape}")
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate: give exactly one of size and scale_factor")
    spatial = x.shape[2:]
    if size is not None:
        size = (size,) * nd if isinstance(size, int) else tuple(int(s) for s in size)
        srcs = [xp.arange(o) * n // o for n, o in zip(spatial, size)]
    else:
        sf = (scale_factor,) * nd if isinstance(scale_factor, (int, float)) else tuple(scale_factor)
        size = tuple(int(math.floor(n * f)) for n, f in zip(spatial, sf))
        srcs = [xp.minimum(xp.floor(xp.arange(o) / f).astype(xp.int64), n - 1)
                for n, o, f in zip(spatial, size, sf)]
    if len(size) != nd or min(size) < 1:
        raise ValueError(f"interpolate: output size {size} is not valid for input {x.shape}")
    factors = [o // n if o % n == 0 else 0 for n, o in zip(spatial, size)]
    if all(factors) and all(bool((s == xp.arange(o) // r).all()) for s, o, r in zip(srcs, size, factors)):
        # (N, C, H, W) -> (N, C, H, 1, W, 1) -> (N, C, H, r, W, r) -> (N, C, H*r, W*r)
        inter = x.shape[:2] + tuple(v for n in spatial for v in (n, 1))
        tiled = x.shape[:2] + tuple(v for n, r in zip(spatial, factors) for v in (n, r))
        return reshape(broadcast_to(reshape(x, inter), tiled), x.shape[:2] + size)
    index = [slice(None), slice(None)]
    for a, s in enumerate(srcs):  # an open mesh: one index array per spatial axis
        index.append(s.reshape((-1,) + (1,) * (nd - 1 - a)))
    return getitem(x, tuple(index))
