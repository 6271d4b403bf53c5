"""refgen.data.load: names, toy splits, text windows, and every MNIST variant (on tiny fake
IDX files for exact values, and on the real files for ranges and the fixed test sets)."""
import gzip
import hashlib

import numpy as np
import pytest

import refgen.data as data
from refgen.data import mnist, toy2d

MNIST_NAMES = ["mnist", "mnist-dequantized", "mnist-binary", "mnist-14", "mnist-14-binary"]


def test_names_and_unknown():
    names = data.names()
    assert set(toy2d.names()) <= set(names)
    assert set(MNIST_NAMES) <= set(names) and "text:PATH" in names
    with pytest.raises(ValueError, match="accepted: .*mnist-binary.*text:PATH") as e:
        data.load("cifar10")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="split"):
        data.load("moons", split="valid")


@pytest.mark.parametrize("name", toy2d.names())
def test_toy_splits(name):
    train, test = data.load(name), data.load(name, "test")
    assert train.x.shape == (50_000, 2) and test.x.shape == (10_000, 2)
    assert train.x.dtype == np.float32 and train.kind == "continuous" and train.shape == (2,)
    assert train.y is None and train.num_classes is None and len(train) == 50_000
    np.testing.assert_array_equal(train.x, data.load(name, seed=0).x)
    assert not np.array_equal(train.x[:10_000], test.x)
    assert not np.array_equal(train.x, data.load(name, seed=1).x)
    xb, yb = train.batch(np.array([3, 1, 4]), np.random.default_rng(0))
    np.testing.assert_array_equal(xb, train.x[[3, 1, 4]])
    assert yb is None


def test_text(tmp_path):
    path = tmp_path / "t.txt"
    text = "hello world, héllo refgen!\n" * 20
    path.write_text(text, encoding="utf-8")
    train = data.load(f"text:{path}", block_size=8)
    test = data.load(f"text:{path}", split="test", block_size=8)
    assert train.vocab == sorted(set(text)) and test.vocab == train.vocab
    assert train.kind == "categorical" and train.shape == (8,) and train.x.dtype == np.int64
    assert len(train.x) == int(0.9 * len(text)) and len(train.x) + len(test.x) == len(text)
    assert train.decode(train.x) + test.decode(test.x) == text
    assert len(train) == len(train.x) - 8
    xb, yb = train.batch(np.array([0, 5, len(train) - 1]), np.random.default_rng(0))
    assert xb.shape == yb.shape == (3, 8) and xb.dtype == np.int64
    np.testing.assert_array_equal(xb[1], train.x[5:13])
    np.testing.assert_array_equal(yb[:, :-1], xb[:, 1:])  # targets are the next characters
    np.testing.assert_array_equal(yb[2, -1], train.x[-1])
    np.testing.assert_array_equal(data.text.encode("hello", train.vocab), train.x[:5])
    with pytest.raises(ValueError, match="block_size"):
        data.load(f"text:{path}", split="test", block_size=1000)
    with pytest.raises(ValueError, match="cannot read"):
        data.load(f"text:{tmp_path / 'missing.txt'}")


# ----------------------------------------------------------------------------- fake MNIST
@pytest.fixture
def fake_mnist(tmp_path, monkeypatch):
    """Tiny IDX files (8 train, 4 test images) with the checksum table patched to match."""
    rng = np.random.default_rng(0)
    table, arrays = {}, {}
    for split, n in (("train", 8), ("test", 4)):
        arrays[split] = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n))
        for name, a in zip(mnist.FILES[split], arrays[split]):
            raw = np.array([2051 if a.ndim == 3 else 2049, *a.shape], ">u4").tobytes() \
                + a.astype(np.uint8).tobytes()
            (tmp_path / name).write_bytes(gzip.compress(raw))
            table[name] = hashlib.sha256(raw).hexdigest()
    monkeypatch.setattr(mnist, "SHA256", table)
    return tmp_path, arrays


