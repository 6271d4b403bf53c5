"""Consistency models (Song et al. 2023, "Consistency models"): a network f_theta(x, t) that
maps every point of a probability-flow ODE trajectory to the trajectory's origin.

Time is the noise level sigma of x = x_0 + t z (refgen.models.diffusion.ode: sigma-time),
t in [epsilon, T]. Legend (paper -> here): t <-> sigma, Phi(x, t; phi) <-> ode.eps_in_sigma,
theta^- <-> self.target, sigma_data <-> sigma_data, N(k), mu(k) <-> ct_N, ct_mu.

    f_theta(x, t) = c_skip(t) x + c_out(t) F_theta(c_in(t) x, c_noise(t))                 (30)
    c_skip(t) = sigma_data^2 / ((t - epsilon)^2 + sigma_data^2)
    c_out(t)  = sigma_data (t - epsilon) / sqrt(sigma_data^2 + t^2)
    c_in(t)   = 1 / sqrt(sigma_data^2 + t^2),   c_noise(t) = 250 log t   (the paper's App. C)

so f_theta(x, epsilon) = x exactly, whatever theta is (c_skip = 1, c_out = 0 there).

On the grid epsilon = t_1 < ... < t_N = T (rho-spaced), n ~ U{1..N-1}, x ~ data, z ~ N(0, I):

    CD  L = E[lambda(t_n) d(f_theta(x_{t_{n+1}}, t_{n+1}), f_theta^-(x_hat_{t_n}, t_n))]           (31)
        x_{t_{n+1}} = x + t_{n+1} z,  x_hat_{t_n} = x_{t_{n+1}} + (t_n - t_{n+1}) Phi(x_{t_{n+1}}, t_{n+1}; phi)
    CT  L = E[lambda(t_n) d(f_theta(x + t_{n+1} z, t_{n+1}), f_theta^-(x + t_n z, t_n))]           (32)

with lambda = 1, d = l2 (squared Euclidean) or l1, both >= 0 and zero only for x = y, and
theta^- <- stopgrad(mu theta^- + (1 - mu) theta) after each step. The solver step of (31)
moves *down* in t: t_n < t_{n+1} and Phi = dx/dt = -t grad log p_t(x), so the step adds
(t_n - t_{n+1}) Phi (Euler's method; Heun's averages Phi at both ends). LPIPS, the paper's
best d, needs a pretrained image network that refgen does not have; it is not offered.

CT grows N and mu with the training step k of K (the paper's App. C, s_0 = 2, s_1 = 150,
mu_0 = 0.9):

    N(k)  = ceil(sqrt(k / K ((s_1 + 1)^2 - s_0^2) + s_0^2) - 1) + 1
    mu(k) = exp(s_0 log mu_0 / N(k))

Sampling (the paper's Algorithm 1): x = f(T z, T), then for each tau of a decreasing list,
x = f(x + sqrt(tau^2 - epsilon^2) z, tau).

CD's F can start as the teacher's network (``init='teacher'``, as the paper's code starts
from its EDM teacher). A v-parameterised DDPM is EDM's preconditioning with sigma_data = 1:
at x = x_0 + t z it predicts

    x_0 = x / (1 + t^2) - t / sqrt(1 + t^2) v(x / sqrt(1 + t^2), t(sigma = t))

which is (30) with epsilon = 0, sigma_data = 1, F = -v and the teacher's own time t(sigma)
in place of c_noise. So f_theta starts at the teacher's x_0 (up to epsilon in c_skip, c_out).
"""
from __future__ import annotations

import copy
import dataclasses
import math

import refgen.functional as F
from refgen.autograd import Tensor, as_tensor, no_grad
from refgen.backend import xp
from refgen.models import register
from refgen.models.base import DataSpec
from refgen.models.diffusion.config import NetworkConfig, make_unet, split_options
from refgen.models.diffusion.ode import (METHODS, eps_in_sigma, euler_step, heun_step,
                                         karras_sigmas, schedule_sigmas, sigma_to_t)
from refgen.models.diffusion.teacher import clone, load_teacher
from refgen.nn import MLPDenoiser, Module, init
from refgen.optim import descend

__all__ = ["c_skip", "c_out", "c_in", "c_noise", "karras_times", "ct_N", "ct_mu", "distance",
           "ConsistencyFunction", "TeacherF", "consistency_sample", "ConsistencyDistillation",
           "ConsistencyTraining", "DISTANCES", "INITS"]

DISTANCES = ("l2", "l1")
INITS = ("random", "teacher")


def c_skip(t, epsilon, sigma_data):
    """sigma_data^2 / ((t - epsilon)^2 + sigma_data^2): 1 at t = epsilon."""
    return sigma_data ** 2 / ((t - epsilon) ** 2 + sigma_data ** 2)


