"""The adversarial objectives, written on the discriminator's logits.

Minimax game (Goodfellow et al., 2014, eq. 1), with D(x) = sigmoid(a(x)) for a logit a:

    V(D, G) = E_p[log D(x)] + E_z[log(1 - D(G(z)))]
    log D = log sigmoid(a) = -softplus(-a),   log(1 - D) = log sigmoid(-a) = -softplus(a)

softplus(a) = max(a, 0) + log1p(exp(-|a|)) is finite for every logit, so neither loss ever
evaluates log(0). The discriminator ascends V (descends -V); the generator descends

    saturating      E_z[log(1 - D(G(z)))]   = -E softplus(a_fake)
    non-saturating  -E_z[log D(G(z))]        =  E softplus(-a_fake)   (Goodfellow et al. 2014, Sec. 3)

Both have the same fixed point; the first's gradient vanishes when D rejects fakes
confidently (d/da of -softplus(a) is -sigmoid(a) -> 0 as a -> -inf), the second's does not.

Wasserstein GAN (Arjovsky et al., 2017, eq. 3): the critic f maximises E_p[f] - E_q[f] over
1-Lipschitz f; the generator descends -E_z[f(G(z))]. The constraint is imposed by clipping
every critic weight to [-c, c] (the paper's algorithm 1), or by the gradient penalty
(Gulrajani et al., 2017, eq. 3) on random interpolates x_hat = e x + (1 - e) G(z), e ~ U[0, 1]:

    lambda E[(||grad_x_hat f(x_hat)||_2 - 1)^2]

R1 (Mescheder et al., 2018, eq. 9) penalises the discriminator's gradient on real data:
(gamma / 2) E_p[||grad_x D(x)||^2]. Both penalties differentiate a gradient: they need
``refgen.grad(..., create_graph=True)``.

InfoGAN (Chen et al., 2016, eq. 5): a code c ~ p(c) into the generator, and an auxiliary
posterior Q(c | x) read from the discriminator's features, give a variational lower bound on
the mutual information between the code and the generated image,

    L_I(G, Q) = E_{c ~ p(c), x ~ G(z, c)}[log Q(c | x)] + H(c)  <=  I(c; G(z, c)),

tight when Q is the true posterior; both G and Q ascend it (lambda L_I enters both losses).
"""
from __future__ import annotations

import math

import refgen
import refgen.functional as F

__all__ = ["minimax_value", "d_loss_minimax", "g_loss_saturating", "g_loss_nonsaturating",
           "critic_loss_wgan", "g_loss_wgan", "gradient_norms", "gradient_penalty",
           "r1_penalty", "interpolate", "info_bound"]


# ----------------------------------------------------------------------------- minimax
def minimax_value(real_logits, fake_logits):
    """V(D, G) = E_p[log D(x)] + E_z[log(1 - D(G(z)))] from D's logits on real and fake."""
    return -F.mean(F.softplus(-real_logits)) - F.mean(F.softplus(fake_logits))


def d_loss_minimax(real_logits, fake_logits):
    """The discriminator's loss, -V(D, G): binary cross-entropy, real = 1, fake = 0."""
    return -minimax_value(real_logits, fake_logits)


def g_loss_saturating(fake_logits):
    """E_z[log(1 - D(G(z)))] = -E softplus(a): the generator's side of the minimax game."""
    return -F.mean(F.softplus(fake_logits))


def g_loss_nonsaturating(fake_logits):
    """-E_z[log D(G(z))] = E softplus(-a): the heuristic with strong early gradients."""
    return F.mean(F.softplus(-fake_logits))


# ----------------------------------------------------------------------------- Wasserstein
def critic_loss_wgan(real_scores, fake_scores):
    """-(E_p[f(x)] - E_q[f(x)]): the critic descends the negative W1 estimate."""
    return F.mean(fake_scores) - F.mean(real_scores)


def g_loss_wgan(fake_scores):
    """-E_z[f(G(z))]."""
    return -F.mean(fake_scores)


# ----------------------------------------------------------------------------- penalties
def interpolate(real, fake, rng):
    """x_hat = e x + (1 - e) x_fake with one e ~ U[0, 1] per example; a leaf requiring grad."""
    x, xf = real.data, fake.data
    e = rng.random((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype)   # (B, 1, ...)
    return refgen.tensor(e * x + (1 - e) * xf, requires_grad=True)


def gradient_norms(scores, inputs, group: int = 1):
    """||grad_x D(x)||_2 per D input, differentiable (create_graph=True): (B / group,).

    ``group`` consecutive examples form one D input (PacGAN packing), so their gradients
    make one vector.
    """
    (g,) = refgen.grad(F.sum(scores), [inputs], create_graph=True)      # (B, *shape)
    g = F.reshape(g, (g.shape[0] // group, -1))                          # (B / group, D)
    return F.sqrt(F.sum(g * g, dim=1) + 1e-12)


def gradient_penalty(critic, real, fake, rng, lam: float = 10.0, group: int = 1):
    """lambda E[(||grad f(x_hat)||_2 - 1)^2] on random interpolates (Gulrajani et al., 2017)."""
    x_hat = interpolate(real, fake, rng)
    norms = gradient_norms(critic(x_hat), x_hat, group)
    return lam * F.mean((norms - 1.0) ** 2)


def r1_penalty(discriminator, real, gamma: float, group: int = 1):
    """(gamma / 2) E_p[||grad_x D(x)||^2] on real data (Mescheder et al., 2018)."""
    x = refgen.tensor(real.data, requires_grad=True)
    norms = gradient_norms(discriminator(x), x, group)
    return 0.5 * gamma * F.mean(norms * norms)


# ----------------------------------------------------------------------------- InfoGAN
def info_bound(code_logits, c):
    """L_I = E[log Q(c | x)] + H(c) in nats, for Q's logits (B, K) on samples G(z, c) of a
    uniform code c (B,) of K values, H(c) = log K (Chen et al., 2016, eq. 5)."""
    return math.log(code_logits.shape[1]) - F.cross_entropy(code_logits, c)
