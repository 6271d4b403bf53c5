"""Invertible 1x1 convolution (Glow): a learned C x C linear map of the channels at every pixel.

    y[:, :, h, w] = W x[:, :, h, w]        (for vectors: y = W x, a learned permutation-like mix)

The Jacobian is block diagonal, one block W per pixel, so

    log |det dy/dx| = H * W * log |det W|

which costs O(C^3) once per batch, not per pixel (C is small). Two parameterisations:

- plain: W itself is learned; log|det W| by an LU factorisation (refgen.functional.slogdet).
- LU (Glow's faster form): W = P L (U + diag(sign_s * exp(log_s))) with P a fixed
  permutation, L unit lower triangular and U strictly upper triangular (learned), so

      log |det W| = sum_c log_s_c                                 O(C) instead of O(C^3).

  It starts from the same random rotation as the plain layer (decomposed by
  :func:`lu_decompose`), so the two give the same map for the same seed.
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen.autograd import Tensor, as_tensor
from refgen.backend import xp
from refgen.models.flows.base import FlowLayer, constant_logdet
from refgen.nn import Parameter, init

__all__ = ["InvConv1x1", "InvConv1x1LU", "lu_decompose", "random_rotation"]


def random_rotation(c: int, rng=None, dtype=xp.float32):
    """A random orthogonal (c, c) matrix (QR of a Gaussian, signs fixed so it is unique),
    drawn on the host from ``rng``: det = +-1, so log|det| starts at 0."""
    g = init.get_rng(rng)
    a = xp.asarray(g.standard_normal((c, c)))
    q, r = xp.linalg.qr(a)
    q = q * xp.where(xp.diagonal(r) < 0, -1.0, 1.0)[None, :]
    return q.astype(dtype)


def lu_decompose(w):
    """W = P @ L @ U by Gaussian elimination with partial pivoting (float64).

    Returns P (permutation), L (unit lower triangular), U (upper triangular).
    """
    a = xp.array(w, dtype=xp.float64)
    n = a.shape[0]
    perm = xp.arange(n)
    lower = xp.eye(n)
    for k in range(n):
        p = k + int(xp.argmax(xp.abs(a[k:, k])))     # pivot: the largest entry of column k
        if p != k:
            a[[k, p]] = a[[p, k]]
            perm[[k, p]] = perm[[p, k]]
            lower[[k, p], :k] = lower[[p, k], :k]
        lower[k + 1:, k] = a[k + 1:, k] / a[k, k]
        a[k + 1:, k:] -= lower[k + 1:, k, None] * a[k, None, k:]
    p_rows = xp.eye(n)[perm]                          # p_rows @ W = L @ U
    return p_rows.T, lower, xp.triu(a)


def _mix(x, w):
    """Apply W to the channels: (B, C) -> x W^T; (B, C, H, W) -> a 1x1 convolution."""
    if x.ndim == 2:
        return F.linear(x, w)
    c = w.shape[0]
    return F.conv2d(x, F.reshape(w, (c, c, 1, 1)))


class InvConv1x1(FlowLayer):
    """Plain parameterisation: W (C, C) learned, log|det| = H W log|det W|."""

    def __init__(self, shape, rng=None, dtype=xp.float32):
        super().__init__()
        shape = tuple(int(s) for s in shape)
        self.pixels = math.prod(shape[1:])                               # H * W (1 for vectors)
        self.weight = Parameter(random_rotation(shape[0], rng, dtype))

    def extra_repr(self):
        return f"channels={self.weight.shape[0]}"

    def forward(self, x):
        x = as_tensor(x)
        _, logabsdet = F.slogdet(self.weight)
        return _mix(x, self.weight), constant_logdet(self.pixels * logabsdet, x)

    def inverse(self, y):
        return _mix(as_tensor(y), F.inv(self.weight))


class InvConv1x1LU(FlowLayer):
    """LU parameterisation: W = P L (U + diag(sign_s exp(log_s))), log|det| = H W sum log_s."""

    def __init__(self, shape, rng=None, dtype=xp.float32):
        super().__init__()
        shape = tuple(int(s) for s in shape)
        c = shape[0]
        self.pixels = math.prod(shape[1:])
        p, lower, upper = lu_decompose(random_rotation(c, rng, xp.float64))
        d = xp.diagonal(upper)
        self.register_buffer("P", p.astype(dtype))                       # fixed permutation
        self.register_buffer("sign_s", xp.sign(d).astype(dtype))         # fixed signs
        self.register_buffer("eye", xp.eye(c, dtype=dtype), persistent=False)
        self.L = Parameter(xp.tril(lower, -1).astype(dtype))             # strictly lower used
        self.U = Parameter(xp.triu(upper, 1).astype(dtype))              # strictly upper used
        self.log_s = Parameter(xp.log(xp.abs(d)).astype(dtype))

    def extra_repr(self):
        return f"channels={self.log_s.shape[0]}"

    def weight(self):
        """W = P (L + I) (U + diag(sign_s exp(log_s))), (C, C)."""
        eye = Tensor(self.eye)
        lower = F.tril(self.L, -1) + eye
        upper = F.triu(self.U, 1) + eye * (Tensor(self.sign_s) * F.exp(self.log_s))  # diag
        return F.matmul(Tensor(self.P), F.matmul(lower, upper))

    def forward(self, x):
        x = as_tensor(x)
        return _mix(x, self.weight()), constant_logdet(self.pixels * self.log_s.sum(), x)

    def inverse(self, y):
        return _mix(as_tensor(y), F.inv(self.weight()))
