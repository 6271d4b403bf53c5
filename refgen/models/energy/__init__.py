"""Energy-based models: p_theta(x) = exp(-E_theta(x)) / Z_theta.

Registered models, each an MLP energy for vectors and a conv net for images (nets.py):

  ebm       maximum likelihood through the contrastive gradient, persistent Langevin chains
  ebm-nce   noise-contrastive estimation with a learned log Z
  ebm-fce   flow contrastive estimation: a RealNVP flow as the contrast, trained jointly
  ebm-sm    score matching (exact Hessian trace in low dimension, sliced above)
  jem       a classifier's logits as energies (Grathwohl et al. 2020)

The samplers are refgen.samplers (shared with the score family); score matching is
refgen.score_matching. 2D models are normalised exactly by grid quadrature (quadrature.py).
"""
from refgen.models.energy.base import EnergyModel
from refgen.models.energy.ebm import EBM, contrastive_loss
from refgen.models.energy.quadrature import grid_log_normalizer

__all__ = ["EnergyModel", "EBM", "contrastive_loss", "grid_log_normalizer"]
