"""Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent
Diffusion Models"): DDPM in the latent space of a trained, frozen autoencoder, ``ldm``.

    z_0 = s E(x)           E the frozen encoder (a draw from q(z | x) for the KL-regularised
                           one), s = 1 / std(E(x)) measured on the first training batch and
                           saved with the model, so that z_0 has unit variance like N(0, I)
    training               L_simple (19) on z_0: t ~ U{1..T}, z_t = q_sample(z_0, t, eps) (3)
    conditioning           tau_theta(y) (B, M, d_tau) read by the U-Net's cross-attention
                           blocks: softmax(Q K^T / sqrt(d)) V, Q = W_Q phi(z_t),
                           K = W_K tau_theta(y), V = W_V tau_theta(y)                     (33)
                           (refgen.nn.blocks.CrossAttnBlock; tau_theta = ClassTokens)
    sampling               z_0 ~ DDIM / DDPM on the latent grid, then x = D(z_0 / s)

The autoencoder is a ``kl-autoencoder`` or ``vq-autoencoder`` run directory
(``--set autoencoder=runs/ae``) or the model itself; its weights are copied into this model's
checkpoint and never trained (requires_grad off, encoding under no_grad, kept in eval mode).
"""
from __future__ import annotations

import copy

from refgen.autograd import Tensor, as_tensor, no_grad
from refgen.backend import default_rng, xp
from refgen.models import register
from refgen.models.base import DataSpec
from refgen.models.diffusion import guidance as G
from refgen.models.diffusion.losses import l_simple, regression_target
from refgen.models.diffusion.process import PARAMETERIZATIONS, interpret, q_sample, x0_from_eps
from refgen.models.diffusion.sampling import SAMPLERS, sample_loop
from refgen.models.diffusion.schedule import make_schedule
from refgen.nn import Module, UNet, init
from refgen.nn.conditioning import ClassTokens

__all__ = ["LatentDiffusion", "load_autoencoder", "FIRST_STAGES"]

FIRST_STAGES = ("kl-autoencoder", "vq-autoencoder")


def load_autoencoder(autoencoder, data_shape):
    """The first stage, in eval mode: a copy of ``autoencoder`` on the active backend when it
    is a model (so that freezing it leaves the caller's model alone), else the model in the
    run directory it names (EMA weights)."""
    from refgen.runs import load_component
    return load_component(autoencoder, who="ldm", option="autoencoder", kinds=FIRST_STAGES,
                          data_shape=data_shape, copy=_copy)


def _copy(model):
    out = copy.deepcopy(model)
    out.load_state_dict(model.state_dict())                             # onto the active backend
    return out


