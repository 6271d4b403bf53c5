"""Cascaded diffusion: a super-resolution DDPM p_theta(x | z) conditioned on a low-resolution
image z, with Gaussian noise conditioning augmentation (Ho et al. 2021, "Cascaded Diffusion
Models for High Fidelity Image Generation"; Saharia et al. 2022, Imagen).

    z = down(x)                     the low-resolution image (factor x factor average pooling)
    training:  s ~ U{0, ..., aug_max},  z_s = sqrt(alpha_bar_s) z + sqrt(1 - alpha_bar_s) eps'
                                    z corrupted by the forward process q(z_s | z), eq. (3)
               t ~ U{1..T},  x_t = sqrt(alpha_bar_t) x + sqrt(1 - alpha_bar_t) eps      (3)
               loss = || eps - eps_theta([x_t, up(z_s)], t, s) ||^2                     (19)
    inference: s = aug_level (0 by default: no augmentation; alpha_bar_0 = 1, z_0 = z)

up is nearest-neighbour upsampling back to x's size; [., .] concatenates channels; the level
s reaches the U-Net as a second time embedding (UNet(aug_embed=True)). The two ways to feed
a base model's samples to the super-resolution model (sample_cascade):

    non-truncated  run the base chain down to z_0, then corrupt it: z_s ~ q(z_s | z_0)
    truncated      stop the base chain at step s and pass its z_s on as it is

both with the super-resolution model told the level s. The augmentation uses the model's own
schedule (a truncated cascade needs the base model to share it).
"""
from __future__ import annotations

import refgen.functional as F
from refgen.autograd import Tensor, as_tensor, no_grad
from refgen.backend import default_rng, xp
from refgen.models import register
from refgen.models.diffusion.config import NetworkConfig, ProcessConfig, SamplingConfig
from refgen.models.diffusion.ddpm import DDPM
from refgen.models.diffusion.losses import vlb
from refgen.models.diffusion.process import interpret, q_sample
from refgen.models.diffusion.sampling import sample_loop

__all__ = ["CascadeSR", "LowResConditioned", "downsample", "upsample", "noise_augment",
           "sample_cascade"]


def downsample(x, factor: int):
    """(B, C, H, W) -> (B, C, H / factor, W / factor), factor x factor averages (an xp array;
    mnist-14 is this of mnist)."""
    return F.avg_pool2d(as_tensor(x), int(factor)).data


def upsample(z, factor: int):
    """(B, C, h, w) -> (B, C, factor h, factor w), nearest neighbour (an xp array)."""
    return F.interpolate(as_tensor(z), scale_factor=int(factor)).data


def noise_augment(sch, z, s, eps):
    """z_s ~ q(z_s | z) at levels s (B,) ints in 0..T with the noise eps: eq. (3) applied to the
    conditioning; s = 0 returns z itself (alpha_bar_0 = 1)."""
    return q_sample(sch, z, s, eps)                                       # (3)


