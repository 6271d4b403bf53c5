"""Reductions over ``dim`` (an int, a tuple of ints, or None for all), torch-style."""
from __future__ import annotations

from refgen.autograd import Function, Tensor, as_tensor
from refgen.backend import xp

__all__ = ["sum", "mean", "var", "std", "max", "min", "logsumexp", "amax", "amin",
           "sum_except_batch"]


def _axes(dim, ndim):
    if dim is None:
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return tuple(sorted(d % ndim for d in dims)) if ndim else ()


def _keepdim_shape(shape, axes):
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


class _Sum(Function):
    def forward(self, x, axes, keepdim):
        self.axes, self.keepdim = axes, keepdim
        return xp.sum(x, axis=axes, keepdims=keepdim)

    def backward(self, gy):
        from refgen.functional.shape import broadcast_to, reshape
        x = self.inputs[0]
        if not self.keepdim:
            gy = reshape(gy, _keepdim_shape(x.shape, self.axes))
        return broadcast_to(gy, x.shape)


def sum(x, dim=None, keepdim: bool = False):
    x = as_tensor(x)
    return _Sum.apply(x, axes=_axes(dim, x.ndim), keepdim=keepdim)


def sum_except_batch(x):
    """(B, ...) -> (B,): the sum over every dimension but the first (a (B,) input as is)."""
    x = as_tensor(x)
    return sum(x, tuple(range(1, x.ndim)))


def mean(x, dim=None, keepdim: bool = False):
    x = as_tensor(x)
    axes = _axes(dim, x.ndim)
    n = 1
    for a in axes:
        n *= x.shape[a]
    return sum(x, axes, keepdim) * (1.0 / n)


def var(x, dim=None, unbiased: bool = True, keepdim: bool = False, correction=None):
    """Variance; ``correction`` (default 1 if unbiased else 0) is subtracted from the count."""
    x = as_tensor(x)
    axes = _axes(dim, x.ndim)
    n = 1
    for a in axes:
        n *= x.shape[a]
    c = (1 if unbiased else 0) if correction is None else correction
    d = x - mean(x, axes, keepdim=True)
    return sum(d * d, axes, keepdim) * (1.0 / (n - c) if n > c else float("nan"))


def std(x, dim=None, unbiased: bool = True, keepdim: bool = False):
    from refgen.functional.elementwise import sqrt
    return sqrt(var(x, dim, unbiased, keepdim))


class _Extreme(Function):
    """max or min along axes; the gradient is split evenly among tied extremes."""

    def forward(self, x, axes, keepdim, op):
        self.axes, self.keepdim = axes, keepdim
        y = op(x, axis=axes, keepdims=True)
        hit = (x == y)
        self.share = hit / xp.sum(hit, axis=axes, keepdims=True)  # (x.shape), sums to 1
        self.share = self.share.astype(x.dtype)
        return y if keepdim else xp.squeeze(y, axis=axes)

    def backward(self, gy):
        from refgen.functional.shape import broadcast_to, reshape
        x = self.inputs[0]
        if not self.keepdim:
            gy = reshape(gy, _keepdim_shape(x.shape, self.axes))
        return broadcast_to(gy, x.shape) * Tensor(self.share)


def max(x, dim=None, keepdim: bool = False):
    """Largest values along ``dim`` (values only, like ``torch.amax``)."""
    x = as_tensor(x)
    return _Extreme.apply(x, axes=_axes(dim, x.ndim), keepdim=keepdim, op=xp.max)


def min(x, dim=None, keepdim: bool = False):
    """Smallest values along ``dim`` (values only, like ``torch.amin``)."""
    x = as_tensor(x)
    return _Extreme.apply(x, axes=_axes(dim, x.ndim), keepdim=keepdim, op=xp.min)


amax, amin = max, min


def logsumexp(x, dim=None, keepdim: bool = False):
    """log sum exp(x) = m + log sum exp(x - m), with m = max(x) held constant.

    The identity holds for any m, so m needs no gradient; it only keeps exp from overflowing.
    """
    from refgen.functional.elementwise import exp, log
    x = as_tensor(x)
    axes = _axes(dim, x.ndim)
    m = xp.max(x.data, axis=axes, keepdims=True)
    empty = m == -xp.inf  # rows with no mass: their sum is 0 and log 0 would send 0/0 back
    m = xp.where(xp.isfinite(m), m, 0)
    s = sum(exp(x - Tensor(m)), axes, keepdim=True)
    # log(s + 1) = 0 on empty rows keeps the backward finite; -inf is then added as a constant
    out = log(s + Tensor(empty.astype(x.dtype))) + Tensor(m + xp.where(empty, -xp.inf, 0).astype(x.dtype))
    if not keepdim:
        from refgen.functional.shape import squeeze
        out = squeeze(out, axes)
    return out
