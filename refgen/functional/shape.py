"""Shape and indexing ops. Adjoints come in differentiable pairs:
broadcast_to <-> sum_to, getitem <-> index_add (scatter-add), pad <-> slice."""
from __future__ import annotations

import math

import builtins

from refgen.autograd import Function, SliceGrad, Tensor, as_tensor, is_grad_enabled
from refgen.backend import xp, scatter_add

__all__ = ["reshape", "flatten", "permute", "transpose", "broadcast_to", "sum_to", "squeeze",
           "unsqueeze", "cat", "stack", "split", "chunk", "getitem", "index_add", "pad", "flip",
           "repeat", "pixel_shuffle", "pixel_unshuffle", "movedim"]


class _Reshape(Function):
    def forward(self, x, shape):
        return xp.reshape(x, shape)

    def backward(self, gy):
        return reshape(gy, self.inputs[0].shape)


def reshape(x, shape):
    x = as_tensor(x)
    shape = tuple(shape)
    if shape == x.shape:
        return x
    return _Reshape.apply(x, shape=shape)


def flatten(x, start_dim: int = 0, end_dim: int = -1):
    x = as_tensor(x)
    if x.ndim == 0:
        return reshape(x, (1,))
    s, e = start_dim % x.ndim, end_dim % x.ndim
    n = 1
    for d in x.shape[s:e + 1]:
        n *= d
    return reshape(x, x.shape[:s] + (n,) + x.shape[e + 1:])


class _Permute(Function):
    def forward(self, x, dims):
        self.dims = dims
        return xp.transpose(x, dims)

    def backward(self, gy):
        inverse = tuple(sorted(range(len(self.dims)), key=lambda i: self.dims[i]))
        return permute(gy, inverse)


def permute(x, dims):
    x = as_tensor(x)
    dims = tuple(d % x.ndim for d in dims)
    if dims == tuple(range(x.ndim)):
        return x
    return _Permute.apply(x, dims=dims)


def transpose(x, dim0: int, dim1: int):
    x = as_tensor(x)
    dims = list(range(x.ndim))
    dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
    return permute(x, dims)


def movedim(x, source: int, destination: int):
    x = as_tensor(x)
    dims = list(range(x.ndim))
    d = dims.pop(source % x.ndim)
    dims.insert(destination % x.ndim, d)
    return permute(x, dims)


class _BroadcastTo(Function):
    def forward(self, x, shape):
        return xp.broadcast_to(x, shape)

    def backward(self, gy):
        return sum_to(gy, self.inputs[0].shape)


class _SumTo(Function):
    def forward(self, x, shape):
        lead = x.ndim - len(shape)
        axes = tuple(range(lead)) + tuple(
            lead + i for i, n in enumerate(shape) if n == 1 and x.shape[lead + i] != 1)
        # summed trailing dims of a contiguous array: one matrix-vector product with ones
        # (BLAS, where NumPy's reduction over the last axes of (N, C, H, W) to (1, C, 1, 1)
        # was a visible part of a U-Net step), then the rest on the far smaller array
        k = 0
        while k < len(axes) and axes[-1 - k] == x.ndim - 1 - k:
            k += 1
        if k and x.flags.c_contiguous and x.ndim > k and x.dtype.kind == "f":
            rows = x.reshape(-1, math.prod(x.shape[x.ndim - k:]))
            x = (rows @ xp.ones((rows.shape[1],), dtype=x.dtype)).reshape(x.shape[:x.ndim - k])
            axes = axes[:len(axes) - k]
        y = xp.sum(x, axis=axes, keepdims=True) if axes else x
        return xp.reshape(y, shape)

    def backward(self, gy):
        return broadcast_to(gy, self.inputs[0].shape)


def broadcast_to(x, shape):
    """Broadcast to ``shape`` (a ``-1`` keeps that dimension)."""
    x = as_tensor(x)
    shape = tuple(shape)
    lead = len(shape) - x.ndim
    if lead < 0 or builtins.any(n == -1 for n in shape[:lead]):
        raise ValueError(f"cannot broadcast shape {x.shape} to {shape} (-1 only keeps an existing dimension)")
    shape = tuple(x.shape[i - lead] if n == -1 else n for i, n in enumerate(shape))
    if shape == x.shape:
        return x
    return _BroadcastTo.apply(x, shape=shape)


