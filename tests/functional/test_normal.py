"""log Phi and Phi^{-1} from logs: values deep in both tails, round trips, gradients."""
import math

import numpy as np
import pytest

import refgen.functional as F
from refgen.autograd import Tensor
from refgen.testing import check_grads

pytestmark = pytest.mark.usefixtures("numpy_backend")


def _log_ndtr_ref(v):
    """log Phi(v) from math.erfc (exact to rounding until erfc underflows near v = -38)."""
    return math.log1p(-0.5 * math.erfc(v / math.sqrt(2))) if v > 0 else math.log(0.5 * math.erfc(-v / math.sqrt(2)))


def test_log_ndtr_values_in_both_tails():
    y = np.array([-37.0, -20.0, -8.5, -3.0001, -2.9999, -1.0, 0.0, 0.7, 5.0, 9.0, 30.0])
    got = F.log_ndtr(Tensor(y)).numpy()
    ref = np.array([_log_ndtr_ref(v) for v in y])
    np.testing.assert_allclose(got, ref, rtol=2e-13)
    # far below erfc's range: log Phi(y) = log phi(y) - log|y| + log(1 - 1/y^2 + 3/y^4 - ...)
    y = -300.0
    asym = -0.5 * y * y - 0.5 * math.log(2 * math.pi) - math.log(-y) + math.log1p(-1 / y ** 2 + 3 / y ** 4)
    assert abs(F.log_ndtr(Tensor(np.array(y))).item() - asym) < 1e-9


def test_ndtri_from_logs_inverts_log_ndtr_in_both_halves():
    y = np.array([-250.0, -40.0, -9.0, -3.5, -1.0, -1e-3, 0.0, 0.4, 2.0, 8.9, 35.0, 200.0])
    lp = F.log_ndtr(Tensor(y)).numpy()
    lq = F.log_ndtr(Tensor(-y)).numpy()          # log(1 - Phi(y)) = log Phi(-y)
    back = F.ndtri_from_logs(Tensor(lp), Tensor(lq)).numpy()
    np.testing.assert_allclose(back, y, rtol=1e-12, atol=1e-12)
    # Phi^{-1}(0.975) = 1.959963984540054
    got = F.ndtri_from_logs(Tensor(np.array(math.log(0.975))), Tensor(np.array(math.log(0.025)))).item()
    assert abs(got - 1.959963984540054) < 1e-13


def test_gradients():
    check_grads(F.log_ndtr, [np.array([-12.0, -4.0, -2.5, -0.3, 0.8, 3.0])], order=2)
    y = np.array([-9.0, -2.0, -0.1, 0.3, 1.5, 7.0])
    lp = F.log_ndtr(Tensor(y)).numpy()
    lq = F.log_ndtr(Tensor(-y)).numpy()
    # moving lp and lq together, as one p: d/dp of Phi^{-1}(p) = 1 / phi(y)
    check_grads(lambda a, b: F.ndtri_from_logs(a, b), [lp, lq], order=2)
