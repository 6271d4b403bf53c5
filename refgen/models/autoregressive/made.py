"""MADE: Masked Autoencoder for Distribution Estimation (Germain et al. 2015).

    p(x) = prod_{i=1}^{D} p(x_{o(i)} | x_{o(<i)})                         (chain rule)

One MLP outputs the parameters of every conditional at once; the degree masks of
masks.py cut every path from x_{o(j)}, j >= i, to the parameters of x_{o(i)}, so one
forward pass gives all D conditionals and log p(x) exactly.

Order-agnostic training: the network holds ``num_masks`` mask sets (an ordering o and
hidden degrees each); every training batch uses one drawn at random, so one set of weights
learns many factorisations. Each mask m is a model p_m(x) in its own right; the ensemble is
the mixture

    p(x) = 1/M sum_m p_m(x),   log p(x) = logsumexp_m log p_m(x) - log M

(averaging likelihoods, not logits: a mixture of normalised models is normalised).
``ensemble_log_prob`` forms the same mixture from separately trained models, each with its
own ordering and weights, rather than the masks of one network.

``MADE`` is the reusable network ((B, D) -> (B, D, K) parameters per dimension; MAF in the
flows family builds on it). ``MADEDensity`` (registered as ``made``) is the density model:
Bernoulli conditionals for binary data, a mixture of K Gaussians per conditional for
continuous data.
"""
from __future__ import annotations

import math

import refgen.functional as F
from refgen.autograd import Tensor, as_tensor, no_grad
from refgen.backend import xp
from refgen.models import register
from refgen.models.autoregressive.masks import made_degrees, made_masks
from refgen.models.base import DataSpec
from refgen.nn import Linear, Module, ModuleList, init, parse_hidden

__all__ = ["MaskedLinear", "MADE", "MADEDensity", "ensemble_log_prob", "ensemble_sample"]


class MaskedLinear(Linear):
    """y = x (W * M_m)^T + b, M_m one of a stack of masks (M, out, in) kept as a buffer."""

    def __init__(self, in_features: int, out_features: int, masks, rng=None, dtype=xp.float32):
        super().__init__(in_features, out_features, rng=rng, dtype=dtype)
        self.register_buffer("mask", xp.asarray(masks, dtype=dtype))  # (M, out, in), fixed

    def forward(self, x, m: int = 0):
        return F.linear(x, self.weight * self.mask[m], self.bias)


class MADE(Module):
    """The masked MLP: x (B, D) -> parameters (B, D, K), row d a function of x_{o(<d)} only.

    hidden_features: sizes of the hidden layers. out_per_dim: K parameters per dimension.
    num_masks: mask sets; set 0 uses ``order`` (None: natural, 0..D-1), the others a
    random ordering each (``random_order=True``) or ``order`` with new hidden degrees.
    cond_features: size of an optional context vector (a class, a flow's conditioner)
    added, unmasked, to the first hidden layer: every output may see it.
    Output units are dimension-major, so ``reshape(B, D, K)`` needs no transpose.
    """

    def __init__(self, in_features: int, hidden_features=(500,), out_per_dim: int = 1,
                 num_masks: int = 1, order=None, random_order: bool = True,
                 cond_features: int = 0, rng=None, dtype=xp.float32):
        super().__init__()
        hidden = parse_hidden(hidden_features)
        if int(num_masks) < 1:
            raise ValueError(f"num_masks must be at least 1, got {num_masks}")
        d, k = int(in_features), int(out_per_dim)
        self.in_features, self.out_per_dim, self.num_masks = d, k, int(num_masks)
        self.hidden_features = hidden
        g = init.get_rng(rng)
        orders, per_layer = [], [[] for _ in range(len(hidden) + 1)]
        for m in range(self.num_masks):
            o = order if m == 0 or not random_order else g.permutation(d)
            o = xp.arange(d) if o is None else xp.asarray(o, dtype=xp.int64)
            orders.append(o)
            for layer, mask in enumerate(made_masks(made_degrees(d, hidden, o, g), k)):
                per_layer[layer].append(mask)
        self.register_buffer("orders", xp.stack(orders))  # (M, D): o_m(r), generation order
        sizes = [d, *hidden, d * k]
        self.layers = ModuleList(
            MaskedLinear(a, b, xp.stack(per_layer[i]), rng=g, dtype=dtype)
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])))
        self.cond = Linear(cond_features, sizes[1], bias=False, rng=g, dtype=dtype) \
            if cond_features else None

    def extra_repr(self):
        return (f"in_features={self.in_features}, hidden={self.hidden_features}, "
                f"out_per_dim={self.out_per_dim}, num_masks={self.num_masks}")

    def forward(self, x, context=None, mask: int = 0):
        """x (B, D) [, context (B, C)] -> (B, D, K) with mask set ``mask``."""
        h = as_tensor(x)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h, mask)
            if i == 0 and context is not None and self.cond is not None:
                h = h + self.cond(context)
            if i < last:
                h = F.relu(h)
        return F.reshape(h, (h.shape[0], self.in_features, self.out_per_dim))  # (B, D*K) -> (B, D, K)