def sum_to(x, shape):
    """Sum ``x`` down to ``shape``: the adjoint of broadcasting ``shape`` up to ``x.shape``."""
    x = as_tensor(x)
    shape = tuple(shape)
    if shape == x.shape:
        return x
    return _SumTo.apply(x, shape=shape)


def squeeze(x, dim=None):
    x = as_tensor(x)
    if dim is None:
        dims = tuple(i for i, n in enumerate(x.shape) if n == 1)
    else:
        dims = tuple(d % x.ndim for d in ((dim,) if isinstance(dim, int) else dim))
        dims = tuple(d for d in dims if x.shape[d] == 1)
    return reshape(x, tuple(n for i, n in enumerate(x.shape) if i not in dims))


def unsqueeze(x, dim: int):
    x = as_tensor(x)
    d = dim % (x.ndim + 1)
    return reshape(x, x.shape[:d] + (1,) + x.shape[d:])


def _norm_index(idx):
    """Replace Tensors inside an index by their arrays; report whether indexing is advanced."""
    items = idx if isinstance(idx, tuple) else (idx,)
    out, advanced = [], False
    for i in items:
        if isinstance(i, Tensor):
            i = i.data
        if isinstance(i, list) or (hasattr(i, "shape") and i.ndim > 0):
            i = xp.asarray(i)  # NumPy index arrays move to the backend (CuPy needs its own)
        if hasattr(i, "shape") and not isinstance(i, (int, builtins.slice)):
            advanced = True
        out.append(i)
    return (tuple(out) if isinstance(idx, tuple) else out[0]), advanced


class _GetItem(Function):
    def forward(self, x, idx, advanced):
        self.idx, self.advanced = idx, advanced
        return x[idx]

    def backward(self, gy):
        if not (self.advanced or is_grad_enabled()):  # added in place by the backward pass
            return SliceGrad(gy.data, self.idx, self.inputs[0].shape)
        return index_add(gy, self.idx, self.inputs[0].shape, self.advanced)


class _IndexAdd(Function):
    """zeros(shape) with ``g`` added at ``idx`` (repeated indices accumulate)."""

    def forward(self, g, idx, shape, advanced):
        self.idx, self.advanced = idx, advanced
        out = xp.zeros(shape, dtype=g.dtype)
        if advanced:
            scatter_add(out, idx, g)
        else:
            out[idx] = g  # basic indexing never repeats an element
        return out

    def backward(self, ggx):
        return getitem(ggx, self.idx)


def getitem(x, idx):
    """``x[idx]`` for basic (ints, slices, None, Ellipsis) and integer/boolean-array indexing."""
    idx, advanced = _norm_index(idx)
    return _GetItem.apply(as_tensor(x), idx=idx, advanced=advanced)


def index_add(g, idx, shape, advanced=None):
    """The adjoint of ``getitem``: a tensor of ``shape`` holding the sum of ``g`` at ``idx``."""
    if advanced is None:
        idx, advanced = _norm_index(idx)
    return _IndexAdd.apply(as_tensor(g), idx=idx, shape=tuple(shape), advanced=advanced)


class _Cat(Function):
    def forward(self, *xs, dim):
        self.dim = dim
        return xp.concatenate(xs, axis=dim)

    def backward(self, gy):
        grads, start = [], 0
        for x in self.inputs:
            n = x.shape[self.dim]
            sl = (builtins.slice(None),) * self.dim + (builtins.slice(start, start + n),)
            grads.append(getitem(gy, sl) if x.requires_grad else None)
            start += n
        return tuple(grads)


def cat(tensors, dim: int = 0):
    tensors = [as_tensor(t) for t in tensors]
    if len(tensors) == 1:
        return tensors[0]
    return _Cat.apply(*tensors, dim=dim % tensors[0].ndim)


def stack(tensors, dim: int = 0):
    tensors = [as_tensor(t) for t in tensors]
    d = dim % (tensors[0].ndim + 1)
    return cat([unsqueeze(t, d) for t in tensors], d)


