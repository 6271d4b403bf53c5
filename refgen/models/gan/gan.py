"""The GAN models: one alternating training step, six objectives and a code mixed into two.

    gan       minimax game, saturating generator loss    (Goodfellow et al., 2014)
    nsgan     minimax discriminator, non-saturating G     (Goodfellow et al., 2014, Sec. 3)
    wgan      critic with weight clipping, RMSprop        (Arjovsky et al., 2017, Alg. 1)
    wgan-gp   critic with the gradient penalty, Adam      (Gulrajani et al., 2017, Alg. 1)
    fgan      variational f-divergence bound              (Nowozin et al., 2016)
    cgan      nsgan with labels into G and D              (Mirza & Osindero, 2014;
              projection discriminator option: Miyato & Koyama, 2018)
    infogan   nsgan with a categorical code into G and its posterior Q(c | x) read from
              D's features, both ascending the mutual-information bound (Chen et al., 2016)
    infowgan-gp  wgan-gp with the same code and posterior (``_Coded``)

Every model but the coded two also takes ``pack`` (PacGAN, Lin et al., 2018: ``pack`` samples
form one D input) and the minimax ones ``r1`` (Mescheder et al., 2018).

One loop step = one discriminator (critic) step on the loop's batch of real data and as
many generated samples; every ``n_critic``-th of them is followed by one generator step.
"Every n-th" is counted by the discriminator optimizer's step counter, which the checkpoint
saves, so a resumed run alternates exactly as the uninterrupted one. With n_critic = 5 a
run of S loop steps makes S critic steps and S / 5 generator steps, as the WGAN papers
count (each critic step sees a fresh batch of real data).
"""
from __future__ import annotations

import refgen.functional as F
from refgen import backend
from refgen.autograd import Tensor, no_grad
from refgen.backend import xp
from refgen.models import register
from refgen.models.base import DataSpec
from refgen.models.gan import fdiv
from refgen.models.gan import losses as L
from refgen.models.gan.drs import RejectionSampler
from refgen.models.gan.nets import NORMS, Discriminator, Generator
from refgen.nn import Linear, Module, init

__all__ = ["AdversarialModel", "GAN", "NSGAN", "WGAN", "WGANGP", "FGAN", "CGAN", "InfoGAN",
           "InfoWGANGP"]


def _sizes(hidden):
    """Hidden sizes from an int, a list, or a string such as '128,128' (for --set)."""
    if isinstance(hidden, str):
        hidden = [h for h in hidden.replace(" ", "").split(",") if h]
    sizes = (int(hidden),) if isinstance(hidden, (int, float)) else tuple(int(h) for h in hidden)
    if not sizes or any(h < 1 for h in sizes):
        raise ValueError(f"hidden sizes must be positive integers, got {hidden!r}")
    return sizes


def _truncation(tau, name):
    """The truncation threshold as a float, refused unless a positive finite number."""
    try:
        t = float(tau)
    except (TypeError, ValueError):
        t = float("nan")
    if not (0 < t < float("inf")) or isinstance(tau, bool):
        raise ValueError(f"{name}: truncation={tau!r}; accepted: a positive number (the bound "
                         "on each |z_i|), or None for the untruncated prior")
    return t


