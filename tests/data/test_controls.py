"""Control images for ControlNet (refgen.data.controls), on hand-made images whose edges,
outlines and fills are drawn here by hand, and the (control, image) data sets on MNIST."""
import math

import numpy as np
import pytest

import refgen.data as data
from refgen.backend import to_numpy
from refgen.data.controls import EDGE_THRESHOLD, edge_iou, edges, fill, outline, sobel


def _image(mask):
    """A {0, 1} mask as an image in [-1, 1], shape (1, 1, H, W)."""
    return (2.0 * np.asarray(mask, dtype=np.float64) - 1.0)[None, None]


def _rows(text):
    return np.array([[ch == "#" for ch in row] for row in text.split()], dtype=np.float64)


SQUARE = _rows("""
..........
..........
..........
...####...
...####...
...####...
...####...
..........
..........
..........
""")

# its edge map: every pixel whose 3x3 neighbourhood holds both ink and background, one ring
# outside the square (diagonal corners included) and one ring inside
SQUARE_EDGES = _rows("""
..........
..........
..######..
..######..
..##..##..
..##..##..
..######..
..######..
..........
..........
""")

SQUARE_OUTLINE = _rows("""
..........
..........
..........
...####...
...#..#...
...#..#...
...####...
..........
..........
..........
""")


def test_edges_of_a_square_are_its_two_pixel_outline():
    np.testing.assert_array_equal(to_numpy(edges(_image(SQUARE)))[0, 0], SQUARE_EDGES)


def test_sobel_values_on_a_square():
    m = to_numpy(sobel(_image(SQUARE)))[0, 0]
    assert m[4, 2] == 1.0 and m[4, 3] == 1.0 and m[2, 4] == 1.0        # across a straight side
    assert m[4, 4] == 0.0 and m[0, 0] == 0.0                            # inside, far outside
    np.testing.assert_allclose(m[2, 2], math.sqrt(2) / 4)               # outer corner: g = (1, 1)
    np.testing.assert_allclose(m[2, 3], math.sqrt(3 ** 2 + 1) / 4)      # beside the corner: (1, 3)
    np.testing.assert_allclose(m[3, 3], math.sqrt(3 ** 2 + 3 ** 2) / 4)  # inner corner: (3, 3)
    # a half-height step gives half the magnitude; edges keep what exceeds the threshold
    half = to_numpy(sobel(_image(SQUARE) * 0.5 - 0.5))[0, 0]
    np.testing.assert_allclose(half, m / 2)
    assert np.array_equal(to_numpy(edges(_image(SQUARE), threshold=0.5))[0, 0], (m > 0.5).astype(float))
    assert EDGE_THRESHOLD < math.sqrt(2) / 4


def test_edges_commute_with_transposes_and_flips():
    g = np.random.default_rng(0)
    x = np.clip(g.standard_normal((3, 1, 9, 7)), -1, 1)
    e = to_numpy(edges(x))
    np.testing.assert_array_equal(to_numpy(edges(x.transpose(0, 1, 3, 2))), e.transpose(0, 1, 3, 2))
    np.testing.assert_array_equal(to_numpy(edges(x[..., ::-1])), e[..., ::-1])
    np.testing.assert_array_equal(to_numpy(edges(x[..., ::-1, :])), e[..., ::-1, :])


def test_outline_and_fill_of_hand_made_shapes():
    np.testing.assert_array_equal(to_numpy(outline(SQUARE[None, None]))[0, 0], SQUARE_OUTLINE)
    # the frame counts as outside: a full mask's outline is the frame's ring
    np.testing.assert_array_equal(to_numpy(outline(np.ones((1, 1, 3, 4))))[0, 0], _rows("####\n#..#\n####"))
    # a closed ring is filled to the square; its outline is the ring's outer edge
    np.testing.assert_array_equal(to_numpy(fill(_image(SQUARE_OUTLINE)))[0, 0], SQUARE)
    # an open ring (a gap in its side) is not: the background reaches the hole
    opened = SQUARE_OUTLINE.copy()
    opened[4, 6] = 0
    np.testing.assert_array_equal(to_numpy(fill(_image(opened)))[0, 0], opened)
    # a hole the background touches only diagonally is enclosed (4-neighbours) and filled;
    # a batch fills each image on its own
    ring8 = _rows("""
.....
.###.
.#.#.
.##..
.....
""")
    filled = to_numpy(fill(np.concatenate([_image(ring8), _image(SQUARE_OUTLINE[:5, :5])])))
    np.testing.assert_array_equal(filled[0, 0], np.maximum(ring8, _rows(".....\n.....\n..#..\n.....\n.....")))
    np.testing.assert_array_equal(filled[1, 0], SQUARE_OUTLINE[:5, :5])


def test_edge_iou():
    a = np.zeros((3, 1, 4, 4))
    b = np.zeros((3, 1, 4, 4))
    a[0, 0, 0, :3] = 1
    b[0, 0, 0, 1:] = 1        # 2 shared of 4 in the union
    a[1, 0, 2, 2] = 1         # disjoint
    b[1, 0, 3, 3] = 1
    np.testing.assert_allclose(to_numpy(edge_iou(a, b)), [0.5, 0.0, 1.0])   # both empty: 1


@pytest.mark.parametrize("name", ["mnist-14-edges", "mnist-14-fill"])
def test_control_data_sets(name, mnist_dir):
    test = data.load(name, "test")
    digits = data.load("mnist-14", "test")
    assert test.x.shape == test.y.shape == (10_000, 1, 14, 14) and test.num_classes is None
    assert test.x.dtype == test.y.dtype == np.float32 and set(np.unique(test.y)) == {0.0, 1.0}
    assert data.datasets.describe(name) == ("continuous", (1, 14, 14))
    assert data.datasets.value_range(name) == (-1.0, 1.0)
    xb, yb = test.batch(np.array([5, 2]), np.random.default_rng(0))
    np.testing.assert_array_equal(yb, test.y[[5, 2]])
    if name.endswith("edges"):
        np.testing.assert_array_equal(test.x, digits.x)
        np.testing.assert_array_equal(test.y[:100], to_numpy(edges(digits.x[:100])))
    else:
        f = to_numpy(fill(digits.x[:100]))
        np.testing.assert_array_equal(test.x[:100], 2 * f - 1)
        np.testing.assert_array_equal(test.y[:100], to_numpy(outline(f)))
        assert (f >= (digits.x[:100] > 0)).all()                    # the ink is inside the fill
        assert (test.y <= (test.x > 0)).all()                       # the outline is on the fill
        assert (f.sum() > (digits.x[:100] > 0).sum())               # some holes (0, 6, 8, 9) filled
