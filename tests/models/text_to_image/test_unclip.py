"""unCLIP: the prior's loss is zero for the exact clean embedding and is its squared error
otherwise, the loss against a replay of its own draws (decoder on the image's own CLIP
embedding + prior on the caption's text embedding), the scaled embedding, the frozen CLIP,
the decoder's guidance (26) with the null embedding, eq. (34)'s two-stage sampling, image
variations and interpolations (slerp), the autoregressive prior (buckets, its
negative log-likelihood, causality, guided Gumbel-max draws), an overfit of the prior, gradient checks of the prior network, and bad input."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refgen.functional as F
from refgen import backend
from refgen.autograd import Tensor, no_grad
from refgen.backend import default_rng
from refgen.data import captions as cap
from refgen.models import create
from refgen.models.base import Batch
from refgen.models.diffusion.process import q_sample
from refgen.models.text_to_image import EmbeddingPrior, TextDiffusion
from refgen.models.text_to_image.unclip import slerp
from refgen.nn import Module
from refgen.optim import Adam
from refgen.testing import check_grads, on_backend

TOK = cap.Tokenizer()
CAPTIONS = ["a thick slanted seven", "the number 3", "a small thin 1", "a handwritten zero"]


def tiny_clip(seed=0):
    return create("clip", data_shape=(1, 28, 28), width=16, layers=1, heads=2, embed_dim=8,
                  channels=4, seed=seed)


def tiny(**kw):
    opts = dict(data_shape=(1, 14, 14), T=20, prior_T=20, channels=8, heads=2, prior_width=16,
                prior_heads=2, prior_layers=1, seed=0, clip=tiny_clip())
    opts.update(kw)
    return create("unclip", **opts)


def ids(texts=CAPTIONS):
    return backend.asarray(TOK.encode_batch(texts))


def images(n=4, seed=0):
    return backend.asarray(np.random.default_rng(seed).uniform(-1, 1, (n, 1, 14, 14)).astype(np.float32))


def npv(a):
    return backend.to_numpy(a.data if isinstance(a, Tensor) else a)


class Oracle(Module):
    """A prior network that returns a fixed embedding whatever it is given."""

    def __init__(self, z):
        super().__init__()
        self.z = z

    def forward(self, zt, t, v):
        return Tensor(self.z)


@pytest.fixture(scope="module")
def trained():
    m = tiny(p_uncond=0.5, p_uncond_prior=0.5)
    opt = Adam(list(m.parameters()), lr=1e-2)
    for _ in range(3):
        loss = m.loss(Batch(Tensor(images()), ids()), default_rng(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m


# ----------------------------------------------------------------------------- the prior
def test_the_prior_loss_is_zero_for_the_exact_embedding_and_its_squared_error_otherwise():
    m = tiny()
    z0 = m.embed_images(images())
    v = m.embed_text(ids())
    m.prior = Oracle(z0)
    assert float(npv(m.prior_loss(z0, v, default_rng(1)))) == 0.0
    delta = np.random.default_rng(2).standard_normal(npv(z0).shape).astype(np.float32)
    m.prior = Oracle(z0 + backend.asarray(delta))
    assert float(npv(m.prior_loss(z0, v, default_rng(1)))) == pytest.approx(np.mean(delta ** 2), rel=1e-5)


def test_the_prior_loss_regresses_the_clean_embedding_from_its_noised_copy():
    """L_prior with z_t drawn by eq. (3), replayed from the generator's draws."""
    m = tiny(p_uncond_prior=0.5)
    z0, v = m.embed_images(images()), m.embed_text(ids())
    got = float(npv(m.prior_loss(z0, v, default_rng(5))))
    r = default_rng(5)                                   # replay the draws in prior_loss's order
    t = r.integers(1, m.prior_schedule.T + 1, size=4)
    eps = r.standard_normal(z0.shape, dtype=z0.dtype)
    keep = npv(r.random((4,))) >= 0.5
    assert 0 < keep.sum() < 4
    vd = np.where(keep[:, None], npv(v), 0.0).astype(np.float32)
    zt = q_sample(m.prior_schedule, z0, t, eps)          # (3)
    with no_grad():
        f = npv(m.prior(Tensor(zt), m.prior_schedule.net_t[t], Tensor(backend.asarray(vd))))
    assert got == pytest.approx(float(np.mean((npv(z0) - f) ** 2)), rel=1e-5)