class AdversarialModel(Module):
    """What every GAN shares: G, D, the alternating ``train_step``, ``sample``.

    Subclasses define ``d_objective(real_scores, fake_scores)``, ``g_objective(fake_scores)``
    and ``param_groups``; ``penalty(real, fake, y)`` adds to the discriminator's loss.
    """

    data_spec = DataSpec(("continuous",), (1, 3), image_range=(-1.0, 1.0))
    clip = None

    @property
    def display_name(self):
        """The registered name (``nsgan``) that messages name the model by."""
        return getattr(type(self), "registry_name", type(self).__name__)

    def _build(self, data_shape, *, seed, z_dim, hidden, arch, g_norm, d_norm, pack, n_critic,
               lr_d, lr_g, num_classes=None, cond="concat", embed_dim=16, channels=64,
               codes=None):
        name = self.display_name
        data_shape = tuple(int(d) for d in data_shape)
        if arch == "auto":
            arch = "mlp" if len(data_shape) == 1 else "conv"
        if arch not in ("mlp", "conv"):
            raise ValueError(f"{name}: arch={arch!r}; accepted: auto, mlp, conv")
        if arch == "conv" and len(data_shape) != 3:
            raise ValueError(f"{name}: arch='conv' takes images (C, H, W), got {data_shape}")
        if g_norm == "auto":
            g_norm = "batch" if arch == "conv" else "none"
        for what, v, ok in (("g_norm", g_norm, ("none", "batch")), ("d_norm", d_norm, NORMS),
                            ("cond", cond, ("concat", "projection"))):
            if v not in ok:
                raise ValueError(f"{name}: {what}={v!r}; accepted: {', '.join(ok)}")
        if isinstance(n_critic, bool) or not isinstance(n_critic, int) or n_critic < 1:
            raise ValueError(f"{name}: n_critic={n_critic!r}; accepted: an integer >= 1 "
                             "(discriminator steps per generator step)")
        if isinstance(pack, bool) or not isinstance(pack, int) or pack < 1:
            raise ValueError(f"{name}: pack={pack!r}; accepted: an integer >= 1 "
                             "(samples per discriminator input)")
        if cond == "projection" and pack > 1:
            raise ValueError(f"{name}: cond='projection' with pack={pack}; the projection "
                             "discriminator takes one label per input: use pack=1 or cond='concat'")
        if hidden is None:
            hidden = (128, 128) if arch == "mlp" else (256,)
        z_dim = int(z_dim if z_dim is not None else (64 if arch == "conv" else 8))
        self.data_shape, self.z_dim, self.pack, self.n_critic = data_shape, z_dim, pack, n_critic
        self.num_classes = int(num_classes) if num_classes else None
        self.lr_d, self.lr_g = lr_d, lr_g
        rng = init.get_rng(int(seed))
        self.G = Generator(data_shape, z_dim, _sizes(hidden), arch, g_norm,
                           codes or self.num_classes, embed_dim, channels, rng=rng)
        self.D = Discriminator(data_shape, _sizes(hidden), arch, d_norm, pack, self.num_classes,
                               cond, embed_dim, channels, rng=rng)
        if codes:                      # Q(c | x): logits (B, K) from D's last hidden layer
            self.Q = Linear(_sizes(hidden)[-1], int(codes), rng=rng)

    # --- the pieces each objective defines ------------------------------------------------
    def d_objective(self, real_scores, fake_scores):
        raise NotImplementedError

    def g_objective(self, fake_scores):
        raise NotImplementedError

    def penalty(self, real, fake, y, rng):
        """The discriminator's regulariser (None: none); ``rng`` for penalties that sample."""
        return None

    def _group(self, params, lr, optimizer, **options):
        g = dict(params=list(params), optimizer=optimizer, options=options)
        if lr is not None:
            g["lr"] = float(lr)
        return g

    # --- noise, samples, losses ------------------------------------------------------------
    def _labels(self, n, cond):
        if self.num_classes is None:
            return None
        if cond is None:
            return xp.arange(n) % self.num_classes       # balanced labels
        return backend.asarray(cond).astype(xp.int64).reshape(n)

    def noise(self, n, rng, truncation=None):
        """z ~ N(0, I) drawn from ``rng``: (n, z_dim). With ``truncation`` tau, each component
        is drawn from N(0, 1) restricted to [-tau, tau], by drawing again every component
        outside it until none is (the truncation trick: Brock et al., 2019, Sec. 3.1): samples
        from the denser middle of the prior, trading variety (recall) for fidelity (precision).
        Without it the draws are exactly those of the untruncated prior."""
        tau = None if truncation is None else _truncation(truncation, self.display_name)
        dtype = next(iter(self.G.parameters())).dtype
        z = rng.standard_normal((n, self.z_dim), dtype=dtype)         # z ~ N(0, I): (n, z_dim)
        if tau is None:
            return z
        outside = xp.abs(z) > tau
        while bool(outside.any()):    # one vectorised redraw per round; a fraction P(|z| > tau) stays out
            z[outside] = rng.standard_normal((int(outside.sum()),), dtype=dtype)
            outside = xp.abs(z) > tau
        return z

    def generate(self, n, y, rng, truncation=None):
        """G(z), z from ``noise(n, rng, truncation)``: (n, *data_shape) Tensor, in the graph of
        G's parameters; y: labels (n,) or None."""
        return self.G(Tensor(self.noise(n, rng, truncation)), y)

    def sample(self, n, cond=None, *, rng, truncation=None):
        """n samples as an xp array (balanced labels for a conditional model without cond);
        ``truncation`` tau draws z from the prior truncated to [-tau, tau] per component."""
        with no_grad():
            return self.generate(int(n), self._labels(int(n), cond), rng, truncation).data

    def d_loss(self, x, fake, y, rng):
        """The discriminator's loss on real x and generated ``fake`` (constants), with penalty."""
        loss = self.d_objective(self.D(x, y), self.D(fake, y))
        extra = self.penalty(x, fake, y, rng)
        return loss if extra is None else loss + extra

    def g_loss(self, n, y, rng):
        """The generator's loss on n fresh samples (differentiable in G's parameters)."""
        return self.g_objective(self.D(self.generate(n, y, rng), y))

    def loss(self, batch, rng):
        """The discriminator's training loss on ``batch`` against as many generated samples."""
        with no_grad():
            fake = self.generate(batch.x.shape[0], batch.y, rng)
        return self.d_loss(batch.x, Tensor(fake.data), batch.y, rng)

    def _check_labels(self, batch):
        if self.num_classes is not None and batch.y is None:
            raise ValueError("a conditional GAN needs labelled data (e.g. --data mnist)")

    def train_step(self, batch, optimizers, rng):
        """One discriminator step; then a generator step when its step count hits n_critic."""
        self._check_labels(batch)
        y = batch.y if self.num_classes is not None else None
        opt_d, opt_g = optimizers["D"], optimizers["G"]
        d_loss = self.loss(batch._replace(y=y), rng)
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        if self.clip is not None:                          # w <- clip(w, -c, c)
            for p in opt_d.params:
                p.data = xp.clip(p.data, -self.clip, self.clip)
        info = {"loss": d_loss.item(), "d_loss": d_loss.item()}
        if opt_d.step_count % self.n_critic == 0:
            g_loss = self.g_loss(batch.x.shape[0], y, rng)
            opt_g.zero_grad()
            g_loss.backward()
            opt_g.step()
            info["g_loss"] = g_loss.item()
        return info


