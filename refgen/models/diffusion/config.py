"""DDPM's options in three small groups. Each field is also a hyperparameter of its own name
(``--set T=100``, ``DDPM(shape, T=100)``); None always means "not set: use the default".

    ProcessConfig   the diffusion and the training objective
    NetworkConfig   the denoiser (an MLP for vectors, a U-Net or a DiT for images)
    SamplingConfig  what ``sample`` does when its keywords are not given
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["ProcessConfig", "NetworkConfig", "SamplingConfig", "split_options"]


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
    image size), num_res_blocks, attn_res (None: the lowest resolution), heads, dropout, groups.
    net unet|dit: the image network. DiT: patch_size, dit_width, dit_depth, dit_heads,
    dit_cond adaln_zero|in_context|cross_attn (refgen.nn.dit)."""
    hidden: int = 128
    depth: int = 3
    channels: int = 32
    channel_mult: tuple | None = None
    num_res_blocks: int = 2
    attn_res: tuple | None = None
    heads: int = 1
    dropout: float = 0.0
    groups: int = 8
    net: str = "unet"
    patch_size: int = 2
    dit_width: int = 64
    dit_depth: int = 4
    dit_heads: int = 4
    dit_cond: str = "adaln_zero"


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
