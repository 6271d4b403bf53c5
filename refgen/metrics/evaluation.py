"""``evaluate(model, test_dataset)``: every metric of DESIGN.md that applies to a model and
its data, under the names metrics.json uses.

What is computed, and when:

  test_nll_nats     model has ``log_prob``: mean -log p(x) over the test set (nats/example)
  test_bpd          with it, where the nats have a bits/dim reading (see below)
  elbo_nats         model has ``elbo``: mean ELBO over the test set (nats; a lower bound on
                    log p(x), so -elbo_nats bounds test_nll_nats from above)
  iwae_nats         model has ``iwae``: mean IWAE bound L_k (k = ``iwae_k``, default 1000;
                    log p(x) >= L_k >= ELBO)
  fid_mnist         model samples MNIST-shaped images: FID of ``n_samples`` samples against
                    the test images (refgen.metrics.fid), with fid_n_samples = that N
  kid_mnist, kid_mnist_se   ... the same samples: unbiased KID against the test images in
                    the same features, with its standard error (refgen.metrics.kernel_distance);
                    kid_n_samples = N
  precision, recall ... k-NN manifold precision and recall, k = 3 (refgen.metrics.knn_manifold),
                    of min(N, test size) samples against as many test images (a fixed
                    random choice); pr_n_samples = that number. KID needs N >= 3 and
                    precision / recall N >= 4; with fewer samples they are left out
  class_kl          ... KL of the classifier's class histogram of the samples to uniform
                    (nats, refgen.metrics.histogram); class_kl_n_samples = N
  cond_accuracy     ... and is class-conditional (``num_classes`` set, ``sample(n, cond=y)``):
                    the classifier's accuracy on samples drawn for balanced labels y
  modes_covered, hq_fraction   toy2d data with known modes (refgen.data.toy2d.modes)
  mmd               toy2d data: unbiased MMD^2 of up to 2,000 samples against the test set
  entropy_gap_nats  toy2d data with an exact density: test_nll_nats - H(p_data) = KL(p||q)

Likelihoods are scored on the test data exactly as the data set gives it (the model owns its
conventions), and test_bpd is reported only where the nats have a bits/dim reading:

  binary data       test_bpd = nll / (D ln 2).
  discrete models   a model with an integer ``levels`` attribute (PixelCNN, GPT on pixels)
                    gives log P of the pixels quantized to that many levels, a probability:
                    test_bpd = nll / (D ln 2) as well.
  mnist-dequantized a density on [0, 1]^D scored on the one fixed dequantization of the test
                    set: test_bpd = (nll + D log 256) / (D ln 2), an upper bound on the
                    bits/dim of the 8-bit pixels (refgen.metrics.likelihood, '[0,1]').
  discrete ELBO     a model without ``log_prob`` whose ELBO bounds the probability of the
                    8-bit pixels of 'mnist' / 'mnist-14' (``discrete = True``: ddpm's
                    discretized decoder, L_0 of eq. (16) in docs/diffusion.md): test_bpd = -elbo / (D ln 2),
                    an upper bound on the bits/dim.
  otherwise         no test_bpd: a density evaluated at the grid points k / 127.5 - 1 of
                    'mnist' is not a probability of anything (train density models on
                    mnist-dequantized for bits/dim), and toy data are not quantized at all.
  text              not evaluated here.

Samples of data in [0, 1] (dequantized, binary) are mapped to [-1, 1] with 2x - 1 and every
sample is clipped to [-1, 1] before the classifier sees it; the FID reference is the test
split of the same data set (for binary data its fixed binarization).

Everything is evaluated in eval mode without a graph (a model whose ``log_prob`` needs
gradients inside opens ``refgen.enable_grad()`` itself), with the model's noise drawn from
one generator seeded by ``rng`` (default 0) and handed to every method that names an ``rng``
parameter, so two evaluations of a model agree; its train/eval mode is restored afterwards. Models may set the attributes
``eval_samples`` and ``eval_iwae_k`` to change the defaults for themselves (a sampler that
takes seconds per image on a CPU).
"""
from __future__ import annotations