class _Minimax(AdversarialModel):
    saturating = True
    default_train = dict(steps=5000, batch_size=64, lr=2e-4)

    def _init(self, data_shape, seed, *, r1, betas, **kw):
        self._build(data_shape, seed=seed, **kw)
        name = type(self).registry_name
        if r1 < 0:
            raise ValueError(f"{name}: r1={r1}; accepted: a weight >= 0")
        if r1 > 0 and kw["d_norm"] == "batch":
            raise ValueError(f"{name}: the R1 penalty on a batch-normalized discriminator mixes "
                             "examples in the gradient; use d_norm='none' or 'spectral'")
        self.r1, self.betas = float(r1), tuple(betas)

    def d_objective(self, real_scores, fake_scores):
        return L.d_loss_minimax(real_scores, fake_scores)          # -V(D, G)

    def g_objective(self, fake_scores):
        if self.saturating:
            return L.g_loss_saturating(fake_scores)                # E log(1 - D(G(z)))
        return L.g_loss_nonsaturating(fake_scores)                 # -E log D(G(z))

    def penalty(self, real, fake, y, rng):
        if not self.r1:
            return None
        return L.r1_penalty(lambda x: self.D(x, y), real, self.r1, group=self.pack)

    def param_groups(self):
        return {"D": self._group(self.D.parameters(), self.lr_d, "adam", betas=self.betas),
                "G": self._group(self.G.parameters(), self.lr_g, "adam", betas=self.betas)}

    def sample(self, n, cond=None, *, rng, truncation=None, drs=None):
        """n samples as an xp array; ``truncation`` as AdversarialModel.sample; ``drs`` gamma:
        G's samples thinned by discriminator rejection sampling (drs.py; 0 is exact), the
        bound M from a burn-in of 10,000 proposals drawn from ``rng``."""
        if drs is None:
            return super().sample(n, cond, rng=rng, truncation=truncation)
        if truncation is not None:
            raise ValueError(f"{self.display_name}: truncation and drs together; "
                             "accepted: one of them (rejection proposes from the full prior)")
        return RejectionSampler(self, gamma=drs).sample(n, cond, rng=rng)


