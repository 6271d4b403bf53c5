"""Evaluation metrics: likelihoods in nats and bits/dim, the IWAE bound, the Fréchet distance
behind FID, FID and class accuracy on a project-trained MNIST classifier, KID, k-NN precision
and recall and the class histogram's KL to uniform in its features, and mode coverage /
MMD for 2D toy data; ``evaluate`` picks those that apply to a model. Names match the keys of
metrics.json."""
from refgen.metrics.frechet import frechet_distance, frechet_distance_from_features, gaussian_stats
from refgen.metrics.likelihood import (bits_per_dim, discrete_nll_from_continuous, iwae,
                                       iwae_bound, nll_to_bpd)
from refgen.metrics.two_d import entropy_gap_nats, mmd, mode_stats
from refgen.metrics.classifier import load_classifier
from refgen.metrics.fid import cond_accuracy, fid_mnist, mnist_features
from refgen.metrics.kernel_distance import kid
from refgen.metrics.knn_manifold import precision_recall
from refgen.metrics.histogram import class_kl
from refgen.metrics.evaluation import METRIC_NAMES, evaluate

__all__ = ["bits_per_dim", "discrete_nll_from_continuous", "nll_to_bpd", "iwae_bound", "iwae",
           "frechet_distance", "gaussian_stats", "frechet_distance_from_features",
           "mode_stats", "mmd", "entropy_gap_nats", "load_classifier", "mnist_features",
           "fid_mnist", "cond_accuracy", "evaluate", "kid", "precision_recall", "class_kl",
           "METRIC_NAMES"]
