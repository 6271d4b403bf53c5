"""Autoregressive models: p(x) = prod_i p(x_i | x_<i), trained by minimising the exact NLL.

- ``made``: MADE, a masked MLP (order-agnostic, ensembles of orderings); ``MADE`` is also
  the network MAF builds on.
- ``pixelcnn`` / ``gated-pixelcnn``: masked convolutions over images in raster order.
- ``gpt``: a decoder-only transformer with causal self-attention and a key/value cache.
"""
from refgen.models.autoregressive.masks import causal_mask, made_degrees, made_masks, pixelcnn_mask
from refgen.models.autoregressive.made import MADE, MADEDensity, MaskedLinear, ensemble_log_prob, \
    ensemble_sample

__all__ = ["MADE", "MADEDensity", "MaskedLinear", "ensemble_log_prob", "ensemble_sample",
           "made_degrees",
           "made_masks", "pixelcnn_mask", "causal_mask"]
from refgen.models.autoregressive.pixelcnn import MaskedConv2d, PixelCNN, PixelModel
from refgen.models.autoregressive.gated_pixelcnn import GatedLayer, GatedPixelCNN

__all__ += ["MaskedConv2d", "PixelModel", "PixelCNN", "GatedLayer", "GatedPixelCNN"]
from refgen.models.autoregressive.gpt import GPT, Block, GPTModel, filter_logits

__all__ += ["GPT", "Block", "GPTModel", "filter_logits"]
from refgen.models.autoregressive.pixelrnn import DiagonalBiLSTM, PixelRNN, RowLSTM, skew, unskew

__all__ += ["PixelRNN", "RowLSTM", "DiagonalBiLSTM", "skew", "unskew"]
