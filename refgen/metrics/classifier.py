"""The MNIST feature network behind ``fid_mnist`` and ``cond_accuracy``.

FID (Heusel et al., 2017) compares Gaussians fitted to the features a fixed network assigns
to real and to generated images. Inception-v3 features mean nothing on 28x28 digits, so, as
is usual for MNIST, we use a small classifier trained on MNIST itself, by refgen
(``benchmarks/train_mnist_classifier.py``), and take its penultimate activations:

    x (N, 1, 28, 28) in [-1, 1]
      conv3x3(1->16)  relu  conv3x3(16->32) relu  maxpool2     -> (N, 32, 12, 12)
      conv3x3(32->32) relu  conv3x3(32->32) relu  maxpool2     -> (N, 32, 4, 4)
      flatten  linear(512->128)  relu                          -> (N, 128)  features
      linear(128->10)                                          -> (N, 10)   logits

(unpadded 3x3 convolutions: 28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4). About 90k float32
weights, a ~360 kB .npz; 99.2% test accuracy (benchmarks/results/mnist_classifier.md).

The weights ship as ``mnist_classifier.npz`` next to this file. ``load_classifier`` checks
the sha256 of that file against ``CLASSIFIER_SHA256`` before using it and refuses a file
that does not match: FID numbers are only comparable when every run measures them with the
very same network.

Inputs. The network sees 28x28 images in [-1, 1] (MNIST pixel k maps to k / 127.5 - 1).
Images of shape (N, 1, 14, 14) (the ``mnist-14`` data) are upsampled 2x by nearest
neighbour, i.e. each pixel becomes a 2x2 block, before the first layer (a quarter of each
training batch was shown that way, so such images are classified as well: 99.1%); flat
inputs (N, 784) or (N, 196) are reshaped. Callers with data in [0, 1] map it with 2x - 1.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

import refgen.functional as F
from refgen import backend
from refgen.autograd import as_tensor
from refgen.backend import xp
from refgen.nn import Conv2d, Linear, Module, init

__all__ = ["MNISTClassifier", "load_classifier", "prepare_images", "file_sha256",
           "CLASSIFIER_PATH", "CLASSIFIER_SHA256", "CHANNELS", "HIDDEN"]

CHANNELS = (16, 32, 32, 32)  # output channels of the four convolutions
HIDDEN = 128                 # width of the feature layer
CLASSIFIER_PATH = Path(__file__).with_name("mnist_classifier.npz")
# sha256 of mnist_classifier.npz, printed by benchmarks/train_mnist_classifier.py.
CLASSIFIER_SHA256 = "662abce5e338beb5e59e0c4aedfdfb4c85422e94d139f0d830902a56eb987ba1"

_CACHE: dict = {}  # (resolved path, backend name) -> verified classifier in eval mode


class MNISTClassifier(Module):
    """Small convnet for 28x28 digits; ``features`` are the 128-d penultimate activations."""

    def __init__(self, channels=CHANNELS, hidden: int = HIDDEN, num_classes: int = 10, seed=0):
        super().__init__()
        c1, c2, c3, c4 = (int(c) for c in channels)
        g = init.get_rng(seed)  # host generator: the same start on CPU and GPU
        self.conv1 = Conv2d(1, c1, 3, rng=g)
        self.conv2 = Conv2d(c1, c2, 3, rng=g)
        self.conv3 = Conv2d(c2, c3, 3, rng=g)
        self.conv4 = Conv2d(c3, c4, 3, rng=g)
        self.fc1 = Linear(c4 * 4 * 4, hidden, rng=g)
        self.fc2 = Linear(hidden, num_classes, rng=g)

    def features(self, x):
        """(N, 1, 28, 28) (or see ``prepare_images``) -> (N, hidden) penultimate activations."""
        h = prepare_images(x)
        h = F.relu(self.conv1(h))                        # (N, c1, 26, 26)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)       # (N, c2, 24, 24) -> (N, c2, 12, 12)
        h = F.relu(self.conv3(h))                        # (N, c3, 10, 10)
        h = F.max_pool2d(F.relu(self.conv4(h)), 2)       # (N, c4, 8, 8) -> (N, c4, 4, 4)
        return F.relu(self.fc1(F.flatten(h, 1)))         # (N, c4*16) -> (N, hidden)

    def forward(self, x):
        """Class logits (N, 10)."""
        return self.fc2(self.features(x))


def prepare_images(x):
    """Any accepted image batch as a float32 Tensor (N, 1, 28, 28).

    Accepts (N, 1, 28, 28), (N, 28, 28), (N, 784) and the 14x14 forms of each; 14x14 images
    are upsampled by nearest neighbour (each pixel -> a 2x2 block). Values are not rescaled.
    """
    t = as_tensor(x)
    if t.dtype != xp.float32:
        t = as_tensor(t.data.astype(xp.float32))
    shape = tuple(t.shape)
    side = {784: 28, 196: 14}.get(shape[1]) if len(shape) == 2 else None
    if side is not None:
        t = F.reshape(t, (shape[0], 1, side, side))
    elif len(shape) == 3 and shape[1:] in ((28, 28), (14, 14)):
        t = F.reshape(t, (shape[0], 1) + shape[1:])
    elif not (len(shape) == 4 and shape[1:] in ((1, 28, 28), (1, 14, 14))):
        raise ValueError(f"the MNIST classifier takes images of shape (N, 1, 28, 28) or "
                         f"(N, 1, 14, 14) (or (N, 784) / (N, 196)), got {shape}")
    if t.shape[-1] == 14:
        t = F.interpolate(t, scale_factor=2, mode="nearest")  # (N, 1, 14, 14) -> (N, 1, 28, 28)
    return t


def file_sha256(path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_classifier(path=None, sha256=None) -> MNISTClassifier:
    """The committed MNIST classifier, verified and in eval mode (cached per process).

    ``path`` defaults to the shipped ``mnist_classifier.npz`` and ``sha256`` to
    ``CLASSIFIER_SHA256``. Raises FileNotFoundError when the file is missing and ValueError
    when its sha256 differs: a different network would give incomparable FIDs.
    """
    path = Path(CLASSIFIER_PATH if path is None else path).resolve()
    key = (str(path), backend.name())
    expected = (CLASSIFIER_SHA256 if sha256 is None else sha256).lower()
    if key in _CACHE and _CACHE[key][0] == expected:
        return _CACHE[key][1]
    if not path.is_file():
        raise FileNotFoundError(f"MNIST classifier weights {path} are missing; they ship with "
                                f"refgen (rebuild them with benchmarks/train_mnist_classifier.py)")
    got = file_sha256(path)
    if got != expected:
        raise ValueError(f"MNIST classifier weights {path} have sha256 {got}, expected "
                         f"{expected}: refusing to compute FID with a different network "
                         f"(restore the file, or retrain it with "
                         f"benchmarks/train_mnist_classifier.py and update CLASSIFIER_SHA256)")
    with np.load(path, allow_pickle=False) as z:
        state = {k: z[k] for k in z.files}
    model = MNISTClassifier()
    model.load_state_dict(state)
    model.eval()
    model.requires_grad_(False)
    _CACHE[key] = (expected, model)
    return model
