"""Discriminator rejection sampling (Azadi et al., 2019, "Discriminator Rejection Sampling").

The minimax discriminator's optimum is D*(x) = p(x) / (p(x) + q(x)) (Goodfellow et al., 2014,
Prop. 1), so its logit is the log density ratio of the data p to the generator's q:

    a*(x) = log D*(x) - log(1 - D*(x)) = log p(x) - log q(x)

With M >= sup_x a(x), e^M q(x) >= p(x) is an envelope, and a sample x ~ q kept with
probability

    alpha(x) = e^{a(x) - M}                                  (Azadi et al., 2019)

is a sample of p: rejection sampling, exact when D is optimal and M bounds its logit. The
share of proposals kept is E_q[e^{a - M}] = e^{-M} at the optimum. ``gamma`` shifts the
acceptance logit as the paper's F(x) does: with alpha = e^{a - M},

    accept with  sigmoid(logit(alpha) - gamma) = alpha / (alpha + (1 - alpha) e^gamma),

gamma = 0 the exact rule, gamma < 0 keeping more of the generator's samples (towards q),
gamma > 0 fewer (towards p's densest regions). M is the largest logit of a burn-in of
proposals, raised whenever a larger one is proposed (the paper's practice).

A discriminator from training was fitted against the generator of each moment, not the one
being thinned (the EMA's, or the last); ``fit_discriminator`` trains D alone against the
fixed G as it samples, so that a(x) approaches log p / q for that G.

Only the minimax models (``gan``, ``nsgan``, ``cgan``, ``infogan``) have a discriminator whose logit
estimates log p / q, and only unpacked (one example per discriminator input). A model whose D
scores something else (a Wasserstein critic's f, whose difference of means estimates W1 and
whose value at one x is no density ratio) is thinned with a discriminator of its own:
``minimax_copy(model)`` copies its D with a new score head at zero (a = 0: every proposal
alike), ``fit_discriminator(model, x, discriminator=d)`` trains that copy on the minimax loss
against the fixed G, and ``RejectionSampler(model, discriminator=d)`` thins with it. The
model's own D is never touched.
"""
from __future__ import annotations

import copy
import math

from refgen import optim
from refgen.autograd import Tensor, no_grad
from refgen.backend import xp
from refgen.models.gan import losses as L
from refgen.nn import Linear, init

__all__ = ["RejectionSampler", "acceptance", "fit_discriminator", "minimax_copy", "supports"]


def supports(model) -> bool:
    """Whether ``model`` can be thinned: a minimax discriminator scoring one example each."""
    return hasattr(model, "saturating") and getattr(model, "pack", None) == 1


def _check(model, discriminator=None):
    """The discriminator whose logit thins ``model``'s samples: ``discriminator`` when given
    (it must score one example per input), else the model's own minimax D."""
    name = getattr(model, "display_name", type(model).__name__)
    if discriminator is not None:
        if getattr(discriminator, "pack", 1) != 1:
            raise ValueError(f"{name}: the discriminator given scores groups of "
                             f"pack={discriminator.pack} samples; rejection sampling needs pack=1")
        return discriminator
    if supports(model):
        return model.D
    if not hasattr(model, "saturating"):
        raise ValueError(f"{name}: discriminator rejection sampling needs a minimax "
                         "discriminator, whose logit estimates log p / q; accepted: gan, "
                         "nsgan, cgan, infogan, or any model with a discriminator of its own "
                         "(minimax_copy, then fit_discriminator)")
    raise ValueError(f"{name}: pack={model.pack} scores groups of samples, not one; "
                     "rejection sampling needs pack=1")


def minimax_copy(model):
    """A discriminator for thinning a model whose own D is no minimax one: a copy of
    ``model.D`` (its layers and weights) whose score head is a new Linear at zero, so that
    its logit a(x) = 0 until ``fit_discriminator(model, x, discriminator=...)`` trains it
    towards log p / q. A Wasserstein critic's features are a starting point fitted to tell
    data from this G; its score f is no logit (any f + const is as good a critic), so the
    head starts afresh. ``model.D`` itself is left as it is."""
    d = copy.deepcopy(model.D)
    # its own generator for the draw that zero_module overwrites: the global one untouched
    d.head = init.zero_module(Linear(d.head_features, 1, rng=init.get_rng(0)))
    return d


