"""One interface to every data set: ``load(name, split) -> Dataset``, ``ds.batch(idx, rng)``.

Names and what ``Dataset.x`` holds (float32 unless said otherwise, one row per example):

  toy2d names    (N, 2) samples; train N=50,000 drawn from seed ``(seed, 0)``, test
                 N=10,000 from ``(seed, 1)``.  kind 'continuous'.
  mnist          (N, 1, 28, 28) in [-1, 1]: x = k / 127.5 - 1 for pixel value k.
  mnist-dequantized
                 (N, 1, 28, 28) in [0, 1]: x = (k + u) / 256, u ~ U[0, 1) drawn afresh in
                 every train batch; the test split is one fixed draw (seed 0).  A density
                 p(x) on [0, 1]^D gives the discrete data a likelihood of at least
                 p(x) / 256^D, so  bits/dim = (nll_nats + D log 256) / (D log 2),  D = 784.
  mnist-binary   (N, 1, 28, 28) in {0, 1}, kind 'binary'.  Train: x stores the intensities
                 k / 255 and every batch draws x_b ~ Bernoulli(intensity) (dynamic
                 binarization).  Test: one fixed binarization (seed 0) whatever ``seed`` is,
                 so test NLLs are comparable across runs.
  mnist-14       (N, 1, 14, 14) in [-1, 1]: 2x2 average pooling, then as mnist.
  mnist-14-binary  pooled intensities, then binarized as mnist-binary.
  mnist-captions (N, 1, 28, 28) in [-1, 1] as mnist, with captions written from each digit's
                 label and measured attributes; ``batch`` returns (images, caption token ids
                 (B, 12) int64), see :mod:`refgen.data.captions`.
  mnist-captions-14  the same captions with the images 2x2 average pooled as mnist-14.
  mnist-edges, mnist-14-edges, mnist-fill, mnist-14-fill
                 (control, image) pairs for ControlNet: x the target image in [-1, 1], ``y``
                 the control image (N, 1, H, W) in {0, 1} (an edge map of the digit; the
                 outline of its filled silhouette, with the silhouette as the target), see
                 :mod:`refgen.data.controls`; no labels.
  text:PATH      character-level: x is int64 token ids (n,) of the split (90/10), kind
                 'categorical'; ``batch(starts, rng)`` returns windows
                 ``(x[s:s+block_size], x[s+1:s+block_size+1])`` for each start s, i.e.
                 inputs and next-character targets, both int64 (B, block_size).

For every MNIST name ``y`` holds the int64 labels and ``num_classes`` is 10.
MNIST files are read only when an MNIST name is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import mnist as _mnist
from . import text as _text
from . import toy2d

__all__ = ["Dataset", "load", "names", "describe", "check_data_dir", "TOY_SIZES"]

TOY_SIZES = {"train": 50_000, "test": 10_000}
_MNIST_NAMES = ("mnist", "mnist-dequantized", "mnist-binary", "mnist-14", "mnist-14-binary")
_CAPTION_NAMES = ("mnist-captions", "mnist-captions-14")
_CONTROL_NAMES = ("mnist-edges", "mnist-14-edges", "mnist-fill", "mnist-14-fill")  # refgen.data.controls
_TEST_SEED = 0  # the one fixed binarization / dequantization of MNIST test sets


@dataclass(eq=False)
class Dataset:
    """A split of a data set held in host memory (NumPy).

    ``batch(indices, rng) -> (x_batch, y_batch)``: rows ``indices`` (integers in
    [0, len(self))) with the split's per-batch transform applied; ``y_batch`` is None when
    there are no labels.  ``rng`` is a NumPy Generator (or a seed).
    """
    name: str
    split: str
    x: np.ndarray
    y: np.ndarray | None
    kind: str  # 'continuous' | 'binary' | 'categorical'
    shape: tuple  # of one example (one window, (block_size,), for text)
    num_classes: int | None = None
    vocab: list | None = None
    block_size: int | None = None
    transform: Callable | None = field(default=None, repr=False)  # (x_batch, rng) -> x_batch
    value_range: tuple | None = None  # the interval every value lies in, where it is fixed

    def __len__(self) -> int:
        if self.kind == "categorical":
            return len(self.x) - self.block_size  # valid window starts
        return len(self.x)

    def batch(self, indices, rng=None):
        idx = np.asarray(indices, dtype=np.int64)
        if self.kind == "categorical":
            window = self.x[idx[:, None] + np.arange(self.block_size + 1)]  # (B, T+1)
            return window[:, :-1], window[:, 1:]
        xb = self.x[idx]
        if self.transform is not None:
            xb = self.transform(xb, np.random.default_rng(rng))
        return xb, (None if self.y is None else self.y[idx])

    def decode(self, ids) -> str:
        """Token ids -> text (text data sets only)."""
        return _text.decode(ids, self.vocab)


def names() -> list[str]:
    """Every accepted data set name; 'text:PATH' stands for any text file."""
    return toy2d.names() + list(_MNIST_NAMES) + list(_CAPTION_NAMES) + list(_CONTROL_NAMES) + ["text:PATH"]


def _binarize(p, rng):
    return (rng.random(p.shape, dtype=np.float32) < p).astype(np.float32)


def _dequantize(lower, rng):  # lower = k / 256
    return lower + rng.random(lower.shape, dtype=np.float32) / np.float32(256)


def value_range(name: str) -> tuple | None:
    """The interval the values of data set ``name`` lie in: (-1, 1) for mnist and mnist-14,
    (0, 1) for the dequantized and binary variants, None where it is not fixed (toy 2D, text)."""
    if name in ("mnist", "mnist-14") + _CAPTION_NAMES + _CONTROL_NAMES:
        return (-1.0, 1.0)
    if name in _MNIST_NAMES:
        return (0.0, 1.0)
    return None


def describe(name: str) -> tuple:
    """(kind, shape of one example) of data set ``name`` without reading any file, or
    (None, None) for a name ``load`` does not accept. Text windows have ``load``'s default
    block size."""
    if name in toy2d.names():
        return "continuous", (2,)
    if name in _MNIST_NAMES:
        side = 14 if name.startswith("mnist-14") else 28
        return ("binary" if name.endswith("binary") else "continuous"), (1, side, side)
    if name in _CAPTION_NAMES:
        return "continuous", (1, 14, 14) if name.endswith("-14") else (1, 28, 28)
    if name in _CONTROL_NAMES:
        side = 14 if name.startswith("mnist-14") else 28
        return "continuous", (1, side, side)
    if name.startswith("text:") and len(name) > 5:
        return "categorical", (64,)
    return None, None


def check_data_dir(name: str, data_dir) -> None:
    """Raise ValueError naming ``data_dir`` when data set ``name`` reads files and
    ``data_dir`` does not hold them (no fall-through to REFGEN_DATA_DIR or a download)."""
    if data_dir is None or name not in _MNIST_NAMES + _CAPTION_NAMES + _CONTROL_NAMES:
        return
    d = Path(data_dir).expanduser()
    if not d.is_dir():
        raise ValueError(f"data directory {data_dir} is not a directory")
    missing = [f for files in _mnist.FILES.values() for f in files if not (d / f).is_file()]
    if missing:
        raise ValueError(f"data directory {data_dir} lacks the MNIST file(s) {', '.join(missing)}")


def _load_mnist(name, split, data_dir, download):
    images, labels = _mnist.load_mnist(split, data_dir=data_dir, download=download)
    k = images[:, None].astype(np.float32)  # (N, 1, 28, 28), values 0..255
    if name.startswith("mnist-14"):
        n = len(k)
        k = k.reshape(n, 1, 14, 2, 14, 2).mean(axis=(3, 5))  # 2x2 average pool -> (N, 1, 14, 14)
    kind, transform = "continuous", None
    if name in ("mnist", "mnist-14"):
        x = k / np.float32(127.5) - np.float32(1)
    elif name == "mnist-dequantized":
        x, transform = k / np.float32(256), _dequantize
        if split == "test":
            x, transform = _dequantize(x, np.random.default_rng(_TEST_SEED)), None
    else:  # binary variants
        x, kind, transform = k / np.float32(255), "binary", _binarize
        if split == "test":
            x, transform = _binarize(x, np.random.default_rng(_TEST_SEED)), None
    return Dataset(name, split, x, labels, kind, x.shape[1:], num_classes=10, transform=transform,
                   value_range=value_range(name))


def load(name: str, split: str = "train", data_dir=None, seed: int = 0,
         block_size: int = 64, download: bool = True) -> Dataset:
    """The ``split`` ('train' or 'test') of data set ``name`` (see the module docstring)."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; accepted: train, test")
    if name in toy2d.names():
        rng = np.random.default_rng([int(seed), 0 if split == "train" else 1])
        x = toy2d.sample(name, TOY_SIZES[split], rng).astype(np.float32)
        return Dataset(name, split, x, None, "continuous", (2,))
    if name in _MNIST_NAMES:
        return _load_mnist(name, split, data_dir, download)
    if name in _CAPTION_NAMES:
        from . import captions
        return captions.load_split(split, data_dir, download, 14 if name.endswith("-14") else 28)
    if name in _CONTROL_NAMES:
        from . import controls
        return controls.load(name, split, data_dir, download)
    if name.startswith("text:") and len(name) > 5:
        ids, vocab = _text.load_text(name[5:], split)
        if len(ids) <= block_size:
            raise ValueError(f"{name}: the {split} split has {len(ids)} characters, "
                             f"need more than block_size={block_size}")
        return Dataset(name, split, ids, None, "categorical", (int(block_size),), vocab=vocab,
                       block_size=int(block_size))
    raise ValueError(f"unknown data set {name!r}; accepted: {', '.join(names())}")
