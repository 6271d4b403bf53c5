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
from refgen.models.energy.nce import EBMNCE, gaussian_log_prob, nce_loss
from refgen.models.energy.fce import EBMFCE
from refgen.models.energy.sm import EBMSM
from refgen.models.energy.jem import JEM
from refgen.models.energy.nets import ConvEnergy, MLPEnergy
from refgen.models.energy.quadrature import grid_log_normalizer

__all__ = ["EnergyModel", "EBM", "EBMNCE", "EBMFCE", "EBMSM", "JEM", "MLPEnergy", "ConvEnergy",
           "contrastive_loss", "nce_loss", "gaussian_log_prob", "grid_log_normalizer"]
