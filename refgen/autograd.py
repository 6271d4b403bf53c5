"""Reverse-mode automatic differentiation: Tensor, Function, grad().

A ``Tensor`` wraps an array of the active backend. Every differentiable operation is a
``Function`` with a ``forward`` on raw arrays and a ``backward`` written with refgen ops on
Tensors. Because backward passes are themselves made of differentiable ops, running them
with the graph switched on (``create_graph=True``) records a new graph, and the gradient
can be differentiated again, to any order.

Every Function has exactly one output; ops with several results (split, chunk) are built
from several single-output Functions.
"""
from __future__ import annotations

import contextlib
import weakref

from refgen.backend import xp

__all__ = ["Tensor", "Function", "tensor", "grad", "no_grad", "enable_grad",
           "is_grad_enabled", "as_tensor"]

_grad_enabled = True


def is_grad_enabled() -> bool:
    return _grad_enabled


@contextlib.contextmanager
def _set_grad(mode: bool):
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, mode
    try:
        yield
    finally:
        _grad_enabled = previous


def no_grad():
    """Context manager: operations inside record no graph."""
    return _set_grad(False)


def enable_grad():
    """Context manager: operations inside record a graph (even within ``no_grad``)."""
    return _set_grad(True)


class Tensor:
    """An array with an optional gradient and the Function that produced it."""

    __slots__ = ("data", "grad", "requires_grad", "_fn", "__weakref__")
    __array_priority__ = 1000  # ndarray <op> Tensor defers to Tensor

    def __init__(self, data, requires_grad: bool = False):
        if isinstance(data, Tensor):
            data = data.data
        self.data = xp.asarray(data)
        if requires_grad and self.data.dtype.kind not in "fc":
            raise TypeError(f"only floating-point tensors can require grad, got {self.data.dtype}")
        self.grad: Tensor | None = None
        self.requires_grad = bool(requires_grad)
        self._fn: Function | None = None

    # --- array facts -------------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    is_leaf = property(lambda self: self._fn is None)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        g = ", requires_grad=True" if self.requires_grad else ""
        return f"tensor({self.data!r}{g})"

    def item(self):
        return self.data.item()

    def numpy(self):
        from refgen.backend import to_numpy
        return to_numpy(self.data)

    def detach(self) -> Tensor:
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def requires_grad_(self, mode: bool = True) -> Tensor:
        self.requires_grad = mode
        return self

    def backward(self, grad=None, create_graph: bool = False):
        """Accumulate d self / d leaf into ``leaf.grad`` for every leaf that requires grad."""
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (no graph leads to it)")
        leaves = [t for t in _toposort([self]) if t._fn is None and t.requires_grad]
        grads = _backprop([self], [grad], leaves, create_graph)
        for leaf, g in zip(leaves, grads):
            if g is None:
                continue
            if not create_graph:
                # a private copy: backward may hand one array to several leaves (x + y), or
                # return the caller's own gradient, and optimizers may scale .grad in place
                g = Tensor(g.data.copy())
            leaf.grad = g if leaf.grad is None else leaf.grad + g  # out of place

    # --- operators (definitions live in refgen.functional) ------------------------------
    def __add__(self, o): return F.add(self, o)
    def __radd__(self, o): return F.add(o, self)
    def __sub__(self, o): return F.sub(self, o)
    def __rsub__(self, o): return F.sub(o, self)
    def __mul__(self, o): return F.mul(self, o)
    def __rmul__(self, o): return F.mul(o, self)
    def __truediv__(self, o): return F.div(self, o)
    def __rtruediv__(self, o): return F.div(o, self)
    def __pow__(self, o): return F.pow(self, o)
    def __rpow__(self, o): return F.pow(o, self)
    def __neg__(self): return F.neg(self)
    def __matmul__(self, o): return F.matmul(self, o)
    def __rmatmul__(self, o): return F.matmul(o, self)
    def __getitem__(self, idx): return F.getitem(self, idx)

    # comparisons give plain boolean arrays: they are not differentiable
    def __lt__(self, o): return self.data < _raw(o)
    def __le__(self, o): return self.data <= _raw(o)
    def __gt__(self, o): return self.data > _raw(o)
    def __ge__(self, o): return self.data >= _raw(o)

    __hash__ = object.__hash__

    # --- method forms ----------------------------------------------------------------------
    def sum(self, dim=None, keepdim=False): return F.sum(self, dim, keepdim)
    def mean(self, dim=None, keepdim=False): return F.mean(self, dim, keepdim)
    def var(self, dim=None, unbiased=True, keepdim=False): return F.var(self, dim, unbiased, keepdim)
    def max(self, dim=None, keepdim=False): return F.max(self, dim, keepdim)
    def min(self, dim=None, keepdim=False): return F.min(self, dim, keepdim)
    def exp(self): return F.exp(self)
    def log(self): return F.log(self)
    def sqrt(self): return F.sqrt(self)
    def abs(self): return F.abs(self)
    def tanh(self): return F.tanh(self)
    def sigmoid(self): return F.sigmoid(self)
    def relu(self): return F.relu(self)
    def reshape(self, *shape): return F.reshape(self, _shape_args(shape))
    def view(self, *shape): return F.reshape(self, _shape_args(shape))
    def flatten(self, start_dim=0, end_dim=-1): return F.flatten(self, start_dim, end_dim)
    def permute(self, *dims): return F.permute(self, _shape_args(dims))
    def transpose(self, dim0, dim1): return F.transpose(self, dim0, dim1)
    def unsqueeze(self, dim): return F.unsqueeze(self, dim)
    def squeeze(self, dim=None): return F.squeeze(self, dim)
    def expand(self, *shape): return F.broadcast_to(self, _shape_args(shape))
    def clamp(self, min=None, max=None): return F.clamp(self, min, max)
    @property
    def T(self): return F.permute(self, tuple(range(self.ndim))[::-1])


