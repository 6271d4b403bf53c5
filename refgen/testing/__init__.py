"""refgen's correctness oracle, public so users can check their own functions the same way.

Checks (each raises ``GradcheckError``, an AssertionError, with the reason):
  check_vjp(f, xs)               one random directional derivative: numeric <v, J u> against
                                 analytic <J^T v, u>, in float64 on NumPy.
  check_double_backward(f, xs)   the same check on x -> J(x)^T v (gradients of gradients),
                                 after comparing that first derivative, recorded with
                                 create_graph=True, with the plain one.
  check_grads(f, xs, order=2)    both of the above.
  check_invariants(f, xs)        exact properties, float32 and float64, on the active backend:
                                 zero upstream -> zero gradients of the input's shape and dtype,
                                 inputs not mutated, two runs identical, no dtype promotion.
  check_forward(f, ref, xs)      values against a plain NumPy formula ``ref``.
``f`` takes Tensors and returns a Tensor or a tuple of Tensors; ``xs`` are NumPy arrays.

Strategies: ``refgen.testing.strategies`` holds hypothesis strategies (shapes,
broadcastable_shapes, arrays, away_from_kinks, positive_arrays, distinct_arrays, dims).
Hypothesis is only needed when a strategy is built, not to import this package.

Backends: the finite-difference checks always run on NumPy in float64 (they switch with
``use_backend('numpy')`` themselves), so a suite run with ``REFGEN_BACKEND=cupy`` still checks
gradients exactly, while check_invariants and check_forward run on whatever backend is
active and so test the GPU path too. To pin a block of a test to one backend use
``on_backend``::

    with on_backend("numpy"):        # e.g. a test that compares array identity
        ...

Inside pytest, ``on_backend("cupy")`` skips the test (with the reason) where CuPy or a GPU
is missing instead of failing it. Without a GPU, ``refgen.testing.strict_device.strict_device()``
runs a block on a stand-in device backend that raises where CuPy would on host/device
mixing (see its docstring).
"""
import contextlib
import sys

from refgen.backend import BackendError, use_backend
from refgen.testing.gradcheck import (check_vjp, check_double_backward, check_grads,  # noqa: F401
                                      check_forward, GradcheckError)
from refgen.testing.invariants import check_invariants  # noqa: F401
from refgen.testing import strategies  # noqa: F401  (hypothesis is imported lazily there)

__all__ = ["check_vjp", "check_double_backward", "check_grads", "check_invariants",
           "check_forward", "GradcheckError", "on_backend", "strategies"]


@contextlib.contextmanager
def on_backend(name: str):
    """Run the block on backend ``name`` ('numpy' or 'cupy'), then restore the previous one.

    Under pytest an unavailable backend skips the test; elsewhere BackendError is raised.
    """
    try:
        cm = use_backend(name)
        module = cm.__enter__()
    except BackendError as e:
        if "pytest" in sys.modules and "not a backend" not in str(e):
            import pytest
            pytest.skip(str(e))
        raise
    try:
        yield module
    finally:
        cm.__exit__(None, None, None)
