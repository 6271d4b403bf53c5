"""Progressive distillation (Salimans & Ho 2022, "Progressive distillation for fast sampling of
diffusion models", Algorithm 2): a student learns to do in one deterministic DDIM step what
its teacher does in two, then becomes the next teacher; each round halves the steps.

Legend (the paper -> here): z_t <-> z (the noisy x_t of eq. (3)); alpha_t <-> sqrt(alpha_bar_t);
sigma_t <-> sqrt(1 - alpha_bar_t); x_hat_eta(z_t) <-> the teacher's predicted x_0; N <-> the
student's number of steps. Times are integer steps of the teacher's schedule on the nested
grid t_i = round(i T / N), i = 0..N (t_0 = 0: alpha_bar = 1), so the teacher's grid for 2N
steps holds the student's.

Algorithm 2, one training step, for x ~ data, i ~ U{1..N}, t = t_i, eps ~ N(0, I):

    z_t   = alpha_t x + sigma_t eps                                                    (3)
    z_t'  = alpha_t' x_hat(z_t) + sigma_t' / sigma_t (z_t - alpha_t x_hat(z_t))  teacher DDIM, t' = mid
    z_t'' = alpha_t'' x_hat(z_t') + sigma_t'' / sigma_t' (z_t' - alpha_t' x_hat(z_t'))  t'' = t_{i-1}
    x_tilde = (z_t'' - sigma_t'' / sigma_t z_t) / (alpha_t'' - sigma_t'' / sigma_t alpha_t)
    L = max(alpha_t^2 / sigma_t^2, 1) || x_tilde - x_hat_theta(z_t) ||^2    truncated-SNR weight

x_tilde is the x_0 with which one student DDIM step from t lands on the teacher's z_t''
(solve z_t'' = alpha_t'' x + sigma_t''/sigma_t (z_t - alpha_t x) for x). The DDIM step is eq.
(27) with sigma_t = 0, written with eps = (z_t - alpha_t x_hat) / sigma_t.
"""
from __future__ import annotations

from refgen.autograd import Tensor, as_tensor, no_grad
from refgen.backend import xp
import refgen.functional as F
from refgen.models import register
from refgen.models.base import DataSpec
from refgen.models.diffusion.process import coef, interpret
from refgen.models.diffusion.teacher import clone, load_teacher
from refgen.nn import Module
from refgen.optim import descend

__all__ = ["pd_grid", "ddim_move", "distillation_target", "snr_weight", "ddim_sample",
           "ProgressiveDistillation"]


def pd_grid(T: int, N: int):
    """(N+1,) int64 steps t_i = round(i T / N), i = 0..N; nested: pd_grid(T, N) = pd_grid(T, 2N)[::2]."""
    N = int(N)
    if not 1 <= N <= T:
        raise ValueError(f"a distillation grid needs 1 <= steps <= T={T}, got {N}")
    return xp.rint(xp.arange(N + 1, dtype=xp.float64) * (T / N)).astype(xp.int64)


def ddim_move(sch, z, t, s, x0):
    """z_s from z_t by one deterministic DDIM step with prediction x0 (t, s: steps of the full
    schedule, ints or (B,); s < t, s = 0 allowed): alpha_s x0 + sigma_s / sigma_t (z_t - alpha_t x0)."""
    a_t, a_s = coef(sch.sqrt_alpha_bar, t, z), coef(sch.sqrt_alpha_bar, s, z)
    r = coef(sch.sqrt_one_minus_alpha_bar, s, z) / coef(sch.sqrt_one_minus_alpha_bar, t, z)
    return a_s * x0 + r * (z - a_t * x0)                                  # (27), sigma_t = 0


def distillation_target(sch, teacher_x0, z, t, t_mid, t_next):
    """x_tilde of Algorithm 2: two teacher DDIM steps t -> t_mid -> t_next, then solved for the
    x_0 that makes one student step t -> t_next land on the same point.
    teacher_x0(z, t) -> the teacher's x_hat (array); t, t_mid, t_next: (B,) int steps."""
    z_mid = ddim_move(sch, z, t, t_mid, teacher_x0(z, t))                 # z_t'
    z_next = ddim_move(sch, z_mid, t_mid, t_next, teacher_x0(z_mid, t_mid))  # z_t''
    r = coef(sch.sqrt_one_minus_alpha_bar, t_next, z) / coef(sch.sqrt_one_minus_alpha_bar, t, z)
    a_t, a_next = coef(sch.sqrt_alpha_bar, t, z), coef(sch.sqrt_alpha_bar, t_next, z)
    return (z_next - r * z) / (a_next - r * a_t)                         # x_tilde


def snr_weight(sch, t, like):
    """Truncated-SNR weighting max(alpha_t^2 / sigma_t^2, 1), shaped to broadcast against ``like``."""
    ab = sch.alpha_bar
    return coef(xp.maximum(ab / xp.maximum(1.0 - ab, 1e-300), 1.0), t, like)