def _shape_args(args):
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else tuple(args)


def _raw(o):
    return o.data if isinstance(o, Tensor) else o


def tensor(data, requires_grad: bool = False, dtype=None) -> Tensor:
    """A new leaf Tensor from array-like ``data``."""
    if isinstance(data, Tensor):
        data = data.data
    return Tensor(xp.asarray(data, dtype=dtype), requires_grad=requires_grad)


def as_tensor(x, like: Tensor | None = None) -> Tensor:
    """``x`` as a Tensor; a Python scalar takes the dtype of ``like`` so it never promotes."""
    if isinstance(x, Tensor):
        return x
    if like is not None and isinstance(x, (int, float, bool)):
        if like.dtype.kind in "fc" or isinstance(x, (int, bool)):
            return Tensor(xp.asarray(x, dtype=like.dtype))
        # a float with an integer tensor: promote as NumPy would, never truncate
        return Tensor(xp.asarray(x, dtype=xp.result_type(like.dtype, xp.float64)))
    return Tensor(x)


class Function:
    """One differentiable operation with one output.

    Subclasses define ``forward(self, *arrays, **params) -> array`` on raw backend arrays and
    ``backward(self, gy: Tensor) -> Tensor | tuple`` returning one gradient (or None) per
    Tensor input, computed with refgen ops so that it is itself differentiable.
    ``self.inputs`` holds the input Tensors and ``self.output`` the output Tensor.
    """

    inputs: tuple
    _out: weakref.ref

    @classmethod
    def apply(cls, *inputs: Tensor, **params) -> Tensor:
        fn = cls()
        fn.inputs = inputs
        y = Tensor(fn.forward(*[t.data for t in inputs], **params))
        if fn.recorded:
            y.requires_grad = True
            y._fn = fn
            fn._out = weakref.ref(y)  # weak: the output owns the function, not the reverse
        return y

    @property
    def output(self) -> Tensor:
        return self._out()

    @property
    def recorded(self) -> bool:
        """Whether this call's output joins a graph (a backward may follow). A forward that
        keeps arrays for its backward may keep none, and work in place, when it does not."""
        return _grad_enabled and any(t.requires_grad for t in self.inputs)

    def forward(self, *arrays, **params):
        raise NotImplementedError

    def backward(self, gy: Tensor):
        raise NotImplementedError


def _toposort(roots):
    """Tensors reachable from ``roots`` through requires-grad edges, inputs before outputs.

    Iterative depth-first post-order: no recursion, so a 10,000-op chain is fine.
    """
    order, seen = [], set()
    stack = [(r, False) for r in roots if r.requires_grad]
    while stack:
        t, expanded = stack.pop()
        if expanded:
            order.append(t)
            continue
        if id(t) in seen:
            continue
        seen.add(id(t))
        stack.append((t, True))
        if t._fn is not None:
            stack.extend((i, False) for i in t._fn.inputs if i.requires_grad and id(i) not in seen)
    return order


class SliceGrad:
    """The gradient of ``x[idx]`` (basic indexing) with respect to x when no graph is being
    recorded: ``data`` belongs at ``idx`` of a zero array of ``shape``. The backward pass adds
    it straight into x's accumulated gradient, so T slices of one array cost T slice-sized
    adds, not T full-size zero arrays and T full-size sums (a recurrent net that reads its
    precomputed inputs one time step at a time would be quadratic in T)."""

    __slots__ = ("data", "idx", "shape")

    def __init__(self, data, idx, shape):
        self.data, self.idx, self.shape = data, idx, tuple(shape)

    def dense(self):
        out = xp.zeros(self.shape, dtype=self.data.dtype)
        out[self.idx] = self.data
        return out


