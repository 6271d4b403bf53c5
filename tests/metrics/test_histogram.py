"""class_kl = KL(class histogram || uniform) in nats: its known values and its formula."""
import math

import numpy as np
import pytest

from refgen.metrics import class_kl


def test_uniform_histogram_gives_zero():
    assert class_kl(np.arange(1000) % 10) == pytest.approx(0.0, abs=1e-12)
    assert class_kl(np.random.default_rng(0).permutation(np.arange(12) % 4), 4) == pytest.approx(
        0.0, abs=1e-12)


def test_one_class_gives_log_c():
    assert class_kl(np.full(37, 3)) == pytest.approx(math.log(10), rel=1e-12)
    assert class_kl(np.zeros(5, dtype=np.int32), 7) == pytest.approx(math.log(7), rel=1e-12)


def test_half_the_classes_give_log_2():
    assert class_kl(np.arange(500) % 5) == pytest.approx(math.log(2), rel=1e-12)


def test_generic_histogram_against_the_formula():
    labels = np.array([0] * 7 + [1] * 1 + [3] * 12 + [4] * 5)    # class 2 empty
    p = np.array([7, 1, 0, 12, 5]) / 25
    nz = p > 0
    expected = float((p[nz] * np.log(p[nz] / (1 / 5))).sum())       # sum_c p_c log(p_c / u_c)
    entropy = float(-(p[nz] * np.log(p[nz])).sum())
    assert expected == pytest.approx(math.log(5) - entropy, rel=1e-12)
    assert class_kl(labels, 5) == pytest.approx(expected, rel=1e-12)
    assert class_kl(np.random.default_rng(0).permutation(labels), 5) == pytest.approx(expected, rel=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        class_kl(np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match=r"integers in \[0, 10\)"):
        class_kl(np.array([0, 10]))
    with pytest.raises(ValueError, match="integers"):
        class_kl(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="integers"):
        class_kl(np.array([-1, 2]))