@register("made")
class MADEDensity(Module):
    """MADE as a density model of binary images or continuous vectors.

    likelihood: 'bernoulli' (binary data; one logit per dimension) or 'gaussian' (a mixture
    of ``components`` Gaussians per conditional); None picks 'bernoulli' for images and
    'gaussian' for vectors. num_masks > 1 trains order-agnostically (``random_order=False``:
    connectivity-agnostically, every mask in the natural order with its own hidden degrees)
    and evaluates the ensemble (log-mean-exp of the per-mask likelihoods).
    order: the ordering of mask set 0, 'natural' (raster for images), 'reverse' (the last
    pixel first) or 'random' (a permutation drawn from ``seed``); separately trained models
    with different orders combine through ``ensemble_log_prob``.
    """

    data_spec = DataSpec(kinds=("binary", "continuous"), ndims=(1, 3))
    # the MNIST benchmark's settings: 86.4 nats in ~21 min on one CPU core
    default_train = dict(steps=28000, batch_size=100, lr=1e-3, schedule="cosine")

    def __init__(self, data_shape, *, seed=0, hidden=(2000,), num_masks: int = 1,
                 random_order: bool = True, likelihood: str | None = None, components: int = 5,
                 order: str = "natural"):
        super().__init__()
        self.data_shape = tuple(int(s) for s in data_shape)
        self.dim = math.prod(self.data_shape)
        if len(self.data_shape) == 3:  # a sample is one pass per pixel: FID on 1,000, not 10,000
            self.eval_samples = 1000
        if order not in ("natural", "reverse", "random"):
            raise ValueError(f"order must be one of ['natural', 'random', 'reverse'], got {order!r}")
        self.order = order
        o = None if order == "natural" else list(range(self.dim))[::-1] if order == "reverse" \
            else init.get_rng(int(seed) + 1).permutation(self.dim)
        if likelihood is None:
            likelihood = "bernoulli" if len(self.data_shape) > 1 else "gaussian"
        if likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
        self.likelihood, self.components = likelihood, int(components)
        k = 1 if likelihood == "bernoulli" else 3 * self.components  # (logit, mu, log sigma) x K
        self.net = MADE(self.dim, hidden, out_per_dim=k, num_masks=num_masks, order=o,
                        random_order=bool(random_order), rng=init.get_rng(int(seed)))

    def extra_repr(self):
        return f"data_shape={self.data_shape}, likelihood={self.likelihood!r}, order={self.order!r}"

    # --- the conditionals ----------------------------------------------------------------
    def _log_cond(self, x, params):
        """log p(x_d | x_<d) for every d: x (B, D), params (B, D, K) -> (B, D)."""
        if self.likelihood == "bernoulli":
            # log Bern(x; sigmoid(l)) = -[x softplus(-l) + (1 - x) softplus(l)]
            return -F.binary_cross_entropy_with_logits(params[..., 0], x, reduction="none")
        c = self.components
        logits, mu, log_sigma = params[..., :c], params[..., c:2 * c], params[..., 2 * c:]
        log_sigma = F.clamp(log_sigma, -7.0, 7.0)
        z = (x.unsqueeze(-1) - mu) / log_sigma.exp()                           # (B, D, K)
        log_normal = -0.5 * (z * z) - log_sigma - 0.5 * math.log(2 * math.pi)
        log_pi = F.log_softmax(logits, dim=-1)
        return F.logsumexp(log_pi + log_normal, dim=-1)                        # (B, D)

    def _flat(self, x):
        x = as_tensor(x)
        return F.reshape(x, (x.shape[0], self.dim))  # (B, *shape) -> (B, D)

    def log_prob_mask(self, x, mask: int):
        """log p_m(x) in nats under mask set ``mask``: (B, *shape) -> (B,)."""
        x = self._flat(x)
        return self._log_cond(x, self.net(x, mask=mask)).sum(-1)

    def log_prob(self, x):
        """Exact log p(x) in nats, (B, *shape) -> (B,): the ensemble over all mask sets."""
        m = self.net.num_masks
        if m == 1:
            return self.log_prob_mask(x, 0)
        per_mask = F.stack([self.log_prob_mask(x, i) for i in range(m)], dim=0)  # (M, B)
        return F.logsumexp(per_mask, dim=0) - math.log(m)

    def loss(self, batch, rng):
        """Mean NLL (nats per example) under one mask set drawn for this batch."""
        x = as_tensor(batch.x)
        if self.likelihood == "bernoulli" and bool(((x.data != 0) & (x.data != 1)).any()):
            raise ValueError("made with likelihood='bernoulli' needs binary {0, 1} data; "
                             "use --set likelihood=gaussian for continuous data")
        m = int(rng.integers(self.net.num_masks)) if self.net.num_masks > 1 else 0
        return -self.log_prob_mask(x, m).mean()

    # --- sampling --------------------------------------------------------------------------
    def _draw(self, params, rng):
        """One value per row from the conditional with parameters params (n, K) -> (n,)."""
        if self.likelihood == "bernoulli":
            return F.bernoulli_logits(params[:, 0], rng, params.dtype)
        c = self.components
        logits, mu, log_sigma = params[:, :c], params[:, c:2 * c], xp.clip(params[:, 2 * c:], -7, 7)
        k = F.gumbel_max(logits, rng, axis=1)[:, None]                       # k ~ Cat(softmax(logits))
        eps = rng.standard_normal((params.shape[0], 1), dtype=xp.float64)
        mu_k = xp.take_along_axis(mu, k, 1)
        sigma_k = xp.exp(xp.take_along_axis(log_sigma, k, 1))
        return (mu_k + sigma_k * eps)[:, 0].astype(params.dtype)

    def sample(self, n, cond=None, *, rng):
        """n samples (n, *shape): a mask set m ~ U{0..M-1} per sample (the ensemble is a
        mixture), then x_{o(1)}, x_{o(2)}, ... one dimension per forward pass."""
        dtype = self.net.layers[0].weight.dtype
        x = xp.zeros((int(n), self.dim), dtype=dtype)
        which = rng.integers(self.net.num_masks, size=int(n)) if self.net.num_masks > 1 \
            else xp.zeros(int(n), dtype=xp.int64)
        with no_grad():
            for m in range(self.net.num_masks):
                rows = xp.nonzero(which == m)[0]
                if rows.size == 0:
                    continue
                xm = x[rows]
                for d in self.net.orders[m].tolist():  # generation order o_m
                    params = self.net(Tensor(xm), mask=m).data[:, d]          # (n_m, K)
                    xm[:, d] = self._draw(params, rng)
                x[rows] = xm
        return x.reshape((int(n),) + self.data_shape)


