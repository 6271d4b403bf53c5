"""Batch normalization and spectral normalization, the two normalizers GANs lean on.

BatchNorm (Ioffe & Szegedy, 2015), per channel c of x (B, C) or (B, C, H, W):

    training:  mu_c = mean of x over the batch (and positions),  s2_c = its biased variance
               y = gamma_c (x - mu_c) / sqrt(s2_c + eps) + beta_c
               running_mean <- (1 - m) running_mean + m mu_c
               running_var  <- (1 - m) running_var  + m s2_c n / (n - 1)    (unbiased, as torch)
    eval:      the same with the running statistics in place of mu_c, s2_c.

The running statistics are buffers, so they are saved in every checkpoint. In training the
batch statistics are computed with refgen ops, so gradients flow through mu and s2 (and
gradients of gradients, which a gradient penalty on a normalized network needs).

Spectral normalization (Miyato et al., 2018): a layer's weight W, seen as a matrix
(out, in * kh * kw), is divided by sigma(W), its largest singular value, estimated by power
iteration on a persistent vector u:

    v <- W^T u / ||W^T u||,   u <- W v / ||W v||,   sigma = u^T W v

u and v are constants to autograd (as in the paper); sigma is differentiated through W. In
training each forward pass runs ``n_power_iterations`` steps and stores u and v (buffers,
saved in checkpoints); in eval both stay, so sigma is then exactly u^T W v.
"""
from __future__ import annotations

import refgen.functional as F
from refgen.autograd import Tensor, as_tensor
from refgen.backend import asarray, xp
from refgen.nn import init
from refgen.nn.layers import Conv2d, Linear
from refgen.nn.module import Module, Parameter

__all__ = ["batch_norm", "BatchNorm", "BatchNorm1d", "BatchNorm2d", "SpectralNorm",
           "spectral_norm"]


# ----------------------------------------------------------------------------- BatchNorm
def batch_norm(input, running_mean=None, running_var=None, weight=None, bias=None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5):
    """torch.nn.functional.batch_norm: normalise (B, C, *) per channel C.

    In training the batch statistics are used and the running ones (xp arrays (C,), when
    given) are updated in place; in eval the running ones are used.
    """
    x = as_tensor(input)
    if x.ndim < 2:
        raise ValueError(f"batch_norm needs (B, C, ...) input, got shape {tuple(x.shape)}")
    c = x.shape[1]
    axes = (0,) + tuple(range(2, x.ndim))               # every dim but the channel
    shape = (1, c) + (1,) * (x.ndim - 2)                # (C,) -> broadcastable to x
    if training:
        n = x.size // c
        if n < 2:
            raise ValueError(f"batch_norm in training needs more than one value per channel, "
                             f"got input of shape {tuple(x.shape)}")
        mu = F.mean(x, dim=axes, keepdim=True)          # (1, C, 1, ...)
        s2 = F.var(x, dim=axes, unbiased=False, keepdim=True)
        if running_mean is not None:
            running_mean *= 1.0 - momentum
            running_mean += momentum * mu.data.reshape(c)
        if running_var is not None:
            running_var *= 1.0 - momentum
            running_var += momentum * s2.data.reshape(c) * (n / (n - 1))
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm in eval mode needs running_mean and running_var")
        mu = Tensor(running_mean.reshape(shape).astype(x.dtype, copy=False))
        s2 = Tensor(running_var.reshape(shape).astype(x.dtype, copy=False))
    y = (x - mu) / F.sqrt(s2 + eps)                     # (x - mu) / sqrt(s2 + eps)
    if weight is not None:
        y = y * F.reshape(weight, shape)                # gamma_c
    if bias is not None:
        y = y + F.reshape(bias, shape)                  # beta_c
    return y


class BatchNorm(Module):
    """Batch normalization over channel dim 1 of (B, C) or (B, C, H, W) input.

    Learned gain gamma = 1 and bias beta = 0; buffers running_mean = 0, running_var = 1
    (saved in the state dict). ``train()`` uses batch statistics, ``eval()`` the running ones.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, dtype=xp.float32):
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"BatchNorm momentum must be in [0, 1], got {momentum}")
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), float(momentum)
        if affine:
            self.weight = Parameter(xp.ones((num_features,), dtype=dtype))
            self.bias = Parameter(xp.zeros((num_features,), dtype=dtype))
        else:
            self.weight = self.bias = None
        self.register_buffer("running_mean", xp.zeros((num_features,), dtype=dtype))
        self.register_buffer("running_var", xp.ones((num_features,), dtype=dtype))

    def forward(self, x):
        if x.ndim < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm({self.num_features}) got input of shape "
                             f"{tuple(x.shape)}; expected (B, {self.num_features}, ...)")
        return batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                          training=self.training, momentum=self.momentum, eps=self.eps)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


BatchNorm1d = BatchNorm  # torch's names: the channel dim is 1 in both
BatchNorm2d = BatchNorm


# ----------------------------------------------------------------------------- spectral norm
def _normalize(v, eps):
    return v / xp.maximum(xp.sqrt((v * v).sum()), eps)


class SpectralNorm(Module):
    """Wrap a Linear or Conv2d so that its weight is used as W / sigma(W) (see module doc)."""

    def __init__(self, layer, n_power_iterations: int = 1, eps: float = 1e-12, rng=None):
        super().__init__()
        if not isinstance(layer, (Linear, Conv2d)):
            raise ValueError(f"spectral norm wraps a Linear or Conv2d, got {type(layer).__name__}")
        if int(n_power_iterations) < 1:
            raise ValueError(f"n_power_iterations must be >= 1, got {n_power_iterations}")
        self.layer, self.n_power_iterations, self.eps = layer, int(n_power_iterations), float(eps)
        out = layer.weight.shape[0]
        u0 = init.get_rng(rng).standard_normal(out)
        u = _normalize(asarray(u0).astype(layer.weight.dtype), eps)
        self.register_buffer("u", u)
        self.register_buffer("v", _normalize(layer.weight.data.reshape(out, -1).T @ u, eps))

    def sigma(self):
        """sigma(W) = u^T W v, a Tensor differentiable in W. In training, power iteration
        first updates u and v; in eval both stay as stored."""
        w = self.layer.weight
        mat = w.data.reshape(w.shape[0], -1)             # (out, in * kh * kw)
        u, v = self.u, self.v
        if self.training:
            for _ in range(self.n_power_iterations):
                v = _normalize(mat.T @ u, self.eps)      # v <- W^T u / ||W^T u||
                u = _normalize(mat @ v, self.eps)        # u <- W v / ||W v||
            self.u, self.v = u, v
        w_mat = F.reshape(w, (w.shape[0], -1))
        return F.sum(Tensor(u.reshape(-1, 1)) * F.matmul(w_mat, Tensor(v.reshape(-1, 1))))  # u^T W v

    def forward(self, x):
        lyr = self.layer
        w = lyr.weight / self.sigma()                    # W_SN = W / sigma(W)
        if isinstance(lyr, Linear):
            return F.linear(x, w, lyr.bias)
        return F.conv2d(x, w, lyr.bias, stride=lyr.stride, padding=lyr.padding,
                        dilation=lyr.dilation, groups=lyr.groups)

    def extra_repr(self):
        return f"n_power_iterations={self.n_power_iterations}"


def spectral_norm(layer, n_power_iterations: int = 1, eps: float = 1e-12, rng=None):
    """torch.nn.utils.spectral_norm's role: ``layer`` wrapped in :class:`SpectralNorm`."""
    return SpectralNorm(layer, n_power_iterations, eps, rng)
