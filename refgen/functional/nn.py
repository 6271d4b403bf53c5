"""Neural-network ops, named and signed like torch.nn.functional.

softmax, log_softmax and the normalisations are Functions with an analytic backward (one
graph node instead of many); their backward passes are written with refgen ops, so they
differentiate again. Everything else is a composite of existing ops.

Random ops (dropout, gumbel_softmax, attention dropout) draw from an explicit backend
generator ``rng``, or, when it is None, from a module-level default generator that
:func:`manual_seed` reseeds.
"""
from __future__ import annotations

import math

from refgen.autograd import Function, Tensor, as_tensor, is_grad_enabled
from refgen.backend import xp, default_rng, name as _backend_name
from refgen.functional.elementwise import exp, where
from refgen.functional.linalg import matmul
from refgen.functional.reduction import mean, sum, var
from refgen.functional.shape import getitem, reshape, transpose

__all__ = ["linear", "softmax", "log_softmax", "layer_norm", "group_norm", "dropout",
           "embedding", "one_hot", "gumbel_softmax", "straight_through",
           "scaled_dot_product_attention", "manual_seed"]


# --- the default generator -------------------------------------------------------------

_default_generators: dict = {}  # backend name -> generator, made on first use


def manual_seed(seed) -> None:
    """Reseed the default generator used when a random op is given ``rng=None``."""
    _default_generators[_backend_name()] = default_rng(seed)


def _generator(rng):
    if rng is not None:
        return default_rng(rng)  # a generator passes through; an int seeds a new one
    key = _backend_name()
    if key not in _default_generators:
        _default_generators[key] = default_rng()
    return _default_generators[key]


def _uniform(rng, shape, dtype):
    """U[0, 1) samples of ``shape`` on the active backend."""
    dt = dtype if dtype in (xp.float32, xp.float64) else xp.float64
    return xp.asarray(_generator(rng).random(shape, dtype=dt)).astype(dtype, copy=False)


# --- linear ------------------------------------------------------------------------------

def linear(input, weight, bias=None):
    """y = x W^T + b, with W of shape (out_features, in_features); x is (..., in)."""
    x, w = as_tensor(input), as_tensor(weight)
    lead = x.shape[:-1]
    if x.ndim > 2:  # (..., in) -> (M, in): one matrix product instead of a batch of them
        x = reshape(x, (math.prod(lead), x.shape[-1]))
    y = matmul(x, transpose(w, 0, 1))  # (M, out)
    if bias is not None:
        y = y + bias
    if len(lead) != 1:
        y = reshape(y, lead + (w.shape[0],))
    return y


# --- softmax -----------------------------------------------------------------------------

class _Softmax(Function):
    def forward(self, x, axis, safe):
        self.axis = axis
        m = xp.max(x, axis=axis, keepdims=True)
        e = xp.exp(x - xp.where(xp.isfinite(m), m, 0))
        s = xp.sum(e, axis=axis, keepdims=True)
        if safe:  # a row with every entry -inf (nothing to attend to) gives zeros, not NaN
            s = xp.where(s == 0, 1, s)
        return e / s

    def backward(self, gy):
        y = self.output
        # J^T g for y = softmax(x): y * (g - <g, y>)
        return y * (gy - sum(gy * y, self.axis, keepdim=True))


class _LogSoftmax(Function):
    def forward(self, x, axis):
        self.axis = axis
        m = xp.max(x, axis=axis, keepdims=True)
        shifted = x - xp.where(xp.isfinite(m), m, 0)
        return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))

    def backward(self, gy):
        # d/dx (x - logsumexp x): g - softmax(x) * sum(g), with softmax = exp(log_softmax)
        return gy - exp(self.output) * sum(gy, self.axis, keepdim=True)


def softmax(x, dim: int):
    """exp(x_i) / sum_j exp(x_j) along ``dim``, computed with the row maximum subtracted."""
    x = as_tensor(x)
    return _Softmax.apply(x, axis=dim % x.ndim, safe=False)


