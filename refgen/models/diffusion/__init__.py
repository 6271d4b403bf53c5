"""Diffusion models (DDPM, improved DDPM, DDIM, guidance), read top to bottom:

    schedule.py   beta_t, alpha_bar_t, beta_tilde_t: linear and cosine (22), strided
    process.py    forward process (1), (3); posterior (7), (10)-(12); reverse p_theta (17), (23)
    losses.py     L_VLB (13)-(16) with closed-form KLs and the decoder, (18), L_simple (19), L_hybrid
    sampling.py   ancestral DDPM (17), DDIM (27)-(29), thresholding
    guidance.py   classifier guidance (24)-(25), classifier-free guidance (26)
    (networks)    refgen.nn.MLPDenoiser for vectors, refgen.nn.UNet for images
    classifier.py the noisy-image classifier f_phi(y | x_t, t) of classifier guidance
    config.py     ddpm's option groups (process, network, sampling)
    ddpm.py       the registered model ``ddpm``
    ode.py        the probability-flow ODE in sigma-time, Euler and Heun steps (Phi of (31))
    teacher.py    a trained ddpm read from its run directory, for the distilled models
    distill.py    progressive distillation, ``progressive-distillation`` (Salimans & Ho 2022)
    cascade.py    cascaded diffusion: the super-resolution model ``cascade-sr`` with noise
                  conditioning augmentation, sample_cascade (Ho et al. 2021)
    consistency.py consistency models (30)-(32): ``consistency-distillation``,
                  ``consistency-training`` (Song et al. 2023)
    latent.py     latent diffusion ``ldm``: DDPM in a frozen autoencoder's latent, class
                  tokens read by cross-attention (33) (Rombach et al. 2022)
    controlnet.py ControlNet over a frozen ddpm U-Net, ``controlnet`` (Zhang, Rao & Agrawala 2023)

Equation numbers (n) are those of the numbered diffusion derivation, "What are Diffusion Models
and Study Notes?" (2024), an annotated edition of Lilian Weng's "What are Diffusion Models?"
(2021); docs/diffusion.md walks through them and lists where each is computed and tested.
"""
from refgen.models.diffusion.schedule import Schedule, make_schedule  # noqa: F401
from refgen.models.diffusion.ddpm import DDPM  # noqa: F401
from refgen.models.diffusion.classifier import NoisyClassifier  # noqa: F401
from refgen.models.diffusion.distill import ProgressiveDistillation  # noqa: F401
from refgen.models.diffusion.cascade import CascadeSR, sample_cascade  # noqa: F401
from refgen.models.diffusion.consistency import (ConsistencyDistillation,  # noqa: F401
                                                 ConsistencyTraining)
from refgen.models.diffusion.latent import LatentDiffusion  # noqa: F401
from refgen.models.diffusion.controlnet import ControlNet  # noqa: F401

