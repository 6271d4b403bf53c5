"""Helpers shared by the flow tests, handed out through the ``fl`` fixture.

Everything runs in float64 on NumPy. Layers are built with random (not zero) final
weights, so a coupling is not the identity it starts as in training.
"""
from types import SimpleNamespace

import numpy as np
import pytest

import refgen
from refgen import optim
from refgen.autograd import Tensor, no_grad
from refgen.backend import asarray, to_numpy
from refgen.models.base import Batch


def randomize(module, seed=0, scale=0.3):
    """Add scale * N(0, 1) noise to every parameter (so zero-initialised last layers and
    ActNorm's log_s and b become generic, while 1x1 convolutions stay well conditioned) and
    mark ActNorm layers initialised; returns the module."""
    rng = np.random.default_rng(seed)
    for p in module.parameters():
        p.data = p.data + asarray(scale * rng.standard_normal(p.shape).astype(p.dtype))
    for m in module.modules():
        if "initialized" in m._buffers:
            m.initialized = np.ones((), dtype=np.int8)
    return module


def jacobian(f, x):
    """The full Jacobian (N_out, N_in) of one example x (shape S) under f: (1, *S) -> (1, ...),
    one backward pass per output coordinate."""
    x = Tensor(np.asarray(x, dtype=np.float64)[None], requires_grad=True)
    y = f(x)
    n_out = int(np.prod(y.shape[1:]))
    rows = []
    for i in range(n_out):
        g = np.zeros(n_out)
        g[i] = 1.0
        (gx,) = refgen.grad([y], [x], [Tensor(g.reshape(y.shape))], allow_unused=True)
        rows.append(np.zeros(x.size) if gx is None else to_numpy(gx.data).reshape(-1))
    return np.stack(rows)


def brute_logdet(layer, x):
    """log|det J| of layer.forward at each example of x (B, *S), by the full Jacobian."""
    out = []
    for xi in x:
        sign, ld = np.linalg.slogdet(jacobian(lambda t: layer(t)[0], xi))
        assert sign != 0, "singular Jacobian"
        out.append(ld)
    return np.array(out)


def forward(layer, x):
    with no_grad():
        y, ld = layer(Tensor(np.asarray(x, dtype=np.float64)))
    return to_numpy(y.data), to_numpy(ld.data)


def inverse(layer, y):
    with no_grad():
        return to_numpy(layer.inverse(Tensor(np.asarray(y, dtype=np.float64))).data)


def log_probs(model, x, chunk=20000):
    out = []
    with no_grad():
        for i in range(0, len(x), chunk):
            out.append(to_numpy(model.log_prob(Tensor(x[i:i + chunk])).data))
    return np.concatenate(out).astype(np.float64)


def grid_integral(model, half_width=7.0, n=250):
    """The integral of exp(log_prob) over [-w, w]^2 by the midpoint rule."""
    c = -half_width + (np.arange(n) + 0.5) * (2 * half_width / n)
    pts = np.stack(np.meshgrid(c, c), -1).reshape(-1, 2)
    dtype = next(model.parameters()).dtype
    return float(np.exp(log_probs(model, pts.astype(dtype))).sum() * (2 * half_width / n) ** 2)


def train_briefly(model, x, steps=100, lr=3e-3, batch_size=256, seed=0):
    """A few Adam steps on rows of ``x`` (a stand-in for refgen.train in unit tests)."""
    rng, noise = np.random.default_rng(seed), refgen.backend.default_rng(seed)
    opt = optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model.loss(Batch(Tensor(x[rng.integers(len(x), size=batch_size)])), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.item())


@pytest.fixture(scope="session")
def fl():
    return SimpleNamespace(randomize=randomize, jacobian=jacobian, brute_logdet=brute_logdet,
                           forward=forward, inverse=inverse, log_probs=log_probs,
                           grid_integral=grid_integral, train_briefly=train_briefly)
