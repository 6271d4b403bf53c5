"""mnist-captions: attribute measurements on hand-drawn images of known thickness, slant, size
and position; the tokenizer; deterministic captions; the held-out split of templates and
combinations."""
import json
import math

import numpy as np
import pytest

from refgen.data import captions as C

H = W = 28


def line(theta, width, length=20.0, centre=(13.0, 13.0)):
    """An anti-aliased bar of ``width`` and ``length`` through ``centre`` at angle ``theta``
    from the vertical, its top leaning right for theta > 0; ink (1, H, W) in [0, 1]."""
    i, j = np.mgrid[0:H, 0:W].astype(np.float64)
    # unit direction from the bottom end to the top end: up (row -1) and right (col +1)
    d = np.array([-math.cos(theta), math.sin(theta)])
    p = np.stack([i - centre[0], j - centre[1]], axis=-1)
    along = p @ d
    across = np.abs(p @ np.array([d[1], -d[0]]))
    # a pixel's ink is the fraction of it the bar covers, across and along (a ramp of width 1)
    ink = np.clip(width / 2 + 0.5 - across, 0, 1) * np.clip(length / 2 + 0.5 - np.abs(along), 0, 1)
    return ink[None]


def bar(r0, r1, c0, c1):
    ink = np.zeros((1, H, W))
    ink[0, r0:r1, c0:c1] = 1.0
    return ink


# ----------------------------------------------------------------------------- measurements
@pytest.mark.parametrize("w,length", [(1, 16), (2, 20), (3, 12), (5, 18)])
def test_thickness_of_an_upright_bar_is_area_over_half_perimeter(w, length):
    ink = bar(4, 4 + length, 10, 10 + w)
    # forward differences see every edge pixel once, the bottom-right corner as sqrt 2
    perimeter = 2 * (w + length) - 2 + math.sqrt(2)
    assert C.thickness(ink)[0] == pytest.approx(2 * w * length / perimeter, rel=1e-9)


@pytest.mark.parametrize("theta", [-0.5, -0.2, 0.0, 0.3, 0.6])
def test_thickness_of_tilted_lines_follows_the_drawn_width(theta):
    """Anti-aliased bars at any angle: 2 m / P within 12% of w L / (w + L) (forward
    differences see a staircase edge a little longer or shorter than it is), and increasing
    with the width by about the width's steps."""
    widths = np.array([1.5, 2.5, 3.5, 4.5])
    got = np.array([C.thickness(line(theta, w))[0] for w in widths])
    assert np.all(np.diff(got) > 0.55)
    assert got == pytest.approx(widths * 20 / (widths + 20), rel=0.12)


@pytest.mark.parametrize("theta", [-0.45, -0.2, 0.1, 0.35, 0.5])
def test_slant_is_the_tangent_of_the_lean(theta):
    ink = line(theta, 1.0, length=22.0)
    assert C.slant(ink)[0] == pytest.approx(math.tan(theta), abs=0.03)
    # the mirror image leans the other way by as much
    assert C.slant(ink[:, :, ::-1])[0] == pytest.approx(-math.tan(theta), abs=0.03)


def test_slant_is_the_moment_ratio_on_two_points():
    ink = np.zeros((1, H, W))
    ink[0, 5, 20] = ink[0, 15, 12] = 1.0  # top 8 columns right of the bottom, 10 rows up
    assert C.slant(ink)[0] == pytest.approx(0.8, rel=1e-12)


def test_size_and_position_of_a_rectangle():
    ink = bar(3, 10, 17, 22)  # 7 rows x 5 columns, columns 17..21
    assert C.bbox_size(ink)[0] == 35.0
    assert C.position(ink)[0] == pytest.approx(19.0 - 13.5, rel=1e-12)
    assert C.bbox_size(np.zeros((1, H, W)))[0] == 0.0
    cy, cx = C.centre_of_mass(ink)
    assert (cy[0], cx[0]) == pytest.approx((6.0, 19.0), rel=1e-12)


def test_measurements_are_vectorised_over_a_batch():
    inks = np.concatenate([line(0.3, 2.0), bar(3, 10, 17, 22), line(-0.2, 3.5)])
    m = C.measure(inks * 2 - 1)  # images in [-1, 1]
    for k, ink in enumerate(inks):
        one = C.measure(ink[None] * 2 - 1)
        for a in C.ATTRIBUTES:
            assert m[a][k] == pytest.approx(one[a][0], rel=1e-6)


