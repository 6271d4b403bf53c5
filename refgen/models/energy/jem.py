"""JEM (Grathwohl et al. 2020, "Your classifier is secretly an energy based model").

A classifier f_theta(x) -> logits (K,) defines, with the same parameters,

    p_theta(x, y) = exp(f_theta(x)[y]) / Z_theta,    E_theta(x) = -logsumexp_y f_theta(x)[y],
    p_theta(y | x) = softmax(f_theta(x))[y]          (Z cancels: the ordinary classifier)

and is trained on log p(x, y) = log p(y | x) + log p(x): cross-entropy plus the
maximum-likelihood contrastive loss of E (ebm.py), its negatives from SGLD chains in a replay
buffer. JEM's SGLD is the tempered step (refgen.samplers): x + eps/2 grad log p + sigma z with
eps/2 = 1 and sigma = 0.01 (its paper's settings for images in [-1, 1]), not the untempered
sqrt(eps); ``noise_scale=None`` gives the untempered form. ``sample`` runs the same tempered
step from noise (``sample_noise_scale`` = 0.01).

``px_weight`` weights the marginal term, log p(y | x) + px_weight log p(x), as the JEM code's
``p_x_weight`` does: 1 is JEM, 0 the classifier alone (no chains are run), the control that
says what the generative term costs or gives the classifier.

``augment_shift`` = s > 0 translates every training image by a random integer offset in
{-s, ..., s}^2 (refgen.data.augment.random_shift) before both terms, as the JEM code augments
the data of both; 0 (the default) trains on the images as they are.
"""
from __future__ import annotations

import refgen.functional as F
from refgen.autograd import Tensor, as_tensor
from refgen.data.augment import random_shift
from refgen.models import register
from refgen.models.base import DataSpec
from refgen.models.energy.base import EnergyModel
from refgen.models.energy.ebm import PersistentChains

__all__ = ["JEM"]


@register("jem")
class JEM(PersistentChains, EnergyModel):
    """A classifier whose logits are energies: cross-entropy + the marginal likelihood by SGLD."""

    data_spec = DataSpec(kinds=("continuous",), ndims=(1, 3))
    default_train = dict(steps=2000, batch_size=64, lr=1e-4)

    def __init__(self, data_shape, *, num_classes=10, seed=0, hidden=(128, 128), channels=32,
                 base_std=None, init_range=4.5, alpha=0.0, mcmc="ula", mcmc_steps=20,
                 mcmc_step_size=2.0, noise_scale=0.01, buffer_size=10000, reinit=0.05,
                 sampler="ula", sample_steps=100, sample_step_size=2.0, sample_noise_scale=0.01,
                 px_weight=1.0, augment_shift=0):
        if num_classes is None or int(num_classes) < 2:
            raise ValueError(f"jem needs labelled data with at least 2 classes, got num_classes={num_classes}")
        super().__init__(data_shape, seed=seed, hidden=hidden, channels=channels,
                         base_std=base_std, init_range=init_range, sampler=sampler,
                         sample_steps=sample_steps, sample_step_size=sample_step_size,
                         sample_noise_scale=sample_noise_scale, out_features=int(num_classes))
        if not px_weight >= 0:
            raise ValueError(f"px_weight must be >= 0, got {px_weight}")
        if int(augment_shift) != augment_shift or augment_shift < 0:
            raise ValueError(f"augment_shift must be an integer >= 0, got {augment_shift}")
        if augment_shift and len(data_shape) != 3:
            raise ValueError(f"augment_shift translates images (C, H, W); data of shape "
                             f"{tuple(data_shape)} takes augment_shift=0")
        self.num_classes, self.alpha, self.px_weight = int(num_classes), float(alpha), float(px_weight)
        self.augment_shift = int(augment_shift)
        self._init_chains(buffer_size, reinit, int(seed), mcmc, mcmc_steps, mcmc_step_size,
                          noise_scale)

    def logits(self, x):
        """f_theta(x), (B, *data_shape) -> (B, K)."""
        return self.net(as_tensor(x))

    def energy(self, x):
        """E_theta(x) = -logsumexp_y f_theta(x)[y], (B,)."""
        return -F.logsumexp(self.logits(x), dim=1)

    def loss(self, batch, rng):
        """cross-entropy(f(x), y) + px_weight (mean E(x+) - mean E(x-) (+ alpha * energy
        magnitudes))."""
        if batch.y is None:
            raise ValueError("jem trains on labelled data: the batch has no labels")
        x = batch.x
        if self.augment_shift:                                               # (B, C, H, W)
            x = Tensor(random_shift(as_tensor(x).data, self.augment_shift, rng))
        ce = F.cross_entropy(self.logits(x), batch.y)                        # -log p(y | x)
        if self.px_weight == 0:
            return ce
        x_neg = self.negatives(x.shape[0], rng)
        return ce + self.px_weight * self.chain_loss(x, x_neg)

    def sample(self, n, cond=None, *, rng, steps=None):
        """n samples of p_theta(x) by the model's sampler from noise (``cond`` is not used)."""
        return super().sample(n, rng=rng, steps=steps)
