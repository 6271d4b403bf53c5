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
from refgen.backend import batch_slices, xp, default_rng, long_rows, name as _backend_name
from refgen.functional.elementwise import exp, where
from refgen.functional.linalg import matmul
from refgen.functional.reduction import mean, sum, var
from refgen.functional.shape import getitem, reshape, sum_to, transpose

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

class _Linear(Function):
    """y = x W^T + b on rows x (M, in), W (out, in), b (out,) or absent; one node, the bias
    added in the product's buffer. dL/dx = G W, dL/dW = G^T x, dL/db = sum over rows of G,
    written with refgen ops (differentiable again)."""

    def forward(self, x, w, b=None):
        y = xp.matmul(x, w.T)                               # (M, out)
        if b is not None:
            y += b
        return y

    def backward(self, gy):
        x, w = self.inputs[:2]
        gx = matmul(gy, w) if x.requires_grad else None
        gw = matmul(transpose(gy, 0, 1), x) if w.requires_grad else None
        if len(self.inputs) == 2:
            return gx, gw
        b = self.inputs[2]
        return gx, gw, (sum_to(gy, b.shape) if b.requires_grad else None)


def linear(input, weight, bias=None):
    """y = x W^T + b, with W of shape (out_features, in_features); x is (..., in)."""
    x, w = as_tensor(input), as_tensor(weight)
    lead = x.shape[:-1]
    if x.ndim != 2:  # (..., in) -> (M, in): one matrix product instead of a batch of them
        x = reshape(x, (math.prod(lead), x.shape[-1]))
    b = None if bias is None else as_tensor(bias)
    if b is None:
        y = _Linear.apply(x, w)
    elif b.shape == w.shape[:1] and b.dtype == xp.result_type(x.dtype, w.dtype):
        y = _Linear.apply(x, w, b)                          # (M, out)
    else:  # a bias that broadcasts otherwise, or promotes the dtype: the product, then the sum
        y = _Linear.apply(x, w) + b
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


class _AffineNorm(Function):
    """y = xhat * w + b in one node, xhat the standardisation of x viewed as ``stat_shape``
    over ``axes``; w and b broadcast against x from ``param_shape``.

    Backward, with g = dL/dy * w seen in ``stat_shape`` (the standardisation's adjoint):
        dL/dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),
        dL/dw = sum of dL/dy * xhat,  dL/db = sum of dL/dy  (over the broadcast dims).
    When the backward itself is recorded (create_graph) the same formulas are written with
    refgen ops on a recomputed xhat, so they differentiate again.
    """

    def forward(self, x, w, b, stat_shape, axes, param_shape, eps):
        self.stat_shape, self.axes, self.param_shape, self.eps = stat_shape, axes, param_shape, eps
        # the statistics' axes are the trailing ones: x as rows (R, M), one row per statistic;
        # row means are matrix-vector products with a (M,) vector of 1/M (BLAS: several times
        # faster than a reduction along a short last axis)
        m = math.prod(stat_shape[a] for a in axes)
        self.avg = xp.full((m,), 1.0 / m, dtype=x.dtype)
        xs = x.reshape(-1, m)                                          # (R, M)
        d = xs - (xs @ self.avg)[:, None]
        var_ = xp.einsum("ij,ij->i", d, d) * (1.0 / m)                 # no (R, M) temporary
        self.rstd = (1.0 / xp.sqrt(var_ + eps))[:, None]               # (R, 1)
        d *= self.rstd
        self.xhat = d.reshape(x.shape)                                 # (R, M) -> x's shape
        y = self.xhat * w.reshape(param_shape)
        y += b.reshape(param_shape)
        return y

    def backward(self, gy):
        x, w, b = self.inputs
        axes, stat_shape, ps = self.axes, self.stat_shape, self.param_shape
        if not is_grad_enabled():  # raw arrays, two full-size buffers
            g, wb, avg = gy.data, w.data.reshape(ps), self.avg
            m = avg.shape[0]
            t = g * self.xhat                                           # dL/dy * xhat
            gw = _sum_to_params(t, ps).reshape(w.shape)
            t *= wb                                                     # g * xhat, g = dL/dy * w
            t = t.reshape(-1, m)
            m2 = (t @ avg)[:, None]                                     # mean(g xhat) per row
            gx = (g * wb).reshape(-1, m)
            m1 = (gx @ avg)[:, None]                                    # mean(g) per row
            xp.multiply(self.xhat.reshape(-1, m), m2, out=t)
            t += m1
            gx -= t                                                     # g - mean(g) - xhat mean(g xhat)
            gx *= self.rstd
            gb = _sum_to_params(g, ps).reshape(b.shape)
            # a non-contiguous dL/dy gives products in its own layout, and a reshape is then
            # a copy: gx is the updated (R, M) array itself, reshaped only at the end
            return Tensor(gx.reshape(x.shape)), Tensor(gw), Tensor(gb)
        xs = reshape(x, stat_shape)
        rstd = (var(xs, axes, unbiased=False, keepdim=True) + self.eps) ** -0.5
        xhat = (xs - mean(xs, axes, keepdim=True)) * rstd
        g = reshape(gy * reshape(w, ps), stat_shape)
        gx = rstd * (g - mean(g, axes, keepdim=True) - xhat * mean(g * xhat, axes, keepdim=True))
        gw = reshape(sum_to(gy * reshape(xhat, x.shape), ps), w.shape)
        gb = reshape(sum_to(gy, ps), b.shape)
        return reshape(gx, x.shape), gw, gb


