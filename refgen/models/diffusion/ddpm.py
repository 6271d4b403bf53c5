"""The registered diffusion model: DDPM and its improvements in one class, ``ddpm``.

    training   t ~ U{1..T}, eps ~ N(0, I), x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps  (3)
               loss = L_simple (19), or L_hybrid with a learned variance (23)
    sampling   ancestral (17) or DDIM (27)-(29), on the full or a strided schedule,
               or the probability-flow ODE in sigma-time (sampler='euler'|'heun', ode.py),
               optionally thresholded, guided by a classifier (25) or classifier-free (26)
    likelihood elbo(x) = -L_VLB (13)-(16), exact in t or stratified

The network is an MLP for vectors (2D toys) and a U-Net for images, chosen from data_shape.
Options (``--set key=value``, or ``DDPM(shape, key=value)``), in three groups
(refgen.models.diffusion.config: ProcessConfig, NetworkConfig, SamplingConfig; None = not set):

    schedule linear|cosine, T          the noise schedule (22)
    parameterization eps|x0|v          what the network predicts
    learn_sigma                        learn Sigma_theta by eq. (23) with L_hybrid (lambda hybrid_lambda)
    variance beta|beta_tilde           the fixed sigma_t^2 when the variance is not learned
    class_cond, p_uncond               with labels: a class-conditional model whose label is
                                       dropped with probability p_uncond (classifier-free guidance)
    sampler ddpm|ddim, sample_steps, eta, guidance, threshold none|static|dynamic
                                       how ``sample`` runs by default (each can be passed to it;
                                       threshold not set: static for images, none for vectors)
    data_scale                         the model sees x / data_scale (the density is mapped back)
    hidden, depth                      MLP width and number of residual blocks
    channels, channel_mult, num_res_blocks, attn_res, heads, dropout, groups   U-Net
    arch ddpm|adm|imagen               U-Net variants (config.ARCHS); each of their switches
                                       (head_channels, scale_shift, resblock_updown,
                                       rescale_residual, rescale_skip, resample_first) can be
                                       set on its own
    vlb_timesteps                      strata of t per example for elbo (100; None: every t,
                                       exact in t, T network passes per example)
"""
from __future__ import annotations

import math

from refgen.autograd import Tensor, as_tensor, no_grad
from refgen.backend import xp
from refgen.models import register
from refgen.models.base import DataSpec
from refgen.models.diffusion import guidance as G
from refgen.models.diffusion.config import (NetworkConfig, ProcessConfig, SamplingConfig,
                                            make_unet, split_options)
from refgen.models.diffusion.losses import hybrid_loss, l_simple, regression_target, vlb
from refgen.nn import MLPDenoiser
from refgen.models.diffusion.ode import METHODS as ODE_METHODS
from refgen.models.diffusion.ode import ode_sample
from refgen.models.diffusion.process import (PARAMETERIZATIONS, interpret, q_sample,
                                             score_from_eps, x0_from_eps)
from refgen.models.diffusion.sampling import SAMPLERS, sample_loop
from refgen.models.diffusion.schedule import make_schedule
from refgen.nn import Module, init

__all__ = ["DDPM"]


def _threshold(kind):
    """A threshold option for sample_loop: 'none' -> None; 'static' and 'dynamic' as they are."""
    if kind not in ("none", "static", "dynamic"):
        raise ValueError(f"threshold must be none, static or dynamic (or not set: static for "
                         f"images, none for vectors), got {kind!r}")
    return None if kind == "none" else kind


def _as_labels(y, n):
    """(n,) int64 labels from an integer array (n,), or a single label repeated n times."""
    y = xp.asarray(y).astype(xp.int64).reshape(-1)
    if y.shape[0] == 1 and n > 1:
        y = xp.full((n,), int(y[0]), dtype=xp.int64)
    if y.shape[0] != n:
        raise ValueError(f"{y.shape[0]} labels for {n} samples")
    return y