def test_the_prior_overfits_a_batch():
    m = tiny(p_uncond_prior=0.0)
    z0, v = m.embed_images(images()), m.embed_text(ids())
    opt = Adam(list(m.prior.parameters()), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = m.prior_loss(z0, v, default_rng(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(npv(loss)))
    assert losses[-1] < 0.3 * losses[0]


@on_backend("numpy")  # finite differences in float64: run there
@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2 ** 31 - 1))
def test_prior_network_gradients(seed):
    """First and second derivatives in z_t and v, float64."""
    net = EmbeddingPrior(3, width=8, layers=1, heads=2, rng=np.random.default_rng(0), dtype=np.float64)
    g = np.random.default_rng(seed)
    t = np.array([3, 700])
    check_grads(lambda zt, v: net(zt, t, v), [g.standard_normal((2, 3)), g.standard_normal((2, 3))])


# ----------------------------------------------------------------------------- the loss, the embeddings
def test_the_loss_is_the_decoder_on_the_images_own_embedding_plus_the_prior():
    m = tiny()
    x, c = images(), ids()
    got = float(npv(m.loss(Batch(Tensor(x), c), default_rng(6))))
    r = default_rng(6)
    z = m.embed_images(x)
    dec = float(npv(m.diffusion_loss(x, z, r)))
    pri = float(npv(m.prior_loss(z, m.embed_text(c), r)))
    assert got == pytest.approx(dec + pri, rel=1e-6)
    assert m.last_stats == pytest.approx({"l_decoder": dec, "l_prior": pri}, rel=1e-6)


def test_image_embeddings_are_clips_scaled_to_norm_sqrt_d():
    m = tiny()
    x = images()
    z = npv(m.embed_images(x))
    big = backend.asarray(np.repeat(np.repeat(npv(x), 2, axis=-2), 2, axis=-1))
    with no_grad():
        u = npv(m.clip.encode_image(Tensor(big)))
    np.testing.assert_allclose(z, u * math.sqrt(8), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), math.sqrt(8), rtol=1e-5)


def test_clip_stays_frozen():
    m = tiny()
    before = {k: npv(p).copy() for k, p in m.clip.named_parameters()}
    assert not any(k.startswith("clip") for k in m.state_dict())
    loss = m.loss(Batch(Tensor(images()), ids()), default_rng(0))
    loss.backward()
    Adam(list(m.parameters()), lr=1e-2).step()
    assert all(p.grad is None for p in m.clip.parameters())
    assert all(np.array_equal(before[k], npv(p)) for k, p in m.clip.named_parameters())


# ----------------------------------------------------------------------------- sampling
def _eps(m, x, t, z):
    with no_grad():
        return npv(m.eps_net(Tensor(x), backend.asarray(np.full(len(x), t)), z))


def test_decoder_guidance_zero_and_the_null_embedding(trained):
    m, x, sch = trained, images(seed=1), trained.schedule
    z = m.embed_images(images(seed=2))
    assert np.array_equal(npv(m.predictor(sch, 4, cond=z, guidance=0.0)(x, 5).eps), _eps(m, x, 5, z))
    assert np.array_equal(npv(m.predictor(sch, 4, cond=None, guidance=2.0)(x, 5).eps),
                          _eps(m, x, 5, m.null(4)))
    c, u = _eps(m, x, 5, z), _eps(m, x, 5, m.null(4))
    assert np.abs(c - u).max() > 1e-3
    np.testing.assert_allclose(npv(m.predictor(sch, 4, cond=z, guidance=2.0)(x, 5).eps),
                               3 * c - 2 * u, rtol=1e-5, atol=1e-5)


