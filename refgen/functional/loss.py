"""Losses, named and signed like torch.nn.functional. ``reduction`` is 'mean', 'sum' or 'none'.

Every loss is written in the form that stays finite and accurate in float32 for logits
of any size: log-probabilities come from log_softmax / softplus, never from log(softmax).
"""
from __future__ import annotations

import math

from refgen.autograd import Function, Tensor, as_tensor, is_grad_enabled
from refgen.backend import xp
from refgen.functional.elementwise import (_sigmoid_kernel, _softplus_tail_kernel, chunked, clamp, log,
                                           sigmoid, softplus)
from refgen.functional.nn import log_softmax, straight_through
from refgen.functional.reduction import mean, sum
from refgen.functional.shape import getitem, unsqueeze, squeeze

__all__ = ["mse_loss", "binary_cross_entropy_with_logits", "binary_cross_entropy",
           "cross_entropy", "nll_loss", "gaussian_nll_loss", "bernoulli_log_prob"]


def _reduce(loss, reduction: str):
    if reduction == "mean":
        return mean(loss)
    if reduction == "sum":
        return sum(loss)
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _bernoulli_log_prob_kernel(y, l, x):
    """y = x l - softplus(l) = (x l - max(l, 0)) - log(1 + e^-|l|), in y's buffer. For x = 1
    and l > 0 (or x = 0 and l < 0) the bracket is exactly 0, so log p keeps its full relative
    precision where it is near 0 (x l - softplus(l) would lose it to cancellation)."""
    _softplus_tail_kernel(y, l)
    xp.subtract(x * l - xp.maximum(l, 0), y, out=y)


def _bernoulli_log_prob_grad_kernel(d, l, x, g):
    """d = g (x - sigma(l))."""
    _sigmoid_kernel(d, l)
    xp.subtract(x, d, out=d)
    d *= g


class _BernoulliLogProb(Function):
    """log p(x) = x l - softplus(l) for logits l, one node: d/dl = x - sigma(l), d/dx = l."""

    def forward(self, l, x):
        return chunked(_bernoulli_log_prob_kernel, 1, l, x)

    def backward(self, gy):
        l, x = self.inputs
        gx = gy * l if x.requires_grad else None
        if not l.requires_grad:
            return None, gx
        if not is_grad_enabled():  # no graph to record: chained passes on raw arrays
            return Tensor(chunked(_bernoulli_log_prob_grad_kernel, 1, l.data, x.data, gy.data)), gx
        return gy * (x - sigmoid(l)), gx


def bernoulli_log_prob(logits, x):
    """log Bernoulli(x; sigmoid(l)) = x l - softplus(l) = x log sigmoid(l) + (1 - x) log
    sigmoid(-l), elementwise, finite for any l: minus the binary cross-entropy with logits.
    Logits and x of one shape and dtype are one node (the loss of every Bernoulli decoder);
    otherwise the same formula broadcast, as a composition."""
    l = as_tensor(logits)
    x = as_tensor(x, like=l)
    if x.shape == l.shape and x.dtype == l.dtype:
        return _BernoulliLogProb.apply(l, x)
    return x * l - softplus(l)


def mse_loss(input, target, reduction: str = "mean"):
    """(input - target)^2, reduced."""
    x = as_tensor(input)
    d = x - as_tensor(target, like=x)
    return _reduce(d * d, reduction)


def binary_cross_entropy_with_logits(input, target, reduction: str = "mean", pos_weight=None):
    """-[pw t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))] for logits x, targets t in [0, 1].

    With log sigmoid(x) = -softplus(-x) and log(1 - sigmoid(x)) = -softplus(x) this is
    pw t softplus(-x) + (1 - t) softplus(x): both terms are non-negative, so nothing
    cancels, and softplus is finite for |x| = 1e4 (max(x, 0) + log1p(exp(-|x|))).
    pos_weight (pw) weighs the positive term, broadcast along the last (class) dim.
    """
    x = as_tensor(input)
    t = as_tensor(target, like=x)
    pos = softplus(-x)  # -log sigmoid(x)
    if pos_weight is not None:
        pos = pos * as_tensor(pos_weight, like=x)
    return _reduce(t * pos + (1.0 - t) * softplus(x), reduction)


def _log_clamped(a):
    """log(a) with log(0) = -inf clamped to -100, as torch's binary_cross_entropy does."""
    pos = a > 0
    return xp.where(pos, xp.maximum(xp.log(xp.where(pos, a, 1)), -100.0), -100.0)


class _BinaryCrossEntropy(Function):
    def forward(self, p, t):
        return -(t * _log_clamped(p) + (1 - t) * _log_clamped(1 - p))

    def backward(self, gy):
        p, t = self.inputs
        # d/dp = (p - t) / (p (1 - p)), the denominator floored as torch does
        gp = gy * (p - t) / clamp(p * (1.0 - p), min=1e-12) if p.requires_grad else None
        gt = None
        if t.requires_grad:  # d/dt = log(1 - p) - log(p), each clamped at -100
            tiny = float(xp.finfo(p.dtype).tiny)

            def clog(a):
                return clamp(log(clamp(a, min=tiny)), min=-100.0)

            gt = gy * (clog(1.0 - p) - clog(p))
        return gp, gt