GN_CHUNK_BYTES = 1 << 19  # 512 KiB: a chunk's passes after the first read stay in cache


def _sample_chunks(n, sample_bytes):
    """Slices of whole samples, about GN_CHUNK_BYTES each (one slice on the GPU)."""
    on_cpu = _backend_name() == "numpy"
    return batch_slices(n, sample_bytes, GN_CHUNK_BYTES if on_cpu else n * sample_bytes)


def _rowdot(a, b):
    """sum(a * b) along the last axis with no temporary of a's size."""
    vecdot = getattr(xp, "vecdot", None)
    return vecdot(a, b) if vecdot is not None else xp.einsum("ij,ij->i", a, b)


def _hw_rows(x, w, b):
    """Group norm's broadcast passes run over rows of H*W numbers (0 when a dtype differs:
    a pass that casts needs NumPy's buffers)."""
    return x.size // (x.shape[0] * x.shape[1]) if x.dtype == w.dtype == b.dtype else 0


class _GroupAffineNorm(_AffineNorm):
    """Group norm's y = xhat * w[c] + b[c], w and b per channel, in one node that never
    materialises xhat. With d = x - mean over each group's row and r = rstd of the row,

        y = d * (r w)[n, c] + b[c]
        dL/dx = r (g w - mean(g w) - xhat mean(g w xhat))
              = g (r w)[n, c] - (r mean(g w))[n, grp] - d (r^3 mean(g w d))[n, grp]

    and the row means come from per-(n, c) sums S1 = sum_hw g, S2 = sum_hw g d, weighted by
    w and summed over each group's channels; dL/dw = sum_n r S2, dL/db = sum_n S1. The
    forward makes two broadcast passes over x after the centring, the backward three
    (recorded backward: as _AffineNorm), both over chunks of whole samples of about
    GN_CHUNK_BYTES, so that all but a chunk's first pass read from cache.
    """

    def forward(self, x, w, b, stat_shape, axes, param_shape, eps):
        self.stat_shape, self.axes, self.param_shape, self.eps = stat_shape, axes, param_shape, eps
        with long_rows(_hw_rows(x, w, b)):
            return self._forward(x, w, b)

    def _forward(self, x, w, b):
        n, c, groups, m = x.shape[0], x.shape[1], self.stat_shape[1], self.stat_shape[2]
        dtype = xp.result_type(x.dtype, w.dtype, b.dtype)
        d = xp.empty((n, c, m * groups // c), dtype=x.dtype)           # x - mean: (N, C, HW)
        y = d if not self.recorded and dtype == x.dtype else xp.empty(d.shape, dtype=dtype)
        r = xp.empty((n, groups), dtype=x.dtype)                        # rstd per row
        ones = xp.full((m,), 1.0 / m, dtype=x.dtype)
        for sl in _sample_chunks(n, x[:1].nbytes):                      # no backward: y in d
            xs, dc = x[sl].reshape(-1, m), d[sl].reshape(-1, m)         # (k G, M)
            xp.subtract(xs, (xs @ ones)[:, None], out=dc)               # x - mean per row
            rc = 1.0 / xp.sqrt(_rowdot(dc, dc) * (1.0 / m) + self.eps)  # (k G,)
            r[sl] = rc.reshape(-1, groups)
            scale = rc.reshape(-1, groups, 1) * w.reshape(1, groups, c // groups)  # (r w)[n, c]
            yc = y[sl]
            xp.multiply(d[sl], scale.reshape(-1, c, 1), out=yc)         # (k, C, HW)
            yc += b.reshape(1, c, 1)
        if self.recorded:
            self.d, self.r = d, r
        return y.reshape(x.shape)

    def backward(self, gy):
        if is_grad_enabled():  # create_graph: the formulas in refgen ops, differentiable again
            return super().backward(gy)
        with long_rows(_hw_rows(*(t.data for t in self.inputs))):
            return self._backward(gy)

    def _backward(self, gy):
        x, w, b = self.inputs
        n, c, groups = x.shape[0], x.shape[1], self.stat_shape[1]
        m, cg = self.stat_shape[2], c // self.stat_shape[1]
        g = gy.data.reshape(n, c, -1)                                   # (N, C, HW)
        gx = xp.empty(g.shape, dtype=xp.result_type(g.dtype, self.d.dtype, w.dtype))
        s1 = xp.empty((n, groups, cg), dtype=gx.dtype)
        s2 = xp.empty((n, groups, cg), dtype=gx.dtype)
        ones = xp.ones((g.shape[2],), dtype=g.dtype)
        wg = w.data.reshape(1, groups, cg)
        for sl in _sample_chunks(n, g[:1].nbytes):
            gc, dc = g[sl], self.d[sl]                                  # (k, C, HW)
            s1[sl] = (gc @ ones).reshape(-1, groups, cg)                # sum_hw g
            s2[sl] = _rowdot(gc.reshape(-1, gc.shape[2]), dc.reshape(-1, gc.shape[2])).reshape(-1, groups, cg)  # sum_hw g d
            r = self.r[sl].reshape(-1, groups, 1)
            m1 = (s1[sl] * wg).sum(axis=2, keepdims=True) / m           # mean(g w) per row
            m2 = (s2[sl] * wg).sum(axis=2, keepdims=True) / m           # mean(g w d)
            gxc = gx[sl]
            xp.multiply(gc, (r * wg).reshape(-1, c, 1), out=gxc)        # g (r w)
            gxc = gxc.reshape(-1, m)                                    # rows of (k G, M)
            gxc -= dc.reshape(-1, m) * (r ** 3 * m2).reshape(-1, 1)     # - d r^3 mean(g w d)
            gxc -= (r * m1).reshape(-1, 1)                              # - r mean(g w)
        r = self.r.reshape(n, groups, 1)
        gw = (r * s2).sum(axis=0).reshape(w.shape)                      # sum_n r S2
        gb = s1.sum(axis=0).reshape(b.shape)                            # sum_n S1
        return Tensor(gx.reshape(x.shape)), Tensor(gw), Tensor(gb)


def _sum_to_params(a, ps):
    """A raw array (..., *ps) summed down to the layer norm's parameter shape ``ps``, the sum
    over the leading rows as a vector-matrix product with ones."""
    if len(ps) < a.ndim:
        rows = a.reshape(-1, math.prod(ps))
        return (xp.ones((rows.shape[0],), dtype=a.dtype) @ rows).reshape(ps)
    return sum_to(Tensor(a), ps).data


def layer_norm(x, normalized_shape, weight=None, bias=None, eps: float = 1e-5):
    """Normalise over the trailing ``normalized_shape`` dims, then scale and shift (one
    graph node when both weight and bias are given)."""
    x = as_tensor(x)
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if x.shape[x.ndim - len(ns):] != ns:
        raise ValueError(f"layer_norm: normalized_shape {ns} does not match the trailing "
                         f"dims of an input of shape {x.shape}")
    axes = tuple(range(x.ndim - len(ns), x.ndim))
    if weight is not None and bias is not None:
        return _AffineNorm.apply(x, as_tensor(weight), as_tensor(bias), stat_shape=x.shape,
                                 axes=axes, param_shape=ns, eps=eps)
    y = _Standardize.apply(x, axes=axes, eps=eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def group_norm(x, num_groups: int, weight=None, bias=None, eps: float = 1e-5):
    """Normalise (N, C, ...) over each group of C/num_groups channels and all positions
    (one graph node when both weight and bias are given)."""
    x = as_tensor(x)
    n, c = x.shape[:2]
    if c % num_groups:
        raise ValueError(f"group_norm: {c} channels are not divisible into {num_groups} groups")
    groups = (n, num_groups, x.size // (n * num_groups))  # (N, C, ...) -> (N, G, C/G * ...)
    per_channel = (1, c) + (1,) * (x.ndim - 2)  # (C,) -> (1, C, 1, ...)
    if weight is not None and bias is not None:
        return _GroupAffineNorm.apply(x, as_tensor(weight), as_tensor(bias), stat_shape=groups,
                                      axes=(2,), param_shape=per_channel, eps=eps)
    y = reshape(_Standardize.apply(reshape(x, groups), axes=(2,), eps=eps), x.shape)
    if weight is not None:
        y = y * reshape(weight, per_channel)
    if bias is not None:
        y = y + reshape(bias, per_channel)
    return y


def layer_norm_composite(x, normalized_shape, weight, bias, eps: float = 1e-5):
    """Standardise, then ``* weight + bias`` as separate nodes: the reference for the fused
    :func:`layer_norm`."""
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    y = _Standardize.apply(x, axes=tuple(range(x.ndim - len(ns), x.ndim)), eps=eps)
    return y * weight + bias


def group_norm_composite(x, num_groups: int, weight, bias, eps: float = 1e-5):
    """The unfused :func:`group_norm`: standardise each group, then scale and shift."""
    n, c = x.shape[:2]
    per_channel = (1, c) + (1,) * (x.ndim - 2)
    y = reshape(_Standardize.apply(reshape(x, (n, num_groups, -1)), axes=(2,), eps=eps), x.shape)
    return y * reshape(weight, per_channel) + reshape(bias, per_channel)


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

_CAUSAL_MASKS: dict = {}  # (L, S, dtype, backend) -> additive (L, S) mask: 0 on and below the diagonal, -inf above


def _causal_additive(L, S, dtype):
    key = (L, S, xp.dtype(dtype).str, _backend_name())
    if key not in _CAUSAL_MASKS:
        if len(_CAUSAL_MASKS) > 64:
            _CAUSAL_MASKS.clear()
        _CAUSAL_MASKS[key] = xp.where(xp.tri(L, S, 0, dtype=bool), 0.0, -math.inf).astype(dtype)
    return _CAUSAL_MASKS[key]


def _additive_mask(L, S, dtype, is_causal, mask):
    """The scores' additive mask (0 = may attend, -inf = may not), broadcastable to
    (..., L, S), or None. ``mask`` is a raw boolean or float array, or None."""
    add = _causal_additive(L, S, dtype) if is_causal else None
    if mask is not None:
        m = xp.where(mask, 0.0, -math.inf).astype(dtype) if mask.dtype == bool else mask.astype(dtype, copy=False)
        add = m if add is None else add + m
    return add


def _softmax_rows_(s):
    """softmax over the last axis of a raw array, in place; an all -inf row gives zeros."""
    m = xp.max(s, axis=-1, keepdims=True)
    m[~xp.isfinite(m)] = 0                            # all -inf row: exp gives 0, not NaN
    s -= m
    xp.exp(s, out=s)
    z = xp.sum(s, axis=-1, keepdims=True)
    z[z == 0] = 1
    s /= z
    return s


CAUSAL_BLOCKS = 4  # query blocks of a causal attention: block i reads keys 0 .. its last row


def _query_blocks(L, S, causal_only):
    """[(a, b, kb)]: query rows a..b-1 read keys 0..kb-1. A causal mask with nothing else
    (query i reads keys j <= i) splits the L rows into CAUSAL_BLOCKS blocks, each reading the
    keys up to its last row: (nb + 1) / (2 nb) of the score matrix (5/8 at nb = 4) is made
    instead of all of it. Any other mask: one block of every row and key."""
    if not causal_only or L < 2 * CAUSAL_BLOCKS:
        return [(0, L, S)]
    cuts = [round(L * i / CAUSAL_BLOCKS) for i in range(CAUSAL_BLOCKS + 1)]
    return [(a, b, min(b, S)) for a, b in zip(cuts[:-1], cuts[1:])]


class _Attention(Function):
    """O = P V, P = softmax(Q K^T * scale + M), M an additive constant mask; one node.

    Forward keeps only P (..., L, S), as row blocks (``_query_blocks``: under a causal mask
    a block of queries keeps only the keys it can see; the rest of its row of P is 0).
    Backward, with dP = dO V^T:
        dS = P * (dP - rowsum(dP * P)),  dQ = scale dS K,  dK = scale dS^T Q,  dV = P^T dO,
    block by block, dK and dV summed over the blocks; the scale multiplies the small (L, E)
    factors, not the (L, S) ones. When the backward itself is recorded (create_graph) P is
    recomputed whole with refgen ops (matmul, softmax) and the same formulas are written with
    refgen ops, so they differentiate again.
    """

    def forward(self, q, k, v, scale, mask, causal_only=False):
        self.scale, self.mask = scale, mask
        self.blocks = _query_blocks(q.shape[-2], k.shape[-2], causal_only)
        qs = q * scale
        self.p, outs = [], []
        for a, b, kb in self.blocks:
            s = xp.matmul(qs[..., a:b, :], xp.swapaxes(k[..., :kb, :], -1, -2))  # (..., b - a, kb)
            if len(self.blocks) > 1:      # causal: keys before row a are all seen by the block
                s[..., a:kb] += mask[a:b, a:kb]
            elif mask is not None:
                s += mask
            self.p.append(_softmax_rows_(s))
            outs.append(xp.matmul(self.p[-1], v[..., :kb, :]))                     # (..., b - a, Ev)
        return outs[0] if len(outs) == 1 else xp.concatenate(outs, axis=-2)

    def backward(self, go):
        q, k, v = self.inputs
        if not is_grad_enabled():
            g, qd, kd, vd = go.data, q.data, k.data, v.data
            gq, gk, gv = [], None, None
            for (a, b, kb), p in zip(self.blocks, self.p):
                ga = g[..., a:b, :]
                dp = xp.matmul(ga, xp.swapaxes(vd[..., :kb, :], -1, -2))  # (..., b - a, kb)
                dp -= xp.einsum("...j,...j->...", dp, p)[..., None]  # rowsum(dP * P), no (L, S) temporary
                dp *= p                                         # dS / scale
                if q.requires_grad:
                    gq.append(xp.matmul(dp, kd[..., :kb, :]) * self.scale)
                if k.requires_grad:
                    part = xp.matmul(xp.swapaxes(dp, -1, -2), qd[..., a:b, :] * self.scale)
                    gk = _add_rows(gk, part, k.shape[-2])
                if v.requires_grad:
                    gv = _add_rows(gv, xp.matmul(xp.swapaxes(p, -1, -2), ga), v.shape[-2])
            gq = (gq[0] if len(gq) == 1 else xp.concatenate(gq, axis=-2)) if gq else None
            return tuple(None if a is None else Tensor(_sum_to_raw(a, t.shape))
                         for a, t in zip((gq, gk, gv), (q, k, v)))
        p = _attention_probs(q, k, self.scale, self.mask)
        dp = matmul(go, transpose(v, -1, -2))
        ds = p * (dp - sum(dp * p, -1, keepdim=True)) * self.scale
        return (sum_to(matmul(ds, k), q.shape), sum_to(matmul(transpose(ds, -1, -2), q), k.shape),
                sum_to(matmul(transpose(p, -1, -2), go), v.shape))


def _add_rows(total, part, rows):
    """total (..., rows, E) += part (..., kb, E) on its first kb rows; None starts at zeros."""
    if total is None:
        if part.shape[-2] == rows:
            return part
        total = xp.zeros(part.shape[:-2] + (rows, part.shape[-1]), dtype=part.dtype)
    total[..., :part.shape[-2], :] += part
    return total


def _sum_to_raw(a, shape):
    """A raw gradient summed over the leading dims it was broadcast along."""
    return a if a.shape == shape else sum_to(Tensor(a), shape).data


def _attention_probs(q, k, scale, mask):
    """softmax(Q K^T * scale + M) with refgen ops (the differentiable form of P)."""
    scores = matmul(q * scale, transpose(k, -1, -2))
    if mask is not None:
        scores = scores + Tensor(mask)
    return _Softmax.apply(scores, axis=scores.ndim - 1, safe=True)


def scaled_dot_product_attention(query, key, value, attn_mask=None, is_causal: bool = False,
                                 dropout_p: float = 0.0, scale=None, rng=None):
    """softmax(Q K^T * scale + mask) V: (..., L, E), (..., S, E), (..., S, Ev) -> (..., L, Ev).

    attn_mask: boolean (True = may attend, as torch) or an additive float mask (a Tensor
    may require grad), broadcastable to (..., L, S). is_causal: query i attends to keys
    j <= i (top-left aligned when L != S, as torch); it combines with attn_mask.
    scale defaults to 1/sqrt(E). A query with no key to attend to gets zeros, not NaN.
    dropout_p > 0 drops attention weights (pass 0 at evaluation), drawn from ``rng``.

    Without dropout and with a constant mask this is one graph node (:class:`_Attention`):
    the causal mask is a cached additive (L, S) array and the softmax runs in place. With
    dropout or a mask that requires grad it is the composition of refgen ops
    (:func:`scaled_dot_product_attention_composite`).
    """
    q, k, v = as_tensor(query), as_tensor(key), as_tensor(value)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    grad_mask = isinstance(attn_mask, Tensor) and attn_mask.requires_grad
    if dropout_p > 0.0 or grad_mask:
        return scaled_dot_product_attention_composite(q, k, v, attn_mask, is_causal, dropout_p,
                                                      scale, rng)
    mask = None if attn_mask is None else (attn_mask.data if isinstance(attn_mask, Tensor)
                                           else xp.asarray(attn_mask))
    add = _additive_mask(q.shape[-2], k.shape[-2], q.dtype, is_causal, mask)
    return _Attention.apply(q, k, v, scale=scale, mask=add, causal_only=is_causal and mask is None)


def scaled_dot_product_attention_composite(query, key, value, attn_mask=None,
                                           is_causal: bool = False, dropout_p: float = 0.0,
                                           scale=None, rng=None):
    """:func:`scaled_dot_product_attention` as a composition of refgen ops (matmul, where,
    softmax, dropout): its form for dropout and learned masks, and the reference the fused
    node is tested against."""
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
