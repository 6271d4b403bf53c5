"""Diffusion conditioned on a caption: what GLIDE and Imagen share.

A text encoder (the system's own choice) turns caption ids c (B, L) into

    tokens  h(c) (B, L, W)      the final layer's token features
    pooled  g(c) (B, P)         one vector per caption (the <eot> token's, projected)
    mask    (B, L) boolean      True up to and including <eot> (the padding is never attended)

and the U-Net's noise prediction eps_theta(x_t, t, c) reads them in two places:

    time embedding      e = MLP(sinusoid(t)) + W_g g(c)                      (TextTimeEmbedding)
    attention layers    at every resolution with self-attention, a cross-attention block
                        x + softmax(Q(x) K(h)^T / sqrt(d)) V(h): each pixel attends to the
                        caption's tokens, K and V projected from h(c) by each layer's own maps

GLIDE (Nichol et al. 2022) projects the token features into every attention layer and
concatenates them to that layer's own keys and values, so one softmax runs over pixels and
tokens together; refgen's U-Net gives the tokens a separate cross-attention block after the
self-attention (latent diffusion's layout, Rombach et al. 2022). Both let every pixel read
every token through per-layer K/V projections of the same features; they differ only in
whether the pixels and tokens share one softmax normalisation.

Training is DDPM's (refgen.models.diffusion): t ~ U{1..T}, eps ~ N(0, I), x_t by eq. (3),
L_simple of eq. (19) on the network's target (eps, x_0 or v), with each caption replaced by
the null caption (<sot> <eot>, the empty text) with probability p_uncond, so that one network
learns eps_theta(x_t, t, c) and eps_theta(x_t, t, null). Sampling with guidance w is
classifier-free guidance, eq. (26):

    eps_bar = (w + 1) eps_theta(x_t, t, c) - w eps_theta(x_t, t, null)

run by the diffusion family's samplers (ancestral (17) or DDIM (27)) with its thresholding
of the predicted x_0 (static clipping, or Imagen's dynamic thresholding).
"""
from __future__ import annotations

import dataclasses

from refgen.autograd import Tensor, as_tensor, enable_grad, no_grad
from refgen.backend import asarray, xp
from refgen.data.captions import Tokenizer
from refgen.models.base import DataSpec
from refgen.models.diffusion import guidance as G
from refgen.models.diffusion.config import NetworkConfig, SamplingConfig, make_unet, split_options
from refgen.models.diffusion.losses import l_simple, regression_target
from refgen.models.diffusion.process import PARAMETERIZATIONS, interpret, q_sample, x0_from_eps
from refgen.models.diffusion.sampling import SAMPLERS, THRESHOLDS, sample_loop
from refgen.models.diffusion.schedule import make_schedule
from refgen.nn import Linear, Module, TimeEmbedding

__all__ = ["TextTimeEmbedding", "TextDiffusion", "null_caption", "drop_captions", "caption_batch"]

# the network and sampler defaults of the text-conditioned models (MNIST scale, a CPU)
NETWORK = dataclasses.replace(NetworkConfig(), channels=32, num_res_blocks=1, heads=4,
                              scale_shift=True)
SAMPLING = dataclasses.replace(SamplingConfig(), sampler="ddim", sample_steps=50, guidance=3.0)


def null_caption(tok: Tokenizer, n: int = 1):
    """(n, context) ids of the empty caption <sot> <eot> <pad>...: the null condition."""
    ids = xp.full((n, tok.context), tok.pad, dtype=xp.int64)
    ids[:, 0], ids[:, 1] = tok.sot, tok.eot
    return ids


def drop_captions(ids, p_uncond: float, null, rng):
    """Caption ids (B, L) with each row replaced by the null caption ``null`` (L,) with
    probability p_uncond: the training half of classifier-free guidance (GLIDE: 20%)."""
    if p_uncond <= 0:
        return ids
    keep = rng.random((ids.shape[0],)) >= p_uncond                       # (B,)
    return xp.where(keep[:, None], ids, xp.asarray(null).reshape(1, -1))