def test_two_stage_sampling_is_eq_34(trained):
    """Eq. (34): sample(captions) = the decoder's sample for the prior's embeddings, drawn
    from the same generator."""
    m = trained
    got = npv(m.sample(4, cond=ids(), rng=default_rng(3), steps=3))
    r = default_rng(3)
    z = m.sample_embeddings(4, ids(), rng=r)
    want = npv(TextDiffusion.sample(m, 4, z, rng=r, steps=3))
    assert np.array_equal(got, want) and got.shape == (4, 1, 14, 14)
    assert npv(z).shape == (4, 8) and np.isfinite(npv(z)).all()
    # the prior's guidance changes the embeddings
    z0 = npv(m.sample_embeddings(4, ids(), rng=default_rng(3), guidance=0.0))
    z3 = npv(m.sample_embeddings(4, ids(), rng=default_rng(3), guidance=3.0))
    assert not np.allclose(z0, z3)


def test_prior_candidates_keep_the_draw_with_the_highest_dot_product_with_v(trained):
    """k = 3 candidates: the same draws as 3 n captions from one generator, and per caption
    the draw whose z . v is largest."""
    m = trained
    got = npv(m.sample_embeddings(4, ids(), rng=default_rng(6), steps=3, candidates=3))
    draws = npv(m.sample_embeddings(12, backend.xp.concatenate([ids()] * 3), rng=default_rng(6), steps=3,
                                    candidates=1)).reshape(3, 4, -1)
    score = (draws * npv(m.embed_text(ids()))[None]).sum(-1)              # (3, 4)
    best = score.argmax(0)
    np.testing.assert_array_equal(got, draws[best, np.arange(4)])
    assert len(set(best.tolist())) > 1                    # not always the first draw
    with pytest.raises(ValueError, match="candidates must be >= 1"):
        m.sample_embeddings(4, ids(), rng=default_rng(6), candidates=0)


def test_one_prior_step_from_z_T_is_the_networks_clean_embedding(trained):
    """With one DDIM step the prior's sample is f_theta(z_T, T, v) itself (alpha_bar_0 = 1):
    the network's output is read as the clean embedding."""
    m = trained
    r = default_rng(4)
    z_T = r.standard_normal((4, 8), dtype=np.float32)
    with no_grad():
        want = npv(m.prior(Tensor(z_T), backend.asarray(np.full(4, m.prior_schedule.T)),
                           Tensor(m.embed_text(ids()))))
    got = npv(m.sample_embeddings(4, ids(), rng=default_rng(4), guidance=0.0, steps=1))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("w", [1.0, 4.0])
def test_prior_guidance_is_eq_26(trained, w):
    """Eq. (26) on the prior, its eps turned back into z_0 by eq. (11): after one DDIM step
    from z_T the sample is (w + 1) f(z_T, T, v) - w f(z_T, T, 0), as (11) is linear in eps."""
    m = trained
    z_T = default_rng(4).standard_normal((4, 8), dtype=np.float32)
    t = backend.asarray(np.full(4, m.prior_schedule.T))
    v = m.embed_text(ids())
    with no_grad():
        f_c = npv(m.prior(Tensor(z_T), t, Tensor(v)))
        f_u = npv(m.prior(Tensor(z_T), t, Tensor(backend.asarray(np.zeros((4, 8), np.float32)))))
    assert np.abs(f_c - f_u).max() > 0.1                # guidance moves z by w times this
    got = npv(m.sample_embeddings(4, ids(), rng=default_rng(4), guidance=w, steps=1))
    # the sampler goes z_0 -> eps -> z_0 in float32 through 1 / sqrt(alpha_bar_T) = 406
    # (cosine, T = 20), so rounding of |z_T| ~ 3 comes back as up to ~(w + 1) 1e-4
    np.testing.assert_allclose(got, (w + 1) * f_c - w * f_u, rtol=0, atol=2e-3)


def test_the_decoder_reads_z_as_tokens_and_as_the_pooled_vector(trained):
    z = trained.embed_images(images(seed=2))
    tokens, pooled, mask = trained.encode(z)
    assert np.array_equal(npv(pooled), npv(z)) and mask is None
    assert tokens.shape == (4, trained.k, 4 * trained.network.channels)


def test_variations_decode_the_images_own_embedding(trained):
    m, x = trained, images(seed=5)
    got = npv(m.variations(x, rng=default_rng(2), steps=3))
    want = npv(TextDiffusion.sample(m, 4, m.embed_images(x), rng=default_rng(2), steps=3))
    assert np.array_equal(got, want)


