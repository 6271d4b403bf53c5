"""Modules, parameters, initialisers and layers, shaped like torch.nn."""
from refgen.nn.module import (Parameter, Module, Sequential, ModuleList, ModuleDict,  # noqa: F401
                              Identity, LoadResult)
from refgen.nn import init  # noqa: F401
from refgen.nn.layers import *  # noqa: F401,F403
from refgen.nn.attention import MultiheadAttention  # noqa: F401
from refgen.nn.normalization import (BatchNorm, BatchNorm1d, BatchNorm2d, SpectralNorm,  # noqa: F401
                                     spectral_norm)
