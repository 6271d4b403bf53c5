"""Evaluation metrics: likelihoods in nats and bits/dim, the IWAE bound, the Fréchet distance
behind FID, and mode coverage / MMD for 2D toy data. Names match the keys of metrics.json."""
from refgen.metrics.frechet import frechet_distance, frechet_distance_from_features, gaussian_stats
from refgen.metrics.likelihood import (bits_per_dim, discrete_nll_from_continuous, iwae,
                                       iwae_bound, nll_to_bpd)
from refgen.metrics.two_d import entropy_gap_nats, mmd, mode_stats

__all__ = ["bits_per_dim", "discrete_nll_from_continuous", "nll_to_bpd", "iwae_bound", "iwae",
           "frechet_distance", "gaussian_stats", "frechet_distance_from_features",
           "mode_stats", "mmd", "entropy_gap_nats"]
