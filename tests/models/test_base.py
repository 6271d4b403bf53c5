"""refgen.models.base.check_data: a model refuses data it cannot model, in one line."""
import numpy as np
import pytest

from refgen import models
from refgen.data import Dataset
from refgen.data.datasets import value_range
from refgen.models.base import check_data


def _images(name, lo, hi):
    x = np.linspace(lo, hi, 2 * 16, dtype=np.float32).reshape(2, 1, 4, 4)
    return Dataset(name, "train", x, None, "continuous", (1, 4, 4), value_range=value_range(name))


@pytest.mark.parametrize("model,good,bad", [("ddpm", "mnist", "mnist-dequantized"),
                                           ("glow", "mnist-dequantized", "mnist"),
                                           ("realnvp", "mnist-dequantized", "mnist"),
                                           ("nice", "mnist-dequantized", "mnist"),
                                           ("maf", "mnist-dequantized", "mnist")])
def test_image_range_is_checked(model, good, bad):
    cls = models.get(model)
    check_data(cls, _images(good, *value_range(good)))
    with pytest.raises(ValueError, match=r"takes images in \[.*\], but dataset"):
        check_data(cls, _images(bad, *value_range(bad)))


def test_vectors_and_unknown_ranges_are_not_checked():
    x = np.zeros((3, 2), np.float32)
    check_data(models.get("ddpm"), Dataset("8gaussians", "train", x, None, "continuous", (2,)))
    check_data(models.get("ddpm"), Dataset("custom", "train", np.zeros((2, 1, 4, 4), np.float32),
                                           None, "continuous", (1, 4, 4)))


def test_value_ranges_match_the_data_docstring():
    assert value_range("mnist") == value_range("mnist-14") == (-1.0, 1.0)
    for name in ("mnist-dequantized", "mnist-binary", "mnist-14-binary"):
        assert value_range(name) == (0.0, 1.0)
    assert value_range("8gaussians") is None
