"""ControlNet (Zhang, Rao & Agrawala 2023, "Adding Conditional Control to Text-to-Image
Diffusion Models"): spatial control (an edge map, an outline) added to a frozen, trained
``ddpm`` U-Net by a trainable copy of its encoder joined to it through zero convolutions.

For a network block F(x; Theta) the paper keeps Theta frozen, clones the block into
F(.; Theta_c), feeds the clone the block's input plus the condition c through a zero
convolution Z(.; Theta_z1), and adds the clone's output back through another, Z(.; Theta_z2):

    y_c = F(x; Theta) + Z(F(x + Z(c; Theta_z1); Theta_c); Theta_z2)          (paper, eq. 2)

Here, as for Stable Diffusion in the paper, the block is the U-Net's encoder (the input
convolution, the down path and the middle) and its outputs are every skip connection and the
middle's output, which the frozen decoder reads:

    e              = embed(t)                                  frozen embedding (the copy has its own)
    h, s_1..s_K    = encode(x_t, e)                            F(x; Theta)
    c_f            = E(c)                                      control encoder: hint_layers x (conv3x3, SiLU)
    h^c, s^c_1..K  = encode_c(x_t, e_c, hint = Z_1(c_f))       F(x + Z(c; Theta_z1); Theta_c), the hint
                                                               added to the copy's conv_in output
    s_k <- s_k + Z_2,k(s^c_k),  h <- h + Z_2,mid(h^c)           y_c = F + Z(F_c)
    net(x_t, t, c) = decode(h, s_1..s_K, e)                    the frozen decoder

Every Z is a 1x1 convolution whose weight and bias start at zero, so at initialisation every
Z outputs exact zeros and ControlNet predicts what the base predicts, bit for bit. Gradients
at the first step: dL/dW_z2 = sum_pixels dL/dy (F_c features)^T, not zero; everything that
comes before a Z_2 gets dL/d(input) = W_z2^T dL/dy = 0, so the copy, Z_1 and E receive exact
zeros. After one update W_z2 != 0: the copy and Z_1 (whose input c_f is not zero) get
gradients at the second step, E (behind W_z1, still zero) at the third.

Training: L_simple (19) with the base's schedule and parameterization (L_hybrid when the base
learns its variance), on (control, image) pairs: ``batch.y`` is the control (B, C_c, H, W)
(refgen.data.controls: mnist-edges, mnist-fill, ...). Sampling: the base's sampler, with the
ControlNet's prediction; ``sample(n, cond=None)`` (no control) is the frozen base's own sample.

The base is loaded frozen (EMA weights) from its run directory (``--set base=runs/<ddpm
run>``) and kept outside this module's parameters: it is neither trained, averaged nor
checkpointed, so a ControlNet run's checkpoint holds only what ControlNet trains.
"""
from __future__ import annotations

from refgen.autograd import Tensor, as_tensor, no_grad
from refgen.backend import default_rng, xp
from refgen.models import register
from refgen.models.base import DataSpec
from refgen.models.diffusion.ddpm import _threshold
from refgen.models.diffusion.losses import hybrid_loss, l_simple, regression_target
from refgen.models.diffusion.process import interpret, q_sample
from refgen.models.diffusion.sampling import sample_loop
from refgen.models.diffusion.teacher import clone, load_teacher
from refgen.nn import Conv2d, Module, ModuleList, Sequential, SiLU, init

__all__ = ["ControlNet", "zero_conv"]


def zero_conv(cin: int, cout: int, rng=None):
    """Z: a 1x1 convolution with weight and bias zero."""
    return init.zero_module(Conv2d(cin, cout, 1, rng=rng))