@register("gan")
class GAN(_Minimax):
    """The minimax game with the saturating generator loss log(1 - D(G(z)))."""
    saturating = True

    def __init__(self, data_shape, *, seed=0, z_dim=None, hidden=None, channels=64, arch="auto",
                 g_norm="auto", d_norm="none", pack=1, n_critic=1, r1=0.0, betas=(0.5, 0.999),
                 lr_d=None, lr_g=None):
        super().__init__()
        self._init(data_shape, seed, r1=r1, betas=betas, z_dim=z_dim, hidden=hidden, arch=arch,
                   g_norm=g_norm, d_norm=d_norm, pack=pack, n_critic=n_critic, lr_d=lr_d,
                   lr_g=lr_g, channels=channels)


@register("nsgan")
class NSGAN(GAN):
    """The minimax discriminator with the non-saturating generator loss -log D(G(z))."""
    saturating = False


@register("cgan")
class CGAN(_Minimax):
    """A conditional non-saturating GAN: a label embedding into G and D ('concat') or a
    projection discriminator ('projection')."""
    saturating = False

    def __init__(self, data_shape, *, num_classes=None, seed=0, z_dim=None, hidden=None,
                 channels=64, arch="auto", g_norm="auto", d_norm="none", cond="concat",
                 embed_dim=16, pack=1, n_critic=1, r1=0.0, betas=(0.5, 0.999), lr_d=None,
                 lr_g=None):
        super().__init__()
        if not num_classes:
            raise ValueError("cgan is conditional and needs labelled data (num_classes); "
                             "accepted: a labelled data set such as mnist or mnist-14")
        self._init(data_shape, seed, r1=r1, betas=betas, z_dim=z_dim, hidden=hidden, arch=arch,
                   g_norm=g_norm, d_norm=d_norm, pack=pack, n_critic=n_critic, lr_d=lr_d,
                   lr_g=lr_g, num_classes=num_classes, cond=cond, embed_dim=embed_dim,
                   channels=channels)


class _Coded:
    """A categorical code c ~ U{0, ..., K-1} into G (an embedding, as cgan's labels) and its
    posterior Q(c | x) = softmax(Q h(x)) on D's last hidden layer h; D (with Q) and G each add
    -info * L_I to the loss of the objective it is mixed into (Chen et al., 2016, eq. 6). The
    model never reads the data's labels: the code's meaning is whatever the bound makes G give
    it. ``sample(n, cond=codes)`` draws with chosen codes, otherwise c ~ p(c)."""

    def _code_options(self, codes, info):
        """Check and keep the number of code values K and the weight on the bound."""
        name = self.display_name
        if isinstance(codes, bool) or not isinstance(codes, int) or codes < 2:
            raise ValueError(f"{name}: codes={codes!r}; accepted: an integer >= 2 (the "
                             "number of values of the categorical code)")
        try:
            weight = float(info)
        except (TypeError, ValueError):
            weight = float("nan")
        if isinstance(info, bool) or not 0 <= weight < float("inf"):
            raise ValueError(f"{name}: info={info!r}; accepted: a weight >= 0 on the "
                             "mutual-information bound")
        self.codes, self.info = codes, weight

    def _labels(self, n, cond):
        """The codes asked for (n,), or None: ``generate`` then draws c ~ p(c)."""
        return None if cond is None else backend.asarray(cond).astype(xp.int64).reshape(n)

    def coded(self, n, rng, c=None, truncation=None):
        """(G(z, c), c): n samples in the graph of G's parameters, and their codes (n,),
        c ~ U{0, ..., K-1} drawn from ``rng`` unless given."""
        if c is None:
            c = rng.integers(0, self.codes, size=n)                  # c ~ p(c): (n,)
        return self.G(Tensor(self.noise(n, rng, truncation)), c), c

    def generate(self, n, y, rng, truncation=None):
        return self.coded(n, rng, y, truncation)[0]

    def info_bound(self, x, c):
        """L_I = E[log Q(c | x)] + log K (eq. 5) on samples x (B, ...) of codes c (B,)."""
        return L.info_bound(self.Q(self.D.features(x)), c)

    def loss(self, batch, rng):
        """D's loss on real data and as many coded samples (labels unread), with its penalty,
        less info * L_I."""
        with no_grad():
            fake, c = self.coded(batch.x.shape[0], rng)
        fake = Tensor(fake.data)
        h = self.D.features(fake)                                    # (B, hidden[-1])
        loss = self.d_objective(self.D(batch.x), self.D.score(h))
        extra = self.penalty(batch.x, fake, None, rng)
        loss = loss - self.info * L.info_bound(self.Q(h), c)         # eq. 6, D and Q's side
        return loss if extra is None else loss + extra

    def g_loss(self, n, y, rng):
        """G's loss on n fresh coded samples, less info * L_I: G's side of eq. 6."""
        fake, c = self.coded(n, rng)
        h = self.D.features(fake)
        return self.g_objective(self.D.score(h)) - self.info * L.info_bound(self.Q(h), c)

    def param_groups(self):
        groups = super().param_groups()
        groups["D"]["params"] += list(self.Q.parameters())          # Q shares D's trunk and step
        return groups


