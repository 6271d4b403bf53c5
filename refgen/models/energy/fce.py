"""Flow contrastive estimation (Gao et al. 2020): NCE against a flow trained jointly.

A flow q_alpha (refgen's RealNVP) is the contrast. With log p_theta(x) = -E_theta(x) - c and
G(x) = log p_theta(x) - log q_alpha(x), the value

    V(theta, alpha) = mean_data log sigma(G(x)) + mean_{y ~ q_alpha} log(1 - sigma(G(y)))

is maximised by the energy (theta, c), a classifier of data against flow samples, and
minimised by the flow, whose samples y = f_alpha^{-1}(z) carry the gradient through the
flow. One backward of L = -V gives both: the energy's parameters step along -dL, the
flow's gradients are negated before their step (the minimax of Gao et al., one update of
each per training step). ``flow_mle`` adds that weight times the flow's
negative log-likelihood of the data to the flow's objective (0: the paper's pure minimax).
"""
from __future__ import annotations

import math

from refgen.autograd import Tensor
from refgen.backend import xp
from refgen.models import register
from refgen.models.energy.base import EnergyModel
from refgen.models.energy.nce import nce_loss
from refgen.models.flows import RealNVP
from refgen.nn import Parameter

__all__ = ["EBMFCE"]


@register("ebm-fce")
class EBMFCE(EnergyModel):
    """Energy model fitted by FCE against a jointly trained RealNVP flow."""

    data_spec = EnergyModel.data_spec._replace(ndims=(1,))
    default_train = dict(steps=4000, batch_size=256, lr=1e-3)

    def __init__(self, data_shape, *, seed=0, hidden=(128, 128), base_std=3.0, init_range=4.5,
                 flow_couplings=6, flow_hidden=(64, 64), flow_lr=None, flow_mle=0.0,
                 sampler="mala", sample_steps=300, sample_step_size=1e-2):
        super().__init__(data_shape, seed=seed, hidden=hidden, base_std=base_std,
                         init_range=init_range, sampler=sampler, sample_steps=sample_steps,
                         sample_step_size=sample_step_size)
        self.log_z = Parameter(xp.zeros((), dtype=xp.float32))
        self.flow = RealNVP(data_shape, seed=int(seed) + 1, couplings=int(flow_couplings),
                            hidden=list(flow_hidden))
        self.flow_lr, self.flow_mle = flow_lr, float(flow_mle)

    def param_groups(self):
        flow = list(self.flow.parameters())
        ids = {id(p) for p in flow}
        energy = [p for p in self.parameters() if id(p) not in ids]
        g = dict(params=flow) if self.flow_lr is None else dict(params=flow, lr=float(self.flow_lr))
        return {"energy": energy, "flow": g}

    def log_ratio(self, x):
        """G(x) = -E(x) - c - log q_alpha(x), (B,)."""
        return -self.energy(x) - self.log_z - self.flow.log_prob(x)

    def value_loss(self, x, rng):
        """L = -V: the energy minimises it, the flow maximises it. Also the classifier's
        accuracy. The flow's samples y start from z ~ N(0, I) drawn from ``rng``."""
        z = rng.standard_normal((x.shape[0], math.prod(self.data_shape)), dtype=xp.float32)
        y = self.flow.inverse(Tensor(z))                        # differentiable in alpha
        g_x, g_y = self.log_ratio(x), self.log_ratio(y)
        acc = 0.5 * (float((g_x.data > 0).mean()) + float((g_y.data < 0).mean()))
        return nce_loss(g_x, g_y), acc

    def loss(self, batch, rng):
        return self.value_loss(batch.x, rng)[0]

    def train_step(self, batch, optimizers, rng):
        for opt in optimizers.values():
            opt.zero_grad()
        loss, acc = self.value_loss(batch.x, rng)
        loss.backward()                                         # dL/dtheta and dL/dalpha
        for p in self.flow.parameters():                        # the flow ascends L (= -V)
            if p.grad is not None:
                p.grad = -p.grad
        if self.flow_mle:                                       # + flow_mle * NLL, flow only
            (-self.flow_mle * self.flow.log_prob(batch.x).mean()).backward()
        optimizers["energy"].step()
        optimizers["flow"].step()
        return {"loss": float(loss.item()), "accuracy": acc}