import functools
import inspect

import numpy as np

from refgen import backend
from refgen.autograd import Tensor, no_grad
from refgen.data.datasets import value_range
from refgen.metrics import fid as _fid
from refgen.metrics.frechet import frechet_distance, gaussian_stats
from refgen.metrics.histogram import class_kl
from refgen.metrics.kernel_distance import kid
from refgen.metrics.knn_manifold import DEFAULT_K, precision_recall
from refgen.metrics.likelihood import bits_per_dim, nll_to_bpd
from refgen.metrics.two_d import entropy_gap_nats, mmd, mode_stats

__all__ = ["evaluate", "evaluate_after_training", "counts_used", "AFTER_TRAINING", "EVAL_SEED",
           "DEFAULT_SAMPLES", "DEFAULT_IWAE_K", "METRIC_NAMES"]

# every metric evaluate can report, in the order `refgen list` shows them
METRIC_NAMES = ("test_nll_nats", "test_bpd", "elbo_nats", "iwae_nats", "fid_mnist", "kid_mnist",
                "kid_mnist_se", "precision", "recall", "class_kl", "cond_accuracy",
                "modes_covered", "hq_fraction", "mmd", "entropy_gap_nats")

EVAL_SEED = 0
DEFAULT_SAMPLES = 10_000
DEFAULT_IWAE_K = 1000
_MMD_N = 2000          # samples per side of the MMD estimate (its cost is quadratic)


def _mnist_range(name):
    """The pixel range of an MNIST data set, None for any other data."""
    return value_range(name) if name.startswith("mnist") else None


def _to_numpy(a):
    return backend.to_numpy(a.data if isinstance(a, Tensor) else a)


def _per_example(fn, x, batch_size, report=None):
    """Concatenate fn(batch) -> (b,) over ``x`` in batches, as float64 NumPy; report(done,
    total) after each batch."""
    out = []
    for i in range(0, len(x), batch_size):
        out.append(_to_numpy(fn(Tensor(backend.asarray(x[i:i + batch_size])))).astype(np.float64).reshape(-1))
        if report is not None:
            report(min(i + batch_size, len(x)), len(x))
    return np.concatenate(out) if out else np.zeros(0)


def _bpd_rule(model, ds):
    """How nats become bits/dim for this model and data (see the module docstring), or None."""
    d = int(np.prod(ds.shape))
    levels = getattr(model, "levels", None)
    if ds.kind == "binary" or (isinstance(levels, int) and _mnist_range(ds.name)):
        return lambda nll: bits_per_dim(nll, d)
    if ds.name == "mnist-dequantized":
        return lambda nll: nll_to_bpd(nll, d, "[0,1]")
    return None


def _draw(model, n, cond, rng, chunk, report=None):
    """n samples as a NumPy array, drawn ``chunk`` at a time from one generator."""
    parts = []
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        if cond is None:
            s = model.sample(m, rng=rng)
        else:
            s = model.sample(m, cond=backend.asarray(cond[i:i + m]), rng=rng)
        parts.append(_to_numpy(s))
        if report is not None:
            report(i + m, n)
    return np.concatenate(parts)


def _is_conditional(model):
    return getattr(model, "num_classes", None) is not None


