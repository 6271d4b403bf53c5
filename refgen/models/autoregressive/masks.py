"""The masks that make a network autoregressive, shared by MADE, PixelCNN and the transformer.

Every autoregressive network computes, for each dimension i, parameters of
p(x_i | x_<i) from one forward pass over the whole x. That is only a valid factorisation
of p(x) = prod_i p(x_i | x_<i) if output i is a function of x_<i alone; a binary mask on
the weights removes every path from x_j (j >= i) to output i.

- MADE (Germain et al. 2015): give every unit a degree m(k). Inputs get their position in
  the ordering, 1..D; hidden units a degree in [min of the layer below, D - 1]. A weight
  from unit j to hidden unit k is kept iff m(k) >= m(j); to output d iff m(d) > m(j).
  Output d then sees only inputs of degree < m(d).
- PixelCNN (van den Oord et al. 2016): in raster order the kernel of a convolution keeps
  the rows above the centre and the columns left of it on the centre row. Type A (first
  layer) also drops the centre (x_i must not see itself); type B (later layers) keeps it
  (feature i already depends only on x_<i). With several colour channels the centre is
  split by channel groups: R sees nothing of the pixel, G sees R, B sees R and G.
- Causal attention: query i may attend to keys j <= i (the transformer shifts its input
  by one, so position i predicts token i + 1).

The masks are fixed, not learned; the modules keep them as buffers. Random MADE degrees
are drawn from a host NumPy generator (refgen.nn.init.get_rng), like initial weights, so a
seed gives the same masks on CPU and GPU.
"""
from __future__ import annotations

from refgen.backend import xp
from refgen.nn import init

__all__ = ["made_degrees", "made_masks", "pixelcnn_mask", "causal_mask"]


def made_degrees(num_inputs: int, hidden_sizes, order=None, rng=None) -> list:
    """Degrees of every layer: [inputs (D,), hidden_1, ..., hidden_L], int64.

    order: a permutation of range(D) listing the dimensions in the order they are
    generated (None: 0, 1, ..., D-1); input ``order[r]`` gets degree r + 1.
    Hidden degrees m^l(k) ~ Uniform{min_j m^{l-1}(j), ..., D - 1}, drawn from ``rng``
    (a NumPy Generator), so every hidden unit sees at least one input when D > 1.
    """
    d = int(num_inputs)
    order = xp.arange(d) if order is None else xp.asarray(order, dtype=xp.int64)
    if sorted(order.tolist()) != list(range(d)):
        raise ValueError(f"order must be a permutation of range({d}), got {order.tolist()}")
    rng = init.get_rng(0 if rng is None else rng)
    m_in = xp.empty(d, dtype=xp.int64)
    m_in[order] = xp.arange(1, d + 1)  # m(x_order[r]) = r + 1
    degrees = [m_in]
    for h in hidden_sizes:
        low = min(int(degrees[-1].min()), d - 1)  # D = 1: hidden units of degree 0 feed output 1
        degrees.append(xp.asarray(rng.integers(low, d, size=int(h))))  # in [low, D - 1]
    return degrees


def made_masks(degrees, out_per_dim: int = 1) -> list:
    """0/1 float32 masks (out, in) for each weight matrix, from :func:`made_degrees`.

    Hidden layers: M[k, j] = m^l(k) >= m^{l-1}(j).  Output layer, whose units are laid out
    dimension-major (unit d * K + c is parameter c of dimension d, K = out_per_dim):
    M[(d, c), j] = m(x_d) > m^L(j).
    """
    masks = [(dk[:, None] >= dj[None, :]).astype(xp.float32)
             for dj, dk in zip(degrees[:-1], degrees[1:])]
    m_out = xp.repeat(degrees[0], out_per_dim)  # (D * K,)
    masks.append((m_out[:, None] > degrees[-1][None, :]).astype(xp.float32))
    return masks


def pixelcnn_mask(out_channels: int, in_channels: int, kh: int, kw: int, mask_type: str,
                  data_channels: int = 1):
    """The (out, in, kh, kw) 0/1 float32 mask of a raster-order masked convolution.

    Rows above the centre and columns left of it on the centre row are kept. At the centre,
    input and output channels are split into ``data_channels`` groups (colour channels):
    type 'A' connects output group g to input groups < g, type 'B' to groups <= g. With one
    data channel that is: A drops the centre tap, B keeps it.
    """
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    if out_channels % data_channels or in_channels % data_channels:
        raise ValueError(f"channels ({out_channels}, {in_channels}) must be multiples of "
                         f"data_channels={data_channels}")
    mask = xp.zeros((out_channels, in_channels, kh, kw), dtype=xp.float32)
    ch, cw = kh // 2, kw // 2
    mask[:, :, :ch, :] = 1          # rows above
    mask[:, :, ch, :cw] = 1         # left of the centre on its row
    g_out = xp.arange(out_channels) // (out_channels // data_channels)   # channel group
    g_in = xp.arange(in_channels) // (in_channels // data_channels)
    centre = g_out[:, None] > g_in[None, :] if mask_type == "A" else g_out[:, None] >= g_in[None, :]
    mask[:, :, ch, cw] = centre
    return mask


def causal_mask(length: int):
    """(L, L) boolean: True where query i may attend to key j, i.e. j <= i."""
    return xp.tril(xp.ones((length, length), dtype=bool))
