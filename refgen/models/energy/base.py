"""What every energy model shares: the density, the sampler, the 2D normaliser.

    p_theta(x) = exp(-E_theta(x)) / Z_theta,   Z_theta = int exp(-E_theta(x)) dx

E_theta(x) = net_theta(x) + |x|^2 / (2 base_std^2) on vectors: the fixed quadratic term
keeps Z finite whatever the net does far from the data (an MLP's energy grows at most
linearly there), so the density is proper and quadrature over a finite square can
normalise it. Images use the net alone (``base_std=None``).

sample(n): chains from noise (uniform on [-init_range, init_range]^D for vectors, on
[-1, 1] for images), ``sample_steps`` steps of ``sampler`` ('mala', 'ula' or 'rwm', from
refgen.samplers); ULA's noise is ``sample_noise_scale`` (None: sqrt(eps), untempered; image
models trained with tempered chains sample with the same tempered step). MALA's acceptance
rate is kept in ``last_acceptance_rate``, ULA's mean gradient norm in ``last_grad_norm``.

log_prob(x) exists for 2D models only: -E(x) - log Z with log Z from grid quadrature
(quadrature.py), recomputed when the parameters change.
"""
from __future__ import annotations

import math

from refgen import samplers
from refgen.autograd import as_tensor
from refgen.backend import asarray, xp
from refgen.models.base import DataSpec
from refgen.models.energy.nets import energy_net
from refgen.models.energy.quadrature import grid_log_normalizer
from refgen.nn import Module, init

__all__ = ["EnergyModel", "SAMPLERS"]

SAMPLERS = ("mala", "ula", "rwm")


class EnergyModel(Module):
    """An energy network with its density, sampler and (2D) exact normaliser."""

    data_spec = DataSpec(kinds=("continuous",), ndims=(1, 3))
    eval_samples = 2000   # each sample is a chain of sample_steps gradient evaluations

    def __init__(self, data_shape, *, seed=0, hidden=(128, 128), channels=32, base_std=3.0,
                 init_range=4.5, sampler="mala", sample_steps=300, sample_step_size=1e-2,
                 sample_noise_scale=None, out_features=1):
        super().__init__()
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        samplers._check_positive("sample_step_size", sample_step_size)
        if sample_noise_scale is not None:
            samplers._check_positive("sample_noise_scale", sample_noise_scale)
            if sampler != "ula":
                raise ValueError(f"sample_noise_scale tempers ULA only; sampler is {sampler!r}")
        self.data_shape = tuple(int(s) for s in data_shape)
        self.image = len(self.data_shape) == 3
        self.net = energy_net(self.data_shape, hidden, int(channels), int(out_features),
                              init.get_rng(int(seed)))
        self.base_std = None if (self.image or base_std is None) else float(base_std)
        self.init_range = 1.0 if self.image else float(init_range)
        self.sampler, self.sample_steps = sampler, int(sample_steps)
        self.sample_step_size = float(sample_step_size)
        self.sample_noise_scale = None if sample_noise_scale is None else float(sample_noise_scale)
        self.last_acceptance_rate = self.last_grad_norm = None
        self._log_z_cache = (None, None)

    # --------------------------------------------------------------- the density
    def energy(self, x):
        """E_theta(x), (B, *data_shape) -> (B,)."""
        x = as_tensor(x)
        e = self.net(x)
        if self.base_std is not None:                                  # + |x|^2 / (2 s^2)
            e = e + (x * x).reshape(x.shape[0], -1).sum(1) / (2.0 * self.base_std ** 2)
        return e

    def unnormalized_log_prob(self, x):
        """-E_theta(x) = log p_theta(x) + log Z_theta, (B,)."""
        return -self.energy(x)

    def _fingerprint(self):
        return tuple(float((p.data.astype(xp.float64) ** 2).sum()) + float(p.data.sum())
                     for p in self.parameters())

    def log_normalizer(self, **kw):
        """log Z_theta by grid quadrature (2D only; see quadrature.py). Returns a float."""
        key = self._fingerprint()
        if self._log_z_cache[0] != key or kw:
            log_z, _ = grid_log_normalizer(self.energy, self.data_shape, **kw)
            if kw:
                return log_z
            self._log_z_cache = (key, log_z)
        return self._log_z_cache[1]

    @property
    def log_prob(self):
        """Exact log p_theta(x) = -E_theta(x) - log Z_theta, (B, 2) -> (B,), for 2D models."""
        if self.data_shape != (2,):
            raise AttributeError(f"log_prob needs the 2D grid normaliser; this energy model's "
                                 f"examples have shape {self.data_shape}")
        return lambda x: -self.energy(x) - self.log_normalizer()

    # --------------------------------------------------------------- sampling
    def noise(self, n, rng):
        """n starting points (n, *data_shape), uniform on [-init_range, init_range]."""
        u = rng.random((int(n),) + self.data_shape, dtype=xp.float32)
        return self.init_range * (2.0 * u - 1.0)

    def initial_noise(self, n, seed):
        """n starting points from a host generator seeded by ``seed`` (same on CPU and GPU)."""
        u = init.get_rng(int(seed)).random((int(n),) + self.data_shape)
        return asarray(self.init_range * (2.0 * u - 1.0), dtype=xp.float32)

    def run_chains(self, x, n_steps, step_size, rng, sampler="ula", noise_scale=None):
        """Run ``sampler`` on p_theta from x; returns the last states (and sets the acceptance)."""
        target = self.unnormalized_log_prob
        if sampler == "ula":
            out = samplers.langevin(x, log_prob=target, n_steps=n_steps, step_size=step_size,
                                    noise_scale=noise_scale, rng=rng)
        elif sampler == "mala":
            out = samplers.mala(x, log_prob=target, n_steps=n_steps, step_size=step_size, rng=rng)
        else:
            out = samplers.random_walk_metropolis(x, log_prob=target, n_steps=n_steps,
                                                  scale=math.sqrt(step_size), rng=rng)
        self.last_acceptance_rate, self.last_grad_norm = out.acceptance_rate, out.grad_norm
        return out.x

    def sample(self, n, cond=None, *, rng, steps=None):
        """n samples (n, *data_shape): ``steps`` (default sample_steps) of the model's sampler
        from uniform noise."""
        x0 = self.noise(n, rng)
        return self.run_chains(x0, self.sample_steps if steps is None else int(steps),
                               self.sample_step_size, rng, self.sampler, self.sample_noise_scale)