@register("ddpm")
class DDPM(Module):
    """Denoising diffusion on vectors or images (see the module docstring for the options)."""

    data_spec = DataSpec(kinds=("continuous",), ndims=(1, 3), image_range=(-1.0, 1.0))
    default_train = dict(steps=3000, batch_size=256, lr=2e-3, ema=0.995, warmup=100)
    demo = True

    def __init__(self, data_shape, *, seed=0, num_classes=None,
                 process: ProcessConfig = ProcessConfig(), network: NetworkConfig = NetworkConfig(),
                 sampling: SamplingConfig = SamplingConfig(), **options):
        """process, network, sampling: the option groups (refgen.models.diffusion.config);
        ``options``: any of their fields by name (T=100, channels=16, ...), which override
        the groups' values. The chosen groups are kept as attributes of the same names."""
        super().__init__()
        groups = split_options(dict(process=process, network=network, sampling=sampling), options)
        pr, net, sa = groups["process"], groups["network"], groups["sampling"]
        self.process, self.network, self.sampling = pr, net, sa
        self.data_shape = tuple(int(d) for d in data_shape)
        if len(self.data_shape) not in (1, 3):
            raise ValueError(f"ddpm models vectors (D,) or images (C, H, W); got {self.data_shape}")
        if pr.parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {', '.join(PARAMETERIZATIONS)}, "
                             f"got {pr.parameterization!r}")
        if pr.variance not in ("beta", "beta_tilde"):
            raise ValueError(f"variance must be 'beta' or 'beta_tilde' (or learn_sigma=true), "
                             f"got {pr.variance!r}")
        if sa.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sa.sampler!r}")
        if not 0.0 <= pr.p_uncond < 1.0:
            raise ValueError(f"p_uncond must be in [0, 1), got {pr.p_uncond}")
        self.schedule = make_schedule(pr.schedule, pr.T)
        self.T = int(pr.T)
        self.parameterization = pr.parameterization
        self.learn_sigma = bool(pr.learn_sigma)
        self.variance = "learned" if self.learn_sigma else pr.variance
        self.hybrid_lambda = float(pr.hybrid_lambda)
        self.num_classes = int(num_classes) if (num_classes and pr.class_cond) else None
        self.p_uncond = float(pr.p_uncond)
        self.sampler, self.sample_steps, self.eta = sa.sampler, sa.sample_steps, float(sa.eta)
        self.image = len(self.data_shape) == 3
        self.guidance = float(sa.guidance)
        # threshold not set: images live in [-1, 1], so keep the predicted x_0 there
        self.threshold = _threshold(("static" if self.image else "none") if sa.threshold is None
                                    else sa.threshold)
        self.data_scale = float(pr.data_scale)
        self.vlb_timesteps = pr.vlb_timesteps
        # L_0: the 8-bit image decoder (eq. (16)) for images, a Gaussian density for vectors
        self.discrete = self.image
        if self.discrete and self.data_scale != 1.0:
            raise ValueError("images are modelled in [-1, 1] (data_scale=1): the discretized "
                             "decoder's 256 bins live there")
        c = self.data_shape[0]
        out = 2 * c if self.learn_sigma else c                            # mean, and var_frac (eq. (23)'s v)
        g = init.get_rng(int(seed))
        if self.image:
            self.net = self._unet(c, out, net, g)
        else:
            self.net = MLPDenoiser(c, out, net.hidden, net.depth, self.num_classes, rng=g)
        self.dtype = xp.float32
        self.last_stats = {}  # the parts of the last loss, logged by the training loop
        # evaluation defaults read by refgen.metrics.evaluate: a thousand-step sampler on a CPU
        self.eval_samples = 1000 if self.image else 2000

    def _unet(self, c_in, c_out, net, rng, **extra):
        """The U-Net of the network options (arch ddpm|adm|imagen, config.unet_options)."""
        return make_unet(net, c_in, c_out, self.data_shape[-1], self.num_classes, rng, **extra)

    def extra_repr(self):
        return (f"data_shape={self.data_shape}, T={self.T}, parameterization={self.parameterization}, "
                f"variance={self.variance}, num_classes={self.num_classes}")

    # ------------------------------------------------------------------------- the network
    def _labels(self, y, n):
        """Labels for the network: y, or the null label (unconditional) when y is None."""
        if self.num_classes is None:
            return None
        if y is None:
            return xp.full((n,), self.num_classes, dtype=xp.int64)
        return _as_labels(y, n)

    def _net(self, xt, t_net, y, rng=None):
        """The network's output; ``rng`` drives its dropout (training only)."""
        return self.net(xt, t_net, y, rng=rng)

    # ------------------------------------------------------------------------- training
    def loss(self, batch, rng):
        """L_simple (19), or L_hybrid (with learn_sigma), at one t ~ U{1..T} per example."""
        x0 = as_tensor(batch.x) * (1.0 / self.data_scale)
        b = x0.shape[0]
        sch = self.schedule
        t = rng.integers(1, self.T + 1, size=b)                          # t ~ U{1, ..., T}
        eps = Tensor(rng.standard_normal(x0.shape, dtype=x0.dtype))       # eps ~ N(0, I)
        xt = q_sample(sch, x0, t, eps)                                    # (3)
        y = None
        if self.num_classes is not None:
            if batch.y is None:
                raise ValueError("ddpm with class_cond needs labels; use --set class_cond=false")
            y = G.drop_labels(self._labels(batch.y, b), self.p_uncond, self.num_classes, rng)
        return self._objective(x0, t, eps, self._net(xt, sch.net_t[t], y, rng))  # (19)

    def _objective(self, x0, t, eps, out):
        """L_simple (19), or L_hybrid with learn_sigma, of the network output ``out`` at
        x_t = q_sample(x0, t, eps)."""
        if self.learn_sigma:
            loss, simple, l_vlb = hybrid_loss(self.schedule, x0, t, eps, out, self.parameterization,
                                              self.discrete, self.hybrid_lambda)
            self.last_stats = {"l_simple": float(simple.item()), "l_vlb": float(l_vlb.item())}
            return loss
        return l_simple(regression_target(self.schedule, x0, t, eps, self.parameterization), out)  # (19)

    # ------------------------------------------------------------------------- prediction
    def predictor(self, sch, n, cond=None, guidance=None, classifier=None,
                  classifier_scale: float = 1.0, unconditional: bool = False, variance=None):
        """predict(x_t, t) -> Prediction at step t of schedule ``sch``, for n samples, with
        classifier-free guidance (26) when the model is conditional, ``cond`` is given and
        the guidance w != 0, and classifier guidance (25) when ``classifier(x, t) -> logits``
        is given (with cond the target labels). unconditional: the network sees the null
        label even though cond is given (classifier guidance of the unconditional model).
        variance: the fixed sigma^2 of eq. (17) ('beta' or 'beta_tilde') to sample a
        fixed-variance model with, instead of the one it was built with."""
        w = self.guidance if guidance is None else float(guidance)
        var = self.variance if variance is None else variance
        if var != self.variance and (self.variance == "learned" or var not in ("beta", "beta_tilde")):
            raise ValueError(f"variance={variance!r}: a fixed-variance model samples with 'beta' or "
                             f"'beta_tilde'; this one has variance={self.variance}")
        if unconditional and classifier is None:
            raise ValueError("unconditional=True keeps cond for the classifier only: pass one")
        y = self._labels(None if unconditional else cond, n)
        cfg = self.num_classes is not None and cond is not None and w != 0.0 and not unconditional
        if classifier is not None and cond is None:
            raise ValueError("classifier guidance needs the target labels: pass cond")
        if cond is not None and classifier is None and self.num_classes is None:
            raise ValueError("this ddpm is unconditional: cond needs class_cond with labelled "
                             "data, or a classifier for classifier guidance")
        y_target = None if cond is None else _as_labels(cond, n)

        def predict(x, t):
            t_net = xp.full((n,), int(sch.net_t[t]), dtype=xp.int64)
            if cfg:  # conditional and unconditional in one batch: (2n, ...)
                null = xp.full((n,), self.num_classes, dtype=xp.int64)
                both = self._net(Tensor(xp.concatenate([x, x])), xp.concatenate([t_net, t_net]),
                                 xp.concatenate([y, null])).data
                p_c = interpret(both[:n], x, t, sch, self.parameterization, var)
                p_u = interpret(both[n:], x, t, sch, self.parameterization, var)
                eps = G.cfg_eps(p_c.eps, p_u.eps, w)                      # (26)
                pred = p_c._replace(eps=eps, x0=x0_from_eps(sch, x, t, eps))  # (11)
            else:
                out = self._net(Tensor(x), t_net, y).data
                pred = interpret(out, x, t, sch, self.parameterization, var)
            if classifier is not None:
                g = G.log_prob_grad(lambda xx: classifier(xx, t_net), x, y_target)
                eps = G.classifier_guided_eps(sch, x, t, pred.eps, g, classifier_scale)  # (25)
                pred = pred._replace(eps=eps, x0=x0_from_eps(sch, x, t, eps))  # (11)
            return pred
        return predict

    # ------------------------------------------------------------------------- sampling
    def sample(self, n, cond=None, *, rng, steps=None, sampler=None, eta=None,
               guidance=None, threshold=None, classifier=None, classifier_scale: float = 1.0,
               unconditional: bool = False, variance=None, x_T=None):
        """n samples in data space, (n, *data_shape) xp array.

        cond: labels (n,) (or one label) for a conditional model or for classifier guidance;
        None samples unconditionally (the null label). unconditional: with a classifier, give
        the network the null label and leave cond to the classifier alone. variance: sample a
        fixed-variance model with the other fixed sigma^2 ('beta' or 'beta_tilde'). steps: a strided
        schedule of that many steps (default: the model's sample_steps, else all T). threshold:
        'none', 'static' or 'dynamic'. Other arguments default to the model's options of the
        same name; None (not set) means that default. rng: the backend generator of the noise."""
        if sampler in ODE_METHODS:  # the probability-flow ODE in sigma-time (ode.py)
            with no_grad():
                return ode_sample(self, n, rng, steps=steps or 18, method=sampler, cond=cond,
                                  x_T=x_T, dtype=self.dtype)
        steps = self.sample_steps if steps is None else steps
        sch = self.schedule.strided(steps)
        predict = self.predictor(sch, n, cond, guidance, classifier, classifier_scale,
                                 unconditional, variance)
        with no_grad():
            x = sample_loop(predict, sch, (n,) + self.data_shape, rng,
                            sampler=sampler or self.sampler,
                            eta=self.eta if eta is None else float(eta),
                            threshold=self.threshold if threshold is None else _threshold(threshold),
                            x_T=x_T, dtype=self.dtype)
        return x * self.data_scale

    # ------------------------------------------------------------------------- likelihood
    def vlb_terms(self, x, *, rng, timesteps="default", cond=None):
        """L_VLB of each example of x in nats (data space) and its parts, the time steps and
        noise drawn from ``rng``; see losses.vlb."""
        x = as_tensor(x)
        n = x.shape[0]
        x0 = x * (1.0 / self.data_scale)
        y = self._labels(cond, n)

        def predict(xt, t):
            out = self._net(xt, self.schedule.net_t[t], y)
            return interpret(out, xt, t, self.schedule, self.parameterization, self.variance)

        k = self.vlb_timesteps if timesteps == "default" else timesteps
        parts = vlb(predict, self.schedule, x0, rng, self.discrete, k)
        # p(x) = p_z(x / s) / s^D: the bound moves by D log s in data space
        parts["vlb"] = parts["vlb"] + math.prod(self.data_shape) * math.log(self.data_scale)
        return parts

    def elbo(self, x, *, rng):
        """-L_VLB per example (nats): a lower bound on log p_theta(x) (of the 8-bit pixels'
        probability for images, of the density for vectors)."""
        return -self.vlb_terms(x, rng=rng)["vlb"]

    def score(self, x, t):
        """s_theta(x, t) = -eps_theta(x, t) / sqrt(1 - alpha_bar_t), eq. (21), in data space;
        t: an int or (B,) ints in 1..T (unconditional for a conditional model)."""
        x = as_tensor(x)
        n = x.shape[0]
        t = xp.broadcast_to(xp.asarray(t, dtype=xp.int64), (n,))
        z = x * (1.0 / self.data_scale)
        out = self._net(z, t, self._labels(None, n))
        pred = interpret(out, z, t, self.schedule, self.parameterization, self.variance)
        return score_from_eps(self.schedule, z, t, pred.eps) * (1.0 / self.data_scale)  # (21)