@given(st.integers(2, 16), st.floats(0.05, 3.0), st.integers(0, 2**16))
@settings(max_examples=30, deadline=None)
def test_slerp_walks_the_great_circle_at_constant_speed(d, theta, seed):
    """z_s has the endpoints' norm and makes the angle s theta with a and (1 - s) theta with b."""
    r = np.random.default_rng(seed)
    a = r.standard_normal(d)
    a *= 2.5 / np.linalg.norm(a)
    u = r.standard_normal(d)
    u -= (u @ a) / (a @ a) * a                           # orthogonal to a, same norm
    u *= 2.5 / np.linalg.norm(u)
    b = np.cos(theta) * a + np.sin(theta) * u            # angle theta from a
    s = np.array([0.0, 0.3, 0.5, 1.0])
    z = backend.to_numpy(slerp(backend.asarray(a), backend.asarray(b), backend.asarray(s)))

    def angle(p, q):
        return np.arccos(np.clip(p @ q / (np.linalg.norm(p) * np.linalg.norm(q)), -1, 1))
    np.testing.assert_allclose(z[[0, -1]], np.stack([a, b]), atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 2.5, rtol=1e-9)
    np.testing.assert_allclose([angle(a, zi) for zi in z], s * theta, atol=1e-6)
    np.testing.assert_allclose([angle(zi, b) for zi in z], (1 - s) * theta, atol=1e-6)


def test_interpolations_decode_the_slerped_embeddings_from_one_noise(trained):
    """Decoder samples of the slerp of the two images' embeddings (whose ends are the images'
    own embeddings), all from one shared x_T."""
    m, x = trained, images(seed=6)
    got = npv(m.interpolations(x[0], x[1:2], 3, rng=default_rng(2), steps=3))
    r = default_rng(2)
    x_T = r.standard_normal((1, 1, 14, 14), dtype=np.float32)
    z = m.embed_images(x[:2])
    zs = slerp(z[0], z[1], backend.asarray(np.array([0.0, 0.5, 1.0])))
    np.testing.assert_allclose(npv(zs)[[0, 2]], npv(z), rtol=1e-5, atol=1e-5)
    want = npv(TextDiffusion.sample(m, 3, zs, rng=default_rng(9), steps=3,
                                    x_T=backend.xp.concatenate([x_T] * 3)))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert np.abs(got[0] - got[2]).max() > 1e-3
    with pytest.raises(ValueError, match="k >= 2"):
        m.interpolations(x[0], x[1], 1, rng=default_rng(0))


# ----------------------------------------------------------------------------- the autoregressive prior
def ar(**kw):
    return tiny(prior_kind="ar", prior_bins=16, prior_range=3.0, **kw)


class CodeOracle(Module):
    """An ar prior network whose logits (B, S + 1, K) are fixed per position: table (D, K)
    for a non-zero text embedding, table_null (D, K) for the zero one."""
    blocks = ()                                        # no layers, so nothing to cache

    def __init__(self, table, table_null=None):
        super().__init__()
        self.table, self.table_null = table, table if table_null is None else table_null

    def forward(self, c, v, caches=None, start=0):
        rows = slice(start, start + c.shape[1] + (start == 0))            # the positions fed
        null = np.all(npv(v) == 0, axis=1)[:, None, None]                 # (B, 1, 1)
        return Tensor(backend.asarray(np.where(null, self.table_null[None, rows], self.table[None, rows])))


def test_quantize_buckets_and_their_centres():
    """c = floor((z + r) K / 2r) clipped to 0..K-1; the centre is within half a bucket of z."""
    m = ar()
    z = np.array([[-3.0, -2.99, -0.1, 0.0, 0.4, 2.99, 3.0, 7.5]], dtype=np.float32)
    c = npv(m.quantize(backend.asarray(z)))
    np.testing.assert_array_equal(c, [[0, 0, 7, 8, 9, 15, 15, 15]])       # width 6 / 16 = 0.375
    zz = np.random.default_rng(0).uniform(-3, 3, (50, 8)).astype(np.float32)
    back = npv(m.dequantize(m.quantize(backend.asarray(zz))))
    assert np.abs(back - zz).max() <= 0.375 / 2 + 1e-6
    np.testing.assert_allclose(npv(m.dequantize(backend.asarray(np.array([[0, 15]])))), [[-2.8125, 2.8125]])


