"""Data sets: 2D toy densities (exact log-densities), MNIST variants, character-level text.

``load(name, split='train', data_dir=None, seed=0) -> Dataset`` is the one entry point;
``names()`` lists what it accepts.  See :mod:`refgen.data.datasets`.
"""
from . import mnist, text, toy2d
from .datasets import Dataset, load, names
from .mnist import DataError, find_mnist_dir, load_mnist

__all__ = ["Dataset", "load", "names", "DataError", "load_mnist", "find_mnist_dir",
           "toy2d", "mnist", "text"]
