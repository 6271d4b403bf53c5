"""Random translations (refgen.data.augment.random_shift) against the edge-clamped index
formula written out here, image by image."""
import numpy as np
import pytest

from refgen.backend import default_rng, to_numpy
from refgen.data.augment import random_shift

pytestmark = pytest.mark.usefixtures("numpy_backend")


def _shifted(img, dy, dx):
    """img (C, H, W) read at (i + dy, j + dx), indices clamped into the image (edge padding)."""
    _, h, w = img.shape
    i = np.clip(np.arange(h) + dy, 0, h - 1)
    j = np.clip(np.arange(w) + dx, 0, w - 1)
    return img[:, i][:, :, j]


def _offset(out, img, s):
    """The offsets (dy, dx) in {-s..s}^2 whose shift of img equals out."""
    return [(dy, dx) for dy in range(-s, s + 1) for dx in range(-s, s + 1)
            if np.array_equal(_shifted(img, dy, dx), out)]


def test_each_image_is_its_own_edge_padded_translation_and_offsets_are_uniform():
    rng = np.random.default_rng(0)
    b, s = 2000, 2
    x = rng.standard_normal((b, 2, 7, 6))          # generic values: every offset distinguishable
    out = to_numpy(random_shift(x, s, default_rng(1)))
    assert out.shape == x.shape
    offsets = []
    for k in range(b):
        found = _offset(out[k], x[k], s)
        assert len(found) == 1, f"image {k}: not one translation of its input ({found})"
        offsets.append(found[0])
    counts = np.zeros((2 * s + 1, 2 * s + 1))
    for dy, dx in offsets:
        counts[dy + s, dx + s] += 1
    expected = b / counts.size                      # 80 per offset
    assert counts.min() > expected - 4 * np.sqrt(expected)
    assert counts.max() < expected + 4 * np.sqrt(expected)
    # the same rng state gives the same translations; another gives others
    np.testing.assert_array_equal(to_numpy(random_shift(x, s, default_rng(1))), out)
    assert not np.array_equal(to_numpy(random_shift(x, s, default_rng(2))), out)


def test_edge_padding_repeats_the_border_and_shift_zero_is_the_identity():
    img = np.arange(12.0).reshape(1, 1, 3, 4)
    outs = {tuple(to_numpy(random_shift(img, 1, default_rng(seed)))[0, 0].ravel())
            for seed in range(60)}
    assert len(outs) == 9                            # the nine translations, all drawn
    # the first row read one row up (dy = -1) repeats row 0, one column left (dx = -1) column 0;
    # one row down it is row 1, one column right repeats the last column
    first_rows = {o[:4] for o in outs}
    assert first_rows == {(0.0, 0.0, 1.0, 2.0), (0.0, 1.0, 2.0, 3.0), (1.0, 2.0, 3.0, 3.0),
                          (4.0, 4.0, 5.0, 6.0), (4.0, 5.0, 6.0, 7.0), (5.0, 6.0, 7.0, 7.0)}
    assert random_shift(img, 0, default_rng(0)) is img
    with pytest.raises(ValueError, match="shift must be >= 0"):
        random_shift(img, -1, default_rng(0))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        random_shift(img[0], 1, default_rng(0))
