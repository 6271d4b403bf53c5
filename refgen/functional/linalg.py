"""Linear algebra: matmul (batched, broadcasting), einsum, slogdet, inv, tril/triu."""
from __future__ import annotations

from refgen.autograd import Function, Tensor, as_tensor
from refgen.backend import xp

__all__ = ["matmul", "tril", "triu"]


def _mT(t):
    from refgen.functional.shape import transpose
    return transpose(t, -1, -2)


class _MatMul(Function):
    """(..., n, k) @ (..., k, m) -> (..., n, m); batch dimensions broadcast."""

    def forward(self, a, b):
        return xp.matmul(a, b)

    def backward(self, gy):
        from refgen.functional.shape import sum_to
        a, b = self.inputs
        ga = sum_to(matmul(gy, _mT(b)), a.shape) if a.requires_grad else None  # dL/dA = G B^T
        gb = sum_to(matmul(_mT(a), gy), b.shape) if b.requires_grad else None  # dL/dB = A^T G
        return ga, gb


def matmul(a, b):
    """torch.matmul semantics, including 1-D operands."""
    from refgen.functional.shape import reshape, unsqueeze
    a, b = as_tensor(a), as_tensor(b)
    if a.ndim == 1 and b.ndim == 1:
        return reshape(_MatMul.apply(unsqueeze(a, 0), unsqueeze(b, 1)), ())
    if a.ndim == 1:
        y = _MatMul.apply(unsqueeze(a, 0), b)
        return reshape(y, y.shape[:-2] + y.shape[-1:])
    if b.ndim == 1:
        y = _MatMul.apply(a, unsqueeze(b, 1))
        return reshape(y, y.shape[:-1])
    return _MatMul.apply(a, b)


def tril(x, diagonal: int = 0):
    """Lower triangle of the last two dims (the rest set to 0)."""
    x = as_tensor(x)
    n, m = x.shape[-2:]
    return x * Tensor(xp.tri(n, m, diagonal, dtype=x.dtype))


def triu(x, diagonal: int = 0):
    """Upper triangle of the last two dims (the rest set to 0)."""
    x = as_tensor(x)
    n, m = x.shape[-2:]
    return x * Tensor(1 - xp.tri(n, m, diagonal - 1, dtype=x.dtype))