@register("ldm")
class LatentDiffusion(Module):
    """DDPM on the scaled latent of a frozen autoencoder, class-conditioned by cross-attention.

    autoencoder: the first stage (see the module docstring). class_cond, p_uncond: with
    labels, a conditional model whose label is dropped to the null label with probability
    p_uncond (classifier-free guidance). context_tokens, context_dim: M and d_tau of
    tau_theta(y). schedule, T, parameterization: the diffusion. channels, channel_mult,
    num_res_blocks, heads, groups: the latent U-Net. sampler, sample_steps, eta, guidance:
    what ``sample`` does by default.
    """

    data_spec = DataSpec(kinds=("continuous",), ndims=(3,), image_range=(-1.0, 1.0))
    default_train = dict(steps=3000, batch_size=64, lr=1e-3, ema=0.995, warmup=100)
    eval_samples = 1000

    def __init__(self, data_shape, *, seed=0, num_classes=None, autoencoder=None,
                 class_cond: bool = True, p_uncond: float = 0.1, context_tokens: int = 4,
                 context_dim: int = 32, schedule: str = "linear", T: int = 1000,
                 parameterization: str = "eps", channels: int = 32, channel_mult=None,
                 num_res_blocks: int = 2, heads: int = 1, groups: int = 8,
                 sampler: str = "ddim", sample_steps: int | None = 50, eta: float = 0.0,
                 guidance: float = 0.0):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {', '.join(PARAMETERIZATIONS)}, "
                             f"got {parameterization!r}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if not 0.0 <= float(p_uncond) < 1.0:
            raise ValueError(f"p_uncond must be in [0, 1), got {p_uncond}")
        first = load_autoencoder(autoencoder, data_shape)
        for p in first.parameters():
            p.requires_grad = False
        self.first_stage = first
        self.data_shape = tuple(first.data_shape)
        self.latent_shape = tuple(int(s) for s in first.latent_shape)    # (c, h, w)
        c, h, w = self.latent_shape
        if h != w:
            raise ValueError(f"ldm's U-Net takes a square latent grid; got {self.latent_shape}")
        # s of z_0 = s E(x); 0 until measured on the first training batch (measure_scale)
        self.register_buffer("scale_factor", xp.zeros((), dtype=xp.float32))
        self.schedule = make_schedule(schedule, int(T))
        self.T, self.parameterization = int(T), parameterization
        self.num_classes = int(num_classes) if (num_classes and class_cond) else None
        self.p_uncond = float(p_uncond)
        self.sampler, self.sample_steps = sampler, sample_steps
        self.eta, self.guidance = float(eta), float(guidance)
        g = init.get_rng(int(seed))
        cond = self.num_classes is not None
        self.tau = (ClassTokens(self.num_classes, context_tokens, context_dim, rng=g) if cond
                    else None)                                            # tau_theta
        self.net = UNet(c, c, h, channels, channel_mult, num_res_blocks, None, heads, groups, 0.0,
                        None, rng=g, context_dim=int(context_dim) if cond else None)
        self.last_stats = {}

    def extra_repr(self):
        return (f"data_shape={self.data_shape}, latent_shape={self.latent_shape}, T={self.T}, "
                f"num_classes={self.num_classes}")

    def train(self, mode: bool = True):
        """Train or evaluate the diffusion; the frozen first stage always stays in eval mode."""
        super().train(mode)
        self.first_stage.eval()
        return self

    # ------------------------------------------------------------------------- the latent
    def encode(self, x, rng):
        """x (B, C, H, W) -> the unscaled latent E(x) (B, c, h, w), no gradient."""
        with no_grad():
            return self.first_stage.encode_latent(as_tensor(x), rng).data

    def measure_scale(self, x, rng):
        """Set s = 1 / std(E(x)) over every element of a batch's latents; returns s."""
        z = self.encode(x, rng)
        self.scale_factor = (1.0 / z.std()).astype(xp.float32)
        return float(self.scale_factor)

    def decode(self, z0):
        """Scaled latents z_0 (B, c, h, w) -> images D(z_0 / s) (B, C, H, W), no gradient."""
        with no_grad():
            return self.first_stage.decode_latent(Tensor(xp.asarray(z0) / self.scale_factor)).data

    def context(self, y):
        """tau_theta(y) (B, M, d_tau) for labels y (B,) (num_classes: the null label)."""
        return None if self.tau is None else self.tau(y)

    # ------------------------------------------------------------------------- training
    def loss(self, batch, rng):
        """L_simple (19) on z_0 = s E(x), at one t ~ U{1..T} per example."""
        if float(self.scale_factor) == 0.0:
            if not self.training:
                raise ValueError("ldm's latent scale is measured on the first training batch; "
                                 "this model has not been trained")
            self.measure_scale(batch.x, rng)
        z0 = Tensor(self.encode(batch.x, rng) * self.scale_factor)       # (B, c, h, w)
        b = z0.shape[0]
        t = rng.integers(1, self.T + 1, size=b)                           # t ~ U{1, ..., T}
        eps = Tensor(rng.standard_normal(z0.shape, dtype=z0.dtype))       # eps ~ N(0, I)
        zt = q_sample(self.schedule, z0, t, eps)                          # z_t by eq. (3)
        context = None
        if self.num_classes is not None:
            if batch.y is None:
                raise ValueError("ldm with class_cond needs labels; use --set class_cond=false")
            y = xp.asarray(batch.y).astype(xp.int64).reshape(-1)
            context = self.context(G.drop_labels(y, self.p_uncond, self.num_classes, rng))
        out = self.net(zt, self.schedule.net_t[t], context=context)
        target = regression_target(self.schedule, z0, t, eps, self.parameterization)
        return l_simple(target, out)                                      # (19)

    # ------------------------------------------------------------------------- sampling
    def _labels(self, cond, n):
        y = xp.asarray(cond.data if isinstance(cond, Tensor) else cond).astype(xp.int64).reshape(-1)
        if y.shape[0] == 1 and n > 1:
            y = xp.full((n,), int(y[0]), dtype=xp.int64)
        if y.shape[0] != n:
            raise ValueError(f"{y.shape[0]} labels for {n} samples")
        return y

    def predictor(self, sch, n, cond=None, guidance=None):
        """predict(z_t, t) -> Prediction on the latent, with classifier-free guidance (26)
        when the model is conditional, cond is given and the weight w != 0."""
        if cond is not None and self.num_classes is None:
            raise ValueError("this ldm is unconditional (class_cond needs labelled data): "
                             "sample it without cond")
        w = self.guidance if guidance is None else float(guidance)
        null = None if self.num_classes is None else xp.full((n,), self.num_classes, dtype=xp.int64)
        y = null if cond is None else self._labels(cond, n)
        cfg = cond is not None and w != 0.0
        ctx = None if y is None else self.context(xp.concatenate([y, null]) if cfg else y)

        def predict(z, t):
            t_net = xp.full((2 * n if cfg else n,), int(sch.net_t[t]), dtype=xp.int64)
            zz = xp.concatenate([z, z]) if cfg else z
            out = self.net(Tensor(zz), t_net, context=ctx).data
            if not cfg:
                return interpret(out, z, t, sch, self.parameterization, "beta_tilde")
            p_c = interpret(out[:n], z, t, sch, self.parameterization, "beta_tilde")
            p_u = interpret(out[n:], z, t, sch, self.parameterization, "beta_tilde")
            eps = G.cfg_eps(p_c.eps, p_u.eps, w)                          # CFG, eq. (26)
            return p_c._replace(eps=eps, x0=x0_from_eps(sch, z, t, eps))  # eq. (11)
        return predict

    def sample_latent(self, n, cond=None, *, rng, steps=None, sampler=None, eta=None,
                      guidance=None):
        """n scaled latents z_0 (n, c, h, w) by the reverse chain (no thresholding: latents
        are not confined to [-1, 1])."""
        if float(self.scale_factor) == 0.0:
            raise ValueError("ldm has not been trained: its latent scale is measured on the "
                             "first training batch")
        steps = self.sample_steps if steps is None else steps
        sch = self.schedule.strided(steps) if steps else self.schedule
        predict = self.predictor(sch, int(n), cond, guidance)
        with no_grad():
            return sample_loop(predict, sch, (int(n),) + self.latent_shape, default_rng(rng),
                               sampler=sampler or self.sampler,
                               eta=self.eta if eta is None else float(eta), dtype=xp.float32)

    def sample(self, n, cond=None, *, rng, steps=None, sampler=None, eta=None, guidance=None):
        """n images (n, C, H, W) in [-1, 1]: latents by ``sample_latent``, decoded by D(z / s).
        cond: labels (n,) or one label; None samples unconditionally (the null label)."""
        z0 = self.sample_latent(n, cond, rng=rng, steps=steps, sampler=sampler, eta=eta,
                                guidance=guidance)
        return xp.clip(self.decode(z0), -1.0, 1.0)
