"""DDPM's options in three small groups. Each field is also a hyperparameter of its own name
(``--set T=100``, ``DDPM(shape, T=100)``); None always means "not set: use the default".

    ProcessConfig   the diffusion and the training objective
    NetworkConfig   the denoiser (an MLP for vectors, a U-Net for images)
    SamplingConfig  what ``sample`` does when its keywords are not given
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["ProcessConfig", "NetworkConfig", "SamplingConfig", "split_options", "ARCHS",
           "unet_options", "make_unet"]


@dataclass(frozen=True)
class ProcessConfig:
    """schedule linear|cosine and T (22); parameterization eps|x0|v (what the network
    predicts); variance beta|beta_tilde (the fixed sigma_t^2), or learn_sigma by eq. (23) with
    L_hybrid (weight hybrid_lambda); class_cond and p_uncond (labels dropped with that
    probability, for classifier-free guidance); data_scale (the model sees x / data_scale);
    vlb_timesteps (strata of t per example for elbo; None: every t, T passes)."""
    schedule: str = "linear"
    T: int = 1000
    parameterization: str = "eps"
    learn_sigma: bool = False
    variance: str = "beta_tilde"
    hybrid_lambda: float = 0.001
    class_cond: bool = True
    p_uncond: float = 0.1
    data_scale: float = 1.0
    vlb_timesteps: int | None = 100


@dataclass(frozen=True)
class NetworkConfig:
    """MLP: hidden (width), depth (residual blocks). U-Net: channels, channel_mult (None: by
    image size), num_res_blocks (an int or one per level), attn_res, heads, dropout, groups,
    and the architecture: arch ddpm|adm|imagen sets the defaults of num_res_blocks, attn_res,
    head_channels, scale_shift, resblock_updown, rescale_residual, rescale_skip and
    resample_first (see ARCHS and unet_options); any of them set by name overrides its arch."""
    hidden: int = 128
    depth: int = 3
    channels: int = 32
    channel_mult: tuple | None = None
    num_res_blocks: int | tuple | None = None
    attn_res: tuple | None = None
    heads: int = 1
    dropout: float = 0.0
    groups: int = 8
    arch: str = "ddpm"
    head_channels: int | None = None
    scale_shift: bool | None = None
    resblock_updown: bool | None = None
    rescale_residual: bool | None = None
    rescale_skip: bool | None = None
    resample_first: bool | None = None


def _imagen_blocks(levels: int) -> tuple:
    """Imagen's shift of residual blocks to the low resolutions: 1 at the top level, 3 at the
    lowest, 2 between: (1, 3) for two levels, (1, 2, 3) for three."""
    return (2,) if levels == 1 else tuple(1 + 2 * i // (levels - 1) for i in range(levels))


# arch -> (image_size, levels, channels) -> the U-Net options it sets when they are not given
ARCHS = {
    # Ho et al. 2020 / Nichol & Dhariwal 2021: the U-Net of refgen.nn.unet as it is
    "ddpm": lambda size, levels, ch: dict(num_res_blocks=2),
    # Dhariwal & Nichol 2021: AdaGN, BigGAN up/down ResBlocks, residuals / sqrt(2),
    # multi-head attention (heads of ch / 2 channels) at every resolution of 16 or less
    "adm": lambda size, levels, ch: dict(
        num_res_blocks=2, scale_shift=True, resblock_updown=True, rescale_residual=True,
        head_channels=max(ch // 2, 1),
        attn_res=tuple(size // 2 ** i for i in range(levels) if size // 2 ** i <= 16)),
    # Saharia et al. 2022, the efficient U-Net: more blocks at low resolution, skips / sqrt(2),
    # downsampling before a level's convolutions and upsampling after them
    "imagen": lambda size, levels, ch: dict(
        num_res_blocks=_imagen_blocks(levels), rescale_skip=True, resample_first=True),
}
_FLAGS = ("scale_shift", "resblock_updown", "rescale_residual", "rescale_skip", "resample_first")


def unet_options(net: NetworkConfig, image_size: int, levels: int) -> dict:
    """The keyword arguments of refgen.nn.UNet for ``net`` (arch defaults, then the fields
    set by name), for a U-Net of ``levels`` levels on images of side ``image_size``."""
    if net.arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {net.arch!r}")
    out = dict(dict.fromkeys(_FLAGS, False), head_channels=None, attn_res=None)
    out.update(ARCHS[net.arch](int(image_size), int(levels), int(net.channels)))
    given = {k: getattr(net, k) for k in ("num_res_blocks", "attn_res", "head_channels") + _FLAGS}
    out.update({k: v for k, v in given.items() if v is not None})
    return out


@dataclass(frozen=True)
class SamplingConfig:
    """sampler ddpm|ddim, sample_steps (None: all T), eta (DDIM's noise), guidance (the
    classifier-free weight w), threshold none|static|dynamic (None: static for images,
    none for vectors)."""
    sampler: str = "ddpm"
    sample_steps: int | None = None
    eta: float = 0.0
    guidance: float = 0.0
    threshold: str | None = None


def split_options(groups: dict, options: dict) -> dict:
    """The config groups (name -> instance) with the flat ``options`` (field -> value) put
    into the group that has each field; ValueError for a name no group has."""
    fields = {f.name: name for name, cfg in groups.items() for f in dataclasses.fields(cfg)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(f"ddpm has no option {unknown[0]!r}; accepted: {', '.join(fields)}")
    return {name: dataclasses.replace(cfg, **{k: v for k, v in options.items() if fields[k] == name})
            for name, cfg in groups.items()}


def make_unet(net: NetworkConfig, c_in: int, c_out: int, image_size: int, num_classes=None,
              rng=None, **extra):
    """The refgen.nn.UNet that ``net`` describes (its arch and switches, unet_options), for
    images of side image_size with c_in -> c_out channels; ``extra``: more UNet keywords."""
    from refgen.nn import UNet, default_channel_mult
    levels = len(net.channel_mult or default_channel_mult(image_size))
    return UNet(c_in, c_out, image_size, net.channels, net.channel_mult, heads=net.heads,
                groups=net.groups, dropout=net.dropout, num_classes=num_classes, rng=rng,
                **unet_options(net, image_size, levels), **extra)
