"""Maximum-likelihood EBM: the contrastive gradient with persistent Langevin chains.

The log-likelihood's gradient (Song & Kingma 2021, eq. 3):

    grad_theta log p_theta(x) = -grad_theta E_theta(x) + E_{x- ~ p_theta}[grad_theta E_theta(x-)]

(the second term is grad_theta of -log Z_theta = -log int exp(-E_theta)). So the loss whose
gradient is the negative log-likelihood's, with x- drawn by MCMC and held fixed, is

    L = mean E_theta(x+) - mean E_theta(x-)   (+ alpha (mean E(x+)^2 + mean E(x-)^2))

The regulariser (Du & Mordatch 2019) keeps energies near 0: without it E can drift by a
constant and grow in magnitude without changing p. It is not part of the likelihood's
gradient and flattens the energy over the data, so it is kept small (alpha = 0.01: on
8gaussians the entropy gap was 0.054 nats with it, 0.122 with alpha = 0.1; docs/energy.md). Negatives x- come from ``mcmc_steps`` of
ULA (or MALA) started in a replay buffer of ``buffer_size`` persistent chains, a ``reinit``
fraction restarted from uniform noise each step; the buffer is part of the state_dict, so a
checkpoint holds every chain's state and a resumed run continues them exactly.
"""
from __future__ import annotations

from refgen.autograd import Tensor
from refgen.models import register
from refgen.models.energy.base import SAMPLERS, EnergyModel
from refgen.samplers import NonFiniteEnergy, ReplayBuffer, _check_positive

__all__ = ["EBM", "contrastive_loss", "sampling_failed"]


def contrastive_loss(e_pos, e_neg, alpha=0.0):
    """mean E(x+) - mean E(x-) + alpha (mean E(x+)^2 + mean E(x-)^2), from energies (B,)."""
    loss = e_pos.mean() - e_neg.mean()                    # gradient: -grad log-likelihood
    if alpha:
        loss = loss + alpha * ((e_pos * e_pos).mean() + (e_neg * e_neg).mean())
    return loss


def sampling_failed(e: NonFiniteEnergy):
    """The training loop's divergence error for a chain that left the finite energies."""
    from refgen.train import TrainingDiverged
    return TrainingDiverged(f"sampling negatives: {e}")


class PersistentChains:
    """The negative sampler shared by the MCMC-trained models (ebm, jem)."""

    def _init_chains(self, buffer_size, reinit, seed, mcmc, mcmc_steps, mcmc_step_size,
                     noise_scale):
        if mcmc not in SAMPLERS:
            raise ValueError(f"mcmc must be one of {', '.join(SAMPLERS)}, got {mcmc!r}")
        _check_positive("mcmc_step_size", mcmc_step_size)
        if noise_scale is not None:
            _check_positive("noise_scale", noise_scale)
        self.mcmc, self.mcmc_steps = mcmc, int(mcmc_steps)
        self.mcmc_step_size = float(mcmc_step_size)
        self.noise_scale = None if noise_scale is None else float(noise_scale)
        self.buffer = ReplayBuffer(int(buffer_size), self.initial_noise(buffer_size, seed + 1),
                                   reinit)

    def negatives(self, n, rng):
        """n samples x- from the persistent chains (an xp array), the buffer updated; the
        reinitialised chains and the chains' noise drawn from ``rng``."""
        x0, idx = self.buffer.draw(n, rng, self.noise)
        try:
            x = self.run_chains(x0, self.mcmc_steps, self.mcmc_step_size, rng, self.mcmc,
                                self.noise_scale)
        except NonFiniteEnergy as e:
            raise sampling_failed(e) from e
        self.buffer.push(idx, x)
        if self.mcmc == "ula":  # the chains' mean |grad_x E|: into the log line
            self.last_stats = {"chain_grad_norm": float(self.last_grad_norm)}
        else:                   # MALA and random-walk MH accept or reject: into the log line
            self.last_stats = {"acceptance_rate": float(self.last_acceptance_rate)}
        return x

    def chain_loss(self, x_pos, x_neg):
        """contrastive_loss on E(x+) and E(x-); logs the energy gap mean E(x+) - mean E(x-)
        (Nijkamp et al. 2019's diagnostic: near 0 when the chains match the data)."""
        e_pos, e_neg = self.energy(x_pos), self.energy(Tensor(x_neg))
        self.last_stats["energy_gap"] = float(e_pos.data.mean() - e_neg.data.mean())
        return contrastive_loss(e_pos, e_neg, self.alpha)


@register("ebm")
class EBM(PersistentChains, EnergyModel):
    """Energy model trained by maximum likelihood (the contrastive gradient).

    alpha: weight of the energy-magnitude regulariser. mcmc: the training sampler ('ula'
    default, 'mala', 'rwm'), mcmc_steps per training step from the replay buffer,
    mcmc_step_size its eps, noise_scale its sigma (None: sqrt(eps), the untempered ULA).
    buffer_size persistent chains, a ``reinit`` fraction restarted from noise each step.
    sample_noise_scale tempers the ULA of ``sample`` (None: untempered). The density,
    sampler and normaliser are EnergyModel's (base.py).
    """

    default_train = dict(steps=4000, batch_size=256, lr=1e-3)

    def __init__(self, data_shape, *, seed=0, hidden=(128, 128), channels=32, base_std=3.0,
                 init_range=4.5, alpha=0.01, mcmc="ula", mcmc_steps=40, mcmc_step_size=1e-2,
                 noise_scale=None, buffer_size=10000, reinit=0.05, sampler="mala",
                 sample_steps=300, sample_step_size=1e-2, sample_noise_scale=None):
        super().__init__(data_shape, seed=seed, hidden=hidden, channels=channels,
                         base_std=base_std, init_range=init_range, sampler=sampler,
                         sample_steps=sample_steps, sample_step_size=sample_step_size,
                         sample_noise_scale=sample_noise_scale)
        self.alpha = float(alpha)
        self._init_chains(buffer_size, reinit, int(seed), mcmc, mcmc_steps, mcmc_step_size,
                          noise_scale)

    def loss(self, batch, rng):
        """The contrastive loss on a batch x+ and as many negatives x- from the chains."""
        x_neg = self.negatives(batch.x.shape[0], rng)
        return self.chain_loss(batch.x, x_neg)
