"""matmul (1-D operands, batched and broadcast batch dims), tril and triu: values against
NumPy, gradients and double backward, exact invariants."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import refgen.functional as F
from refgen import Tensor
from refgen.testing import check_forward, check_grads, check_invariants, strategies as rs


@st.composite
def matmul_in(draw):
    """Two operands: (batch_a.., n, k) @ (batch_b.., k, m), either side possibly 1-D."""
    n, k, m = (draw(st.integers(1, 3)) for _ in range(3))
    ba, bb = draw(rs.broadcastable_shapes(2, max_dims=2, max_side=3))
    a_shape = (k,) if draw(st.booleans()) and not ba else ba + (n, k)
    b_shape = (k,) if draw(st.booleans()) and not bb else bb + (k, m)
    return [draw(rs.arrays(a_shape)), draw(rs.arrays(b_shape))], {}


@st.composite
def tri_in(draw):
    shape = draw(rs.shapes(min_dims=2, max_dims=4, max_side=4))
    return [draw(rs.arrays(shape))], {"diagonal": draw(st.integers(-2, 2))}


CASES = [
    ("matmul", lambda a, b: F.matmul(a, b), np.matmul, matmul_in()),
    ("matmul_operator", lambda a, b: a @ b, np.matmul, matmul_in()),
    ("tril", lambda x, diagonal: F.tril(x, diagonal), lambda x, diagonal: np.tril(x, diagonal),
     tri_in()),
    ("triu", lambda x, diagonal: F.triu(x, diagonal), lambda x, diagonal: np.triu(x, diagonal),
     tri_in()),
]
IDS = [c[0] for c in CASES]


def _bind(f, ref, kw):
    return (lambda *ts: f(*ts, **kw)), (lambda *xs: ref(*xs, **kw))


@pytest.mark.parametrize("name, f, ref, inputs", CASES, ids=IDS)
@given(data=st.data())
@settings(max_examples=15)
def test_forward_matches_numpy(name, f, ref, inputs, data):
    xs, kw = data.draw(inputs)
    check_forward(*_bind(f, ref, kw), xs)


@pytest.mark.parametrize("name, f, ref, inputs", CASES, ids=IDS)
@given(data=st.data())
def test_gradients(name, f, ref, inputs, data):
    xs, kw = data.draw(inputs)
    check_grads(_bind(f, ref, kw)[0], xs)


@pytest.mark.parametrize("name, f, ref, inputs", CASES, ids=IDS)
@given(data=st.data())
@settings(max_examples=5)
def test_invariants(name, f, ref, inputs, data):
    xs, kw = data.draw(inputs)
    check_invariants(_bind(f, ref, kw)[0], xs, order=2)


def test_matmul_shapes_follow_torch():
    a, b = Tensor(np.ones((2, 1, 3, 4))), Tensor(np.ones((5, 4, 6)))
    assert F.matmul(a, b).shape == (2, 5, 3, 6)
    assert F.matmul(Tensor(np.ones(4)), b).shape == (5, 6)
    assert F.matmul(a, Tensor(np.ones(4))).shape == (2, 1, 3)
    assert F.matmul(Tensor(np.ones(4)), Tensor(np.ones(4))).shape == ()
