"""Baselines: models simple enough to have no derivation of their own.

``gmm`` is the yardstick every 2D density model should beat, and the model the training
loop's own tests train.
"""
from refgen.models.baseline.gmm import GaussianMixture

__all__ = ["GaussianMixture"]
