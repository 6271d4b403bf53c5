"""class_kl: how far the class mix of the samples is from uniform.

With p_c the fraction of samples a classifier assigns to class c (refgen.metrics.evaluate
takes the argmax of the committed MNIST classifier) and C classes,

    class_kl = KL(p || uniform) = sum_c p_c log(p_c / (1/C)) = log C - H(p)     (nats),

with 0 log 0 = 0: 0 when every class is equally frequent, log C (2.303 for MNIST) when every
sample falls in one class. It sees mode dropping between classes, not within one.
"""
from __future__ import annotations

import numpy as np

from refgen.backend import to_numpy

__all__ = ["class_kl"]


def class_kl(labels, num_classes: int = 10) -> float:
    """KL(p || uniform) in nats of the histogram p of ``labels`` ((N,) ints in
    [0, num_classes))."""
    y = np.asarray(to_numpy(labels)).reshape(-1)
    if len(y) == 0:
        raise ValueError("class_kl needs at least one label")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must be integers in [0, {num_classes}), got {y.dtype} "
                         f"values in [{y.min()}, {y.max()}]")
    p = np.bincount(y, minlength=num_classes) / len(y)            # (C,)
    nz = p > 0                                                      # 0 log 0 = 0
    return float((p[nz] * np.log(p[nz] * num_classes)).sum())