def test_levels_of_hand_drawn_digits_under_the_training_cuts():
    cuts = C.training_cuts()
    imgs = np.concatenate([line(0.0, 1.2), line(0.0, 4.5), line(0.5, 2.8), line(-0.4, 2.8)])
    lev = C.attribute_levels(imgs * 2 - 1)
    t, s = C.ATTRIBUTES.index("thickness"), C.ATTRIBUTES.index("slant")
    assert list(lev[:, t]) == [0, 2, 1, 1]   # thin, thick, regular, regular
    assert list(lev[:, s]) == [1, 1, 2, 0]   # upright, upright, slanted, backslanted
    assert cuts["thickness"][0] < 2.8 * 20 / 22.8 < cuts["thickness"][1]


def test_thresholds_are_tertiles_and_levels_bin_by_them():
    rng = np.random.default_rng(3)
    m = {a: rng.normal(size=3000) for a in C.ATTRIBUTES}
    cuts = C.thresholds(m)
    lev = C.levels(m, cuts)
    for k, a in enumerate(C.ATTRIBUTES):
        assert np.bincount(lev[:, k], minlength=3) == pytest.approx([1000, 1000, 1000], abs=1)
        lo, hi = cuts[a]
        assert np.all(lev[:, k] == (m[a] > lo).astype(int) + (m[a] > hi).astype(int))


def test_to_ink_refuses_bad_shapes():
    with pytest.raises(ValueError, match="one channel"):
        C.to_ink(np.zeros((2, 3, 28, 28)))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        C.to_ink(np.zeros((28, 28)))


# ----------------------------------------------------------------------------- tokenizer
def test_saved_vocabulary_is_the_templates_words():
    assert C.Tokenizer().words == C._all_template_words()


def test_tokenizer_round_trips_every_template():
    tok = C.Tokenizer()
    lev = np.array([2, 0, 1, 2])
    for t in C.TEMPLATES + C.HELDOUT_TEMPLATES + C.CLASS_PROMPTS:
        text = C.caption_text(t, 7, lev)
        ids = tok.encode(text)
        assert ids.shape == (C.CONTEXT,) and ids.dtype == np.int64
        assert tok.decode(ids) == text.replace(" ,", ",")
        assert tok.encode(tok.decode(ids)).tolist() == ids.tolist()
        # the vectorised captions are the same ids
        assert C.caption_ids(t, np.array([7]), lev[None], tok)[0].tolist() == ids.tolist()


def test_tokenizer_layout_and_save_load(tmp_path):
    tok = C.Tokenizer()
    ids = tok.encode("A thick, slanted 7")
    words = ["a", "thick", ",", "slanted", "7"]
    assert ids.tolist() == ([tok.sot] + [tok.words.index(w) for w in words] + [tok.eot]
                            + [tok.pad] * (C.CONTEXT - 7))
    tok.save(tmp_path / "v.json")
    back = C.Tokenizer.load(tmp_path / "v.json")
    assert back.words == tok.words
    assert json.loads((tmp_path / "v.json").read_text())["words"] == tok.words


def test_tokenizer_errors_are_one_clear_line():
    tok = C.Tokenizer()
    with pytest.raises(ValueError, match="empty prompt") as e:
        tok.encode("   ")
    with pytest.raises(ValueError, match="outside the vocabulary: bold, purple") as e:
        tok.encode("a purple bold seven")
    assert "\n" not in str(e.value) and "captions.json" in str(e.value)
    with pytest.raises(ValueError, match="outside the vocabulary: <eot>"):
        tok.encode("a <eot> seven")
    with pytest.raises(ValueError, match="longer than the context of 10 words"):
        tok.encode("a thick slanted seven a thick slanted seven a thick seven")
    assert tok.encode("a thick slanted seven a thick slanted seven a thick")[-1] == tok.eot


# ----------------------------------------------------------------------------- captions
def _all_combinations():
    d, t, s, z, p = np.meshgrid(*[np.arange(10)] + [np.arange(3)] * 4, indexing="ij")
    labels = d.ravel()
    lev = np.stack([t.ravel(), s.ravel(), z.ravel(), p.ravel()], axis=1)
    return labels, lev


