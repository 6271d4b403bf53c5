"""GLIDE: caption dropout, the null caption, classifier-free guidance (26) against separate
network calls (w = 0 is the conditional model bit for bit, a dropped caption the null one),
the loss against a hand-made L_simple (19), the caption reaching the U-Net through both the
time embedding and the cross-attention (and the padding not at all), CLIP guidance (25)
with a noised CLIP's similarity gradient, an overfit, training
through the loop, gradient checks of the new layer, and bad input."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refgen import backend
from refgen.autograd import Tensor, no_grad
from refgen.backend import default_rng
from refgen.data import captions as cap
from refgen.models import create
from refgen.models.base import Batch
from refgen.models.diffusion.process import q_sample
from refgen.models.text_to_image import drop_captions, null_caption
from refgen.models.text_to_image.text_diffusion import TextTimeEmbedding
from refgen.optim import Adam
from refgen.testing import check_grads, on_backend

TOK = cap.Tokenizer()
CAPTIONS = ["a thick slanted seven", "the number 3", "a small thin 1", "a handwritten zero"]


def tiny(**kw):
    opts = dict(data_shape=(1, 8, 8), T=20, channels=8, text_width=16, text_layers=1,
                text_heads=2, heads=2, seed=0)
    opts.update(kw)
    return create("glide", **opts)


def ids(texts=CAPTIONS):
    return backend.asarray(TOK.encode_batch(texts))


def images(n=4, seed=0):
    return backend.asarray(np.random.default_rng(seed).uniform(-1, 1, (n, 1, 8, 8)).astype(np.float32))


def npv(a):
    return backend.to_numpy(a.data if isinstance(a, Tensor) else a)


def stepped(m, n_steps=1, lr=1e-2):
    """m after n_steps Adam steps on fixed noise: the zero-initialised output layers move, so
    the network's output depends on its inputs."""
    opt = Adam(list(m.parameters()), lr=lr)
    batch = Batch(Tensor(images()), ids())
    for _ in range(n_steps):
        loss = m.loss(batch, default_rng(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m


@pytest.fixture(scope="module")
def trained():
    return stepped(tiny(p_uncond=0.5), 3)


# ----------------------------------------------------------------------------- null caption, dropout
def test_null_caption_is_the_empty_text():
    null = npv(null_caption(TOK, 2))
    assert null.shape == (2, cap.CONTEXT)
    assert (null[:, 0] == TOK.sot).all() and (null[:, 1] == TOK.eot).all() and (null[:, 2:] == TOK.pad).all()
    assert TOK.decode(null[0]) == ""


def test_drop_captions_replaces_whole_rows_at_rate_p():
    many = backend.asarray(np.tile(TOK.encode("a thick slanted seven"), (4000, 1)))
    null = null_caption(TOK)[0]
    out = npv(drop_captions(many, 0.3, null, default_rng(5)))
    dropped = (out == npv(null)).all(axis=1)
    kept = (out == npv(many)).all(axis=1)
    assert (dropped | kept).all()                       # a row is either the caption or null
    assert abs(dropped.mean() - 0.3) < 3 * np.sqrt(0.3 * 0.7 / 4000)
    assert drop_captions(many, 0.0, null, default_rng(5)) is many


# ----------------------------------------------------------------------------- guidance (26)
def _eps(m, x, t, c):
    with no_grad():
        return npv(m.eps_net(Tensor(x), backend.asarray(np.full(len(x), t)), c))


def test_guidance_zero_is_the_conditional_model_bit_for_bit(trained):
    m, x, sch = trained, images(seed=1), trained.schedule
    pred = m.predictor(sch, 4, cond=ids(), guidance=0.0)(x, 7)
    assert np.array_equal(npv(pred.eps), _eps(m, x, 7, ids()))


def test_a_dropped_caption_is_the_unconditional_model_bit_for_bit(trained):
    m, x, sch = trained, images(seed=1), trained.schedule
    pred = m.predictor(sch, 4, cond=None, guidance=3.0)(x, 7)
    assert np.array_equal(npv(pred.eps), _eps(m, x, 7, null_caption(TOK, 4)))


@pytest.mark.parametrize("w", [1.0, 3.0, 7.5])
def test_guidance_is_eq_26_of_the_two_predictions(trained, w):
    """Eq. (26) against two separate network calls, and the x_0 of eq. (11)."""
    m, x, sch = trained, images(seed=2), trained.schedule
    c, u = _eps(m, x, 11, ids()), _eps(m, x, 11, null_caption(TOK, 4))
    assert np.abs(c - u).max() > 1e-3                   # the caption matters here
    pred = m.predictor(sch, 4, cond=ids(), guidance=w)(x, 11)
    eps = (w + 1) * c - w * u
    np.testing.assert_allclose(npv(pred.eps), eps, rtol=1e-5, atol=1e-5)
    ab = float(sch.alpha_bar[11])                       # and the x_0 it implies, eq. (11)
    np.testing.assert_allclose(npv(pred.x0), (npv(x) - np.sqrt(1 - ab) * eps) / np.sqrt(ab),
                               rtol=1e-4, atol=1e-4)


def test_sample_takes_ids_or_texts_and_w_changes_the_images(trained):
    a = npv(trained.sample(4, cond=ids(), rng=default_rng(3), steps=4, guidance=2.0))
    b = npv(trained.sample(4, cond=CAPTIONS, rng=default_rng(3), steps=4, guidance=2.0))
    c = npv(trained.sample(4, cond=ids(), rng=default_rng(3), steps=4, guidance=0.0))
    assert a.shape == (4, 1, 8, 8) and np.array_equal(a, b) and not np.allclose(a, c)
    one = npv(trained.sample(3, cond=ids()[1], rng=default_rng(3), steps=4))  # one caption for all
    assert one.shape == (3, 1, 8, 8)


# ----------------------------------------------------------------------------- CLIP guidance
def noised_clip(T=20, shape=(1, 8, 8)):
    return create("clip-noised", data_shape=shape, seed=1, embed_dim=8, width=16, layers=1,
                  channels=4, T=T)


@pytest.mark.parametrize("w,s", [(0.0, 2.5), (1.5, 40.0)])
def test_clip_guidance_is_eq_25_with_the_similarity_gradient(trained, w, s):
    """Eq. (25) with the noised CLIP's similarity in place of log p(y | x_t):
    eps_bar = eps_cfg - sqrt(1 - alpha_bar_t) s grad_{x_t} (u(x_t, t) . v(c)) on top of the
    classifier-free guided eps, the gradient taken from the noised CLIP at the step's time,
    and x_0 from eps_bar by eq. (11)."""
    m, x, clip = trained, images(seed=3), noised_clip()
    sch = m.schedule.strided(5)
    k = 3                                               # a step of the strided schedule
    plain = m.predictor(sch, 4, cond=ids(), guidance=w)(x, k)
    got = m.clip_guided(m.predictor(sch, 4, cond=ids(), guidance=w), sch, 4, ids(), clip, s)(x, k)
    g = npv(clip.guidance_grad(x, backend.asarray(np.full(4, int(sch.net_t[k]))), ids()))
    assert np.abs(g).max() > 1e-4
    ab = float(sch.alpha_bar[k])
    want = npv(plain.eps) - np.sqrt(1 - ab) * s * g
    np.testing.assert_allclose(npv(got.eps), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(npv(got.x0), (npv(x) - np.sqrt(1 - ab) * want) / np.sqrt(ab),
                               rtol=1e-4, atol=1e-4)


def test_clip_guidance_scale_zero_is_the_plain_sampler_and_a_scale_moves_it(trained):
    clip = noised_clip()
    kw = dict(cond=ids(), steps=4, guidance=1.0)
    plain = npv(trained.sample(4, rng=default_rng(5), **kw))
    zero = npv(trained.sample(4, rng=default_rng(5), noised_clip=clip, clip_scale=0.0, **kw))
    moved = npv(trained.sample(4, rng=default_rng(5), noised_clip=clip, clip_scale=50.0, **kw))
    assert np.array_equal(plain, zero) and np.abs(moved - plain).max() > 1e-3
    with pytest.raises(ValueError, match="share the model's schedule"):
        trained.sample(4, rng=default_rng(5), noised_clip=noised_clip(T=30), clip_scale=1.0, **kw)
    with pytest.raises(ValueError, match=r"reads images \(1, 12, 12\)"):
        trained.sample(4, rng=default_rng(5), noised_clip=noised_clip(shape=(1, 12, 12)),
                       clip_scale=1.0, **kw)
    with pytest.raises(ValueError, match="pass cond"):
        trained.sample(4, rng=default_rng(5), noised_clip=clip, clip_scale=1.0)


# ----------------------------------------------------------------------------- the conditioning
def _zeroed(params):
    """Context manager: the given parameters set to zero, restored afterwards."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        saved = [p.data.copy() for p in params]
        for p in params:
            p.data[...] = 0
        try:
            yield
        finally:
            for p, v in zip(params, saved):
                p.data[...] = v
    return ctx()


@pytest.mark.parametrize("cut", [None, "pooled", "cross"])
def test_the_caption_reaches_the_unet_through_each_path(trained, cut):
    """Other captions give other predictions through the time embedding alone (cross-attention
    outputs zeroed), through the cross-attention alone (pooled projection zeroed), and both."""
    from refgen.nn import CrossAttnBlock
    m, x = trained, images(seed=3)
    cross = [p for b in m.unet.modules() if isinstance(b, CrossAttnBlock)
             for p in b.attn.out_proj.parameters()]
    off = {None: [], "pooled": list(m.unet.embed.pooled.parameters()), "cross": cross}[cut]
    assert cut is None or off
    with _zeroed(off):
        a = _eps(m, x, 9, ids())
        b = _eps(m, x, 9, ids(CAPTIONS[1:] + CAPTIONS[:1]))
    assert np.abs(a - b).max() > 1e-3


def test_the_text_encoder_learns_through_both_paths():
    """After three steps (the zero-initialised output layers of the U-Net, its ResBlocks and
    attention blocks have moved), the loss has a gradient in the <eot> projection (used only
    by the pooled path) and in the token embeddings."""
    m = stepped(tiny(p_uncond=0.0), 3)
    m.zero_grad()
    m.loss(Batch(Tensor(images()), ids()), default_rng(1)).backward()
    assert np.abs(npv(m.text.proj.weight.grad)).max() > 0
    assert np.abs(npv(m.text.tok_emb.weight.grad)).max() > 0


def test_tokens_after_eot_change_nothing(trained):
    c = npv(ids())
    noisy = c.copy()
    after = np.arange(cap.CONTEXT)[None, :] > (c == TOK.eot).argmax(axis=1)[:, None]
    noisy[after] = TOK.index["seven"]                   # garbage where the padding was
    x = images(seed=4)
    np.testing.assert_allclose(_eps(trained, x, 5, backend.asarray(noisy)),
                               _eps(trained, x, 5, ids()), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- the loss (19)
@pytest.mark.parametrize("parameterization", ["eps", "v"])
def test_loss_is_l_simple_with_the_captions_dropped(parameterization):
    """L_simple, eq. (19), at x_t of eq. (3), replayed from the generator's draws."""
    m = stepped(tiny(p_uncond=0.5, parameterization=parameterization), 3)  # reads the caption
    x0 = images(seed=6)
    got = float(npv(m.loss(Batch(Tensor(x0), ids()), default_rng(9))))
    r = default_rng(9)                                  # the draws in loss's order
    t = r.integers(1, m.T + 1, size=4)
    eps = r.standard_normal(x0.shape, dtype=x0.dtype)
    keep = npv(r.random((4,))) >= 0.5
    assert 0 < keep.sum() < 4                           # both kinds in this batch
    c = np.where(keep[:, None], npv(ids()), npv(null_caption(TOK, 4)))
    xt = q_sample(m.schedule, x0, t, eps)               # (3)
    out = _eps_at(m, xt, m.schedule.net_t[t], c)
    undropped = _eps_at(m, xt, m.schedule.net_t[t], npv(ids()))
    assert np.abs(out - undropped).max() > 1e-4         # dropping shows in the prediction
    ab = npv(m.schedule.alpha_bar[t]).reshape(-1, 1, 1, 1)
    target = npv(eps) if parameterization == "eps" else np.sqrt(ab) * npv(eps) - np.sqrt(1 - ab) * npv(x0)
    assert got == pytest.approx(float(np.mean((target - out) ** 2)), rel=1e-5)


def _eps_at(m, xt, t_net, c):
    with no_grad():
        return npv(m.eps_net(Tensor(xt), t_net, backend.asarray(c)))


def test_loss_falls_on_a_tiny_overfit():
    m = tiny(p_uncond=0.0)
    batch = Batch(Tensor(images()), ids())
    opt = Adam(list(m.parameters()), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = m.loss(batch, default_rng(0))            # the same t and eps at every step
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(npv(loss)))
    assert losses[-1] < 0.5 * losses[0]


def _captioned14(n=32, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    x = rng.uniform(-1, 1, (n, 1, 8, 8)).astype(np.float32)
    return cap.CaptionDataset("mnist-captions-14", "train", x, labels, "continuous", x.shape[1:],
                              num_classes=10, vocab=TOK.words, value_range=(-1.0, 1.0),
                              captions=cap.CaptionData(labels, rng.integers(0, 3, (n, 4))))


def test_trains_through_the_loop(tmp_path):
    from refgen.train import train
    m = tiny()
    before = npv(m.text.tok_emb.weight).copy()
    metrics = train(m, _captioned14(), steps=3, batch_size=8, lr=1e-3, seed=0, out_dir=tmp_path,
                    progress=False, samples=False, evaluate_at_end=False)
    assert metrics["steps"] == 3 and np.isfinite(metrics["loss"])
    assert not np.array_equal(npv(m.text.tok_emb.weight), before)  # the text encoder learns


# ----------------------------------------------------------------------------- the new layer
@on_backend("numpy")  # finite differences in float64: run there
@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.integers(1, 999))
def test_text_time_embedding_gradients(seed, t):
    """First and second derivatives with respect to the pooled vector, in float64 (the rest
    of the layer is TimeEmbedding and Linear, checked in tests/nn)."""
    emb = TextTimeEmbedding(8, 12, 5, rng=np.random.default_rng(0), dtype=np.float64)
    pooled = np.random.default_rng(seed).standard_normal((3, 5))
    check_grads(lambda p: emb(np.full(3, t), p) ** 2, [pooled])


def test_text_time_embedding_adds_the_projected_pooled_vector():
    emb = TextTimeEmbedding(8, 12, 5, rng=np.random.default_rng(0), dtype=np.float64)
    p = np.random.default_rng(1).standard_normal((3, 5))
    t = np.array([1, 50, 900])
    from refgen.nn import TimeEmbedding
    base = TimeEmbedding.forward(emb, t)
    want = npv(base) + p @ npv(emb.pooled.weight).T + npv(emb.pooled.bias)
    np.testing.assert_allclose(npv(emb(t, Tensor(backend.asarray(p)))), want, rtol=1e-12)
    with pytest.raises(ValueError, match="pooled caption"):
        emb(t)


# ----------------------------------------------------------------------------- bad input
def test_bad_input_is_one_clear_line(trained):
    with pytest.raises(ValueError, match=r"expected token ids \(n, 12\)"):
        trained.sample(2, cond=np.zeros((2, 5), dtype=np.int64), rng=default_rng(0))
    with pytest.raises(ValueError, match="3 captions for 2 samples"):
        trained.sample(2, cond=ids()[:3], rng=default_rng(0))
    with pytest.raises(ValueError, match="caption ids"):
        trained.loss(Batch(Tensor(images()), backend.asarray(np.arange(4))), default_rng(0))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        trained.sample(1, cond="a purple seven", rng=default_rng(0))
    with pytest.raises(ValueError, match="p_uncond"):
        tiny(p_uncond=1.0)
    with pytest.raises(ValueError, match="has no option"):
        tiny(colour=3)


def test_refgen_sample_draws_a_prompt(tmp_path, capsys):
    """`refgen train glide`, then `refgen sample DIR --prompt TEXT` on the run directory."""
    from refgen.cli import main
    from refgen.train import train
    run = tmp_path / "run"
    m = tiny()
    cfg = {"model": "glide", "data": "mnist-captions-14", "data_facts": {"shape": [1, 8, 8],
           "kind": "continuous"}, "train": {"seed": 0}, "vocab_size": len(TOK),
           "model_kwargs": dict(T=20, channels=8, text_width=16, text_layers=1, text_heads=2, heads=2)}
    train(m, _captioned14(), steps=1, batch_size=8, lr=1e-3, seed=0, out_dir=run, progress=False,
          samples=False, evaluate_at_end=False, config=cfg)
    out = tmp_path / "seven.png"
    assert main(["sample", str(run), "--prompt", "a thick seven", "-n", "2", "--steps", "3",
                 "--out", str(out), "-q"]) == 0
    assert out.exists()
    assert main(["sample", str(run), "--prompt", "a purple seven", "-n", "2", "-q"]) == 2
    assert "outside the vocabulary" in capsys.readouterr().err