@register("infogan")
class InfoGAN(_Coded, _Minimax):
    """The non-saturating GAN with a categorical code (``_Coded``): D's loss -V(D, G) -
    info * L_I, G's -E log D(G(z, c)) - info * L_I (Chen et al., 2016, eq. 6)."""
    saturating = False

    def __init__(self, data_shape, *, codes=10, info=1.0, seed=0, z_dim=None, hidden=None,
                 channels=64, arch="auto", g_norm="auto", d_norm="none", embed_dim=16,
                 n_critic=1, r1=0.0, betas=(0.5, 0.999), lr_d=None, lr_g=None):
        super().__init__()
        self._code_options(codes, info)
        self._init(data_shape, seed, r1=r1, betas=betas, z_dim=z_dim, hidden=hidden, arch=arch,
                   g_norm=g_norm, d_norm=d_norm, pack=1, n_critic=n_critic, lr_d=lr_d,
                   lr_g=lr_g, embed_dim=embed_dim, channels=channels, codes=codes)


@register("wgan")
class WGAN(AdversarialModel):
    """Wasserstein GAN: the critic's W1 estimate, a 1-Lipschitz constraint by weight clipping
    (``clip``, the paper's c = 0.01, RMSprop) or by the gradient penalty (``gp``)."""

    default_train = dict(steps=5000, batch_size=64, lr=5e-5)

    def __init__(self, data_shape, *, seed=0, z_dim=None, hidden=None, channels=64, arch="auto",
                 g_norm="auto", d_norm="none", pack=1, n_critic=5, clip=0.01, gp=0.0,
                 optimizer="rmsprop", betas=(0.0, 0.9), lr_d=None, lr_g=None):
        super().__init__()
        self._init(data_shape, seed, clip=clip, gp=gp, optimizer=optimizer, betas=betas,
                   d_norm=d_norm, z_dim=z_dim, hidden=hidden, arch=arch, g_norm=g_norm,
                   pack=pack, n_critic=n_critic, lr_d=lr_d, lr_g=lr_g, channels=channels)

    def _init(self, data_shape, seed, *, clip, gp, optimizer, betas, d_norm, **kw):
        self._build(data_shape, seed=seed, d_norm=d_norm, **kw)
        name = type(self).registry_name
        clip = None if clip in (None, 0, 0.0) else float(clip)
        if clip is not None and clip < 0:
            raise ValueError(f"{name}: clip={clip}; accepted: a bound c > 0, or null for none")
        if gp < 0:
            raise ValueError(f"{name}: gp={gp}; accepted: a penalty weight >= 0")
        if clip is not None and gp > 0:
            raise ValueError(f"{name}: a gradient penalty (gp={gp:g}) on a weight-clipped critic "
                             f"(clip={clip:g}); accepted: clip or gp, not both (wgan-gp is gp=10 "
                             "with clip=null)")
        if clip is None and gp == 0:
            raise ValueError(f"{name}: the critic needs a Lipschitz constraint; accepted: "
                             "clip > 0 (weight clipping) or gp > 0 (gradient penalty)")
        if gp > 0 and d_norm == "batch":
            raise ValueError(f"{name}: the gradient penalty on a batch-normalized critic "
                             "mixes examples in the gradient; use d_norm='none' or 'spectral'")
        if optimizer not in ("rmsprop", "adam"):
            raise ValueError(f"{name}: optimizer={optimizer!r}; accepted: rmsprop, adam")
        self.clip, self.gp, self.optimizer, self.betas = clip, float(gp), optimizer, tuple(betas)

    def d_objective(self, real_scores, fake_scores):
        return L.critic_loss_wgan(real_scores, fake_scores)        # E_q f - E_p f

    def g_objective(self, fake_scores):
        return L.g_loss_wgan(fake_scores)                          # -E_q f

    def penalty(self, real, fake, y, rng):
        if not self.gp:
            return None
        return L.gradient_penalty(lambda x: self.D(x, y), real, fake, rng, self.gp,
                                  group=self.pack)

    def param_groups(self):
        opts = {"betas": self.betas} if self.optimizer == "adam" else {}
        return {"D": self._group(self.D.parameters(), self.lr_d, self.optimizer, **opts),
                "G": self._group(self.G.parameters(), self.lr_g, self.optimizer, **opts)}