def c_out(t, epsilon, sigma_data):
    """sigma_data (t - epsilon) / sqrt(sigma_data^2 + t^2): 0 at t = epsilon."""
    return sigma_data * (t - epsilon) / xp.sqrt(sigma_data ** 2 + t ** 2)


def c_in(t, sigma_data):
    """1 / sqrt(sigma_data^2 + t^2): the network's input has about unit variance."""
    return 1.0 / xp.sqrt(sigma_data ** 2 + t ** 2)


def c_noise(t):
    """The time the network is told: 250 log t (t > 0)."""
    return 250.0 * xp.log(t)


def karras_times(N: int, epsilon: float, T: float, rho: float = 7.0):
    """(N,) float64, increasing: t_i = (epsilon^(1/rho) + (i-1)/(N-1) (T^(1/rho) - epsilon^(1/rho)))^rho."""
    if int(N) < 2:
        raise ValueError(f"a consistency grid needs N >= 2 times, got {N}")
    return karras_sigmas(int(N), epsilon, T, rho, zero=False)[::-1].copy()


def ct_N(k: int, K: int, s0: int = 2, s1: int = 150) -> int:
    """N(k) = ceil(sqrt(k/K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1: s0 + 1 at k = 0, s1 + 1 at K."""
    k = min(max(int(k), 0), int(K))
    return int(math.ceil(math.sqrt(k / K * ((s1 + 1) ** 2 - s0 ** 2) + s0 ** 2) - 1) + 1)


def ct_mu(k: int, K: int, s0: int = 2, s1: int = 150, mu0: float = 0.9) -> float:
    """mu(k) = exp(s0 log mu0 / N(k)): mu0 at the start, closer to 1 as N grows."""
    return math.exp(s0 * math.log(mu0) / ct_N(k, K, s0, s1))


def distance(x, y, kind: str = "l2"):
    """d(x, y) per example (B,): 'l2' = ||x - y||_2^2, 'l1' = ||x - y||_1."""
    diff = x - y
    if kind == "l2":
        return F.sum_except_batch(diff * diff)
    if kind == "l1":
        return F.sum_except_batch(F.abs(diff))
    raise ValueError(f"unknown distance {kind!r}; accepted: {', '.join(DISTANCES)} "
                     f"(LPIPS needs a pretrained network refgen does not have)")


def _bcast(a, x):
    """(B,) float64 -> (B, 1, ..., 1) in x's dtype (x read for its ndim and dtype only)."""
    return xp.asarray(a, dtype=x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))


class TeacherF(Module):
    """F_theta as a v-parameterised DDPM's network (a trainable copy): F(x_in, t(sigma)) = -v,
    its null label (see the module docstring: with sigma_data = 1, f_theta starts at the
    teacher's x_0). ``time`` replaces c_noise: the teacher's fractional step t(sigma)."""

    def __init__(self, ddpm):
        super().__init__()
        if ddpm.parameterization != "v" or ddpm.learn_sigma:
            raise ValueError("init='teacher' needs a fixed-variance teacher that predicts v "
                             f"(this one predicts {ddpm.parameterization!r}"
                             f"{' and learns sigma' if ddpm.learn_sigma else ''})")
        self.ddpm = clone(ddpm)
        for p in self.ddpm.parameters():
            p.requires_grad = True

    def time(self, t):
        return sigma_to_t(self.ddpm.schedule, t)

    def forward(self, x_in, t_net):
        return -self.ddpm._net(x_in, t_net, self.ddpm._labels(None, x_in.shape[0]))


class ConsistencyFunction(Module):
    """f_theta(x, t) of eq. (30) around a network F_theta(x, t_emb): (x (B, ...), t (B,)) -> (B, ...).
    The network is told time(t): c_noise(t), or TeacherF's own t(sigma)."""

    def __init__(self, net, epsilon: float, sigma_data: float, time=c_noise):
        super().__init__()
        self.net, self.epsilon, self.sigma_data = net, float(epsilon), float(sigma_data)
        self.time = time

    def forward(self, x, t):
        x = as_tensor(x)
        t = xp.broadcast_to(xp.asarray(t, dtype=xp.float64), (x.shape[0],))
        sd, eps = self.sigma_data, self.epsilon
        out = self.net(x * _bcast(c_in(t, sd), x), self.time(t))          # F_theta
        return x * _bcast(c_skip(t, eps, sd), x) + out * _bcast(c_out(t, eps, sd), x)  # (30)


def consistency_sample(f, shape, rng, times, epsilon: float, dtype=None):
    """Algorithm 1 of Song et al. 2023: f (x, t) -> array; times decreasing, times[0] = T."""
    dtype = dtype or xp.float32
    n = shape[0]
    x = f(rng.standard_normal(shape, dtype=dtype) * float(times[0]),
          xp.full((n,), float(times[0])))                                  # one step
    for tau in times[1:]:
        z = rng.standard_normal(shape, dtype=dtype)
        x = f(x + math.sqrt(max(float(tau) ** 2 - epsilon ** 2, 0.0)) * z, xp.full((n,), float(tau)))
    return x