def log_softmax(x, dim: int):
    """x - logsumexp(x) along ``dim``; finite for |x| in the thousands and beyond."""
    x = as_tensor(x)
    return _LogSoftmax.apply(x, axis=dim % x.ndim)


# --- normalisation -----------------------------------------------------------------------

class _Standardize(Function):
    """xhat = (x - mean) / sqrt(var + eps) over ``axes`` (biased variance, as torch)."""

    def forward(self, x, axes, eps):
        self.axes, self.eps = axes, eps
        mu = xp.mean(x, axis=axes, keepdims=True)
        d = x - mu
        self.rstd = 1.0 / xp.sqrt(xp.mean(d * d, axis=axes, keepdims=True) + eps)
        return d * self.rstd

    def backward(self, gy):
        xhat, axes = self.output, self.axes
        if is_grad_enabled():  # create_graph: rstd must be a function of x too
            rstd = (var(self.inputs[0], axes, unbiased=False, keepdim=True) + self.eps) ** -0.5
        else:
            rstd = Tensor(self.rstd)
        # dL/dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
        return rstd * (gy - mean(gy, axes, keepdim=True) - xhat * mean(gy * xhat, axes, keepdim=True))


def layer_norm(x, normalized_shape, weight=None, bias=None, eps: float = 1e-5):
    """Normalise over the trailing ``normalized_shape`` dims, then scale and shift."""
    x = as_tensor(x)
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if x.shape[x.ndim - len(ns):] != ns:
        raise ValueError(f"layer_norm: normalized_shape {ns} does not match the trailing "
                         f"dims of an input of shape {x.shape}")
    y = _Standardize.apply(x, axes=tuple(range(x.ndim - len(ns), x.ndim)), eps=eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def group_norm(x, num_groups: int, weight=None, bias=None, eps: float = 1e-5):
    """Normalise (N, C, ...) over each group of C/num_groups channels and all positions."""
    x = as_tensor(x)
    n, c = x.shape[:2]
    if c % num_groups:
        raise ValueError(f"group_norm: {c} channels are not divisible into {num_groups} groups")
    xg = reshape(x, (n, num_groups, -1))  # (N, C, ...) -> (N, G, C/G * ...)
    y = reshape(_Standardize.apply(xg, axes=(2,), eps=eps), x.shape)
    per_channel = (1, c) + (1,) * (x.ndim - 2)  # (C,) -> (1, C, 1, ...)
    if weight is not None:
        y = y * reshape(weight, per_channel)
    if bias is not None:
        y = y + reshape(bias, per_channel)
    return y


# --- noise -------------------------------------------------------------------------------

def dropout(x, p: float = 0.5, training: bool = True, rng=None):
    """Inverted dropout: zero each entry with probability p, scale the rest by 1/(1-p).

    rng: a backend generator, advanced by each call; None uses the module default. An int
    seeds a fresh generator on every call, so it gives the same mask every time.
    """
    x = as_tensor(x)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    keep = _uniform(rng, x.shape, x.dtype) >= p
    return x * Tensor(keep.astype(x.dtype) * (1.0 / (1.0 - p)))


def gumbel_softmax(logits, tau: float = 1.0, hard: bool = False, dim: int = -1, rng=None):
    """softmax((logits + g) / tau) with g ~ Gumbel(0, 1); ``hard`` returns the one-hot of
    its argmax with the soft sample's gradient (straight-through)."""
    # Jang et al. 2017: the Gumbel-softmax relaxation of a categorical draw
    logits = as_tensor(logits)
    u = _uniform(rng, logits.shape, logits.dtype)
    u = xp.clip(u, xp.finfo(u.dtype).tiny, None)  # U = 0 would give g = -inf
    g = -xp.log(-xp.log(u))  # Gumbel(0, 1) by inversion
    y_soft = softmax((logits + Tensor(g)) / tau, dim)
    if not hard:
        return y_soft
    d = dim % logits.ndim
    k = xp.arange(logits.shape[d]).reshape((-1,) + (1,) * (logits.ndim - 1 - d))  # (K, 1, ...)
    y_hard = (xp.expand_dims(xp.argmax(y_soft.data, axis=d), d) == k).astype(y_soft.dtype)
    return straight_through(y_hard, y_soft)


class _StraightThrough(Function):
    def forward(self, b, value):
        return value

    def backward(self, gy):
        return gy


def straight_through(forward_value, backward_value):
    """A Tensor equal to ``forward_value`` whose gradient goes to ``backward_value`` unchanged.

    The same as ``backward_value + (forward_value - backward_value).detach()`` but exact
    in the forward value (no rounding from the add and subtract). VQ-VAE's decoder input
    is ``straight_through(z_q, z_e)``; hard Gumbel-softmax is ``straight_through(y_hard, y_soft)``.
    """
    b = as_tensor(backward_value)
    value = forward_value.data if isinstance(forward_value, Tensor) else xp.asarray(forward_value)
    if value.shape != b.shape:
        raise ValueError(f"straight_through: forward value of shape {value.shape} and backward "
                         f"value of shape {b.shape} must have the same shape")
    return _StraightThrough.apply(b, value=value.astype(b.dtype, copy=False))


# --- lookup ------------------------------------------------------------------------------

def _indices(input):
    idx = input.data if isinstance(input, Tensor) else xp.asarray(input)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"indices must be integers, got dtype {idx.dtype}")
    return idx


