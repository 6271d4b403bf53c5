"""Parameter initialisation, torch's formulas, drawn from a NumPy generator.

This is the one file of refgen.nn that imports NumPy, on purpose: values are drawn on the
host with ``numpy.random.Generator`` and only then moved to the active backend, so a given
seed gives the same initial weights on CPU (NumPy) and GPU (CuPy). Every function fills its
tensor in place (``tensor.data`` is replaced) and returns it.

``rng`` may be a ``numpy.random.Generator``, an int seed, or None for the module-level
generator (seeded 0; reseed it with :func:`manual_seed`).
"""
from __future__ import annotations

import math

import numpy as np  # host RNG only: see the module docstring

from refgen import backend

__all__ = ["calculate_gain", "calculate_fan_in_and_fan_out", "manual_seed", "get_rng",
           "uniform_", "normal_", "trunc_normal_", "constant_", "zeros_", "ones_", "zero_module",
           "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_"]

_default = np.random.default_rng(0)


def manual_seed(seed: int):
    """Reseed the generator used when a layer is built without an explicit ``rng``."""
    global _default
    _default = np.random.default_rng(seed)
    return _default


def get_rng(rng=None) -> np.random.Generator:
    """``rng`` as a NumPy Generator (None: the module-level one; an int: a fresh seeded one)."""
    if rng is None:
        return _default
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng))
    raise TypeError(f"parameter init needs a numpy.random.Generator, an int seed or None, "
                    f"got {type(rng).__name__} (initialise on the host so CPU and GPU agree)")


def _fill(tensor, values):
    tensor.data = backend.asarray(np.asarray(values).astype(tensor.dtype, copy=False))
    return tensor


def calculate_fan_in_and_fan_out(shape):
    """fan_in = shape[1] * receptive field, fan_out = shape[0] * receptive field (torch's rule,
    also for transposed-conv weights (in, out, kh, kw))."""
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out need at least 2 dims, got shape {shape}")
    receptive = 1
    for n in shape[2:]:
        receptive *= n
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity: str, param=None) -> float:
    """The gain that keeps activations' variance through ``nonlinearity`` (torch's table)."""
    if nonlinearity in ("linear", "identity", "sigmoid") or nonlinearity.startswith("conv"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"unknown nonlinearity {nonlinearity!r}")


def _fan(shape, mode):
    fan_in, fan_out = calculate_fan_in_and_fan_out(shape)
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    return fan_in if mode == "fan_in" else fan_out


def uniform_(tensor, a: float = 0.0, b: float = 1.0, rng=None):
    return _fill(tensor, get_rng(rng).uniform(a, b, size=tensor.shape))


def normal_(tensor, mean: float = 0.0, std: float = 1.0, rng=None):
    return _fill(tensor, mean + std * get_rng(rng).standard_normal(tensor.shape))


def trunc_normal_(tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0,
                  rng=None):
    """N(mean, std^2) conditioned on [a, b], by redrawing the values that fall outside."""
    g = get_rng(rng)
    out = mean + std * g.standard_normal(tensor.shape)
    bad = (out < a) | (out > b)
    while bad.any():
        out[bad] = mean + std * g.standard_normal(int(bad.sum()))
        bad = (out < a) | (out > b)
    return _fill(tensor, out)


def constant_(tensor, value: float):
    return _fill(tensor, np.full(tensor.shape, value))


def zeros_(tensor):
    return constant_(tensor, 0.0)


def ones_(tensor):
    return constant_(tensor, 1.0)


def zero_module(layer):
    """Set a layer's weight and bias (if any) to 0, in place; returns the layer. Used where a
    block must start as the identity (a residual branch, a coupling's scale and shift)."""
    zeros_(layer.weight)
    if getattr(layer, "bias", None) is not None:
        zeros_(layer.bias)
    return layer


def xavier_uniform_(tensor, gain: float = 1.0, rng=None):
    # U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor.shape)
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -a, a, rng=rng)


def xavier_normal_(tensor, gain: float = 1.0, rng=None):
    # N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out))
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor.shape)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), rng=rng)


def kaiming_uniform_(tensor, a: float = 0.0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu", rng=None):
    # U(-bound, bound), bound = gain * sqrt(3 / fan)
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor.shape, mode))
    bound = math.sqrt(3.0) * std
    return uniform_(tensor, -bound, bound, rng=rng)


def kaiming_normal_(tensor, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu", rng=None):
    # N(0, std^2), std = gain / sqrt(fan)
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor.shape, mode))
    return normal_(tensor, 0.0, std, rng=rng)