def _network(data_shape, net: NetworkConfig, rng):
    c = data_shape[0]
    if len(data_shape) == 3:
        return make_unet(net, c, c, data_shape[-1], None, rng)
    return MLPDenoiser(c, c, net.hidden, net.depth, None, rng=rng)


class _Consistency(Module):
    """What CD and CT share: f_theta and its EMA target theta^-, the grid, the loss, sampling."""

    data_spec = DataSpec(kinds=("continuous",), ndims=(1, 3), image_range=(-1.0, 1.0))
    default_train = dict(steps=3000, batch_size=256, lr=4e-4, ema=0.999, warmup=0)

    def _setup(self, data_shape, seed, network, options, *, sigma_data, epsilon, T, rho,
               dist, data_scale, net=None, time=c_noise):
        known = {f.name for f in dataclasses.fields(NetworkConfig)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"{self.registry_name} has no option {unknown[0]!r}; network options: "
                             f"{', '.join(sorted(known))}")
        self.network = split_options(dict(network=network), options)["network"]
        self.data_shape = tuple(int(d) for d in data_shape)
        if len(self.data_shape) not in (1, 3):
            raise ValueError(f"consistency models take vectors (D,) or images (C, H, W); got "
                             f"{self.data_shape}")
        if dist not in DISTANCES:
            raise ValueError(f"distance must be one of {', '.join(DISTANCES)} (LPIPS needs a "
                             f"pretrained network refgen does not have), got {dist!r}")
        if not 0 < epsilon < T:
            raise ValueError(f"need 0 < epsilon < T, got epsilon={epsilon}, T={T}")
        self.sigma_data, self.epsilon, self.T, self.rho = float(sigma_data), float(epsilon), \
            float(T), float(rho)
        self.distance, self.data_scale = dist, float(data_scale)
        F_theta = net if net is not None else _network(self.data_shape, self.network,
                                                       init.get_rng(int(seed)))
        self.online = ConsistencyFunction(F_theta, self.epsilon, self.sigma_data, time)
        self.target = copy.deepcopy(self.online)                          # theta^- <- theta
        for p in self.target.parameters():
            p.requires_grad = False
        self.register_buffer("k", xp.asarray(0, dtype=xp.int64))         # training steps done
        self.dtype = xp.float32

    # the schedules (CD: fixed; CT overrides them)
    def current_N(self) -> int:
        return self.N

    def current_mu(self) -> float:
        return self.mu

    def x_hat(self, x, x_next, t_n, t_next, z):
        """The target network's input at t_n (CD: an ODE step; CT: x + t_n z)."""
        raise NotImplementedError

    def loss(self, batch, rng):
        """lambda(t_n) d(f_theta(x_{t_{n+1}}, t_{n+1}), f_theta^-(x_hat_{t_n}, t_n)), lambda = 1."""
        x = as_tensor(batch.x).data * (1.0 / self.data_scale)
        b = x.shape[0]
        t = karras_times(self.current_N(), self.epsilon, self.T, self.rho)
        i = rng.integers(0, len(t) - 1, size=b)                      # n ~ U{1..N-1}
        t_n, t_next = t[i], t[i + 1]
        z = rng.standard_normal(x.shape, dtype=x.dtype)
        x_next = x + _bcast(t_next, x) * z                                 # x_{t_{n+1}}
        with no_grad():
            target = self.target(self.x_hat(x, x_next, t_n, t_next, z), t_n).data
        online = self.online(Tensor(x_next), t_next)
        return F.mean(distance(online, Tensor(target), self.distance))     # (31), (32)

    def train_step(self, batch, optimizers, rng):
        """A gradient step on theta, then theta^- <- mu theta^- + (1 - mu) theta."""
        N, mu = self.current_N(), self.current_mu()                        # at step k
        loss = self.loss(batch, rng)
        descend(loss, optimizers)
        for p_minus, p in zip(self.target.parameters(), self.online.parameters()):
            p_minus.data = mu * p_minus.data + (1.0 - mu) * p.data          # EMA target
        self.k[...] = int(self.k) + 1
        return {"loss": float(loss.item()), "N": float(N), "mu": mu}

    def sample_times(self, steps: int):
        """``steps`` decreasing times from T: T alone, or the rho-spaced grid of steps + 1
        times from T to epsilon without its last (epsilon)."""
        steps = int(steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return karras_sigmas(steps + 1, self.epsilon, self.T, self.rho, zero=False)[:-1]

    def sample(self, n, cond=None, *, rng, steps: int = 1, times=None, x_T=None):
        """n samples by one (steps = 1) or several consistency steps (Algorithm 1); times: an
        explicit decreasing list starting at T, instead of sample_times(steps)."""
        if cond is not None:
            raise ValueError(f"{self.registry_name} samples unconditionally: leave cond None")
        times = self.sample_times(steps) if times is None else [float(v) for v in times]
        with no_grad():
            x = consistency_sample(lambda xx, tt: self.online(Tensor(xx), tt).data,
                                   (n,) + self.data_shape, rng, times, self.epsilon, self.dtype)
        return x * self.data_scale


@register("consistency-distillation")
class ConsistencyDistillation(_Consistency):
    """Consistency distillation (31) from a DDPM teacher (its run directory): Phi is one Euler
    or Heun step of the teacher's probability-flow ODE. epsilon and T are kept inside the
    teacher's noise range [sigma_1, sigma_T]; the data are scaled as the teacher scales them.
    init: 'random' (a fresh network of the ``network`` options, sigma_data 0.5) or 'teacher'
    (F starts as the v-teacher's network, sigma_data 1: TeacherF)."""

    def __init__(self, data_shape, *, seed=0, teacher=None, N: int = 18, mu: float = 0.95,
                 solver: str = "heun", distance: str = "l2", sigma_data=None,
                 epsilon: float = 0.002, T: float = 80.0, rho: float = 7.0, init: str = "random",
                 network: NetworkConfig = NetworkConfig(), **options):
        super().__init__()
        model = load_teacher(teacher, data_shape, "consistency-distillation")
        if solver not in METHODS:
            raise ValueError(f"solver must be one of {', '.join(METHODS)}, got {solver!r}")
        if int(N) < 2 or not 0 <= float(mu) < 1:
            raise ValueError(f"need N >= 2 and 0 <= mu < 1, got N={N}, mu={mu}")
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        F_theta = None
        if init == "teacher":
            if options or sigma_data not in (None, 1, 1.0):
                raise ValueError("init='teacher' takes the teacher's network and sigma_data = 1 "
                                 "(its v-parameterisation); drop the network options and sigma_data")
            F_theta, sigma_data = TeacherF(model), 1.0
        sig = schedule_sigmas(model.schedule)
        self._setup(data_shape, seed, network, options, net=F_theta,
                    time=c_noise if F_theta is None else F_theta.time,
                    sigma_data=0.5 if sigma_data is None else float(sigma_data),
                    epsilon=max(float(epsilon), float(sig[1])), T=min(float(T), float(sig[-1])),
                    rho=rho, dist=distance, data_scale=model.data_scale)
        self.init = init
        self.teacher = model
        for p in self.teacher.parameters():
            p.requires_grad = False
        self.N, self.mu, self.solver = int(N), float(mu), solver

    def x_hat(self, x, x_next, t_n, t_next, z):
        """x_hat_{t_n} = x_{t_{n+1}} + (t_n - t_{n+1}) Phi(x_{t_{n+1}}, t_{n+1}; phi)  (31)."""
        step = heun_step if self.solver == "heun" else euler_step
        return step(lambda xx, s: eps_in_sigma(self.teacher, xx, s), x_next, t_next, t_n)


@register("consistency-training")
class ConsistencyTraining(_Consistency):
    """Consistency training (32) from data alone, N and mu growing with the step k of K
    (set K to the run's --steps)."""

    def __init__(self, data_shape, *, seed=0, K: int = 3000, s0: int = 2, s1: int = 150,
                 mu0: float = 0.9, distance: str = "l2", sigma_data: float = 0.5,
                 epsilon: float = 0.002, T: float = 80.0, rho: float = 7.0,
                 data_scale: float = 1.0, network: NetworkConfig = NetworkConfig(), **options):
        super().__init__()
        if int(K) < 1 or not 1 <= int(s0) <= int(s1) or not 0 < float(mu0) < 1:
            raise ValueError(f"need K >= 1, 1 <= s0 <= s1 and 0 < mu0 < 1; got K={K}, s0={s0}, "
                             f"s1={s1}, mu0={mu0}")
        self._setup(data_shape, seed, network, options, sigma_data=sigma_data, epsilon=epsilon,
                    T=T, rho=rho, dist=distance, data_scale=data_scale)
        self.K, self.s0, self.s1, self.mu0 = int(K), int(s0), int(s1), float(mu0)

    def current_N(self) -> int:
        return ct_N(int(self.k), self.K, self.s0, self.s1)

    def current_mu(self) -> float:
        return ct_mu(int(self.k), self.K, self.s0, self.s1, self.mu0)

    def x_hat(self, x, x_next, t_n, t_next, z):
        """x + t_n z: the same z as x_{t_{n+1}}, one grid step less noise  (32)."""
        return x + _bcast(t_n, x) * z