def fit_discriminator(model, x, *, steps, rng, y=None, batch_size=64, lr=2e-4,
                      betas=(0.5, 0.999), discriminator=None):
    """Train D alone for ``steps`` Adam steps on the minimax loss -V between batches of the
    real ``x`` (N, *data_shape) (labels ``y`` (N,) for a conditional model) and as many fresh
    samples of the fixed G, drawn in G's current mode (eval: as it samples). D is the model's
    own (its training loss, with any penalty), or ``discriminator`` (from ``minimax_copy``) on
    the plain -V. Returns the losses (steps,). D is left in eval mode."""
    d = _check(model, discriminator)
    if int(steps) < 1 or int(batch_size) < 1:
        raise ValueError(f"steps={steps!r}, batch_size={batch_size!r}; accepted: integers >= 1")
    if model.num_classes is not None and y is None:
        raise ValueError("a conditional GAN's discriminator is fitted on labelled data: give y")
    opt = optim.Adam(list(d.parameters()), lr=lr, betas=tuple(betas))
    d.train()
    losses = []
    for _ in range(int(steps)):
        i = rng.integers(0, x.shape[0], int(batch_size))
        labels = None if model.num_classes is None else y[i]
        with no_grad():
            fake = model.generate(int(batch_size), labels, rng).data         # x ~ q, G fixed
        real = Tensor(x[i])
        if discriminator is None:
            loss = model.d_loss(real, Tensor(fake), labels, rng)           # -V(D, G)
        else:
            loss = L.d_loss_minimax(d(real, labels), d(Tensor(fake), labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    d.eval()
    return losses


def acceptance(u, gamma=0.0):
    """The probability of keeping a proposal whose logit lies u = a - M <= 0 below the bound:
    alpha / (alpha + (1 - alpha) e^gamma) with alpha = e^u; e^u itself at gamma = 0."""
    alpha = xp.exp(xp.minimum(u, 0.0))                       # alpha = e^{a - M}, <= 1
    return alpha / (alpha + (1.0 - alpha) * math.exp(gamma))


class RejectionSampler:
    """Samples of a trained minimax GAN thinned by its discriminator, or of any GAN thinned by
    a ``discriminator`` fitted for it (``minimax_copy``, ``fit_discriminator``).

    ``sample(n, cond=None, *, rng)`` has the signature of the model's own ``sample``; each
    round proposes one G sample for every slot still empty (with that slot's label for a
    conditional model) and keeps it with probability ``acceptance``. ``proposed`` and
    ``accepted`` count every proposal and every kept one since the sampler was made.
    """

    def __init__(self, model, *, gamma=0.0, max_logit=None, burn_in=10_000, batch_size=1000,
                 discriminator=None):
        self.D = _check(model, discriminator)
        if not math.isfinite(gamma):
            raise ValueError(f"gamma={gamma!r}; accepted: a finite number (0: exact rejection)")
        if max_logit is None and int(burn_in) < 1:
            raise ValueError(f"burn_in={burn_in!r}; accepted: an integer >= 1 (proposals that "
                             "set the bound M), or give max_logit")
        self.model, self.gamma, self.burn_in = model, float(gamma), int(burn_in)
        self.batch_size = int(batch_size)
        self.max_logit = None if max_logit is None else float(max_logit)
        self.proposed = self.accepted = 0

    def _propose(self, n, labels, rng):
        """(x ~ q, a(x)): n samples of G (with ``labels`` (n,) for a conditional model, else
        None) and D's logits. x: (n, *data_shape), a: (n,)."""
        m = self.model
        with no_grad():
            x = m.generate(n, labels, rng).data
            a = self.D(Tensor(x), labels).data                    # a(x) ~ log p(x) - log q(x)
        return x, a

    def estimate_bound(self, rng):
        """M: the largest logit among ``burn_in`` proposals (balanced labels if conditional),
        kept as ``max_logit``; ``sample`` calls it when no bound is set."""
        top = -math.inf
        for i in range(0, self.burn_in, self.batch_size):
            k = min(self.batch_size, self.burn_in - i)
            _, a = self._propose(k, self.model._labels(k, None), rng)
            top = max(top, float(a.max()))
        self.max_logit = top
        return top

    @property
    def acceptance_rate(self):
        return self.accepted / self.proposed if self.proposed else float("nan")

    def sample(self, n, cond=None, *, rng):
        """n samples as an xp array (balanced labels for a conditional model without cond)."""
        n = int(n)
        if self.max_logit is None:
            self.estimate_bound(rng)
        labels = self.model._labels(n, cond)
        out = xp.zeros((n,) + tuple(self.model.data_shape), dtype=self._dtype())
        empty = xp.arange(n)                                      # slots still to fill
        while empty.shape[0]:
            slots = empty[: self.batch_size]
            x, a = self._propose(int(slots.shape[0]), None if labels is None else labels[slots], rng)
            self.max_logit = max(self.max_logit, float(a.max()))
            keep = rng.random(a.shape) < acceptance(a - self.max_logit, self.gamma)
            out[slots[keep]] = x[keep]
            self.proposed += int(a.shape[0])
            self.accepted += int(keep.sum())
            empty = xp.concatenate([slots[~keep], empty[self.batch_size:]])
        return out

    def _dtype(self):
        return next(iter(self.model.G.parameters())).dtype