def split(x, split_size_or_sections, dim: int = 0):
    """Pieces of size ``split_size`` (the last may be smaller) or of the listed sizes."""
    x = as_tensor(x)
    d = dim % x.ndim
    n = x.shape[d]
    if isinstance(split_size_or_sections, int):
        sizes = [split_size_or_sections] * (n // split_size_or_sections)
        if n % split_size_or_sections:
            sizes.append(n % split_size_or_sections)
    else:
        sizes = list(split_size_or_sections)
        if builtins.sum(sizes) != n:
            raise ValueError(f"split sizes {sizes} do not add up to dimension {d} of size {n}")
    out, start = [], 0
    for s in sizes:
        out.append(getitem(x, (builtins.slice(None),) * d + (builtins.slice(start, start + s),)))
        start += s
    return tuple(out)


def chunk(x, chunks: int, dim: int = 0):
    x = as_tensor(x)
    n = x.shape[dim % x.ndim]
    return split(x, -(-n // chunks), dim)


class _Pad(Function):
    def forward(self, x, widths, value):
        self.widths = widths
        shape = tuple(n + lo + hi for n, (lo, hi) in zip(x.shape, widths))
        out = xp.full(shape, value, dtype=x.dtype)  # the frame, then x inside it: xp.pad's
        out[tuple(builtins.slice(lo, lo + n) for n, (lo, _) in zip(x.shape, widths))] = x
        return out                                   # Python-side setup outweighs small arrays

    def backward(self, gy):
        sl = tuple(builtins.slice(lo, n - hi) for (lo, hi), n in zip(self.widths, gy.shape))
        return getitem(gy, sl)


def pad(x, pad, mode: str = "constant", value: float = 0.0):
    """torch-style pad: ``pad`` lists (left, right) pairs starting from the LAST dimension."""
    x = as_tensor(x)
    if mode != "constant":
        raise ValueError(f"pad mode {mode!r} is not supported; only 'constant'")
    if len(pad) % 2 or len(pad) // 2 > x.ndim:
        raise ValueError(f"pad needs (left, right) pairs for at most {x.ndim} dims, got {pad}")
    if builtins.any(p < 0 for p in pad):
        raise ValueError("negative padding is not supported")
    widths = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        widths[x.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    return _Pad.apply(x, widths=tuple(widths), value=value)


class _Flip(Function):
    def forward(self, x, dims):
        self.dims = dims
        return xp.flip(x, axis=dims)

    def backward(self, gy):
        return flip(gy, self.dims)


def flip(x, dims):
    x = as_tensor(x)
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    return _Flip.apply(x, dims=tuple(d % x.ndim for d in dims))


def repeat(x, *sizes):
    """torch ``Tensor.repeat``: tile ``x`` ``sizes[i]`` times along each dimension."""
    x = as_tensor(x)
    sizes = tuple(sizes[0]) if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) else sizes
    if len(sizes) < x.ndim:
        raise ValueError(f"repeat needs at least {x.ndim} sizes, got {sizes}")
    shape = (1,) * (len(sizes) - x.ndim) + x.shape
    # (d0, d1, ..) -> (1, d0, 1, d1, ..) -> (s0, d0, s1, d1, ..) -> (s0*d0, s1*d1, ..)
    inter = tuple(v for n in shape for v in (1, n))
    tiled = tuple(v for s, n in zip(sizes, shape) for v in (s, n))
    y = broadcast_to(reshape(x, inter), tiled)
    return reshape(y, tuple(s * n for s, n in zip(sizes, shape)))


def pixel_shuffle(x, upscale_factor: int):
    """(B, C*r*r, H, W) -> (B, C, H*r, W*r): depth to space."""
    x = as_tensor(x)
    r = upscale_factor
    b, c, h, w = x.shape
    if c % (r * r):
        raise ValueError(f"pixel_shuffle needs channels divisible by {r * r}, got {c}")
    y = reshape(x, (b, c // (r * r), r, r, h, w))
    y = permute(y, (0, 1, 4, 2, 5, 3))  # (B, C, H, r, W, r)
    return reshape(y, (b, c // (r * r), h * r, w * r))


def pixel_unshuffle(x, downscale_factor: int):
    """(B, C, H*r, W*r) -> (B, C*r*r, H, W): space to depth (the flows' squeeze)."""
    x = as_tensor(x)
    r = downscale_factor
    b, c, hr, wr = x.shape
    if hr % r or wr % r:
        raise ValueError(f"pixel_unshuffle needs H and W divisible by {r}, got {hr}x{wr}")
    y = reshape(x, (b, c, hr // r, r, wr // r, r))
    y = permute(y, (0, 1, 3, 5, 2, 4))  # (B, C, r, r, H, W)
    return reshape(y, (b, c * r * r, hr // r, wr // r))
