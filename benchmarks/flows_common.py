"""What the flow benchmarks (flows_2d.py, flows_mnist.py) share beyond benchmarks/common.py:
a chunked log-likelihood of a test set."""
from __future__ import annotations

import numpy as np


def log_probs(model, x, chunk=1000) -> np.ndarray:
    """log p(x) (float64 NumPy, one per row of host array x), in chunks, without a graph."""
    from refgen import backend
    from refgen.autograd import Tensor, no_grad
    out = []
    model.eval()
    with no_grad():
        for i in range(0, len(x), chunk):
            lp = model.log_prob(Tensor(backend.asarray(x[i:i + chunk])))
            out.append(backend.to_numpy(lp.data).astype(np.float64))
    model.train()
    return np.concatenate(out)
