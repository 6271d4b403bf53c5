"""FID on MNIST and class-conditional accuracy, both measured by the committed classifier.

    fid_mnist = || mu_s - mu_r ||^2 + tr(S_s) + tr(S_r) - 2 tr((S_s S_r)^{1/2})

where (mu, S) are the mean and covariance of the 128-d penultimate features
(refgen.metrics.classifier) of the samples (s) and of a reference set (r); the distance
itself is refgen.metrics.frechet. FID is biased upwards at small sample sizes, so numbers are
comparable only at equal N (10,000 samples against the 10,000 test images is the default of
refgen.metrics.evaluate). benchmarks/fid_reference.py gives the scale: the floor (train vs
test) and the FID of simple corruptions of the test set.

Images are in [-1, 1] (data in [0, 1] is mapped with 2x - 1 by the caller). Samples of the
14x14 data sets are compared with the test set at 14x14 (2x2 average pooled, as
``mnist-14``), both upsampled 2x by the classifier: comparing blocky 14x14 samples with sharp
28x28 digits would measure the resolution, not the model.
"""
from __future__ import annotations

import numpy as np

from refgen import backend
from refgen.autograd import no_grad
from refgen.backend import xp
from refgen.metrics.classifier import load_classifier
from refgen.metrics.frechet import frechet_distance, gaussian_stats

__all__ = ["mnist_features", "mnist_features_and_logits", "reference_features", "reference_stats",
           "fid_mnist", "cond_accuracy"]

_REF: dict = {}  # (data set name, split, N) -> (mu, sigma) of its features
_FEATS: dict = {}  # (data set name, split, N) -> its features, (N, 128)
_SPLIT_SIZES = {"train": 60_000, "test": 10_000}


def mnist_features_and_logits(images, batch_size: int = 500):
    """Penultimate features (N, 128) and class logits (N, 10), float64 NumPy.

    ``images``: (N, 1, 28, 28) or (N, 1, 14, 14) (or flat) in [-1, 1], NumPy or backend
    array or Tensor. Runs the classifier in eval mode without a graph, ``batch_size`` at a time.
    """
    model = load_classifier()
    x = images.data if hasattr(images, "requires_grad") else images
    feats, logits = [], []
    with no_grad():
        for i in range(0, len(x), int(batch_size)):
            xb = backend.asarray(x[i:i + batch_size], dtype="float32")
            if not bool(xp.isfinite(xb).all()):
                raise ValueError("images contain NaN or inf; the classifier needs finite "
                                 "pixels in [-1, 1]")
            f = model.features(xb)                                      # (b, 128)
            feats.append(backend.to_numpy(f.data).astype(np.float64))
            logits.append(backend.to_numpy(model.fc2(f).data).astype(np.float64))
    if not feats:
        return np.zeros((0, model.fc1.out_features)), np.zeros((0, model.fc2.out_features))
    return np.concatenate(feats), np.concatenate(logits)


def mnist_features(images, batch_size: int = 500) -> np.ndarray:
    """The classifier's 128-d penultimate features of ``images``: (N, 128) float64 NumPy."""
    return mnist_features_and_logits(images, batch_size)[0]


def _side(images) -> int:
    shape = tuple(images.shape)
    if len(shape) == 2:
        return {784: 28, 196: 14}.get(shape[1], 0)
    return int(shape[-1])


def reference_features(images, key=None) -> np.ndarray:
    """Features (N, 128) of reference ``images``, computed once per process for a ``key``
    (data set name, split, number of images), as refgen.metrics.evaluate passes."""
    if key is None:
        return mnist_features(images)
    if key not in _FEATS:
        _FEATS[key] = mnist_features(images)
    return _FEATS[key]


def reference_stats(split: str = "test", size: int = 28, images=None, key=None):
    """(mu, sigma) of the features of an MNIST split at ``size`` 28 or 14, computed once per
    process. With ``images``, the stats of those images, cached under ``key`` when one is
    given: (data set name, split, number of images), as refgen.metrics.evaluate passes."""
    if images is None:
        if split not in ("train", "test"):
            raise ValueError(f"reference split must be 'train' or 'test', got {split!r}")
        if size not in (28, 14):
            raise ValueError(f"reference size must be 28 or 14, got {size!r}")
        from refgen import data
        name = "mnist" if size == 28 else "mnist-14"
        key = (name, split, _SPLIT_SIZES[split])
        if key not in _REF:
            _REF[key] = gaussian_stats(mnist_features(data.load(name, split).x))
        return _REF[key]
    if key is None:
        return gaussian_stats(mnist_features(images))
    if key not in _REF:
        _REF[key] = gaussian_stats(reference_features(images, key))
    return _REF[key]


def fid_mnist(samples, reference="test") -> float:
    """FID between ``samples`` (N, 1, 28, 28) or (N, 1, 14, 14) in [-1, 1] and a reference.

    ``reference``: 'test' or 'train' (the MNIST split at the samples' resolution, its
    statistics cached in memory), or an array of reference images.
    """
    if len(samples) < 2:
        raise ValueError(f"FID needs at least 2 samples, got {len(samples)}")
    mu, sigma = gaussian_stats(mnist_features(samples))
    if isinstance(reference, str):
        side = _side(samples)
        if side not in (28, 14):
            raise ValueError(f"samples must be 28x28 or 14x14 images, "
                             f"got shape {tuple(samples.shape)}")
        mu_r, sigma_r = reference_stats(reference, side)
    else:
        mu_r, sigma_r = reference_stats(images=reference)
    return frechet_distance(mu, sigma, mu_r, sigma_r)


def cond_accuracy(samples, labels) -> float:
    """Fraction of class-conditional ``samples`` that the classifier assigns to the class they
    were drawn for (``labels``, (N,) ints): how well a conditional model obeys its condition."""
    labels = backend.to_numpy(labels).astype(np.int64).reshape(-1)
    if len(labels) != len(samples):
        raise ValueError(f"{len(samples)} samples but {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("cond_accuracy needs at least one sample")
    _, logits = mnist_features_and_logits(samples)
    return float((logits.argmax(axis=1) == labels).mean())
