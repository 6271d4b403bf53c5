"""MNIST: read the four gzipped IDX files, verify them, download them when missing.

Where the files are looked for, in order (the first directory holding a split's two files
wins): the ``data_dir`` argument, ``$REFGEN_DATA_DIR``, then ``~/.cache/refgen/mnist``.
When none has them and ``download=True``, they are fetched into ``~/.cache/refgen/mnist``
from ``MIRRORS`` (each written to a temporary file, verified, then renamed into place).

Every file is checked before use: it must decompress, start with the IDX magic number of
its kind, hold exactly the bytes its header promises, and the sha256 of the *decompressed*
contents must equal ``SHA256`` (the gzip streams differ between mirrors, the contents do
not).  Anything else raises :class:`DataError` with one line naming the file and the fix.

IDX layout (big-endian): magic 0x00000803 (images) or 0x00000801 (labels), then one uint32
per dimension, then the uint8 values, row-major.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import sys
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

__all__ = ["load_mnist", "find_mnist_dir", "download_mnist", "DataError", "FILES",
           "SHA256", "MIRRORS", "CACHE_DIR"]

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SHA256 = {  # of the decompressed contents
    "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]
CACHE_DIR = "~/.cache/refgen/mnist"
_MAGIC = {3: 2051, 1: 2049}  # number of dimensions -> IDX magic (uint8 data)
_CACHE: dict = {}  # (resolved dir, split) -> (images, labels), both read-only


class DataError(ValueError):
    """A data file is missing, corrupt or not what it claims to be."""


def _splits(split):
    if split is None:
        return list(FILES)
    if split not in FILES:
        raise ValueError(f"unknown MNIST split {split!r}; accepted: train, test")
    return [split]


def _candidates(data_dir):
    dirs = [data_dir, os.environ.get("REFGEN_DATA_DIR") or None, CACHE_DIR]
    return [Path(d).expanduser() for d in dirs if d is not None]


def find_mnist_dir(data_dir=None, split=None) -> Path | None:
    """The first directory (data_dir, $REFGEN_DATA_DIR, ~/.cache/refgen/mnist) holding the
    files of ``split`` ('train', 'test', or None for all four), else None."""
    needed = [f for s in _splits(split) for f in FILES[s]]
    for d in _candidates(data_dir):
        if all((d / f).is_file() for f in needed):
            return d
    return None


def _fail(path, what):
    return DataError(f"{path}: {what}; delete it and run again to re-download, "
                     "or set REFGEN_DATA_DIR to a directory with good MNIST files")


def _read_idx(path: Path, name: str | None = None) -> np.ndarray:
    """Decompress, check and decode one IDX file -> uint8 array, (N, 28, 28) or (N,).

    ``name`` is the standard file name (it picks the checksum); default ``path.name``.
    """
    name = name or path.name
    ndim = 3 if "images" in name else 1
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise _fail(path, f"not a complete gzip file ({type(e).__name__}: {e})") from None
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _fail(path, f"truncated: {len(raw)} bytes, shorter than the IDX header")
    magic, *dims = np.frombuffer(raw[:header], dtype=">u4").tolist()
    if magic != _MAGIC[ndim]:
        raise _fail(path, f"wrong IDX magic number {magic} (expected {_MAGIC[ndim]})")
    if len(raw) != header + int(np.prod(dims)):
        raise _fail(path, f"holds {len(raw) - header} data bytes, header says {int(np.prod(dims))}")
    expected = SHA256.get(name)
    if expected is not None and hashlib.sha256(raw).hexdigest() != expected:
        raise _fail(path, "sha256 of the decompressed contents does not match the known MNIST file")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def download_mnist(split=None, dest=None, mirrors=None) -> Path:
    """Fetch the missing files of ``split`` into ``dest`` (default ~/.cache/refgen/mnist).

    Each file is tried on every mirror in turn, written to a temporary file in ``dest``,
    verified like any other, and only then renamed to its final name.
    """
    dest = Path(dest or CACHE_DIR).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    for name in (f for s in _splits(split) for f in FILES[s]):
        if (dest / name).is_file():
            continue
        errors = []
        for base in mirrors or MIRRORS:
            url = base + name
            fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{name}.", suffix=".part")
            try:
                print(f"refgen: downloading {url}", file=sys.stderr)
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as r:
                    while chunk := r.read(1 << 20):
                        out.write(chunk)
                _read_idx(Path(tmp), name)
                os.replace(tmp, dest / name)
                break
            except Exception as e:  # try the next mirror
                errors.append(f"{url}: {e}")
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            raise DataError(f"could not download {name} ({'; '.join(errors)}); put the MNIST "
                            f"files in {dest} by hand or set REFGEN_DATA_DIR to them")
    return dest


def load_mnist(split: str = "train", data_dir=None, download: bool = True):
    """(images uint8 (N, 28, 28), labels int64 (N,)) of 'train' (N=60000) or 'test' (N=10000).

    The arrays are read-only and cached for the life of the process.
    """
    (split,) = _splits(split)
    d = find_mnist_dir(data_dir, split)
    if d is None:
        if not download:
            looked = ", ".join(str(c) for c in _candidates(data_dir))
            raise DataError(f"MNIST {split} files not found (looked in {looked}); set "
                            "REFGEN_DATA_DIR to the directory holding them or allow download")
        d = download_mnist(split)
    key = (str(d.resolve()), split)
    if key not in _CACHE:
        image_file, label_file = FILES[split]
        images, labels = _read_idx(d / image_file), _read_idx(d / label_file).astype(np.int64)
        if len(images) != len(labels) or images.shape[1:] != (28, 28):
            raise _fail(d / image_file, f"images {images.shape} do not match labels {labels.shape}")
        labels.flags.writeable = False
        _CACHE[key] = (images, labels)
    return _CACHE[key]
