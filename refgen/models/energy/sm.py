"""Score matching for energies (Hyvarinen 2005): the model's score is s = -grad_x E_theta.

    L = mean [ tr(grad_x s(x)) + 1/2 |s(x)|^2 ]      (refgen.score_matching)

tr(grad_x s) = -tr(Hessian of E) exactly, by one double backward per dimension, for data of
at most ``exact_max_dim`` dimensions (2D toys); above it, the sliced estimator with
``projections`` random directions per example (MNIST). No sampling and no Z: the objective
is blind to the normaliser, which the 2D models get by quadrature for their test NLL.
"""
from __future__ import annotations

import math

from refgen.models import register
from refgen.models.energy.base import EnergyModel
from refgen.score_matching import energy_score, exact_score_matching, sliced_score_matching

__all__ = ["EBMSM"]


@register("ebm-sm")
class EBMSM(EnergyModel):
    """Energy model fitted by (exact or sliced) score matching."""

    default_train = dict(steps=4000, batch_size=256, lr=1e-3)

    def __init__(self, data_shape, *, seed=0, hidden=(128, 128), channels=32, base_std=3.0,
                 init_range=4.5, exact_max_dim=16, projections=1, sampler="mala",
                 sample_steps=300, sample_step_size=1e-2):
        super().__init__(data_shape, seed=seed, hidden=hidden, channels=channels,
                         base_std=base_std, init_range=init_range, sampler=sampler,
                         sample_steps=sample_steps, sample_step_size=sample_step_size)
        self.exact = math.prod(self.data_shape) <= int(exact_max_dim)
        self.projections = int(projections)

    def loss(self, batch, rng):
        score = energy_score(self.energy)
        if self.exact:
            return exact_score_matching(score, batch.x)
        return sliced_score_matching(score, batch.x, rng=rng, n_projections=self.projections)