def embedding(input, weight):
    """Rows of ``weight`` (num_embeddings, dim) at integer ``input``: (...) -> (..., dim).

    The gradient scatter-adds into the rows used (repeated indices accumulate).
    """
    return getitem(as_tensor(weight), _indices(input))


def one_hot(indices, num_classes: int = -1, dtype=None):
    """Integer (...) -> float (..., num_classes) with a 1 at each index; not differentiable.

    num_classes=-1 takes max(indices) + 1. dtype defaults to float32.
    """
    idx = _indices(indices)
    if num_classes < 0:
        num_classes = int(idx.max()) + 1 if idx.size else 0
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= num_classes):
        raise ValueError(f"one_hot: indices must lie in [0, {num_classes}), got "
                         f"[{int(idx.min())}, {int(idx.max())}]")
    eye = idx[..., None] == xp.arange(num_classes)
    return Tensor(eye.astype(xp.float32 if dtype is None else dtype))


# --- attention ---------------------------------------------------------------------------

def scaled_dot_product_attention(query, key, value, attn_mask=None, is_causal: bool = False,
                                 dropout_p: float = 0.0, scale=None, rng=None):
    """softmax(Q K^T * scale + mask) V: (..., L, E), (..., S, E), (..., S, Ev) -> (..., L, Ev).

    attn_mask: boolean (True = may attend, as torch) or an additive float mask (a Tensor
    may require grad), broadcastable to (..., L, S). is_causal: query i attends to keys
    j <= i (top-left aligned when L != S, as torch); it combines with attn_mask.
    scale defaults to 1/sqrt(E). A query with no key to attend to gets zeros, not NaN.
    dropout_p > 0 drops attention weights (pass 0 at evaluation), drawn from ``rng``.
    """
    q, k, v = as_tensor(query), as_tensor(key), as_tensor(value)
    L, S = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = matmul(q * scale, transpose(k, -1, -2))  # (..., L, S); scaling Q is cheaper
    if is_causal:
        scores = where(xp.tri(L, S, 0, dtype=bool), scores, -math.inf)
    if attn_mask is not None:
        mask_data = attn_mask.data if isinstance(attn_mask, Tensor) else xp.asarray(attn_mask)
        if mask_data.dtype == bool:
            scores = where(mask_data, scores, -math.inf)
        else:
            scores = scores + as_tensor(attn_mask, like=scores)
    attn = _Softmax.apply(scores, axis=scores.ndim - 1, safe=True)
    if dropout_p > 0.0:
        attn = dropout(attn, dropout_p, training=True, rng=rng)
    return matmul(attn, v)  # (..., L, Ev)