def binary_cross_entropy(input, target, reduction: str = "mean"):
    """-[t log p + (1 - t) log(1 - p)] for probabilities p; each log is clamped at -100.

    Prefer binary_cross_entropy_with_logits: it is exact where p rounds to 0 or 1.
    """
    p = as_tensor(input)
    return _reduce(_BinaryCrossEntropy.apply(p, as_tensor(target, like=p)), reduction)


def _pick_class(logp, target):
    """logp[n, target[n, ...], ...]: (N, C, d1, ...) and (N, d1, ...) -> (N, d1, ...)."""
    idx = []
    for ax in range(logp.ndim):
        if ax == 1:
            idx.append(target)
            continue
        shape = [1] * target.ndim
        shape[ax if ax == 0 else ax - 1] = logp.shape[ax]
        idx.append(xp.arange(logp.shape[ax]).reshape(shape))
    return getitem(logp, tuple(idx))


def _nll(logp, target, reduction, ignore_index, label_smoothing):
    """The class-index negative log-likelihood behind nll_loss and cross_entropy."""
    logp = as_tensor(logp)
    target = target.data if isinstance(target, Tensor) else xp.asarray(target)
    if target.dtype.kind not in "iu":
        raise TypeError(f"class targets must be integers, got dtype {target.dtype}")
    unbatched = logp.ndim == 1
    if unbatched:  # (C,) and () -> (1, C) and (1,)
        logp, target = unsqueeze(logp, 0), target.reshape(1)
    c = logp.shape[1]
    if target.shape != logp.shape[:1] + logp.shape[2:]:
        raise ValueError(f"target of shape {target.shape} does not match input of shape "
                         f"{logp.shape} (expected {logp.shape[:1] + logp.shape[2:]})")
    valid = target != ignore_index
    target = xp.where(valid, target, 0)
    if bool(xp.any((target < 0) | (target >= c))):
        raise ValueError(f"class targets must lie in [0, {c}) (or equal ignore_index="
                         f"{ignore_index})")
    loss = -_pick_class(logp, target)  # (N, d1, ...)
    if label_smoothing:
        # target distribution (1 - eps) onehot + eps / C: the extra term is eps * mean_c(-logp_c)
        loss = (1.0 - label_smoothing) * loss - (label_smoothing / c) * sum(logp, 1)
    all_valid = bool(xp.all(valid))
    if not all_valid:
        loss = loss * Tensor(valid.astype(loss.dtype))
    if unbatched:
        loss = squeeze(loss, 0)
    if reduction == "mean" and not all_valid:  # the mean is over the targets not ignored
        return sum(loss) / float(xp.sum(valid))
    return _reduce(loss, reduction)


def nll_loss(input, target, reduction: str = "mean", ignore_index: int = -100):
    """-input[n, target[n]] for log-probabilities input (N, C) or (N, C, d1, ...)."""
    return _nll(input, target, reduction, ignore_index, 0.0)


def cross_entropy(input, target, reduction: str = "mean", label_smoothing: float = 0.0,
                  ignore_index: int = -100):
    """nll_loss(log_softmax(input, 1), target) for logits (N, C) or (N, C, d1, ...).

    target: class indices (N, d1, ...), or class probabilities shaped like input.
    label_smoothing eps mixes the target with the uniform distribution:
    (1 - eps) * onehot + eps / C.
    """
    x = as_tensor(input)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    dim = 0 if x.ndim == 1 else 1
    logp = log_softmax(x, dim)
    t_data = target.data if isinstance(target, Tensor) else xp.asarray(target)
    if t_data.dtype.kind == "f":  # class probabilities
        if t_data.shape != x.shape:
            raise ValueError(f"probability targets must have the input's shape {x.shape}, "
                             f"got {t_data.shape}")
        t = as_tensor(target)
        if label_smoothing:
            t = t * (1.0 - label_smoothing) + label_smoothing / x.shape[dim]
        return _reduce(-sum(t * logp, dim), reduction)
    return _nll(logp, t_data, reduction, ignore_index, label_smoothing)


def gaussian_nll_loss(input, target, var, full: bool = False, eps: float = 1e-6,
                      reduction: str = "mean"):
    """0.5 (log var + (input - target)^2 / var) [+ 0.5 log 2 pi when ``full``].

    var has the input's shape, or broadcasts to it, or lacks its last dim (one variance per
    row). It is clamped at eps in value only: the gradient reaches var unchanged, as torch.
    """
    x = as_tensor(input)
    v = as_tensor(var, like=x)
    if v.ndim == x.ndim - 1 and x.ndim > 0:
        v = unsqueeze(v, -1)
    if bool(xp.any(v.data < 0)):
        raise ValueError("gaussian_nll_loss: var has negative entries")
    v = straight_through(xp.maximum(v.data, eps), v)
    d = x - as_tensor(target, like=x)
    loss = 0.5 * (log(v) + d * d / v)
    if full:
        loss = loss + 0.5 * math.log(2 * math.pi)
    return _reduce(loss, reduction)