@register("controlnet")
class ControlNet(Module):
    """A trainable copy of a frozen ddpm U-Net's encoder, fed a control image, joined to the
    base by zero convolutions (see the module docstring).

    base: the base's run directory (or a DDPM, copied); hint_layers, hint_channels: the control
    encoder E (hint_layers = 0: Z_1 reads the control image itself); control_channels: C_c of
    the control images (None: the data's channels)."""

    data_spec = DataSpec(kinds=("continuous",), ndims=(3,), image_range=(-1.0, 1.0))
    default_train = dict(steps=2000, batch_size=64, lr=1e-4, ema=None, warmup=0)
    data_note = ("trains on (control, image) pairs: mnist-edges, mnist-14-edges, mnist-fill, "
                 "mnist-14-fill; --set base=<ddpm run directory>")

    def __init__(self, data_shape, *, seed=0, base=None, hint_layers: int = 2,
                 hint_channels: int = 16, control_channels=None):
        super().__init__()
        if int(hint_layers) < 0 or int(hint_channels) < 1:
            raise ValueError(f"need hint_layers >= 0 and hint_channels >= 1, got "
                             f"hint_layers={hint_layers}, hint_channels={hint_channels}")
        model = load_teacher(base, data_shape, "controlnet", option="base")
        if not model.image:
            raise ValueError("controlnet adds spatial control to a U-Net: its base must be a "
                             "ddpm trained on images (C, H, W)")
        model.requires_grad_(False)
        object.__setattr__(self, "base", model)      # frozen Theta, outside the module tree
        net, g = model.net, init.get_rng(int(seed))
        self.data_shape = model.data_shape
        self.control_channels = int(control_channels or self.data_shape[0])

        copy = clone(model).net                                           # Theta_c <- Theta
        for part in ("up", "norm_out", "conv_out"):                      # the encoder alone
            delattr(copy, part)
        self.copy = copy.requires_grad_(True)

        layers, c = [], self.control_channels
        for _ in range(int(hint_layers)):                                 # E: (B, C_c, H, W) -> (B, hint_channels, H, W)
            layers += [Conv2d(c, int(hint_channels), 3, padding=1, rng=g), SiLU()]
            c = int(hint_channels)
        self.hint = Sequential(*layers)
        self.zero_in = zero_conv(c, net.skip_channels[0], g)              # Z(.; Theta_z1) -> (B, ch, H, W)
        self.zero_skips = ModuleList([zero_conv(k, k, g) for k in net.skip_channels])  # Z(.; Theta_z2)
        self.zero_mid = zero_conv(net.mid_channels, net.mid_channels, g)

    def extra_repr(self):
        return f"data_shape={self.data_shape}, control_channels={self.control_channels}"

    # ------------------------------------------------------------------------- the network
    def forward(self, xt, t_net, control, rng=None):
        """The base's network output at (x_t, t) under control (B, C_c, H, W): y_c of eq. 2
        at every skip and at the middle, read by the frozen decoder."""
        b = self.base
        y = b._labels(None, xt.shape[0])                                  # a class-conditional base: the null label
        e = b.net.embed(t_net, y)                                         # (B, 4 ch)
        h, skips = b.net.encode(xt, e)                                    # F(x; Theta)
        hint = self.zero_in(self.hint(Tensor(control)))                   # Z(c; Theta_z1)
        h_c, skips_c = self.copy.encode(xt, self.copy.embed(t_net, y), hint=hint, rng=rng)  # F(x + Z(c); Theta_c)
        skips = [s + z(s_c) for s, z, s_c in zip(skips, self.zero_skips, skips_c)]  # Zhang et al. 2023, eq. 2
        h = h + self.zero_mid(h_c)                                        # y_c = F + Z(F_c) at the middle
        return b.net.decode(h, skips, e)                                  # (B, C_out, H, W)

    def _control(self, cond, n: int):
        """cond as an (n, C_c, H, W) float array; one control (C_c, H, W) or (1, ...) is repeated."""
        c = xp.asarray(cond.data if isinstance(cond, Tensor) else cond)
        want = (self.control_channels,) + self.data_shape[1:]
        if c.ndim == 3:
            c = c[None]
        if c.ndim != 4 or tuple(c.shape[1:]) != want or c.shape[0] not in (1, n):
            raise ValueError(f"controlnet's condition is a control image per example, "
                             f"({n}, {', '.join(map(str, want))}); got shape {tuple(c.shape)} "
                             f"(train it on a control data set such as mnist-14-edges)")
        return xp.broadcast_to(c, (n,) + want).astype(self.base.dtype)

    # ------------------------------------------------------------------------- training
    def loss(self, batch, rng):
        """L_simple (19) of the controlled prediction, t ~ U{1..T}, eps ~ N(0, I) from ``rng``."""
        b = self.base
        x0 = as_tensor(batch.x)
        n = x0.shape[0]
        if batch.y is None:
            raise ValueError("controlnet trains on (control, image) pairs: batch.y must hold "
                             "the controls (use a control data set such as mnist-14-edges)")
        c = self._control(batch.y, n)
        t = rng.integers(1, b.T + 1, size=n)                              # t ~ U{1, ..., T}
        eps = Tensor(rng.standard_normal(x0.shape, dtype=x0.dtype))       # eps ~ N(0, I)
        xt = q_sample(b.schedule, x0, t, eps)                             # (3)
        out = self(xt, b.schedule.net_t[t], c, rng=rng)
        if b.learn_sigma:
            return hybrid_loss(b.schedule, x0, t, eps, out, b.parameterization, b.discrete,
                               b.hybrid_lambda)[0]
        return l_simple(regression_target(b.schedule, x0, t, eps, b.parameterization), out)  # (19)

    # ------------------------------------------------------------------------- sampling
    def sample(self, n, cond=None, *, rng, steps=None, sampler=None, eta=None, threshold=None,
               x_T=None):
        """n images (n, C, H, W) for controls cond (n, C_c, H, W) (or one, repeated), by the
        base's sampler and its options (steps, sampler, eta, threshold override them).
        cond None: the frozen base's unconditional sample."""
        b = self.base
        if cond is None:
            return b.sample(n, rng=rng, steps=steps, sampler=sampler, eta=eta,
                            threshold=threshold, x_T=x_T)
        c = self._control(cond, n)
        sch = b.schedule.strided(b.sample_steps if steps is None else steps)

        def predict(x, t):
            t_net = xp.full((n,), int(sch.net_t[t]), dtype=xp.int64)
            return interpret(self(Tensor(x), t_net, c).data, x, t, sch, b.parameterization,
                             b.variance)
        with no_grad():
            return sample_loop(predict, sch, (n,) + self.data_shape, default_rng(rng),
                               sampler=sampler or b.sampler,
                               eta=b.eta if eta is None else float(eta),
                               threshold=b.threshold if threshold is None else _threshold(threshold),
                               x_T=x_T, dtype=b.dtype)