def test_mnist_variants_exact(fake_mnist):
    d, arrays = fake_mnist
    k, labels = arrays["train"]
    k = k[:, None].astype(np.float64)  # (N, 1, 28, 28)
    pooled = (k[..., ::2, ::2] + k[..., 1::2, ::2] + k[..., ::2, 1::2] + k[..., 1::2, 1::2]) / 4
    load = lambda name, split="train": data.load(name, split, data_dir=d, download=False)  # noqa: E731

    ds = load("mnist")
    assert ds.x.shape == (8, 1, 28, 28) and ds.x.dtype == np.float32 and ds.num_classes == 10
    np.testing.assert_allclose(ds.x, k / 127.5 - 1, atol=1e-6)
    np.testing.assert_array_equal(ds.y, labels)
    np.testing.assert_allclose(load("mnist-14").x, pooled / 127.5 - 1, atol=1e-6)
    assert load("mnist-14").shape == (1, 14, 14)

    deq = load("mnist-dequantized")
    xb, yb = deq.batch(np.arange(8), np.random.default_rng(1))
    np.testing.assert_array_equal(np.floor(xb.astype(np.float64) * 256), k)  # (k + u) / 256
    np.testing.assert_array_equal(yb, labels)

    for name, p in (("mnist-binary", k / 255), ("mnist-14-binary", pooled / 255)):
        ds = load(name)
        assert ds.kind == "binary"
        np.testing.assert_allclose(ds.x, p, atol=1e-6)  # stored intensities
        xb, _ = ds.batch(np.arange(8), np.random.default_rng(2))
        assert set(np.unique(xb)) <= {0.0, 1.0}
        assert np.all(xb[p == 0] == 0) and np.all(xb[p == 1] == 1)


def test_mnist_test_splits_fixed(fake_mnist):
    d, arrays = fake_mnist
    for name in ("mnist-binary", "mnist-14-binary", "mnist-dequantized"):
        a = data.load(name, "test", data_dir=d, download=False, seed=0)
        b = data.load(name, "test", data_dir=d, download=False, seed=5)
        np.testing.assert_array_equal(a.x, b.x)
        xb1, _ = a.batch(np.arange(4), np.random.default_rng(1))
        xb2, _ = a.batch(np.arange(4), np.random.default_rng(2))
        np.testing.assert_array_equal(xb1, xb2)  # no per-batch noise on test sets
        np.testing.assert_array_equal(xb1, a.x)


# ----------------------------------------------------------------------------- real MNIST
def test_real_variants(mnist_dir):
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 60000, 256)
    ranges = {"mnist": (-1, 1), "mnist-14": (-1, 1), "mnist-dequantized": (0, 1),
              "mnist-binary": (0, 1), "mnist-14-binary": (0, 1)}
    for name, (lo, hi) in ranges.items():
        ds = data.load(name, data_dir=mnist_dir)
        side = 14 if "14" in name else 28
        assert ds.x.shape == (60000, 1, side, side) and ds.x.dtype == np.float32
        assert ds.shape == (1, side, side) and ds.y.shape == (60000,)
        xb, yb = ds.batch(idx, rng)
        assert xb.dtype == np.float32 and xb.shape == (256, 1, side, side)
        assert lo <= xb.min() and xb.max() <= hi
        if name in ("mnist", "mnist-14"):
            assert xb.min() == -1.0
        np.testing.assert_array_equal(yb, ds.y[idx])


def test_real_binary_sets(mnist_dir):
    a = data.load("mnist-binary", "test", data_dir=mnist_dir)
    b = data.load("mnist-binary", "test", data_dir=mnist_dir, seed=3)
    assert a.x.shape == (10000, 1, 28, 28)
    np.testing.assert_array_equal(a.x, b.x)  # one fixed binarization
    assert set(np.unique(a.x)) == {0.0, 1.0}
    train = data.load("mnist-binary", data_dir=mnist_dir)
    rng = np.random.default_rng(0)
    x1, _ = train.batch(np.arange(64), rng)
    x2, _ = train.batch(np.arange(64), rng)
    assert set(np.unique(x1)) == {0.0, 1.0}
    assert not np.array_equal(x1, x2)  # dynamic binarization: fresh draws every batch
    assert abs(x1.mean() - train.x[:64].mean()) < 0.01


@pytest.mark.parametrize("name", ["mnist", "mnist-14", "mnist-dequantized", "mnist-binary",
                                  "mnist-14-binary"])
def test_mnist_batches_lie_in_the_declared_value_range(fake_mnist, name):
    d, _ = fake_mnist
    for split in ("train", "test"):
        ds = data.load(name, split, data_dir=d, download=False)
        lo, hi = ds.value_range
        xb, _ = ds.batch(np.arange(len(ds)), np.random.default_rng(3))
        assert lo <= xb.min() and xb.max() <= hi
        assert xb.min() < lo + 0.5 * (hi - lo) < xb.max()  # the range is the data's, not wider