def caption_batch(cond, n: int, tok: Tokenizer):
    """Caption ids (n, context) int64 from ids (n, L) or (L,) (repeated n times), or from a
    text or a list of n texts (encoded by ``tok``); ValueError for anything else."""
    if isinstance(cond, str):
        cond = [cond]
    if isinstance(cond, (list, tuple)) and cond and all(isinstance(c, str) for c in cond):
        cond = tok.encode_batch(cond)
    ids = xp.asarray(asarray(cond)).astype(xp.int64)
    if ids.ndim == 1:
        ids = ids.reshape(1, -1)
    if ids.ndim != 2 or ids.shape[1] != tok.context:
        raise ValueError(f"captions of shape {tuple(ids.shape)}: expected token ids (n, "
                         f"{tok.context}) from refgen.data.captions.Tokenizer, or texts")
    if ids.shape[0] == 1 and n > 1:
        ids = xp.broadcast_to(ids, (n, tok.context))
    if ids.shape[0] != n:
        raise ValueError(f"{ids.shape[0]} captions for {n} samples")
    return ids


class TextTimeEmbedding(TimeEmbedding):
    """e = Linear(SiLU(Linear(sinusoid(t)))) + W_g g: the time embedding plus the pooled caption
    vector g (B, pooled_dim), projected. Put in place of a U-Net's ``embed``, whose forward
    hands it its ``y`` argument: the U-Net is called with y = g."""

    def __init__(self, base_dim: int, out_dim: int, pooled_dim: int, rng=None, dtype=xp.float32):
        super().__init__(base_dim, out_dim, None, rng=rng, dtype=dtype)
        self.pooled = Linear(pooled_dim, out_dim, rng=rng, dtype=dtype)

    def forward(self, t, y=None):
        if y is None:
            raise ValueError("a text-conditioned U-Net needs the pooled caption vector (B, P)")
        return super().forward(t) + self.pooled(y)                        # (B, out_dim)


