"""Hypothesis strategies for gradient checks: small shapes, mutually broadcastable shapes,
bounded float64 arrays, and values kept away from the points where an op has a kink.

Hypothesis is a test dependency, not a runtime one: it is imported when a strategy is
built, so ``import refgen.testing`` (and this module) works without it.

    from hypothesis import given
    from refgen.testing import check_grads, strategies as rs

    @given(rs.arrays(rs.shapes(max_dims=2), elements=rs.away_from_kinks((0.0,))))
    def test_relu(x):
        check_grads(F.relu, [x])
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["floats", "shapes", "broadcastable_shapes", "arrays", "away_from_kinks",
           "positive_arrays", "distinct_arrays", "dims"]


def _hypothesis():
    try:
        from hypothesis import strategies as st
        from hypothesis.extra import numpy as hnp
    except ImportError:
        raise ImportError("refgen.testing.strategies needs hypothesis, a test dependency: "
                          "pip install 'refgen[test]'") from None
    return st, hnp


def floats(min_value: float = -2.0, max_value: float = 2.0):
    """Finite float64 values in [min_value, max_value], no subnormals.

    Bounded so that exp/tanh/products stay where float64 finite differences are accurate.
    """
    st, _ = _hypothesis()
    return st.floats(min_value, max_value, allow_nan=False, allow_infinity=False,
                     allow_subnormal=False, width=64)


def shapes(min_dims: int = 0, max_dims: int = 3, max_side: int = 4, min_side: int = 1):
    """Shape tuples: ``min_dims..max_dims`` dimensions, each of size ``min_side..max_side``."""
    _, hnp = _hypothesis()
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side,
                            max_side=max_side)


def broadcastable_shapes(n: int = 2, min_dims: int = 0, max_dims: int = 3, max_side: int = 4,
                         min_side: int = 1, with_result: bool = False):
    """Tuples of ``n`` shapes that broadcast together (sizes of 1 and missing leading dims).

    with_result: draw ``(shapes, result_shape)`` instead, the result being their broadcast.
    """
    _, hnp = _hypothesis()
    s = hnp.mutually_broadcastable_shapes(num_shapes=n, min_dims=min_dims, max_dims=max_dims,
                                          min_side=min_side, max_side=max_side)
    if with_result:
        return s.map(lambda b: (tuple(b.input_shapes), tuple(b.result_shape)))
    return s.map(lambda b: tuple(b.input_shapes))


def arrays(shape, elements=None, dtype=np.float64):
    """Arrays of ``shape`` (a tuple or a strategy of tuples) with bounded float elements.

    elements: a strategy for one element (default ``floats()``: finite values in [-2, 2]).
    Hypothesis often repeats one fill value across an array; use ``distinct_arrays`` where
    ties matter (max, min, sort).
    """
    _, hnp = _hypothesis()
    return hnp.arrays(dtype, shape, elements=floats() if elements is None else elements)


def away_from_kinks(points=(0.0,), margin: float = 1e-3, min_value: float = -2.0,
                    max_value: float = 2.0):
    """Float elements at least ``margin`` away from each of ``points``.

    For ops that are not differentiable there (relu, abs, leaky_relu at 0; clamp at its
    bounds): finite differences straddling a kink disagree with either one-sided slope.
    A value inside the margin is pushed to the margin's edge on its own side, so nothing is
    filtered out. The points should be more than ``2 * margin`` apart.
    """
    points = tuple(float(p) for p in points)

    def push(x):
        for p in points:
            if abs(x - p) < margin:
                x = p + math.copysign(margin, x - p if x != p else 1.0)
        return x

    return floats(min_value, max_value).map(push)


def positive_arrays(shape, min_value: float = 0.1, max_value: float = 3.0, dtype=np.float64):
    """Arrays with elements in [min_value, max_value], for log, sqrt, pow and division."""
    if min_value <= 0:
        raise ValueError(f"positive_arrays needs min_value > 0, got {min_value}")
    return arrays(shape, elements=floats(min_value, max_value), dtype=dtype)


def distinct_arrays(shape, gap: float = 0.25):
    """Arrays whose elements are pairwise at least ``gap / 2`` apart (no ties).

    For max/min/sort: their gradient is only defined where the extreme is unique. Built from
    a random permutation of a grid plus a jitter smaller than the grid step.
    """
    st, _ = _hypothesis()

    def of_shape(shp):
        n = int(np.prod(shp, dtype=np.int64))
        jitter = arrays((n,), elements=floats(0.0, gap / 2))

        def build(pair):
            perm, j = pair
            return ((np.asarray(perm, dtype=np.float64) - n / 2) * gap + j).reshape(shp)

        return st.tuples(st.permutations(range(n)), jitter).map(build)

    if isinstance(shape, tuple):
        return of_shape(shape)
    return shape.flatmap(of_shape)


def dims(ndim: int, allow_none: bool = True):
    """A reduction ``dim`` for an ``ndim``-dimensional array: None, an int (maybe negative)
    or a tuple of distinct dimensions (each maybe negative)."""
    st, _ = _hypothesis()
    if ndim == 0:
        return st.none() if allow_none else st.just(())
    one = st.integers(-ndim, ndim - 1)
    several = st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).flatmap(
        lambda ds: st.tuples(*[st.sampled_from([d, d - ndim]) for d in ds]))
    options = [one, several]
    if allow_none:
        options.insert(0, st.none())
    return st.one_of(*options)