def test_the_ar_prior_loss_is_the_codes_negative_log_likelihood():
    """Replayed from the generator: the rows whose v is dropped, then -sum_j log P(c_j | c_<j, v)."""
    m = ar(p_uncond_prior=0.5)
    z = m.embed_images(images(seed=7))
    v = m.embed_text(ids())
    got = float(m.prior_loss(z, v, default_rng(0)).item())
    keep = npv(default_rng(0).random((4,))) >= 0.5
    assert 0 < keep.sum() < 4                                              # some of each
    v_used = backend.asarray(np.where(keep[:, None], npv(v), 0.0).astype(np.float32))
    c = npv(m.quantize(z))
    with no_grad():
        logits = npv(m.prior(backend.asarray(c[:, :-1]), Tensor(v_used)))  # (4, 8, 16)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    want = -np.take_along_axis(logp, c[:, :, None], axis=2).sum(axis=(1, 2)).mean()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert logits.shape == (4, 8, 16)


def test_the_ar_prior_is_causal():
    """The logits for c_j read v and c_<j only: changing c_j and later codes leaves them."""
    m = ar()
    v = Tensor(m.embed_text(ids()))
    c = np.random.default_rng(1).integers(0, 16, (4, 7))
    c2 = c.copy()
    c2[:, 4:] = (c2[:, 4:] + 5) % 16
    with no_grad():
        a, b = npv(m.prior(backend.asarray(c), v)), npv(m.prior(backend.asarray(c2), v))
    np.testing.assert_array_equal(a[:, :5], b[:, :5])
    assert np.abs(a[:, 5:] - b[:, 5:]).max() > 1e-4


def test_each_ar_position_adds_its_own_position_embedding():
    """Moving the embedding of position 3 moves the logits from position 3 on, not before."""
    m = ar()
    v = Tensor(m.embed_text(ids()))
    c = backend.asarray(np.random.default_rng(4).integers(0, 16, (4, 7)))
    bump = backend.asarray(np.random.default_rng(5).normal(0, 0.5, m.prior.pos.shape[1]).astype(np.float32))
    with no_grad():
        a = npv(m.prior(c, v))
        m.prior.pos.data[3] += bump                     # not a constant: LayerNorm removes those
        b = npv(m.prior(c, v))
        m.prior.pos.data[3] -= bump
    np.testing.assert_array_equal(a[:, :3], b[:, :3])
    assert np.abs(a[:, 3] - b[:, 3]).max() > 1e-3


def test_the_ar_priors_cached_decoding_gives_the_full_passes_logits():
    """Fed one code at a time with the key/value cache, the prior gives at each position the
    logits the full pass over all codes gives there (float64)."""
    m = ar().to(dtype=np.float64)
    v = Tensor(backend.asarray(npv(m.embed_text(ids())).astype(np.float64)))
    c = backend.asarray(np.random.default_rng(6).integers(0, 16, (4, 7)))
    caches = [dict() for _ in m.prior.blocks]
    with no_grad():
        full = npv(m.prior(c, v))                                          # (4, 8, 16)
        steps = [npv(m.prior(c[:, :0], v, caches, start=0))]               # position 0: v only
        steps += [npv(m.prior(c[:, j - 1:j], v, caches, start=j)) for j in range(1, 8)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-10, atol=1e-12)
    assert np.abs(full[:, 1:] - full[:, :1]).max() > 1e-3                  # the positions differ


