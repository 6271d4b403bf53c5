"""Score-based generative models through SDEs (Song et al. 2021): ``sde-ve``, ``sde-vp``,
``sde-subvp``.

    training   t ~ U(eps, 1), z ~ N(0, I), x_t = m(t) x_0 + s(t) z, and
               lambda(t) || s_theta(x_t, t) + z / s(t) ||^2 (eq. 7), lambda = s(t)^2 or g(t)^2
    score      s_theta(x, t) = net(x, 999 t) / s(t)
    sampling   sampler em | pc | ode (reverse SDE, predictor-corrector, PF-ODE)
    likelihood log_prob(x) by the PF-ODE (exact divergence up to 16 dims, Hutchinson above);
               for images the dequantised bound on log P(8-bit x) (``levels = 256``)

Options (``--set key=value``): sigma_min, sigma_max (VE); beta_min, beta_max (VP, sub-VP);
weighting sigma2|likelihood; sampler, sample_steps, snr, n_corrector, ode_method, rtol,
atol; and the network's hidden, depth / channels, channel_mult, num_res_blocks, attn_res,
heads, groups.
"""
from __future__ import annotations

import math

from refgen.autograd import as_tensor
from refgen.backend import xp
from refgen.models import register
from refgen.models.base import DataSpec
from refgen.models.score.likelihood import dequantize
from refgen.models.score.losses import sde_dsm
from refgen.models.score.nets import make_net
from refgen.models.score.samplers import SDE_SAMPLERS
from refgen.models.score.sampling import sde_log_likelihood, sde_sample
from refgen.models.score.sde import SubVPSDE, VESDE, VPSDE
from refgen.nn import Module, init

__all__ = ["ScoreSDE", "VEModel", "VPModel", "SubVPModel"]


class ScoreSDE(Module):
    """A score network s_theta(x, t) for one forward SDE (subclasses fix which)."""

    data_spec = DataSpec(kinds=("continuous",), ndims=(1, 3), image_range=(-1.0, 1.0))
    default_train = dict(steps=5000, batch_size=256, lr=2e-3, ema=0.995, warmup=100)
    kind = None

    def __init__(self, data_shape, *, seed=0, sigma_min: float = 0.01, sigma_max=None,
                 beta_min: float = 0.1, beta_max: float = 20.0, weighting: str = "sigma2",
                 sampler: str = "pc", sample_steps=None, snr: float = 0.16, n_corrector: int = 1,
                 ode_method: str = "rk45", rtol: float = 1e-5, atol: float = 1e-5,
                 hidden: int = 128, depth: int = 3, channels: int = 32, channel_mult=None,
                 num_res_blocks: int = 2, attn_res=None, heads: int = 1, groups: int = 8):
        super().__init__()
        self.data_shape = tuple(int(d) for d in data_shape)
        if len(self.data_shape) not in (1, 3):
            raise ValueError(f"{self.registry_name} models vectors (D,) or images (C, H, W); "
                             f"got {self.data_shape}")
        if sampler not in SDE_SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SDE_SAMPLERS)}, got {sampler!r}")
        self.image = len(self.data_shape) == 3
        if self.kind == "ve":
            self.sde = VESDE(sigma_min, sigma_max if sigma_max is not None
                             else (50.0 if self.image else 10.0))
        else:
            self.sde = (VPSDE if self.kind == "vp" else SubVPSDE)(beta_min, beta_max)
        self.weighting = weighting
        self.sampler, self.sample_steps, self.snr = sampler, sample_steps, float(snr)
        self.n_corrector, self.ode_method = int(n_corrector), ode_method
        self.rtol, self.atol = float(rtol), float(atol)
        self.data_range = (-1.0, 1.0) if self.image else None
        self.levels = 256 if self.image else None   # log_prob of images: of the 8-bit values
        self.net = make_net(self.data_shape, init.get_rng(int(seed)), hidden, depth, channels,
                            channel_mult, num_res_blocks, attn_res, heads, groups)
        self.eval_samples = 1000 if self.image else 2000
        self.eval_max_test = 200 if len(self.data_shape) == 3 else 2000  # an ODE per test batch

    def extra_repr(self):
        return f"data_shape={self.data_shape}, sde={self.sde!r}, weighting={self.weighting}"

    def score(self, x, t):
        """s_theta(x, t) = net(x, 999 t) / s(t); x a Tensor (B, ...), t a float or (B,) times."""
        x = as_tensor(x)
        b = x.shape[0]
        t = xp.broadcast_to(xp.asarray(t, dtype=xp.float64), (b,))
        std = self.sde.marginal(t)[1].astype(x.dtype).reshape((b,) + (1,) * (len(x.shape) - 1))
        return self.net(x, 999.0 * t) * (1.0 / std)

    def loss(self, batch, rng):
        x0 = as_tensor(batch.x)
        b = x0.shape[0]
        t = rng.uniform(self.sde.eps, self.sde.T, size=b)            # t ~ U(eps, 1)
        z = rng.standard_normal(x0.shape, dtype=x0.dtype)
        return sde_dsm(self.score, self.sde, x0, t, z, self.weighting).mean()

    def sample(self, n, cond=None, *, rng, sampler=None, steps=None, progress=None, x=None):
        """n samples (n, *data_shape) by sampler em|pc|ode (default: the model's)."""
        if cond is not None:
            raise ValueError(f"{self.registry_name} is unconditional: cond must be None")
        return sde_sample(self.sde, self.score, (n,) + self.data_shape, rng,
                          sampler or self.sampler, self.sample_steps if steps is None else steps,
                          snr=self.snr, n_corrector=self.n_corrector, method=self.ode_method,
                          rtol=self.rtol, atol=self.atol, progress=progress, x=x)

    def log_prob(self, x, *, rng, divergence: str = "auto", **kw):
        """log p(x) per example (nats) by the probability-flow ODE. Images (8-bit values in
        [-1, 1]) are dequantised first and the result is the bound on log P(x) of the 8-bit
        values, E_u log p(x + u) + D log(2 / 256)."""
        kw = dict(dict(method=self.ode_method, rtol=self.rtol, atol=self.atol), **kw)
        xa = as_tensor(x).data
        d = math.prod(self.data_shape)
        if self.image:
            from refgen.models.score.likelihood import check_range
            check_range(xa, self.data_range)
            xd = dequantize(xa, rng, self.data_range)
            logp = sde_log_likelihood(self.sde, self.score, xd, rng, divergence, **kw)
            return logp + d * math.log(2.0 / 256)
        return sde_log_likelihood(self.sde, self.score, xa, rng, divergence, **kw)


@register("sde-ve")
class VEModel(ScoreSDE):
    kind = "ve"


@register("sde-vp")
class VPModel(ScoreSDE):
    kind = "vp"


@register("sde-subvp")
class SubVPModel(ScoreSDE):
    kind = "subvp"
