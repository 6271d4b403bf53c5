"""Modules, parameters, initialisers and layers, shaped like torch.nn."""
from refgen.nn.module import (Parameter, Module, Sequential, ModuleList, ModuleDict,  # noqa: F401
                              Identity, LoadResult)
from refgen.nn import init  # noqa: F401
from refgen.nn.layers import *  # noqa: F401,F403
from refgen.nn.attention import MultiheadAttention  # noqa: F401
