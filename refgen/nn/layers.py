"""The standard layers, with torch's parameter shapes and default initialisation.

Each layer takes ``rng`` (a NumPy Generator, an int seed, or None for refgen.nn.init's
module-level generator) and ``dtype`` (float32 for training; float64 for gradient checks).
The computation itself is one call into refgen.functional.
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen.backend import xp
from refgen.nn import init
from refgen.nn.module import Module, Parameter

__all__ = ["Linear", "Conv2d", "ConvTranspose2d", "Embedding", "LayerNorm", "GroupNorm",
           "Dropout", "ReLU", "GELU", "SiLU", "Tanh", "Sigmoid", "LeakyReLU", "Softplus", "ELU",
           "Flatten"]


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _empty(shape, dtype):
    return Parameter(xp.zeros(shape, dtype=dtype))


def _torch_default_init(weight, bias, rng):
    """torch's Linear/Conv default: W ~ kaiming_uniform(a=sqrt(5)), i.e. U(+-1/sqrt(fan_in)),
    and b ~ U(+-1/sqrt(fan_in))."""
    init.kaiming_uniform_(weight, a=math.sqrt(5), rng=rng)
    if bias is not None:
        fan_in, _ = init.calculate_fan_in_and_fan_out(weight.shape)
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        init.uniform_(bias, -bound, bound, rng=rng)


class Linear(Module):
    """y = x W^T + b, W: (out_features, in_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rng=None,
                 dtype=xp.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        rng = init.get_rng(rng)
        self.weight = _empty((out_features, in_features), dtype)
        self.bias = _empty((out_features,), dtype) if bias else None
        _torch_default_init(self.weight, self.bias, rng)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """(B, C_in, H, W) -> (B, C_out, H', W'); W: (C_out, C_in / groups, kh, kw)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, rng=None, dtype=xp.float32):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels ({in_channels}, {out_channels}) must be divisible by "
                             f"groups={groups}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        rng = init.get_rng(rng)
        self.weight = _empty((out_channels, in_channels // groups) + self.kernel_size, dtype)
        self.bias = _empty((out_channels,), dtype) if bias else None
        _torch_default_init(self.weight, self.bias, rng)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding,
                        dilation=self.dilation, groups=self.groups)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


class ConvTranspose2d(Module):
    """The adjoint of Conv2d (upsampling); W: (C_in, C_out / groups, kh, kw).

    Output size: (H - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 output_padding=0, groups: int = 1, bias: bool = True, dilation=1, rng=None,
                 dtype=xp.float32):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels ({in_channels}, {out_channels}) must be divisible by "
                             f"groups={groups}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.output_padding = stride, padding, output_padding
        self.groups, self.dilation = groups, dilation
        rng = init.get_rng(rng)
        self.weight = _empty((in_channels, out_channels // groups) + self.kernel_size, dtype)
        self.bias = _empty((out_channels,), dtype) if bias else None
        _torch_default_init(self.weight, self.bias, rng)  # torch uses the same fan rule here

    def forward(self, x):
        return F.conv_transpose2d(x, self.weight, self.bias, stride=self.stride,
                                  padding=self.padding, output_padding=self.output_padding,
                                  groups=self.groups, dilation=self.dilation)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


class Embedding(Module):
    """A lookup table (num_embeddings, embedding_dim), initialised N(0, 1) like torch."""

    def __init__(self, num_embeddings: int, embedding_dim: int, rng=None, dtype=xp.float32):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = _empty((num_embeddings, embedding_dim), dtype)
        init.normal_(self.weight, rng=init.get_rng(rng))

    def forward(self, idx):
        return F.embedding(idx, self.weight)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """Normalise over the trailing ``normalized_shape`` dims; learned gain 1 and bias 0."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, dtype=xp.float32):
        super().__init__()
        if isinstance(normalized_shape, int):
            normalized_shape = (normalized_shape,)
        self.normalized_shape, self.eps = tuple(normalized_shape), eps
        if elementwise_affine:
            self.weight = Parameter(xp.ones(self.normalized_shape, dtype=dtype))
            self.bias = Parameter(xp.zeros(self.normalized_shape, dtype=dtype)) if bias else None
        else:
            self.weight = self.bias = None

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"


class GroupNorm(Module):
    """Normalise (B, C, ...) over groups of C / num_groups channels; per-channel affine."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5,
                 affine: bool = True, dtype=xp.float32):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"num_channels={num_channels} is not divisible by "
                             f"num_groups={num_groups}")
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        if affine:
            self.weight = Parameter(xp.ones((num_channels,), dtype=dtype))
            self.bias = Parameter(xp.zeros((num_channels,), dtype=dtype))
        else:
            self.weight = self.bias = None

    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}"


class Dropout(Module):
    """Zero each element with probability p in training, scaling the rest by 1 / (1 - p).

    forward(x, rng): the mask is drawn from ``rng`` (a backend generator; None:
    refgen.functional's default generator).
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x, rng=None):
        if not self.training or self.p == 0.0:
            return x
        return F.dropout(x, self.p, training=True, rng=rng)

    def extra_repr(self):
        return f"p={self.p}"


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class GELU(Module):
    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, approximate=self.approximate)


class SiLU(Module):
    def forward(self, x):
        return F.silu(x)


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


class Sigmoid(Module):
    def forward(self, x):
        return F.sigmoid(x)


class LeakyReLU(Module):
    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)


class Softplus(Module):
    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = beta

    def forward(self, x):
        return F.softplus(x, self.beta)


class ELU(Module):
    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = alpha

    def forward(self, x):
        return F.elu(x, self.alpha)


class Flatten(Module):
    """(B, ...) -> (B, prod(...)) by default."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return F.flatten(x, self.start_dim, self.end_dim)
