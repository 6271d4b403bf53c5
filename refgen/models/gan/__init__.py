"""Generative adversarial networks.

- ``gan`` / ``nsgan``: the minimax game with the saturating or non-saturating generator loss;
- ``wgan`` / ``wgan-gp``: the Wasserstein critic, weight clipping or the gradient penalty;
- ``fgan``: the variational f-divergence bound, one row of the table in fdiv.py;
- ``cgan``: labels into G and D (concatenated embedding or a projection discriminator);
- ``infogan``: an unsupervised categorical code into G, its posterior read from D's features;
- ``infowgan-gp``: the same code beside the Wasserstein critic with the gradient penalty;
- ``RejectionSampler``: samples of a trained minimax GAN thinned by its discriminator, or of
  any GAN by a copy of its D fitted as a minimax one (``minimax_copy``; drs.py).

Every model but the coded two takes ``pack`` (PacGAN) and the minimax ones ``r1``. losses.py holds the
objectives on logits, fdiv.py the f-divergence table, nets.py the networks, gan.py the
models and their alternating training step.
"""
from refgen.models.gan import fdiv, losses
from refgen.models.gan import drs
from refgen.models.gan.drs import RejectionSampler, acceptance, fit_discriminator, minimax_copy
from refgen.models.gan.gan import (CGAN, FGAN, GAN, NSGAN, WGAN, WGANGP, AdversarialModel, InfoGAN,
                                   InfoWGANGP)
from refgen.models.gan.nets import Discriminator, Generator

__all__ = ["GAN", "NSGAN", "WGAN", "WGANGP", "FGAN", "CGAN", "InfoGAN", "InfoWGANGP", "AdversarialModel", "Generator",
           "Discriminator", "RejectionSampler", "acceptance", "fit_discriminator", "minimax_copy", "drs", "fdiv", "losses"]