def test_ar_sampling_with_the_cache_draws_what_full_passes_draw():
    """sample_embeddings (cached, guided) equals a loop that reruns the prior over every code
    drawn so far and applies (26) to the last position's logits, from the same generator."""
    m = ar()
    for prm in m.prior.parameters():                    # larger weights: each code matters
        prm.data = prm.data * 3
    got = npv(m.sample_embeddings(4, ids(), rng=default_rng(5), guidance=1.5))
    rng, v = default_rng(5), m.embed_text(ids())
    vv = Tensor(backend.asarray(np.concatenate([npv(v), np.zeros_like(npv(v))])))
    c = np.zeros((4, 0), dtype=np.int64)
    with no_grad():
        for _ in range(8):
            logits = npv(m.prior(backend.asarray(np.concatenate([c, c])), vv))[:, -1]   # (8, 16)
            logits = 2.5 * logits[:4] - 1.5 * logits[4:]                               # (26)
            c = np.concatenate([c, npv(F.gumbel_max(backend.asarray(logits), rng))[:, None]], axis=1)
    np.testing.assert_array_equal(got, npv(m.dequantize(backend.asarray(c))))
    assert len(np.unique(c)) > 4


def test_ar_sampling_draws_each_code_from_its_guided_softmax():
    """With peaked logits the draw is their argmax, guided by (26) on the logits; with soft
    logits the codes are distributed as their softmax (Gumbel-max)."""
    m = ar()
    k = np.arange(16)
    cond = np.where(k[None, :] == (np.arange(8)[:, None] + 3) % 16, 60.0, 0.0)   # peak at j + 3
    null = np.where(k[None, :] == (np.arange(8)[:, None] + 3) % 16, 80.0, 0.0)   # stronger there
    null[:, 0] = 50.0
    m.prior = CodeOracle(cond, null)
    got = npv(m.sample_embeddings(4, ids(), rng=default_rng(2), guidance=0.0))
    np.testing.assert_array_equal(got, npv(m.dequantize(backend.asarray(np.tile((np.arange(8) + 3) % 16, (4, 1))))))
    # w = 2: 3 * 60 - 2 * 80 = 20 at j + 3, 3 * 0 - 2 * 50 = -100 at bucket 0, 0 elsewhere:
    # still j + 3; w = 5: 6 * 60 - 5 * 80 = -40 < 0, so the argmax moves to a bucket where
    # both logits are 0 (neither j + 3 nor bucket 0, at 6 * 0 - 5 * 50)
    g2 = npv(m.quantize(m.sample_embeddings(4, ids(), rng=default_rng(2), guidance=2.0)))
    np.testing.assert_array_equal(g2, np.tile((np.arange(8) + 3) % 16, (4, 1)))
    g5 = npv(m.quantize(m.sample_embeddings(4, ids(), rng=default_rng(2), guidance=5.0)))
    assert not np.any(g5 == (np.arange(8) + 3) % 16) and not np.any(g5 == 0)
    p = np.array([0.5, 0.3, 0.15, 0.05] + [0.0] * 12)
    m.prior = CodeOracle(np.tile(np.log(np.maximum(p, 1e-30)), (8, 1)))
    c = npv(m.quantize(m.sample_embeddings(500, CAPTIONS[0], rng=default_rng(3), guidance=0.0)))
    freq = np.bincount(c.ravel(), minlength=16)[:4] / c.size          # 4,000 draws
    np.testing.assert_allclose(freq, p[:4], atol=4 * np.sqrt(0.25 / c.size))


def test_the_ar_prior_learns_a_batch():
    m = ar(p_uncond_prior=0.0)
    z, v = m.embed_images(images(seed=8)), m.embed_text(ids())
    opt = Adam(list(m.prior.parameters()), lr=3e-3)
    first = None
    for _ in range(60):
        loss = m.prior_loss(z, v, default_rng(0))
        first = first or float(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.item()) < 0.2 * first                                # from ~8 log 16 = 22


def test_bad_input_is_one_clear_line(trained):
    with pytest.raises(ValueError, match=r"image embeddings of shape \(4, 3\): expected \(4, 8\)"):
        TextDiffusion.sample(trained, 4, np.zeros((4, 3), np.float32), rng=default_rng(0))
    with pytest.raises(ValueError, match="clip_size=28 is not a multiple of the image size 12"):
        tiny(data_shape=(1, 12, 12))
    with pytest.raises(ValueError, match="p_uncond_prior"):
        tiny(p_uncond_prior=1.5)
    with pytest.raises(ValueError, match="prior_kind must be 'diffusion' or 'ar'"):
        tiny(prior_kind="flow")
    with pytest.raises(ValueError, match="prior_bins >= 2"):
        tiny(prior_kind="ar", prior_bins=1)