def ddim_sample(x0_fn, sch, N, z):
    """Deterministic DDIM from z (at step T) down the grid pd_grid(T, N); x0_fn(z, t) -> x_hat."""
    grid = [int(v) for v in pd_grid(sch.T, N)]
    for t, s in zip(grid[:0:-1], grid[-2::-1]):                          # t_N -> t_{N-1} ... -> t_0
        z = ddim_move(sch, z, t, s, x0_fn(z, xp.full((z.shape[0],), t, dtype=xp.int64)))
    return z


def _x0(model, z, t):
    """A DDPM's predicted x_0 at integer steps t (B,) of its full schedule, as a Tensor."""
    out = model._net(z, model.schedule.net_t[t], model._labels(None, z.shape[0]))
    return interpret(out, z, t, model.schedule, model.parameterization, model.variance).x0


@register("progressive-distillation")
class ProgressiveDistillation(Module):
    """A DDPM student distilled from a DDPM teacher by Algorithm 2, halving its DDIM steps
    every ``round_steps`` training steps from ``teacher_steps`` / 2 down to ``min_steps``.

    teacher: the teacher's run directory (or a DDPM). Its parameterization should be v or x0:
    an eps-network's x_0 = (z - sigma eps) / alpha blows up where alpha -> 0, which is where a
    few-step sampler starts. ``sample(n, steps=None)`` runs the student's DDIM on its grid."""

    data_spec = DataSpec(kinds=("continuous",), ndims=(1, 3), image_range=(-1.0, 1.0))
    default_train = dict(steps=3000, batch_size=256, lr=1e-4, ema=None, warmup=0)

    def __init__(self, data_shape, *, seed=0, teacher=None, teacher_steps: int = 64,
                 round_steps: int = 500, min_steps: int = 1):
        super().__init__()
        model = load_teacher(teacher, data_shape, "progressive-distillation")
        if model.parameterization == "eps":
            raise ValueError("progressive distillation needs a teacher that predicts v or x0 "
                             "(train it with --set parameterization=v): eps fails at few steps")
        if model.learn_sigma:
            raise ValueError("progressive distillation takes a fixed-variance teacher")
        if not (1 <= int(min_steps) and 2 * int(min_steps) <= int(teacher_steps) <= model.T):
            raise ValueError(f"need 1 <= min_steps <= teacher_steps / 2 and teacher_steps <= "
                             f"T={model.T}; got min_steps={min_steps}, teacher_steps={teacher_steps}")
        self.teacher = model
        for p in self.teacher.parameters():
            p.requires_grad = False
        self.student = clone(model)                                      # theta <- eta
        for p in self.student.parameters():
            p.requires_grad = True
        self.data_shape = model.data_shape
        self.schedule = model.schedule
        self.round_steps, self.min_steps = int(round_steps), int(min_steps)
        self.register_buffer("N", xp.asarray(int(teacher_steps) // 2, dtype=xp.int64))
        self.register_buffer("round_step", xp.asarray(0, dtype=xp.int64))

    def loss(self, batch, rng):
        """Algorithm 2's weighted regression of x_hat_theta(z_t) on x_tilde."""
        sch, N = self.schedule, int(self.N)
        x = as_tensor(batch.x) * (1.0 / self.student.data_scale)
        b = x.shape[0]
        grid = pd_grid(sch.T, 2 * N)                                      # teacher's grid
        i = rng.integers(1, N + 1, size=b)                           # i ~ U{1..N}
        t, t_mid, t_next = grid[2 * i], grid[2 * i - 1], grid[2 * i - 2]
        eps = rng.standard_normal(x.shape, dtype=x.dtype)
        z = coef(sch.sqrt_alpha_bar, t, x) * x.data + coef(sch.sqrt_one_minus_alpha_bar, t, x) * eps  # (3)
        with no_grad():
            x_tilde = distillation_target(sch, lambda zz, tt: _x0(self.teacher, Tensor(zz), tt).data,
                                          z, t, t_mid, t_next)
        d = Tensor(x_tilde) - _x0(self.student, Tensor(z), t)
        return F.mean(Tensor(snr_weight(sch, t, z)) * d * d)

    def train_step(self, batch, optimizers, rng):
        """One step of Algorithm 2; after ``round_steps`` steps the student becomes the
        teacher and N halves (until min_steps)."""
        loss = self.loss(batch, rng)
        descend(loss, optimizers)
        self.round_step[...] = int(self.round_step) + 1
        if int(self.round_step) >= self.round_steps and int(self.N) > self.min_steps:
            self.teacher.load_state_dict(self.student.state_dict())       # eta <- theta
            self.N[...] = int(self.N) // 2                                # N <- N / 2
            self.round_step[...] = 0
        return {"loss": float(loss.item()), "N": float(self.N)}

    def sample(self, n, cond=None, *, rng, steps=None, x_T=None):
        """n samples by the student's deterministic DDIM on pd_grid(T, steps) (default: its N)."""
        if cond is not None:
            raise ValueError("progressive-distillation samples unconditionally: leave cond None")
        steps = int(self.N) if steps is None else int(steps)
        shape = (n,) + tuple(self.data_shape)
        z = rng.standard_normal(shape, dtype=xp.float32) if x_T is None else xp.asarray(x_T, xp.float32)
        with no_grad():
            x = ddim_sample(lambda zz, tt: _x0(self.student, Tensor(zz), tt).data,
                            self.schedule, steps, z)
        return x * self.student.data_scale