def evaluate(model, test_dataset, run_dir=None, n_samples=None, rng=None, *, iwae_k=None,
             max_test=None, batch_size=500, sample_batch=500, progress=None) -> dict:
    """The metrics that apply to ``model`` on ``test_dataset`` (see the module docstring).

    n_samples: samples drawn for FID / mode coverage / MMD (default: the model's
    ``eval_samples`` or 10,000). iwae_k: k of the IWAE bound (default: the model's
    ``eval_iwae_k`` or 1000; smaller is cheaper and looser). max_test: score only the first
    this many test examples (default: the model's ``eval_max_test``, else all). rng: seed or
    backend generator for all of the model's noise.
    run_dir is accepted for the CLI and not written to: the caller writes metrics.json.
    progress(done, total, label), when given, is called after each batch (a progress line).
    Returns {metric name: float or int}.
    """
    from refgen.data import toy2d

    def report(label):
        return None if progress is None else (lambda done, total: progress(done, total, label))

    ds = test_dataset
    if ds.kind == "categorical":
        return {}
    if max_test is None:  # a model whose likelihood is costly (an ODE per batch) names its own
        max_test = getattr(model, "eval_max_test", None)
    x = ds.x if max_test is None else ds.x[:int(max_test)]
    out = {}
    gen = backend.default_rng(EVAL_SEED if rng is None else rng)
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            if hasattr(model, "log_prob"):
                nll = float(-_per_example(_noisy(model.log_prob, gen), x, batch_size,
                                          report("log p(x)")).mean())
                to_bpd = _bpd_rule(model, ds)
                out["test_nll_nats"] = nll
                if to_bpd is not None:
                    out["test_bpd"] = float(to_bpd(nll))
                if ds.name in toy2d.DENSITIES:
                    h = toy2d.entropy(ds.name)[0]
                    out["entropy_gap_nats"] = float(entropy_gap_nats(nll, h))
            if hasattr(model, "elbo"):
                out["elbo_nats"] = float(_per_example(_noisy(model.elbo, gen), x, batch_size,
                                                      report("ELBO")).mean())
                if ("test_bpd" not in out and getattr(model, "discrete", False) is True
                        and _mnist_range(ds.name) == (-1.0, 1.0)):
                    out["test_bpd"] = float(bits_per_dim(-out["elbo_nats"], int(np.prod(ds.shape))))
            if hasattr(model, "iwae"):
                k = int(iwae_k if iwae_k is not None
                        else getattr(model, "eval_iwae_k", DEFAULT_IWAE_K))
                iwae = _noisy(model.iwae, gen)
                lk = _per_example(lambda xb: iwae(xb, k), x, max(1, batch_size // 5), report("IWAE"))
                out["iwae_nats"] = float(lk.mean())
            if hasattr(model, "sample"):
                n = int(n_samples if n_samples is not None
                        else getattr(model, "eval_samples", DEFAULT_SAMPLES))
                if _mnist_range(ds.name) and n >= 2:
                    out.update(_image_metrics(model, ds, n, gen, sample_batch, report("samples")))
                elif ds.name in toy2d.names() and n >= 2:
                    s = _draw(model, n, None, gen, max(sample_batch, 10_000), report("samples")).reshape(n, -1)
                    if ds.name in toy2d.MODES:
                        out.update(mode_stats(s, *toy2d.modes(ds.name)))
                    m = min(_MMD_N, n, len(ds.x))
                    out["mmd"] = float(mmd(s[:m], ds.x[:m]))
    finally:
        model.train(was_training)
    return out


def _noisy(method, gen):
    """``method`` with its noise drawn from ``gen`` where it draws any: an estimator that
    samples (a VAE's ELBO, an ODE likelihood's trace) names an ``rng`` parameter, an exact
    one does not."""
    if "rng" in inspect.signature(method).parameters:
        return functools.partial(method, rng=gen)
    return method


def _image_metrics(model, ds, n, gen, chunk, report=None):
    """fid_mnist, kid_mnist, precision, recall, class_kl (and cond_accuracy for conditional
    models) of n samples of an MNIST model."""
    labels = np.arange(n) % int(model.num_classes) if _is_conditional(model) else None
    cond = labels
    if hasattr(model, "eval_cond"):  # a model conditioned on test images (a cascade's super-resolution)
        cond = _to_numpy(model.eval_cond(backend.asarray(ds.x[np.arange(n) % len(ds.x)])))
    s = _draw(model, n, cond, gen, chunk, report).reshape((n,) + tuple(ds.shape)).astype(np.float32)
    ref = ds.x
    if _mnist_range(ds.name)[0] == 0:  # [0, 1] -> [-1, 1]
        s, ref = 2.0 * s - 1.0, 2.0 * ds.x - 1.0
    m = min(n, len(ref))  # precision / recall compare equally many real and generated
    with_kid, with_pr = n >= 3 and len(ref) >= 3, m > DEFAULT_K  # what n can support
    out = {"fid_n_samples": n, "class_kl_n_samples": n}
    out.update({"kid_n_samples": n} if with_kid else {})
    out.update({"pr_n_samples": m} if with_pr else {})
    if not np.isfinite(s).all():
        names = ("fid_mnist", "class_kl") + ("kid_mnist", "kid_mnist_se") * with_kid \
            + ("precision", "recall") * with_pr
        return {**out, **dict.fromkeys(names, float("nan"))}
    feats, logits = _fid.mnist_features_and_logits(np.clip(s, -1.0, 1.0))
    key = (ds.name, ds.split, len(ds.x))
    f_ref = _fid.reference_features(ref, key)                      # (len(ref), 128)
    mu_r, sigma_r = _fid.reference_stats(images=ref, key=key)
    mu, sigma = gaussian_stats(feats)
    out["fid_mnist"] = frechet_distance(mu, sigma, mu_r, sigma_r)
    out["class_kl"] = class_kl(logits.argmax(axis=1), logits.shape[1])
    if with_kid:
        out["kid_mnist"], out["kid_mnist_se"] = kid(feats, f_ref, rng=EVAL_SEED)
    if with_pr:
        pr_ref = f_ref[np.random.default_rng(EVAL_SEED).permutation(len(f_ref))[:m]]
        out["precision"], out["recall"] = precision_recall(feats[:m], pr_ref)
    if labels is not None and int(model.num_classes) == 10:
        out["cond_accuracy"] = float((logits.argmax(axis=1) == labels).mean())
    return out


# The evaluation at the end of ``refgen train``: the same counts for every model of a kind of
# data (whatever a model's own eval_samples says), so that its numbers compare across models,
# and small enough to take seconds to a minute on a CPU. `refgen eval DIR` runs the full one.
AFTER_TRAINING = {
    "images": dict(n_samples=256, max_test=256, iwae_k=100, sample_batch=64),
    "other": dict(n_samples=2000, max_test=2000, iwae_k=100, sample_batch=2000),
}


def evaluate_after_training(model, test_dataset, progress=None) -> dict:
    """evaluate() with the counts of AFTER_TRAINING for the kind of data, the counts stated
    in the result (see counts_used)."""
    ds = test_dataset
    if ds.kind == "categorical":
        return {}
    counts = AFTER_TRAINING["images" if len(ds.shape) == 3 else "other"]
    out = evaluate(model, ds, progress=progress, **counts)
    return dict(out, **counts_used(model, ds, out, **{k: counts[k] for k in
                                                       ("n_samples", "max_test", "iwae_k")}))


def counts_used(model, test_dataset, metrics: dict, n_samples=None, max_test=None,
                iwae_k=None) -> dict:
    """The counts behind ``metrics`` = evaluate(model, test_dataset, n_samples, max_test=...,
    iwae_k=...): eval_n_test (test examples scored), eval_n_samples (samples drawn for the
    sample-based metrics), eval_iwae_k; each only where a metric used it."""
    n = len(test_dataset.x)
    out = {}
    if any(k in metrics for k in ("test_nll_nats", "elbo_nats", "iwae_nats")):
        out["eval_n_test"] = n if max_test is None else min(n, int(max_test))
    if any(k in metrics for k in ("fid_mnist", "modes_covered", "mmd")):
        out["eval_n_samples"] = int(n_samples if n_samples is not None
                                    else getattr(model, "eval_samples", DEFAULT_SAMPLES))
    if "iwae_nats" in metrics:
        out["eval_iwae_k"] = int(iwae_k if iwae_k is not None
                                 else getattr(model, "eval_iwae_k", DEFAULT_IWAE_K))
    return out