class TextDiffusion(Module):
    """The shared half of GLIDE and Imagen: options, U-Net, loss, guided sampling.

    A subclass builds its text encoder, then calls ``_build_unet(context_dim, pooled_dim, g)``
    and defines ``encode(ids) -> (tokens, pooled, mask)``.
    """

    data_spec = DataSpec(kinds=("continuous",), ndims=(3,), image_range=(-1.0, 1.0))
    default_train = dict(steps=3000, batch_size=64, lr=2e-4, ema=0.999, warmup=200)

    def _setup(self, data_shape, schedule, T, parameterization, variance, p_uncond,
               network, sampling, options):
        groups = split_options(dict(network=network, sampling=sampling), options)
        self.network = groups["network"]
        self.sampling = sa = groups["sampling"]
        self.data_shape = tuple(int(d) for d in data_shape)
        if len(self.data_shape) != 3:
            raise ValueError(f"{self.registry_name} models images (C, H, W); got {self.data_shape}")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {', '.join(PARAMETERIZATIONS)}, "
                             f"got {parameterization!r}")
        if variance not in ("beta", "beta_tilde"):
            raise ValueError(f"variance must be 'beta' or 'beta_tilde', got {variance!r}")
        if not 0.0 <= float(p_uncond) < 1.0:
            raise ValueError(f"p_uncond must be in [0, 1), got {p_uncond}")
        if sa.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sa.sampler!r}")
        self.schedule = make_schedule(schedule, int(T))                   # linear or cosine
        self.T, self.parameterization, self.variance = int(T), parameterization, variance
        self.p_uncond = float(p_uncond)
        self.threshold = _threshold("static" if sa.threshold is None else sa.threshold)
        self.tok = Tokenizer()
        self.dtype = xp.float32
        self.eval_samples = 1000

    def _build_unet(self, context_dim: int, pooled_dim: int, rng, c_in=None, **extra):
        """The U-Net (refgen.models.diffusion.config.make_unet: its arch and switches) with
        cross-attention to the tokens and the pooled vector in its time embedding (c_in input
        channels, default the image's; ``extra``: more UNet keywords). The
        default network has AdaGN ResBlocks (scale_shift), GN(h) (1 + s) + b with (s, b) from
        the embedding, as GLIDE's and Imagen's U-Nets have (an embedding added before a
        GroupNorm whose groups hold one channel each would be subtracted away with the mean)."""
        net = self.network
        if net.net != "unet":
            raise ValueError(f"{self.registry_name} conditions a U-Net on text: net must be 'unet', "
                             f"got {net.net!r}")
        c, size = self.data_shape[0], self.data_shape[-1]
        self.unet = make_unet(net, c if c_in is None else int(c_in), c, size, None, rng,
                              context_dim=int(context_dim), **extra)
        self.unet.embed = TextTimeEmbedding(net.channels, 4 * net.channels, int(pooled_dim), rng=rng)

    # ------------------------------------------------------------------------- the condition
    # captions here; a subclass conditioned on something else (unCLIP's decoder: a CLIP
    # image embedding; the upsampler: a caption and a low-resolution image) redefines them
    def null(self, n: int = 1):
        """The null condition for n samples: (n, context) ids of the empty caption."""
        return null_caption(self.tok, n)

    def encode_prompt(self, text: str):
        """Caption ids (context,) of a prompt (what ``refgen sample --prompt`` passes as cond);
        ValueError in one line for an empty prompt, unknown words or too many words."""
        return self.tok.encode(text)

    def condition(self, cond, n: int):
        """``cond`` as the network's condition for n samples: caption ids (n, context)."""
        return caption_batch(cond, n, self.tok)

    def drop(self, cond, rng):
        """The condition with each row replaced by the null one with probability p_uncond."""
        return drop_captions(cond, self.p_uncond, self.null()[0], rng)

    def with_null(self, cond, n: int):
        """The conditions (n, ...) followed by n null ones (2n, ...): one batch for (26)."""
        return xp.concatenate([cond, self.null(n)])

    def encode(self, cond):
        """(tokens (B, L, W), pooled (B, P), mask (B, L) bool or None) of a condition (B, ...)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------- the network
    def eps_net(self, xt, t_net, cond, rng=None):
        """The U-Net's output at x_t (B, C, H, W), network times t_net (B,), conditions (B, ...)
        (caption ids (B, L)); ``rng`` drives its dropout (training only)."""
        tokens, pooled, mask = self.encode(cond)
        return self.unet(as_tensor(xt), t_net, pooled, rng, context=tokens, context_mask=mask)

    # ------------------------------------------------------------------------- training
    def captions(self, batch):
        """The batch's caption ids (B, L), or ValueError when it has none."""
        ids = batch.y
        if ids is None or getattr(ids, "ndim", 0) != 2:
            raise ValueError(f"{self.registry_name} trains on (image, caption ids) pairs; use "
                             "--data mnist-captions or mnist-captions-14")
        return caption_batch(ids, ids.shape[0], self.tok)

    def loss(self, batch, rng):
        """L_simple (19) at one t ~ U{1..T} per example, captions dropped with p_uncond."""
        return self.diffusion_loss(batch.x, self.captions(batch), rng)

    def diffusion_loss(self, x0, cond, rng):
        """L_simple (19) of images x0 (B, C, H, W) under conditions ``cond`` (B, ...), each
        dropped to the null condition with probability p_uncond."""
        x0 = as_tensor(x0)
        b = x0.shape[0]
        t = rng.integers(1, self.T + 1, size=b)                          # t ~ U{1, ..., T}
        eps = Tensor(rng.standard_normal(x0.shape, dtype=x0.dtype))       # eps ~ N(0, I)
        xt = q_sample(self.schedule, x0, t, eps)                          # (3)
        out = self.eps_net(xt, self.schedule.net_t[t], self.drop(cond, rng), rng)
        return l_simple(regression_target(self.schedule, x0, t, eps, self.parameterization), out)  # (19)

    # ------------------------------------------------------------------------- sampling
    def predictor(self, sch, n, cond=None, guidance=None):
        """predict(x_t, t) -> Prediction at step t of schedule ``sch`` for captions ``cond``
        (None: the null caption), classifier-free guided by w (eq. (26)) when w != 0."""
        w = self.sampling.guidance if guidance is None else float(guidance)
        ids = self.null(n) if cond is None else self.condition(cond, n)
        guided = cond is not None and w != 0.0
        if guided:  # conditional and null conditions in one batch (2n, ...)
            ids = self.with_null(ids, n)

        def predict(x, t):
            t_net = xp.full((n,), int(sch.net_t[t]), dtype=xp.int64)
            if not guided:
                out = self.eps_net(Tensor(x), t_net, ids).data
                return interpret(out, x, t, sch, self.parameterization, self.variance)
            both = self.eps_net(Tensor(xp.concatenate([x, x])), xp.concatenate([t_net, t_net]), ids).data
            p_c = interpret(both[:n], x, t, sch, self.parameterization, self.variance)
            p_u = interpret(both[n:], x, t, sch, self.parameterization, self.variance)
            eps = G.cfg_eps(p_c.eps, p_u.eps, w)                          # (26)
            return p_c._replace(eps=eps, x0=x0_from_eps(sch, x, t, eps))  # (11)
        return predict

    def clip_guided(self, predict, sch, n, cond, noised_clip, scale: float):
        """predict(x_t, t) shifted by GLIDE's CLIP guidance: the noised CLIP's similarity
        u(x_t, t) . v(c) in place of log p(y | x_t) in eq. (25),

            eps_bar = eps - sqrt(1 - alpha_bar_t) s grad_{x_t} (u(x_t, t) . v(c))

        (GLIDE writes it on the mean, mu + s Sigma grad (u . v); the eps form is what the
        DDIM sampler reads). The noised CLIP must share the model's schedule and image size."""
        if tuple(noised_clip.data_shape) != self.data_shape:
            raise ValueError(f"the noised CLIP reads images {tuple(noised_clip.data_shape)}; this "
                             f"model draws {self.data_shape}")
        if noised_clip.T != self.T or not bool(xp.allclose(noised_clip.schedule.alpha_bar,
                                                           self.schedule.alpha_bar)):
            raise ValueError("CLIP guidance needs the noised CLIP to share the model's schedule "
                             "(the same schedule and T)")
        ids = caption_batch(cond, n, self.tok)

        def predict_guided(x, t):
            p = predict(x, t)
            with enable_grad():
                g = noised_clip.guidance_grad(x, xp.full((n,), int(sch.net_t[t]), dtype=xp.int64), ids)
            eps = G.classifier_guided_eps(sch, x, t, p.eps, g, float(scale))   # (25), grad (u . v)
            return p._replace(eps=eps, x0=x0_from_eps(sch, x, t, eps))   # (11)
        return predict_guided

    def sample(self, n, cond=None, *, rng, guidance=None, steps=None, sampler=None, eta=None,
               threshold=None, x_T=None, noised_clip=None, clip_scale: float = 0.0):
        """n images (n, C, H, W) for captions ``cond``: token ids (n, L) or (L,), or texts;
        None samples the null caption. guidance: w of eq. (26); steps, sampler ('ddpm' or
        'ddim'), eta, threshold ('none', 'static', 'dynamic'): None takes the model's option
        of the same name. noised_clip, clip_scale: GLIDE's CLIP guidance with scale s on top
        (a trained ``clip-noised`` model; see clip_guided). rng: the backend generator."""
        if steps is None:  # the model's sample_steps (at most T; None: all T)
            steps = min(self.sampling.sample_steps or self.T, self.T)
        sch = self.schedule.strided(steps)
        predict = self.predictor(sch, n, cond, guidance)
        if noised_clip is not None and clip_scale != 0.0:
            if cond is None:
                raise ValueError("CLIP guidance steps towards a caption: pass cond")
            predict = self.clip_guided(predict, sch, n, cond, noised_clip, clip_scale)
        with no_grad():
            return sample_loop(predict, sch, (n,) + self.data_shape, rng,
                               sampler=sampler or self.sampling.sampler,
                               eta=self.sampling.eta if eta is None else float(eta),
                               threshold=self.threshold if threshold is None else _threshold(threshold),
                               x_T=x_T, dtype=self.dtype)


def _threshold(kind):
    """A threshold option for sample_loop: 'none' -> None; 'static' and 'dynamic' as they are."""
    if kind not in ("none",) + THRESHOLDS[1:]:
        raise ValueError(f"threshold must be none, static or dynamic, got {kind!r}")
    return None if kind == "none" else kind
