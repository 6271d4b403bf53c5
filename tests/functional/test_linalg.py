"""matmul, tril/triu, einsum, inv, slogdet and det against NumPy, with gradient checks."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import refgen
import refgen.functional as F
from refgen import Tensor
from refgen.testing import check_grads

seeds = st.integers(0, 2**32 - 1)


pytestmark = pytest.mark.usefixtures("numpy_backend")  # NumPy in float64, as the references


@given(seed=seeds, shapes=st.sampled_from([((3,), (3,)), ((2, 3), (3,)), ((3,), (3, 2)),
                                           ((2, 3), (3, 4)), ((2, 1, 2, 3), (4, 3, 2))]))
def test_matmul(seed, shapes):
    r = np.random.default_rng(seed)
    a, b = r.standard_normal(shapes[0]), r.standard_normal(shapes[1])
    np.testing.assert_allclose(F.matmul(Tensor(a), Tensor(b)).data, a @ b, rtol=1e-12)
    check_grads(F.matmul, [a, b])


def test_tril_triu():
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    for k in (-1, 0, 2):
        np.testing.assert_array_equal(F.tril(Tensor(x), k).data, np.tril(x, k))
        np.testing.assert_array_equal(F.triu(Tensor(x), k).data, np.triu(x, k))
    check_grads(lambda t: F.tril(t, 1), [x])


# --- einsum ------------------------------------------------------------------------------

EQUATIONS = [
    ("ij,jk->ik", [(2, 3), (3, 4)]),              # matmul
    ("bij,bjk->bik", [(2, 2, 3), (2, 3, 4)]),     # batch matmul
    ("i,j->ij", [(3,), (4,)]),                    # outer product
    ("ij,ij->", [(2, 3), (2, 3)]),                # Frobenius inner product
    ("ij->ji", [(2, 3)]),                         # transpose
    ("ij->", [(2, 3)]),                           # sum
    ("ijk,jl->il", [(2, 3, 4), (3, 5)]),          # k summed out of one operand only
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 2)]),   # chain
    ("bhqd,bhkd->bhqk", [(2, 2, 3, 4), (2, 2, 5, 4)]),  # attention scores
    ("...ij,...jk->...ik", [(2, 1, 2, 3), (4, 3, 2)]),  # broadcast batch dims
    ("...i,...i", [(2, 3), (3,)]),                # implicit output with '...'
    ("ij,jk", [(2, 3), (3, 4)]),                  # implicit output
    ("bA,aB", [(2, 3), (3, 4)]),                  # implicit: upper case sorts first
]


@pytest.mark.parametrize("equation,shapes", EQUATIONS)
@settings(max_examples=5)
@given(seed=seeds)
def test_einsum_matches_numpy_and_gradcheck(equation, shapes, seed):
    r = np.random.default_rng(seed)
    xs = [r.standard_normal(s) for s in shapes]
    y = F.einsum(equation, *[Tensor(x) for x in xs])
    ref = np.einsum(equation, *xs)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y.data, ref, rtol=1e-12, atol=1e-12)
    check_grads(lambda *ts: F.einsum(equation, *ts), xs)


def test_einsum_gradient_of_index_used_by_one_operand_is_broadcast():
    a = Tensor(np.ones((2, 3)), requires_grad=True)
    b = Tensor(np.arange(3.0), requires_grad=True)
    ga, gb = refgen.grad(F.einsum("ij,j->", a, b), [a, b])
    np.testing.assert_array_equal(ga.data, np.broadcast_to(np.arange(3.0), (2, 3)))
    np.testing.assert_array_equal(gb.data, [2.0, 2.0, 2.0])


def test_einsum_float32_and_list_operands():
    a = np.ones((2, 3), np.float32)
    y = F.einsum("ij,jk->ik", [Tensor(a), Tensor(a.T)])
    assert y.dtype == np.float32 and y.shape == (2, 2)


@pytest.mark.parametrize("equation,shapes,match", [
    ("ii->i", [(3, 3)], "diagonals"),
    ("ii", [(3, 3)], "diagonals"),
    ("ij,jk->ik", [(2, 3)], "operands"),
    ("ij,jk->ik", [(2, 3), (4, 2)], "sizes"),
    ("ij->iz", [(2, 3)], "no operand"),
    ("ij->ii", [(2, 3)], "repeated"),
    ("ij", [(2, 3, 4)], "dims"),
    ("i1", [(2, 3)], "bad term"),
])
def test_einsum_errors(equation, shapes, match):
    with pytest.raises(ValueError, match=match):
        F.einsum(equation, *[Tensor(np.ones(s)) for s in shapes])


# --- inverse and determinant -------------------------------------------------------------

def _well_conditioned(seed, batch, n, negate_one=False):
    r = np.random.default_rng(seed)
    a = r.standard_normal(tuple(batch) + (n, n)) + n * np.eye(n)  # random + n I
    if negate_one:
        a[..., 0, :] *= -1  # negative determinant
    return a


@given(seed=seeds, batch=st.lists(st.integers(1, 2), min_size=0, max_size=2),
       n=st.integers(1, 4), negate=st.booleans())
def test_inv_slogdet_det(seed, batch, n, negate):
    a = _well_conditioned(seed, batch, n, negate)
    np.testing.assert_allclose(F.inv(Tensor(a)).data, np.linalg.inv(a), rtol=1e-10, atol=1e-12)
    sign, logabs = F.slogdet(Tensor(a))
    ref_sign, ref_logabs = np.linalg.slogdet(a)
    np.testing.assert_array_equal(sign.data, ref_sign)
    np.testing.assert_allclose(logabs.data, ref_logabs, rtol=1e-12, atol=1e-12)
    assert not sign.requires_grad
    np.testing.assert_allclose(F.det(Tensor(a)).data, np.linalg.det(a), rtol=1e-10)
    check_grads(F.inv, [a])
    check_grads(lambda t: F.slogdet(t)[1], [a])
    check_grads(F.det, [a])


def test_logabsdet_gradient_is_inverse_transpose():
    a = _well_conditioned(3, (2,), 3, negate_one=True)
    t = Tensor(a, requires_grad=True)
    (g,) = refgen.grad(F.sum(F.slogdet(t)[1]), [t])
    np.testing.assert_allclose(g.data, np.swapaxes(np.linalg.inv(a), -1, -2), rtol=1e-12)
