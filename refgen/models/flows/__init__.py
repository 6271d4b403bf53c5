"""Normalizing flows: exact densities through invertible maps with cheap log-determinants.

    log p_X(x) = log p_Z(f(x)) + log |det df/dx|

The protocol (base.py): every layer has ``forward(x) -> (y, logdet)`` (data -> noise) and
``inverse(y) -> x``; a :class:`Flow` is a list of layers over a fixed base density.

Layers: additive and affine couplings (coupling.py) with checkerboard / channel masks
(masks.py), actnorm (actnorm.py), invertible 1x1 convolutions, plain and LU (invconv.py),
squeeze / flatten / reverse (reshape.py), the multi-scale split with Glow's conditional
prior (multiscale.py), the logit transform of [0, 1] images (preprocess.py), NICE's
diagonal scaling (nice.py) and MAF's MADE layer (maf.py).

Registered models, each dense (MLP) for vectors and convolutional for images:
``nice``, ``realnvp``, ``glow``, ``maf`` (MAF flattens images), ``gflow`` (Gaussianization
flows: marginal Gaussianization and Householder rotations; rbig.py is its fitted, non-gradient
ancestor RBIG).
"""
from refgen.models.flows.base import (Flow, FlowLayer, FlowSequence, StandardLogistic,
                                      StandardNormal)
from refgen.models.flows.actnorm import ActNorm
from refgen.models.flows.coupling import AdditiveCoupling, AffineCoupling
from refgen.models.flows.invconv import InvConv1x1, InvConv1x1LU
from refgen.models.flows.masks import channel_mask, checkerboard_mask
from refgen.models.flows.multiscale import ConditionalPrior, MultiScale
from refgen.models.flows.preprocess import LogitTransform, Shift
from refgen.models.flows.reshape import Flatten, Reverse, Squeeze
from refgen.models.flows.nice import NICE, DiagonalScaling
from refgen.models.flows.realnvp import RealNVP
from refgen.models.flows.glow import Glow
from refgen.models.flows.maf import MAF, AutoregressiveAffine
from refgen.models.flows.gaussianization import (GaussianizationFlow, HouseholderRotation,
                                                 MarginalGaussianization)
from refgen.models.flows.rbig import RBIG

__all__ = ["Flow", "FlowLayer", "FlowSequence", "StandardNormal", "StandardLogistic",
           "ActNorm", "AdditiveCoupling", "AffineCoupling", "InvConv1x1", "InvConv1x1LU",
           "checkerboard_mask", "channel_mask", "ConditionalPrior", "MultiScale",
           "LogitTransform", "Shift", "Flatten", "Reverse", "Squeeze", "DiagonalScaling",
           "NICE", "RealNVP", "Glow", "MAF", "AutoregressiveAffine",
           "GaussianizationFlow", "MarginalGaussianization", "HouseholderRotation", "RBIG"]
