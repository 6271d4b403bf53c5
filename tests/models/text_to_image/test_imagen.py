"""Imagen: the text tower of a CLIP is frozen (outside the module tree, no gradient, unchanged
after training steps through the loop), its features are exactly CLIP's, guidance (26) at
w = 0 and without a caption, dynamic thresholding against its formula (inside the sampler and
at several percentiles), loading the encoder from a run directory, and bad input."""
import numpy as np
import pytest

from refgen import backend
from refgen.autograd import Tensor, no_grad
from refgen.backend import default_rng
from refgen.data import captions as cap
from refgen.models import create
from refgen.models.base import Batch
from refgen.models.diffusion.sampling import threshold_x0
from refgen.models.text_to_image import Imagen, null_caption
from refgen.optim import Adam

TOK = cap.Tokenizer()
CAPTIONS = ["a thick slanted seven", "the number 3", "a small thin 1", "a handwritten zero"]


def tiny_clip(seed=0):
    return create("clip", data_shape=(1, 28, 28), width=16, layers=1, heads=2, embed_dim=8,
                  channels=4, seed=seed)


def tiny(clip=None, **kw):
    opts = dict(data_shape=(1, 8, 8), T=20, channels=8, heads=2, seed=0)
    opts.update(kw)
    return Imagen(clip=clip or tiny_clip(), **opts)


def ids(texts=CAPTIONS):
    return backend.asarray(TOK.encode_batch(texts))


def images(n=4, seed=0):
    return backend.asarray(np.random.default_rng(seed).uniform(-1, 1, (n, 1, 8, 8)).astype(np.float32))


def npv(a):
    return backend.to_numpy(a.data if isinstance(a, Tensor) else a)


def clip_weights(clip):
    return {k: npv(p).copy() for k, p in clip.named_parameters()}


@pytest.fixture(scope="module")
def trained():
    m = tiny(p_uncond=0.5)
    opt = Adam(list(m.parameters()), lr=1e-2)
    for _ in range(3):
        loss = m.loss(Batch(Tensor(images()), ids()), default_rng(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m


# ----------------------------------------------------------------------------- the frozen encoder
def test_the_text_encoder_gets_no_gradient_and_is_unchanged_after_a_step():
    m = tiny()
    before = clip_weights(m.clip)
    assert not any(p.requires_grad for p in m.clip.parameters())
    ours = {id(p) for p in m.parameters()}
    assert not any(id(p) in ours for p in m.clip.parameters())   # not trained, not saved
    assert not any(k.startswith("clip") for k in m.state_dict())
    loss = m.loss(Batch(Tensor(images()), ids()), default_rng(0))
    loss.backward()
    assert all(p.grad is None for p in m.clip.parameters())
    assert any(p.grad is not None and np.abs(npv(p.grad)).max() > 0 for p in m.unet.parameters())
    opt = Adam(list(m.parameters()), lr=1e-2)
    opt.step()
    after = clip_weights(m.clip)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_the_encoder_is_unchanged_by_the_training_loop(tmp_path):
    from refgen.train import train
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 32)
    x = rng.uniform(-1, 1, (32, 1, 8, 8)).astype(np.float32)
    ds = cap.CaptionDataset("mnist-captions-14", "train", x, labels, "continuous", x.shape[1:],
                            num_classes=10, vocab=TOK.words, value_range=(-1.0, 1.0),
                            captions=cap.CaptionData(labels, rng.integers(0, 3, (32, 4))))
    m = tiny()
    before, unet_before = clip_weights(m.clip), npv(m.unet.conv_out.weight).copy()
    train(m, ds, steps=3, batch_size=8, lr=1e-3, seed=0, out_dir=tmp_path, ema_decay=0.9,
          progress=False, samples=False, evaluate_at_end=False)
    after = clip_weights(m.clip)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert not np.array_equal(npv(m.unet.conv_out.weight), unet_before)


def test_the_features_are_clips():
    m = tiny()
    tokens, pooled, mask = m.encode(ids())
    with no_grad():
        np.testing.assert_array_equal(npv(pooled), npv(m.clip.encode_text(ids())))
    assert not tokens.requires_grad and not pooled.requires_grad
    assert npv(mask).sum(axis=1).tolist() == [6, 5, 6, 5]         # <sot> words <eot>


def test_a_clip_run_directory_is_loaded(tmp_path):
    from refgen.train import train
    from refgen.runs import write_json
    clip = tiny_clip(seed=3)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 16)
    x = rng.uniform(-1, 1, (16, 1, 28, 28)).astype(np.float32)
    ds = cap.CaptionDataset("mnist-captions", "train", x, labels, "continuous", x.shape[1:],
                            num_classes=10, vocab=TOK.words, value_range=(-1.0, 1.0),
                            captions=cap.CaptionData(labels, rng.integers(0, 3, (16, 4))))
    run = tmp_path / "clip"
    train(clip, ds, steps=1, batch_size=8, lr=1e-3, seed=3, out_dir=run, progress=False,
          samples=False, evaluate_at_end=False)
    write_json(run / "config.json", {
        "model": "clip", "data_facts": {"shape": [1, 28, 28]}, "train": {"seed": 3},
        "model_kwargs": {"width": 16, "layers": 1, "heads": 2, "embed_dim": 8, "channels": 4},
        "vocab_size": len(TOK)})
    m = tiny(clip=str(run))
    with no_grad():
        np.testing.assert_array_equal(npv(m.clip.encode_text(ids())), npv(clip.encode_text(ids())))


