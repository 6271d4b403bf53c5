"""Modules, parameters, initialisers and layers, shaped like torch.nn."""
from refgen.nn.module import (Parameter, Module, Sequential, ModuleList, ModuleDict,  # noqa: F401
                              Identity, LoadResult)
from refgen.nn import init  # noqa: F401
from refgen.nn.layers import *  # noqa: F401,F403
from refgen.nn.attention import MultiheadAttention  # noqa: F401
from refgen.nn.attention import key_padding_mask  # noqa: F401
from refgen.nn.embeddings import timestep_embedding, TimeEmbedding  # noqa: F401
from refgen.nn.blocks import (group_count, MLPBlock, ResBlock, AttnBlock, CrossAttnBlock,  # noqa: F401
                              Downsample, Upsample, apply_blocks)
from refgen.nn.transformer import TransformerBlock  # noqa: F401
from refgen.nn.unet import UNet, default_channel_mult  # noqa: F401
from refgen.nn.dit import DiT, AdaLNZeroBlock, patchify, unpatchify  # noqa: F401
from refgen.nn.mlp import MLPDenoiser  # noqa: F401
from refgen.nn.sizes import parse_hidden  # noqa: F401
from refgen.nn.normalization import (BatchNorm, BatchNorm1d, BatchNorm2d, SpectralNorm,  # noqa: F401
                                     spectral_norm)
from refgen.nn.recurrent import lstm_update, LSTMCell, LSTM  # noqa: F401
