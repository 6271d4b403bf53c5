"""NCSN: a noise-conditional score network on a geometric noise ladder, trained by denoising
score matching, sampled by annealed Langevin dynamics (Song & Ermon 2019), with the choices
of "Improved Techniques for Training Score-Based Generative Models" (Song & Ermon 2020):

    technique 1   sigma_1 = the largest pairwise distance between training points
    technique 2   L from a ratio gamma = sigma_{i-1} / sigma_i with
                  Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma) ~ 0.5
    technique 3   s(x, sigma) = net(x) / sigma  (unconditional net for images; the MLP of the
                  toys is also told the level, see ``conditional``)
    technique 4   the Langevin step eps from T and gamma:
                  (1 - eps/sigma_L^2)^(2T) (gamma^2 - 2 eps / (sigma_L^2 - sigma_L^2 (1 - eps/sigma_L^2)^2))
                      + 2 eps / (sigma_L^2 - sigma_L^2 (1 - eps/sigma_L^2)^2) = 1
    technique 5   an exponential moving average of the weights (``default_train['ema']``: 0.995,
                  not 0.999, for runs of thousands of steps; see docs/score.md)

In low dimension no gamma brings technique 2's overlap down to 0.5 (the condition is
written for large D); there refgen keeps Song & Ermon 2019's L = 10 levels.

Options (``--set key=value``): sigma_max ('auto': technique 1, set from the first training
batch), sigma_min, num_levels ('auto': technique 2), T (Langevin steps per level), step_eps
('auto': technique 4), conditional (default: vectors yes, images no), denoise, and the
network's hidden, depth / channels, channel_mult, num_res_blocks, attn_res, heads, groups.
"""
from __future__ import annotations

import math

from refgen.autograd import Tensor, as_tensor, no_grad
from refgen.backend import xp
from refgen.models import register
from refgen.models.base import DataSpec
from refgen.models.score.losses import annealed_dsm
from refgen.models.score.nets import make_net
from refgen.models.score.samplers import annealed_langevin, check_sigmas
from refgen.nn import Module, init

__all__ = ["NCSN", "sigma_max_from_data", "level_ratio", "geometric_sigmas", "step_size_rule"]


def _Phi(z):
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def sigma_max_from_data(x) -> float:
    """Technique 1: the largest Euclidean distance between two rows of x (N, ...)."""
    a = xp.asarray(x, dtype=xp.float64).reshape(x.shape[0], -1)
    sq = (a * a).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * a @ a.T                       # (N, N) squared distances
    return float(xp.sqrt(xp.maximum(d2.max(), 0.0)))


def level_ratio(d: int, target: float = 0.5):
    """Technique 2: gamma > 1 with overlap(gamma) = target, or None when none exists (small D)."""
    r = math.sqrt(2.0 * d)

    def overlap(g):
        return _Phi(r * (g - 1) + 3 * g) - _Phi(r * (g - 1) - 3 * g)

    lo, hi = 1.0 + 1e-9, 100.0
    if overlap(hi) > target:                                             # never small enough
        return None
    for _ in range(200):                                                 # bisection: overlap falls
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if overlap(mid) > target else (lo, mid)
    return 0.5 * (lo + hi)


def geometric_sigmas(sigma_max: float, sigma_min: float, num_levels: int):
    """sigma_1 = sigma_max > ... > sigma_L = sigma_min, a geometric sequence (float64 (L,))."""
    if not 0 < sigma_min < sigma_max or int(num_levels) < 2:
        raise ValueError(f"a noise ladder needs 0 < sigma_min < sigma_max and >= 2 levels, got "
                         f"sigma_min={sigma_min}, sigma_max={sigma_max}, num_levels={num_levels}")
    return xp.exp(xp.linspace(math.log(sigma_max), math.log(sigma_min), int(num_levels)))


def step_size_rule(sigma_min: float, gamma: float, T: int) -> float:
    """Technique 4: the eps whose left-hand side comes closest to 1. The left side exceeds 1
    for every eps in (0, sigma_L^2) (it is (c - 1)(1 - a^2T) + a^2T (gamma^2 - 1) + 1 with
    a = 1 - eps/sigma_L^2, c > 1), so "~ 1" means its minimum, found on a fine grid in log eps."""
    s2 = sigma_min ** 2
    eps = xp.exp(xp.linspace(math.log(1e-10 * s2), math.log(0.999 * s2), 4001))
    a = 1.0 - eps / s2
    c = 2.0 * eps / (s2 - s2 * a * a)
    lhs = a ** (2 * int(T)) * (gamma ** 2 - c) + c
    return float(eps[int(xp.argmin(xp.abs(lhs - 1.0)))])