# ----------------------------------------------------------------------------- guidance (26)
def _eps(m, x, t, c):
    with no_grad():
        return npv(m.eps_net(Tensor(x), backend.asarray(np.full(len(x), t)), c))


def test_guidance_zero_and_a_dropped_caption(trained):
    m, x, sch = trained, images(seed=1), trained.schedule
    assert np.array_equal(npv(m.predictor(sch, 4, cond=ids(), guidance=0.0)(x, 7).eps),
                          _eps(m, x, 7, ids()))
    assert np.array_equal(npv(m.predictor(sch, 4, cond=None, guidance=5.0)(x, 7).eps),
                          _eps(m, x, 7, null_caption(TOK, 4)))
    c, u = _eps(m, x, 7, ids()), _eps(m, x, 7, null_caption(TOK, 4))
    assert np.abs(c - u).max() > 1e-3
    np.testing.assert_allclose(npv(m.predictor(sch, 4, cond=ids(), guidance=5.0)(x, 7).eps),
                               6 * c - 5 * u, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- dynamic thresholding
def dynamic(x0, p):
    """Saharia et al. 2022, sec. 2.3: s = max(percentile_p(|x0|), 1) per sample; clip(x0, -s, s) / s."""
    s = np.maximum(np.quantile(np.abs(x0.reshape(len(x0), -1)), p, axis=1), 1.0)
    s = s.reshape(-1, 1, 1, 1)
    return np.clip(x0, -s, s) / s


@pytest.mark.parametrize("p", [0.5, 0.9, 0.995, 1.0])
def test_dynamic_thresholding_matches_its_formula(p):
    x0 = np.random.default_rng(7).standard_normal((5, 1, 6, 6)) * np.array([0.3, 1, 2, 4, 9]).reshape(-1, 1, 1, 1)
    got = npv(threshold_x0(backend.asarray(x0), "dynamic", percentile=p))
    np.testing.assert_allclose(got, dynamic(x0, p), rtol=1e-12)
    assert np.abs(got).max() <= 1.0
    assert np.array_equal(got[0], x0[0])                           # |x0| < 1: left alone


def test_imagen_samples_threshold_the_guided_x0_dynamically(trained):
    """One DDIM step from x_T lands on the thresholded x_0 itself (alpha_bar_0 = 1)."""
    m = trained
    assert m.threshold == "dynamic" and m.sampling.guidance == 5.0
    x_T = backend.asarray(np.random.default_rng(8).standard_normal((4, 1, 8, 8)).astype(np.float32))
    w = 30.0
    sch = m.schedule.strided(1)
    x0 = npv(m.predictor(sch, 4, cond=ids(), guidance=w)(x_T, 1).x0)
    assert np.abs(x0).max() > 1.5                                 # out of range before
    got = npv(m.sample(4, cond=ids(), rng=default_rng(0), steps=1, x_T=x_T, guidance=w))
    np.testing.assert_allclose(got, dynamic(x0, 0.995), rtol=1e-4, atol=1e-5)
    assert np.abs(got).max() <= 1.0 + 1e-6
    none = npv(m.sample(4, cond=ids(), rng=default_rng(0), steps=1, x_T=x_T, guidance=w,
                        threshold="none"))
    np.testing.assert_allclose(none, x0, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- bad input
def test_bad_clip_is_one_clear_line(tmp_path):
    with pytest.raises(ValueError, match="train one with: refgen train clip"):
        tiny(clip=str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="clip must be a clip run directory or a clip model, got int"):
        tiny(clip=3)