def _backprop(outputs, grad_outputs, inputs, create_graph):
    for o in outputs:
        if not isinstance(o, Tensor):
            raise TypeError(f"outputs must be Tensors, got {type(o).__name__}")
    seeds = []
    for o, g in zip(outputs, grad_outputs):
        if g is None:
            if o.size != 1:
                raise RuntimeError(
                    f"grad can be implicitly created only for a scalar output; this output has "
                    f"shape {o.shape}: pass its gradient explicitly (grad_outputs / backward(grad))")
            g = Tensor(xp.ones_like(o.data))
        else:
            g = as_tensor(g, like=o)
            if g.shape != o.shape:
                raise ValueError(f"gradient of shape {g.shape} given for an output of shape {o.shape}")
        seeds.append((o, g))

    grads = {}  # id(tensor) -> (tensor, accumulated gradient Tensor)
    owned = set()  # ids whose gradient buffer this pass allocated: safe to add into in place

    def accumulate(t, g):
        if isinstance(g, SliceGrad):  # a slice's gradient: added into its place, no zeros of its own
            if id(t) not in grads:
                grads[id(t)] = (t, Tensor(g.dense()))
            elif id(t) in owned:
                grads[id(t)][1].data[g.idx] += g.data
            else:
                buf = xp.array(grads[id(t)][1].data, copy=True)
                buf[g.idx] += g.data
                grads[id(t)] = (t, Tensor(buf))
            owned.add(id(t))
        elif id(t) in grads:
            acc = grads[id(t)][1]
            if id(t) in owned and not create_graph and acc.shape == g.shape and acc.dtype == g.dtype:
                acc.data += g.data
            else:
                grads[id(t)] = (t, grads[id(t)][1] + g)  # out of place: the old gradient is untouched
                owned.add(id(t))
        else:
            grads[id(t)] = (t, g)

    wanted = {id(t) for t in inputs}
    with _set_grad(create_graph):
        for o, g in seeds:
            accumulate(o, g)
        for t in reversed(_toposort([o for o, _ in seeds])):
            entry = grads.get(id(t))
            if entry is None or t._fn is None:
                continue
            if id(t) not in wanted:
                del grads[id(t)]  # free intermediate gradients as soon as they are used
                owned.discard(id(t))
            gxs = t._fn.backward(entry[1])
            if not isinstance(gxs, tuple):
                gxs = (gxs,)
            for x, gx in zip(t._fn.inputs, gxs):
                if gx is not None and x.requires_grad:
                    accumulate(x, gx)
    return [grads[id(t)][1] if id(t) in grads else None for t in inputs]


def grad(outputs, inputs, grad_outputs=None, create_graph: bool = False,
         allow_unused: bool = False, materialize_grads: bool = False):
    """Gradients of ``outputs`` with respect to ``inputs``, as a list of Tensors.

    outputs: a Tensor or a sequence; non-scalar outputs need ``grad_outputs``.
    create_graph: record the backward pass so the result can be differentiated again.
    allow_unused: an input the outputs do not depend on gets None (or zeros when
    ``materialize_grads``); otherwise it is an error.
    """
    outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    single = isinstance(inputs, Tensor)
    inputs = [inputs] if single else list(inputs)
    if grad_outputs is None or isinstance(grad_outputs, Tensor) or hasattr(grad_outputs, "shape"):
        grad_outputs = [grad_outputs] * len(outputs) if grad_outputs is None else [grad_outputs]
    grad_outputs = list(grad_outputs)
    if len(grad_outputs) != len(outputs):
        raise ValueError(f"{len(outputs)} outputs but {len(grad_outputs)} grad_outputs")
    for i, x in enumerate(inputs):
        if not x.requires_grad:
            raise RuntimeError(f"input {i} does not require grad")
    result = _backprop(outputs, grad_outputs, inputs, create_graph)
    for i, (x, g) in enumerate(zip(inputs, result)):
        if g is None:
            if materialize_grads:
                result[i] = Tensor(xp.zeros_like(x.data))
            elif not allow_unused:
                raise RuntimeError(
                    f"input {i} was not used to compute the outputs; pass allow_unused=True "
                    "to get None for it")
        elif not create_graph:
            result[i] = g.detach()
    return result


from refgen import functional as F  # noqa: E402  (operators above resolve through it)