class LowResConditioned:
    """What every super-resolution stage shares (cascade-sr, glide-upsampler): the image shape
    check, factor, aug_max and the low-resolution shape, the condition the evaluation samples
    with, and the low-resolution images read and augmented. ``check_shape`` before the model's
    own __init__, ``_init_low_res`` after it (it reads self.T)."""

    @classmethod
    def check_shape(cls, data_shape, factor):
        shape = tuple(int(d) for d in data_shape)
        if len(shape) != 3 or shape[-1] % int(factor) or shape[-2] % int(factor):
            raise ValueError(f"{cls.registry_name} takes images (C, H, W) with H and W divisible "
                             f"by factor={factor}; got {shape}")
        return shape

    def _init_low_res(self, factor, aug_max):
        self.factor = int(factor)
        self.aug_max = self.T // 4 if aug_max is None else int(aug_max)
        if not 0 <= self.aug_max <= self.T:
            raise ValueError(f"aug_max must be in 0..T={self.T}, got {aug_max}")
        c, h, w = self.data_shape
        self.low_shape = (c, h // self.factor, w // self.factor)

    def eval_cond(self, x):
        """The conditioning the evaluation samples with: the test images' low-res versions."""
        return downsample(xp.asarray(x), self.factor)

    def _low(self, cond, n: int):
        """cond, checked to be n low-resolution images, as an xp array of the model's dtype."""
        z = xp.asarray(cond.data if isinstance(cond, Tensor) else cond)
        if z.shape != (n,) + self.low_shape:
            raise ValueError(f"{self.registry_name} needs cond = the low-resolution images, shape "
                             f"({n}, {', '.join(map(str, self.low_shape))}); got {tuple(z.shape)}")
        return z.astype(self.dtype)

    def _check_level(self, aug_level):
        if not 0 <= int(aug_level) <= self.T:
            raise ValueError(f"aug_level must be in 0..T={self.T}, got {aug_level}")

    def _augmented(self, z, s, rng):
        """z_s ~ q(z_s | z) at the levels s (B,), the noise drawn from rng: eq. (3)."""
        return noise_augment(self.schedule, z, s, rng.standard_normal(z.shape, dtype=z.dtype))


@register("cascade-sr")
class CascadeSR(LowResConditioned, DDPM):
    """The super-resolution stage of a cascade: a DDPM on (C, H, W) images conditioned on their
    (C, H / factor, W / factor) low-resolution version. Takes every ddpm option (arch, T,
    schedule, ...) except class conditioning, plus factor and aug_max (the largest
    augmentation level, default T // 4; 0 trains without augmentation). sample(n, cond=z_low, rng=...)."""

    data_spec = DDPM.data_spec
    default_train = DDPM.default_train
    demo = False

    def __init__(self, data_shape, *, seed=0, factor: int = 2, aug_max: int | None = None,
                 process: ProcessConfig = ProcessConfig(), network: NetworkConfig = NetworkConfig(),
                 sampling: SamplingConfig = SamplingConfig(), **options):
        shape = self.check_shape(data_shape, factor)
        options["class_cond"] = False
        super().__init__(shape, seed=seed, process=process, network=network, sampling=sampling,
                         **options)
        self._init_low_res(factor, aug_max)

    def _unet(self, c_in, c_out, net, rng, **extra):
        # input: [x_t, up(z_s)] on the channel axis; the level s as a second embedding
        return super()._unet(2 * c_in, c_out, net, rng, aug_embed=True, **extra)

    def _sr_net(self, xt, t_net, z_up, s, rng=None):
        """eps_theta([x_t, up(z_s)], t, s): (B, C, H, W) x 2 -> (B, C_out, H, W)."""
        return self.net(F.cat([as_tensor(xt), as_tensor(z_up)], dim=1), t_net, None, rng=rng, aug=s)

    # ------------------------------------------------------------------------- training
    def loss(self, batch, rng):
        """L_simple (19) (or L_hybrid) of p_theta(x | z_s), z_s the augmented low-res image;
        rng: the backend generator of s, t and the noise."""
        x0 = as_tensor(batch.x)
        b, sch = x0.shape[0], self.schedule
        z = downsample(x0.data, self.factor)                              # (B, C, h, w)
        s = rng.integers(0, self.aug_max + 1, size=b)                     # s ~ U{0, ..., aug_max}
        z_s = self._augmented(z, s, rng)                                  # (3)
        t = rng.integers(1, self.T + 1, size=b)                           # t ~ U{1, ..., T}
        eps = Tensor(rng.standard_normal(x0.shape, dtype=x0.dtype))       # eps ~ N(0, I)
        xt = q_sample(sch, x0, t, eps)                                    # (3)
        out = self._sr_net(xt, sch.net_t[t], upsample(z_s, self.factor), s, rng)
        return self._objective(x0, t, eps, out)                           # (19)

    # ------------------------------------------------------------------------- sampling
    def sample(self, n, cond=None, *, rng, steps=None, sampler=None, eta=None,
               threshold=None, aug_level: int = 0, corrupt: bool = True, x_T=None):
        """n high-resolution samples (n, C, H, W) given cond = the low-res images (n, C, h, w).
        aug_level s: corrupt cond to z_s ~ q(z_s | z) and tell the network s (0: as it is);
        corrupt=False: cond already is a z_s at level s (a truncated base chain's output)."""
        if cond is None:
            raise ValueError("cascade-sr samples a high-resolution image for each low-resolution "
                             "one: pass cond (n, C, h, w) (sample_cascade draws them from a base ddpm)")
        self._check_level(aug_level)
        z = self._low(cond, n)
        s = xp.full((n,), int(aug_level), dtype=xp.int64)
        if aug_level > 0 and corrupt:
            z = self._augmented(z, s, rng)                                # (3)
        z_up = upsample(z, self.factor)                                   # (n, C, H, W)
        sch = self.schedule.strided(self.sample_steps if steps is None else steps)

        def predict(x, t):
            t_net = xp.full((n,), int(sch.net_t[t]), dtype=xp.int64)
            out = self._sr_net(Tensor(x), t_net, z_up, s).data
            return interpret(out, x, t, sch, self.parameterization, self.variance)

        with no_grad():
            return sample_loop(predict, sch, (n,) + self.data_shape, rng,
                               sampler=sampler or self.sampler,
                               eta=self.eta if eta is None else float(eta),
                               threshold=self.threshold if threshold is None else threshold,
                               x_T=x_T, dtype=self.dtype)

    # ------------------------------------------------------------------------- likelihood
    def vlb_terms(self, x, *, rng, timesteps="default", cond=None):
        """L_VLB of -log p_theta(x | down(x)) in nats per example (cond: other low-res images)."""
        x0 = as_tensor(x)
        n = x0.shape[0]
        z_up = upsample(downsample(x0.data, self.factor) if cond is None else self._low(cond, n),
                        self.factor)
        s = xp.zeros((n,), dtype=xp.int64)

        def predict(xt, t):
            out = self._sr_net(xt, self.schedule.net_t[t], z_up, s)
            return interpret(out, xt, t, self.schedule, self.parameterization, self.variance)

        k = self.vlb_timesteps if timesteps == "default" else timesteps
        return vlb(predict, self.schedule, x0, rng, self.discrete, k)

    def score(self, x, t):
        raise ValueError("cascade-sr's score depends on the low-resolution image; it has none")

    def predictor(self, *args, **kwargs):
        raise ValueError("cascade-sr samples through its own sample(n, cond=low-res images)")


def sample_cascade(base, sr, n, *, rng, cond=None, steps=None, sr_steps=None, aug_level: int = 0,
                   truncated: bool = False):
    """n high-resolution samples of the cascade base ddpm -> sr (a CascadeSR), and the base's
    low-res samples: returns (x (n, C, H, W), z (n, C, h, w)).

    cond: labels for a class-conditional base. aug_level s: non-truncated, the base runs to
    z_0 and sr corrupts it to z_s ~ q(z_s | z_0); truncated, the base chain stops at step s
    (the nearest kept step at or below s on a strided schedule of ``steps``) and its z_s goes
    to sr as it is, with that level. steps / sr_steps: strided schedules of each chain."""
    rng = default_rng(rng)  # a seed or a backend generator
    if not truncated or aug_level == 0:
        z = base.sample(n, cond, rng=rng, steps=steps)
        return sr.sample(n, cond=z, rng=rng, steps=sr_steps, aug_level=aug_level), z
    if base.T != sr.T or not bool(xp.allclose(base.schedule.alpha_bar, sr.schedule.alpha_bar)):
        raise ValueError("a truncated cascade needs the base ddpm and cascade-sr to share a "
                         "schedule (the same schedule and T)")
    sch = base.schedule.strided(base.sample_steps if steps is None else steps)
    k = int((sch.net_t <= int(aug_level)).sum()) - 1                  # the last kept step <= s
    level = int(sch.net_t[k])
    with no_grad():
        z_s = sample_loop(base.predictor(sch, n, cond), sch, (n,) + base.data_shape, rng,
                          sampler=base.sampler, eta=base.eta, threshold=base.threshold,
                          dtype=base.dtype, stop=k)                    # the base chain from T to s
    return sr.sample(n, cond=z_s, rng=rng, steps=sr_steps, aug_level=level, corrupt=False), z_s