def test_captions_are_deterministic_for_a_seed():
    labels, lev = _all_combinations()
    data = C.CaptionData(labels, lev)
    idx = np.arange(0, len(labels), 7)
    a, b = data.sample(idx, 5), data.sample(idx, 5)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, data.sample(idx, 6))
    # the caption names the example's own digit
    tok = data.tok
    for k in range(0, len(idx), 40):
        words = tok.decode(a[k]).replace(",", " ").split()
        d = labels[idx[k]]
        assert C.DIGIT_WORDS[d] in words or str(d) in words


def test_templates_are_drawn_uniformly_among_the_allowed():
    labels, lev = np.full(4000, 3), np.tile([1, 1, 1, 1], (4000, 1))
    ids = C.CaptionData(labels, lev).sample(np.arange(4000), 0)
    ref = C.CaptionData(labels[:1], lev[:1]).ids[0]  # (templates, T)
    which = (ids[:, None, :] == ref[None]).all(axis=2).argmax(axis=1)
    counts = np.bincount(which, minlength=len(C.TEMPLATES))
    assert np.all(np.abs(counts - 500) < 4 * math.sqrt(500))


def test_heldout_combinations_never_appear_in_training_captions():
    labels, lev = _all_combinations()
    data = C.CaptionData(labels, lev)
    tok = data.tok
    seen = set()
    for seed in range(12):
        for row in data.sample(np.arange(len(labels)), seed):
            seen.add(tok.decode(row))
    for text in seen:
        words = set(text.replace(",", " ").split())
        for d, t, s in C.HELDOUT_COMBOS:
            named = (C.DIGIT_WORDS[d] in words or str(d) in words) and \
                C.LEVEL_WORDS["thickness"][t] in words and C.LEVEL_WORDS["slant"][s] in words
            assert not named, text
    # the held-out captions themselves are new sentences
    held = C.heldout_captions(labels, lev)
    for name, (ids, rows) in held.items():
        assert len(rows) > 0
        assert not {tok.decode(r) for r in ids} & seen, name
    rows = held["heldout_combos"][1]
    key = {(labels[r], lev[r, 0], lev[r, 1]) for r in rows}
    assert key == set(C.HELDOUT_COMBOS)
    assert len(rows) == len(C.HELDOUT_COMBOS) * 9  # every size x position of each combination
    # examples outside the held-out combinations may use every template
    assert data.allowed.sum() == data.allowed.size - len(rows) * 2


# ----------------------------------------------------------------------------- the data set
def test_mnist_captions_test_split(mnist_dir):
    from refgen.data import load
    ds = load("mnist-captions", "test")
    assert ds.x.shape == (10_000, 1, 28, 28) and ds.kind == "continuous"
    assert ds.vocab == C.Tokenizer().words and ds.num_classes == 10
    xb, ids = ds.batch(np.arange(64), 0)
    assert xb.shape == (64, 1, 28, 28) and ids.shape == (64, C.CONTEXT) and ids.dtype == np.int64
    assert np.array_equal(ids, ds.batch(np.arange(64), 0)[1])
    lev = ds.captions.lev
    for k in range(len(C.ATTRIBUTES)):  # the test set is binned by the training tertiles
        assert np.all(np.abs(np.bincount(lev[:, k], minlength=3) / len(lev) - 1 / 3) < 0.12)


def test_mnist_captions_14_pools_the_images_and_keeps_the_captions(mnist_dir):
    from refgen.data import load
    from refgen.data.datasets import describe
    big, small = load("mnist-captions", "test"), load("mnist-captions-14", "test")
    assert small.name == "mnist-captions-14" and small.x.shape == (10_000, 1, 14, 14)
    assert describe("mnist-captions-14") == ("continuous", (1, 14, 14))
    assert np.array_equal(small.x, load("mnist-14", "test").x)  # the mnist-14 images
    assert np.array_equal(small.captions.ids, big.captions.ids)  # captions of the 28x28 digits
    assert np.array_equal(small.batch(np.arange(8), 3)[1], big.batch(np.arange(8), 3)[1])
    with pytest.raises(ValueError, match="size 28 or 14"):
        C.load_split("test", size=7)


@pytest.mark.slow
def test_saved_cuts_are_the_training_tertiles(mnist_dir):
    from refgen.data.mnist import load_mnist
    images, _ = load_mnist("train")
    cuts = C.thresholds(C.measure(images[:, None].astype(np.float32) / 127.5 - 1))
    saved = C.training_cuts()
    for a in C.ATTRIBUTES:
        assert cuts[a] == pytest.approx(saved[a], rel=1e-6)