@register("wgan-gp")
class WGANGP(WGAN):
    """WGAN with the gradient penalty lambda = 10 on random interpolates, Adam (0, 0.9)."""

    default_train = dict(steps=5000, batch_size=64, lr=1e-4)

    def __init__(self, data_shape, *, seed=0, z_dim=None, hidden=None, channels=64, arch="auto",
                 g_norm="auto", d_norm="none", pack=1, n_critic=5, clip=None, gp=10.0,
                 optimizer="adam", betas=(0.0, 0.9), lr_d=None, lr_g=None):
        super().__init__(data_shape, seed=seed, z_dim=z_dim, hidden=hidden, channels=channels,
                         arch=arch, g_norm=g_norm, d_norm=d_norm, pack=pack, n_critic=n_critic,
                         clip=clip, gp=gp, optimizer=optimizer, betas=betas, lr_d=lr_d, lr_g=lr_g)


@register("infowgan-gp")
class InfoWGANGP(_Coded, WGAN):
    """WGAN-GP with a categorical code (``_Coded``): the critic's loss E_q f - E_p f + the
    gradient penalty - info * L_I, G's -E_q f - info * L_I; Q reads the code from the critic's
    last hidden layer, and the penalty constrains the score f alone."""

    default_train = WGANGP.default_train

    def __init__(self, data_shape, *, codes=10, info=1.0, seed=0, z_dim=None, hidden=None,
                 channels=64, arch="auto", g_norm="auto", d_norm="none", embed_dim=16,
                 n_critic=5, gp=10.0, betas=(0.0, 0.9), lr_d=None, lr_g=None):
        AdversarialModel.__init__(self)        # Module's: WGAN's own would build without Q
        self._code_options(codes, info)
        self._init(data_shape, seed, clip=None, gp=gp, optimizer="adam", betas=betas,
                   d_norm=d_norm, z_dim=z_dim, hidden=hidden, arch=arch, g_norm=g_norm,
                   pack=1, n_critic=n_critic, lr_d=lr_d, lr_g=lr_g, channels=channels,
                   embed_dim=embed_dim, codes=codes)


@register("fgan")
class FGAN(AdversarialModel):
    """f-GAN: the discriminator ascends E_p[g_f(V)] - E_q[f*(g_f(V))], a lower bound on
    D_f(P || Q); the generator ascends E_q[g_f(V(G(z)))] (Nowozin et al., Sec. 3.2)."""

    default_train = dict(steps=5000, batch_size=64, lr=2e-4)

    def __init__(self, data_shape, *, seed=0, divergence="jensen_shannon", z_dim=None,
                 hidden=None, channels=64, arch="auto", g_norm="auto", d_norm="none", pack=1,
                 n_critic=1, betas=(0.5, 0.999), lr_d=None, lr_g=None):
        super().__init__()
        self.div = fdiv.get(divergence)
        self._build(data_shape, seed=seed, z_dim=z_dim, hidden=hidden, arch=arch,
                    g_norm=g_norm, d_norm=d_norm, pack=pack, n_critic=n_critic, lr_d=lr_d,
                    lr_g=lr_g, channels=channels)
        self.betas = tuple(betas)

    def d_objective(self, real_scores, fake_scores):
        return -fdiv.variational_bound(self.div, real_scores, fake_scores)

    def g_objective(self, fake_scores):
        return -F.mean(self.div.activation(fake_scores))           # -E_q g_f(V(G(z)))

    def param_groups(self):
        return {"D": self._group(self.D.parameters(), self.lr_d, "adam", betas=self.betas),
                "G": self._group(self.G.parameters(), self.lr_g, "adam", betas=self.betas)}
