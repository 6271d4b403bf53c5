"""Exact properties every differentiable function should have, whatever its formula.

Unlike the finite-difference checks these need no tolerance, so they run on the active
backend (NumPy or CuPy) and in float32 as well as float64.
"""
from __future__ import annotations

import numpy as np

import refgen
from refgen.autograd import Tensor
from refgen.backend import asarray, to_numpy
from refgen.testing.gradcheck import GradcheckError

__all__ = ["check_invariants"]


def _outputs(y):
    return list(y) if isinstance(y, (tuple, list)) else [y]


def _same(a, b) -> bool:
    """Bitwise-equal arrays (NaNs in the same places count as equal)."""
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)


def _pullback(ys, ts, vs, create_graph):
    """J^T v for every input, zeros (not None) for inputs no output depends on."""
    live = [(y, Tensor(asarray(v))) for y, v in zip(ys, vs) if y.requires_grad]
    if not live:
        return [Tensor(asarray(np.zeros(t.shape, dtype=t.dtype))) for t in ts]
    return refgen.grad([y for y, _ in live], ts, [v for _, v in live], create_graph=create_graph,
                       allow_unused=True, materialize_grads=True)


def _run(f, xs, seed, create_graph, check_output_dtype, dtype):
    ts = [Tensor(asarray(x), requires_grad=x.dtype.kind == "f") for x in xs]
    before = [to_numpy(t.data).copy() for t in ts]
    ys = _outputs(f(*ts))
    for i, y in enumerate(ys):
        if not isinstance(y, Tensor):
            raise GradcheckError(f"output {i} is a {type(y).__name__}, not a Tensor")
        if check_output_dtype and y.dtype.kind == "f" and y.dtype != dtype:
            raise GradcheckError(f"invariant 'dtype': {dtype} inputs gave output {i} of dtype "
                                 f"{y.dtype} (a Python scalar or constant promoted it)")
    diff = [t for t in ts if t.requires_grad]
    rng = np.random.default_rng(seed)
    vs = [rng.standard_normal(y.shape).astype(y.dtype) for y in ys]
    gs = _pullback(ys, diff, vs, create_graph)
    zs = _pullback(ys, diff, [np.zeros(y.shape, dtype=y.dtype) for y in ys], create_graph)
    for i, (t, g, z) in enumerate(zip(diff, gs, zs)):
        for what, h in (("gradient", g), ("zero-upstream gradient", z)):
            if h.shape != t.shape or h.dtype != t.dtype:
                raise GradcheckError(f"invariant 'shape/dtype': {what} of input {i} is "
                                     f"{h.shape} {h.dtype}, the input is {t.shape} {t.dtype}")
        if np.any(to_numpy(z.data) != 0):
            raise GradcheckError(f"invariant 'zero upstream': a zero upstream gradient gave a "
                                 f"nonzero gradient for input {i}")
    for i, (t, b) in enumerate(zip(ts, before)):
        if not _same(to_numpy(t.data), b):
            raise GradcheckError(f"invariant 'no mutation': input {i} was changed by the "
                                 "forward or backward pass")
    return [to_numpy(y.data).copy() for y in ys], [to_numpy(g.data).copy() for g in gs]


def check_invariants(f, xs, dtypes=("float32", "float64"), order: int = 1,
                     deterministic: bool = True, check_output_dtype: bool = True):
    """Assert the tolerance-free properties of ``f``'s forward and backward passes.

    f: a function of Tensors returning a Tensor or a tuple of Tensors.
    xs: input arrays; floating ones are cast to each of ``dtypes`` in turn (integer ones,
        e.g. indices, are passed unchanged and not differentiated).
    For each dtype, on the active backend:
      - gradients have the input's shape and dtype (float32 in -> float32 gradients),
      - a zero upstream gradient gives exactly zero gradients,
      - the inputs are not mutated by the forward or the backward pass,
      - two runs give bitwise-identical outputs and gradients (``deterministic``),
      - floating outputs keep the input dtype (``check_output_dtype``).
    order=2 also checks the gradient function x -> J(x)^T v (built with create_graph=True)
    the same way. Raises GradcheckError naming the invariant that failed.
    """
    for dtype in dtypes:
        dtype = np.dtype(dtype)
        cast = [np.asarray(x).astype(dtype) if np.asarray(x).dtype.kind == "f" else np.asarray(x)
                for x in xs]
        first = _run(f, cast, 0, order >= 2, check_output_dtype, dtype)
        if deterministic:
            second = _run(f, cast, 0, order >= 2, check_output_dtype, dtype)
            for what, a, b in (("output", first[0], second[0]), ("gradient", first[1], second[1])):
                for i, (p, q) in enumerate(zip(a, b)):
                    if not _same(p, q):
                        raise GradcheckError(f"invariant 'deterministic': two runs gave "
                                             f"different {what} {i} ({dtype})")
        if order >= 2:
            ys = _outputs(f(*[Tensor(asarray(x)) for x in cast]))
            rng = np.random.default_rng(1)
            vs = [rng.standard_normal(y.shape).astype(y.dtype) for y in ys]

            def vjp(*ts, _vs=vs):
                diff = [t for t in ts if t.requires_grad]
                return tuple(_pullback(_outputs(f(*ts)), diff, _vs, True))

            check_invariants(vjp, cast, dtypes=(dtype,), order=order - 1,
                             deterministic=deterministic, check_output_dtype=check_output_dtype)
