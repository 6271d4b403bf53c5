"""MNIST reader: tiny hand-made IDX files (good and broken), lookup order, download from
file:// mirrors (never the network), and the real files through the mnist_dir fixture."""
import gzip
import hashlib
import os

import numpy as np
import pytest

from refgen.data import mnist
from refgen.data.mnist import DataError, find_mnist_dir, load_mnist

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def idx_bytes(a, magic=None):
    """IDX encoding of a uint8 array: magic, big-endian uint32 dims, the values."""
    magic = magic if magic is not None else {3: 2051, 1: 2049}[a.ndim]
    return np.array([magic, *a.shape], ">u4").tobytes() + a.astype(np.uint8).tobytes()


def fake_split(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n)


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A directory with all four files holding 6 (train) and 4 (test) fake images; the
    checksum table is patched to these contents. Returns (dir, {split: (images, labels)})."""
    d = tmp_path / "tiny"
    d.mkdir()
    table, arrays = {}, {}
    for split, n in (("train", 6), ("test", 4)):
        images, labels = arrays[split] = fake_split(n, len(split))
        for name, a in zip(mnist.FILES[split], (images, labels)):
            raw = idx_bytes(a)
            (d / name).write_bytes(gzip.compress(raw))
            table[name] = hashlib.sha256(raw).hexdigest()
    monkeypatch.setattr(mnist, "SHA256", table)
    monkeypatch.delenv("REFGEN_DATA_DIR", raising=False)
    monkeypatch.setattr(mnist, "CACHE_DIR", str(tmp_path / "empty-cache"))
    return d, arrays


def test_reads_tiny_files(tiny):
    d, arrays = tiny
    for split in ("train", "test"):
        images, labels = load_mnist(split, data_dir=d, download=False)
        assert images.dtype == np.uint8 and images.shape == arrays[split][0].shape
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(images, arrays[split][0])
        np.testing.assert_array_equal(labels, arrays[split][1])
        assert not images.flags.writeable and not labels.flags.writeable
        assert load_mnist(split, data_dir=d, download=False)[0] is images  # cached


def one_line_error(path, match):
    with pytest.raises(DataError, match=match) as e:
        load_mnist("test", data_dir=path.parent, download=False)
    msg = str(e.value)
    assert "\n" not in msg and path.name in msg
    assert "delete" in msg and "REFGEN_DATA_DIR" in msg
    return msg


def test_truncated_gzip(tiny):
    d, _ = tiny
    path = d / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-100])
    one_line_error(path, "gzip")


def test_truncated_contents(tiny):
    d, arrays = tiny
    path = d / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(arrays["test"][0])[:-28]))
    one_line_error(path, "header says")


def test_wrong_magic(tiny):
    d, arrays = tiny
    path = d / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(arrays["test"][1], magic=2051)))
    one_line_error(path, "magic")


def test_wrong_checksum(tiny):
    d, arrays = tiny
    path = d / "t10k-images-idx3-ubyte.gz"
    images = arrays["test"][0].copy()
    images[0, 0, 0] ^= 1  # one bit off, structure intact
    path.write_bytes(gzip.compress(idx_bytes(images)))
    one_line_error(path, "sha256")


def test_lookup_order(tiny, tmp_path, monkeypatch):
    d, _ = tiny
    assert find_mnist_dir(d) == d
    assert find_mnist_dir(tmp_path / "nowhere") is None
    monkeypatch.setenv("REFGEN_DATA_DIR", str(d))
    assert find_mnist_dir() == d
    assert find_mnist_dir(tmp_path / "nowhere") == d  # falls through to the environment
    monkeypatch.delenv("REFGEN_DATA_DIR")
    monkeypatch.setattr(mnist, "CACHE_DIR", str(d))
    assert find_mnist_dir() == d
    # a directory holding only the test files serves the test split only
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in mnist.FILES["test"]:
        (partial / name).write_bytes((d / name).read_bytes())
    assert find_mnist_dir(partial, split="test") == partial
    assert find_mnist_dir(partial, split="train") == d


def test_missing_without_download(tmp_path, monkeypatch):
    monkeypatch.delenv("REFGEN_DATA_DIR", raising=False)
    monkeypatch.setattr(mnist, "CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="not found") as e:
        load_mnist("train", data_dir=tmp_path / "none", download=False)
    assert "REFGEN_DATA_DIR" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="split"):
        load_mnist("validation", download=False)


def test_download_from_file_mirrors(tiny, tmp_path, monkeypatch):
    d, arrays = tiny
    bad = tmp_path / "bad-mirror"
    bad.mkdir()
    (bad / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    cache = tmp_path / "cache"
    monkeypatch.setattr(mnist, "CACHE_DIR", str(cache))
    monkeypatch.setattr(mnist, "MIRRORS", [bad.as_uri() + "/", d.as_uri() + "/"])
    images, labels = load_mnist("test", data_dir=tmp_path / "none", download=True)
    np.testing.assert_array_equal(images, arrays["test"][0])
    assert sorted(os.listdir(cache)) == sorted(mnist.FILES["test"])  # no partial files left


def test_download_all_mirrors_fail(tmp_path, monkeypatch):
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    monkeypatch.delenv("REFGEN_DATA_DIR", raising=False)
    monkeypatch.setattr(mnist, "CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(mnist, "MIRRORS", [empty.as_uri() + "/"])
    with pytest.raises(DataError, match="could not download"):
        load_mnist("test")
    assert os.listdir(tmp_path / "cache") == []


# ----------------------------------------------------------------------------- real MNIST
def test_real_mnist(mnist_dir):
    for split, n, counts in (("train", 60000, TRAIN_COUNTS), ("test", 10000, TEST_COUNTS)):
        images, labels = load_mnist(split, data_dir=mnist_dir, download=False)
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int64
        assert np.bincount(labels, minlength=10).tolist() == counts
        assert images.min() == 0 and images.max() == 255
