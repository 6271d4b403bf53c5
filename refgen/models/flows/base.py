"""The flow protocol: invertible layers with tractable log-determinants over a base density.

A flow maps data x to a latent z through a composition of invertible layers,
z = f(x) = f_K(... f_1(x)). Every layer is a :class:`FlowLayer`:

    forward(x) -> (y, logdet)    y = f_k(x),  logdet = log |det df_k/dx|, shape (B,)
    inverse(y) -> x              x = f_k^{-1}(y)

"forward" is the normalizing direction (data -> noise), the one density evaluation needs.
By the change of variables, with x_0 = x and x_k = f_k(x_{k-1}),

    log p_X(x) = log p_Z(f(x)) + sum_k log |det J_{f_k}(x_{k-1})|       (change of variables)

and sampling runs the layers backwards: z ~ p_Z, x = f_1^{-1}(... f_K^{-1}(z)).

Every registered flow ends in a flat latent z of shape (B, D), D the number of data
dimensions, under a fixed base density: :class:`StandardNormal` (or, NICE's choice,
:class:`StandardLogistic`). Learned priors (Glow's split prior) are written as flow layers
too, so the base itself never has parameters.
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen.autograd import Tensor, as_tensor, no_grad
from refgen.backend import xp
from refgen.nn import Module, ModuleList

__all__ = ["FlowLayer", "FlowSequence", "StandardNormal", "StandardLogistic", "Flow",
           "zero_logdet", "constant_logdet"]


def zero_logdet(x):
    """A (B,) zero log-determinant in x's dtype (volume-preserving layers)."""
    return Tensor(xp.zeros((x.shape[0],), dtype=x.dtype))


def constant_logdet(ld, x):
    """A log-determinant that does not depend on the example: scalar Tensor -> (B,)."""
    return F.broadcast_to(F.reshape(ld, (1,)), (x.shape[0],))


class FlowLayer(Module):
    """An invertible map with its log-determinant (see the module docstring)."""

    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} has no forward")

    def inverse(self, y):
        raise NotImplementedError(f"{type(self).__name__} has no inverse")


class FlowSequence(FlowLayer):
    """f = f_K o ... o f_1: log-determinants add, inverses run in reverse order."""

    def __init__(self, layers):
        super().__init__()
        self.layers = ModuleList(layers)

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def forward(self, x):
        x = as_tensor(x)
        total = zero_logdet(x)
        for layer in self.layers:
            x, ld = layer(x)
            total = total + ld                       # log|det| of a composition is a sum
        return x, total

    def inverse(self, y):
        y = as_tensor(y)
        for layer in reversed(list(self.layers)):
            y = layer.inverse(y)
        return y


class StandardNormal:
    """p_Z(z) = N(z; 0, I): log p = -1/2 |z|^2 - D/2 log(2 pi), summed per example."""

    name = "normal"

    def log_prob(self, z):
        z = as_tensor(z)
        d = math.prod(z.shape[1:])
        return -0.5 * F.sum_except_batch(z * z) - 0.5 * d * math.log(2.0 * math.pi)

    def sample(self, shape, rng, dtype):
        return rng.standard_normal(shape, dtype=xp.float64).astype(dtype)


class StandardLogistic:
    """p_Z(z) = prod_d sigma(z_d)(1 - sigma(z_d)): log p = -sum_d [softplus(z_d) + softplus(-z_d)]
    (NICE's prior; heavier tails than the Gaussian). Sampling inverts the CDF: z = log u - log(1 - u)."""

    name = "logistic"

    def log_prob(self, z):
        z = as_tensor(z)
        return -F.sum_except_batch(F.softplus(z) + F.softplus(-z))

    def sample(self, shape, rng, dtype):
        u = rng.random(shape, dtype=xp.float64)
        u = xp.clip(u, 1e-12, 1.0 - 1e-12)
        return (xp.log(u) - xp.log1p(-u)).astype(dtype)


_BASES = {"normal": StandardNormal, "logistic": StandardLogistic}


class Flow(Module):
    """A density model: ``layers`` (data -> latent, flat (B, D)) and a fixed base density.

    The registered models (nice, realnvp, glow, maf) are Flows whose constructors build the
    layer list from the data shape. The training loss is the exact negative log-likelihood.
    """

    def __init__(self, layers, data_shape, base: str = "normal"):
        super().__init__()
        if base not in _BASES:
            raise ValueError(f"base must be one of {sorted(_BASES)}, got {base!r}")
        self.data_shape = tuple(int(s) for s in data_shape)
        self.dim = math.prod(self.data_shape)
        self.flow = layers if isinstance(layers, FlowSequence) else FlowSequence(layers)
        self.base = _BASES[base]()

    def extra_repr(self):
        return f"data_shape={self.data_shape}, base={self.base.name!r}"

    def forward(self, x):
        """x (B, *data_shape) -> (z (B, D), log|det dz/dx| (B,))."""
        return self.flow(x)

    def inverse(self, z):
        """z (B, D) -> x (B, *data_shape)."""
        return self.flow.inverse(z)

    def log_prob(self, x):
        """Exact log p(x) in nats, (B, *data_shape) -> (B,)."""
        z, logdet = self.flow(as_tensor(x))
        return self.base.log_prob(z) + logdet        # change of variables

    def loss(self, batch, rng):
        """Mean negative log-likelihood, nats per example."""
        return -self.log_prob(batch.x).mean()

    def _dtype(self):
        for p in self.parameters():
            return p.dtype
        return xp.float32

    def sample(self, n, cond=None, *, rng, temperature: float = 1.0):
        """n samples (n, *data_shape): z ~ p_Z (scaled by ``temperature``), x = f^{-1}(z)."""
        z = self.base.sample((int(n), self.dim), rng, self._dtype())
        if temperature != 1.0:
            z = z * temperature
        with no_grad():
            x = self.flow.inverse(Tensor(z))
        return x.data
