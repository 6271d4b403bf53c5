"""The committed MNIST feature network: integrity check, shapes, accuracy, FID and
cond_accuracy on real digits."""
import shutil

import numpy as np
import pytest

from refgen.metrics import classifier as C
from refgen.metrics.frechet import frechet_distance_from_features
from refgen.metrics.fid import cond_accuracy, fid_mnist, mnist_features, mnist_features_and_logits


def test_committed_weights_load_and_verify():
    assert C.file_sha256(C.CLASSIFIER_PATH) == C.CLASSIFIER_SHA256
    assert C.CLASSIFIER_PATH.stat().st_size < 1_000_000
    model = C.load_classifier()
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert C.load_classifier() is model  # cached in-process


def test_corrupted_copy_is_refused(tmp_path):
    bad = tmp_path / "mnist_classifier.npz"
    shutil.copy(C.CLASSIFIER_PATH, bad)
    raw = bytearray(bad.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte inside the weights
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="sha256"):
        C.load_classifier(bad)
    with pytest.raises(FileNotFoundError, match="missing"):
        C.load_classifier(tmp_path / "absent.npz")


def test_feature_shapes_and_low_resolution_inputs():
    rng = np.random.default_rng(0)
    x14 = rng.uniform(-1, 1, (5, 1, 14, 14)).astype(np.float32)
    x28 = np.repeat(np.repeat(x14, 2, axis=2), 2, axis=3)  # nearest 2x upsampling by hand
    f28 = mnist_features(x28)
    assert f28.shape == (5, C.HIDDEN) and f28.dtype == np.float64
    np.testing.assert_allclose(mnist_features(x14), f28, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mnist_features(x28.reshape(5, 784)), f28, rtol=1e-5, atol=1e-6)
    assert mnist_features(x28, batch_size=2).shape == (5, C.HIDDEN)
    with pytest.raises(ValueError, match="shape"):
        mnist_features(rng.uniform(-1, 1, (5, 3, 28, 28)))
    with pytest.raises(ValueError, match="NaN"):
        mnist_features(np.full((2, 1, 28, 28), np.nan, dtype=np.float32))


@pytest.fixture(scope="module")
def test_digits(mnist_dir):
    from refgen import data
    ds = data.load("mnist", "test", data_dir=mnist_dir)
    return ds.x[:3000], ds.y[:3000]  # the slow test uses all 3,000


@pytest.fixture(scope="module")
def first_2000(test_digits):
    x, y = test_digits
    feats, logits = mnist_features_and_logits(x[:2000])
    return x[:2000], y[:2000], feats, logits


def test_accuracy_on_real_test_digits(first_2000):
    x, y, _, logits = first_2000
    acc = float((logits.argmax(1) == y).mean())
    assert acc >= 0.985, acc
    small = x.reshape(-1, 1, 14, 2, 14, 2).mean(axis=(3, 5))  # the mnist-14 version
    _, logits14 = mnist_features_and_logits(small[:500])
    assert float((logits14.argmax(1) == y[:500]).mean()) >= 0.96


def test_cond_accuracy_on_labelled_digits_is_the_accuracy(first_2000):
    x, y, _, logits = first_2000
    acc = float((logits[:500].argmax(1) == y[:500]).mean())
    assert cond_accuracy(x[:500], y[:500]) == pytest.approx(acc)
    assert acc >= 0.98
    assert cond_accuracy(x[:500], np.roll(y[:500], 1)) < 0.2  # wrong labels: about chance
    with pytest.raises(ValueError, match="labels"):
        cond_accuracy(x[:10], y[:9])


def test_fid_is_small_between_halves_and_large_for_noise(first_2000):
    x, _, feats, _ = first_2000
    # fid_mnist on images is the Frechet distance of their features
    assert fid_mnist(x[:200], reference=x[1000:1200]) == pytest.approx(
        frechet_distance_from_features(feats[:200], feats[1000:1200]), rel=1e-6)
    assert fid_mnist(x[:200], reference=x[:200]) == pytest.approx(0.0, abs=1e-6)
    same = frechet_distance_from_features(feats[:1000], feats[1000:])
    noise = 0.5 * np.random.default_rng(0).standard_normal((1000, 1, 28, 28)).astype(np.float32)
    noisy = frechet_distance_from_features(mnist_features(np.clip(x[:1000] + noise, -1, 1)),
                                           feats[1000:])
    # 1,000 vs 1,000 real digits sit at the small-sample floor (~20, see
    # benchmarks/results/fid_reference.md); noise of std 0.5 adds ~140 on top
    assert same < 0.35 * noisy, (same, noisy)


@pytest.mark.slow
def test_fid_against_cached_test_statistics(test_digits):
    x, _ = test_digits
    assert fid_mnist(x, reference="test") < fid_mnist(x, reference="train") + 5.0
    small = x.reshape(-1, 1, 14, 2, 14, 2).mean(axis=(3, 5))
    assert fid_mnist(small, reference="test") < fid_mnist(x, reference="test") + 5.0