@register("ncsn")
class NCSN(Module):
    """Noise-conditional score network (see the module docstring for the options)."""

    data_spec = DataSpec(kinds=("continuous",), ndims=(1, 3), image_range=(-1.0, 1.0))
    default_train = dict(steps=5000, batch_size=256, lr=1e-3, ema=0.995)

    def __init__(self, data_shape, *, seed=0, sigma_max="auto", sigma_min: float = 0.01,
                 num_levels="auto", T: int = 100, step_eps="auto", conditional=None,
                 denoise: bool = True, hidden: int = 128, depth: int = 3, channels: int = 32,
                 channel_mult=None, num_res_blocks: int = 2, attn_res=None, heads: int = 1,
                 groups: int = 8):
        super().__init__()
        self.data_shape = tuple(int(d) for d in data_shape)
        if len(self.data_shape) not in (1, 3):
            raise ValueError(f"ncsn models vectors (D,) or images (C, H, W); got {self.data_shape}")
        self.D = math.prod(self.data_shape)
        self.sigma_min, self.T, self.denoise = float(sigma_min), int(T), bool(denoise)
        self.num_levels, self.step_eps = num_levels, step_eps
        self.conditional = (len(self.data_shape) == 1) if conditional is None else bool(conditional)
        # sigma_1, kept with the weights: NaN until set (technique 1 reads the first batch)
        self.register_buffer("sigma_max", xp.full((1,), xp.nan if sigma_max == "auto"
                                                  else float(sigma_max)))
        self.net = make_net(self.data_shape, init.get_rng(int(seed)), hidden, depth, channels,
                            channel_mult, num_res_blocks, attn_res, heads, groups)
        self.eval_samples = 1000 if len(self.data_shape) == 3 else 2000

    # ------------------------------------------------------------------ the noise ladder
    @property
    def sigmas(self):
        """sigma_1 > ... > sigma_L, float64 (L,)."""
        s1 = float(self.sigma_max[0])
        if not math.isfinite(s1):
            raise ValueError("sigma_max='auto' is set from the data by the first training step; "
                             "train the model or pass sigma_max=<number>")
        if self.num_levels == "auto":
            g = level_ratio(self.D)
            L = 10 if g is None else max(2, math.ceil(math.log(s1 / self.sigma_min) / math.log(g)) + 1)
        else:
            L = int(self.num_levels)
        return check_sigmas(geometric_sigmas(s1, self.sigma_min, L))

    def langevin_eps(self) -> float:
        if self.step_eps != "auto":
            return float(self.step_eps)
        s = self.sigmas
        return step_size_rule(float(s[-1]), float(s[-2] / s[-1]), self.T)

    # ------------------------------------------------------------------ the score
    def score(self, x, idx):
        """s(x, sigma_i) = net(x, i) / sigma_i (Tensor in, Tensor out); idx an int or (B,) ints."""
        x = as_tensor(x)
        b = x.shape[0]
        idx = xp.broadcast_to(xp.asarray(idx, dtype=xp.int64), (b,))
        c = idx if self.conditional else xp.zeros((b,), dtype=xp.int64)
        sigma = self.sigmas[idx].astype(x.dtype).reshape((b,) + (1,) * (len(x.shape) - 1))
        return self.net(x, c) * (1.0 / sigma)

    def loss(self, batch, rng):
        """1/L sum_i sigma_i^2 l(theta; sigma_i), one level per example (Song & Ermon 2019)."""
        x = as_tensor(batch.x)
        if not math.isfinite(float(self.sigma_max[0])):                  # technique 1, once
            self.sigma_max[...] = sigma_max_from_data(x.data)
        sig = self.sigmas
        idx = rng.integers(0, sig.shape[0], size=x.shape[0])          # i ~ U{1..L}
        z = rng.standard_normal(x.shape, dtype=x.dtype)
        return annealed_dsm(self.score, x, sig, idx, z).mean()

    # ------------------------------------------------------------------ sampling
    def sample(self, n, cond=None, *, rng, steps=None, eps=None, denoise=None, x=None,
               progress=None):
        """n samples by annealed Langevin dynamics (steps = T per level, eps the base step),
        started from U[-1, 1] as Song & Ermon do (x: a given start)."""
        if cond is not None:
            raise ValueError("ncsn is unconditional: cond must be None")
        sig = self.sigmas
        if x is None:
            x = rng.uniform(-1.0, 1.0, size=(n,) + self.data_shape).astype(xp.float32)

        def score(xx, i):
            return self.score(Tensor(xx), i).data

        with no_grad():
            return annealed_langevin(score, x, sig, self.langevin_eps() if eps is None else float(eps),
                                     self.T if steps is None else int(steps), rng,
                                     self.denoise if denoise is None else bool(denoise), progress)