def ensemble_log_prob(models, x):
    """log p(x) of the uniform mixture of separately trained density models, (B, ...) -> (B,):

        p(x) = 1/J sum_j p_j(x),   log p(x) = logsumexp_j log p_j(x) - log J

    the same mixture as a multi-mask MADE's ensemble, with each member free to have its own
    ordering and weights. By Jensen's inequality its NLL is at most the members' mean NLL.
    """
    models = list(models)
    if not models:
        raise ValueError("ensemble_log_prob needs at least one model")
    per_model = F.stack([as_tensor(m.log_prob(x)) for m in models], dim=0)   # (J, B)
    return F.logsumexp(per_model, dim=0) - math.log(len(models))


def ensemble_sample(models, n, *, rng):
    """n samples (n, ...) from the uniform mixture of ``ensemble_log_prob``: a member j ~ U{1..J}
    per sample, then that member's own draw."""
    models = list(models)
    if not models:
        raise ValueError("ensemble_sample needs at least one model")
    pick = rng.integers(len(models), size=int(n))
    out = None
    for j, m in enumerate(models):
        rows = xp.nonzero(pick == j)[0]
        if rows.size == 0:
            continue
        x = m.sample(int(rows.size), rng=rng)
        out = xp.zeros((int(n),) + tuple(x.shape[1:]), dtype=x.dtype) if out is None else out
        out[rows] = x
    return out
