"""CLIP: the symmetric InfoNCE against an independent NumPy cross-entropy, its limit for
aligned embeddings, the clamped temperature, zero-shot classification with a prompt ensemble
on embeddings a test chooses, retrieval, CLIP score, and training through the loop."""
import math

import numpy as np
from refgen.backend import default_rng
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refgen
from refgen import backend
from refgen.autograd import Tensor
from refgen.data import captions as cap
from refgen.models import create
from refgen.models.base import Batch
from refgen.models.text_to_image import contrastive as C
from refgen.testing import check_grads


def unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def t64(a):
    return Tensor(backend.asarray(np.asarray(a, dtype=np.float64)))


def np_value(t):
    return backend.to_numpy(t.data)


def logsumexp(a, axis):
    m = a.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


# ----------------------------------------------------------------------------- InfoNCE
@pytest.mark.parametrize("b,d,s", [(5, 7, 3.7), (8, 4, 0.6), (3, 16, 42.0)])
def test_info_nce_is_the_mean_of_both_cross_entropies(b, d, s):
    """Radford et al. 2021, Fig. 3, against cross-entropies computed here in NumPy."""
    rng = np.random.default_rng(b * d)
    u, v = unit(rng.normal(size=(b, d))), unit(rng.normal(size=(b, d)))
    logits = s * u @ v.T
    ce_images = np.mean(logsumexp(logits, 1) - np.diag(logits))  # row i: which text is i's
    ce_texts = np.mean(logsumexp(logits, 0) - np.diag(logits))   # column j: which image is j's
    assert abs(ce_images - ce_texts) > 1e-3  # the two directions differ here
    got = float(np_value(C.info_nce(t64(u), t64(v), s)))
    assert got == pytest.approx((ce_images + ce_texts) / 2, rel=1e-12)
    # a Tensor scale gives the same value
    assert float(np_value(C.info_nce(t64(u), t64(v), t64(s)))) == pytest.approx(got, rel=1e-12)


def test_info_nce_of_aligned_embeddings_tends_to_zero_as_the_temperature_falls():
    """Radford et al. 2021, Fig. 3: loss = log(1 + (B - 1) e^{-s}) -> 0 as s grows."""
    b = 6
    u = np.eye(8)[:b]  # orthonormal, each text equal to its image
    values = [float(np_value(C.info_nce(t64(u), t64(u), s))) for s in (1.0, 5.0, 20.0, 100.0)]
    # closed form: every row has logit s on the diagonal and 0 elsewhere
    for s, val in zip((1.0, 5.0, 20.0, 100.0), values):
        assert val == pytest.approx(math.log(1 + (b - 1) * math.exp(-s)), rel=1e-9)
    assert all(a > c for a, c in zip(values, values[1:]))
    assert values[-1] < 1e-40 or values[-1] == pytest.approx(0.0, abs=1e-40)
    # unrelated embeddings stay near log B whatever the scale does
    rng = np.random.default_rng(0)
    far = float(np_value(C.info_nce(t64(u), t64(unit(rng.normal(size=(b, 8)))), 1e-3)))
    assert far == pytest.approx(math.log(b), rel=1e-3)


@given(st.integers(0, 10_000))
def test_info_nce_gradients(seed):
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    t = np.array(rng.uniform(-1.0, 2.0))
    check_grads(lambda a, b, c: C.info_nce(C.normalize(a), C.normalize(b), C.logit_scale(c)),
                [u, v, t], order=2)


def test_normalize_gives_unit_rows():
    a = np.random.default_rng(1).normal(size=(5, 3)) * [[0.1], [1], [3], [10], [0.5]]
    assert np_value(C.normalize(t64(a))) == pytest.approx(unit(a), rel=1e-9)


# ----------------------------------------------------------------------------- temperature
def test_logit_scale_starts_at_one_over_007_and_is_clamped_at_100():
    """Radford et al. 2021, sec. 2.5: tau starts at 0.07, exp(t) is clipped at 100."""
    m = create("clip", data_shape=(1, 28, 28), embed_dim=8, width=16, layers=1, heads=2, channels=4)
    assert float(np_value(m.logit_scale())) == pytest.approx(1 / 0.07, rel=1e-5)
    m.log_scale.data[...] = math.log(1000.0)
    assert float(np_value(m.logit_scale())) == pytest.approx(100.0, rel=1e-5)
    m.log_scale.data[...] = math.log(5.0)
    assert float(np_value(m.logit_scale())) == pytest.approx(5.0, rel=1e-5)


def test_clamped_temperature_gets_no_gradient_beyond_the_clamp():
    """Radford et al. 2021, sec. 2.5: past the clip the scale is constant in t."""
    rng = np.random.default_rng(2)
    u, v = t64(unit(rng.normal(size=(4, 3)))), t64(unit(rng.normal(size=(4, 3))))
    for t, moves in ((math.log(30.0), True), (math.log(300.0), False)):
        tt = Tensor(backend.asarray(np.array(t)), requires_grad=True)
        (g,) = refgen.grad(C.info_nce(u, v, C.logit_scale(tt)), [tt])
        assert (abs(float(np_value(g))) > 1e-6) == moves


# ----------------------------------------------------------------------------- zero-shot
def _toy(rng, n=60):
    """Three classes along e_0, e_1, e_2 (D = 4). Each class has two prompts pushed toward
    the next class, one by +d and one by -d: alone a prompt misleads, their mean does not."""
    e = np.eye(4)
    y = rng.integers(0, 3, n)
    u = unit(e[y] + 0.1 * rng.normal(size=(n, 4)))
    d = 0.9 * (np.roll(e[:3], 1, axis=0) - e[:3])  # toward the next class
    v = unit(np.stack([e[:3] + d, e[:3] - d], axis=1) + np.array([0, 0, 0, 0.3]))  # (3, 2, 4)
    return u, v, y


def test_zero_shot_picks_the_class_of_a_known_toy_and_ensembling_matters():
    """Radford et al. 2021, sec. 3.1.4: the ensemble's mean embedding classifies the toy."""
    rng = np.random.default_rng(4)
    u, v, y = _toy(rng)
    w = np_value(C.class_embeddings(t64(v)))
    assert w == pytest.approx(unit(v.mean(axis=1)), rel=1e-9)
    pred = np_value(C.zero_shot_logits(t64(u), t64(w))).argmax(axis=1)
    assert np.mean(pred == y) == 1.0
    single = np_value(C.zero_shot_logits(t64(u), t64(v[:, 0]))).argmax(axis=1)
    assert np.mean(single == y) < 0.8


def test_model_zero_shot_uses_its_encoders_and_the_ensemble(monkeypatch):
    """Radford et al. 2021, sec. 3.1.4, through CLIP.zero_shot with known embeddings."""
    m = create("clip", data_shape=(1, 28, 28), embed_dim=4, width=16, layers=1, heads=2, channels=4)
    rng = np.random.default_rng(5)
    u, v, y = _toy(rng)
    prompt_ids = np.arange(3 * 2 * cap.CONTEXT).reshape(3, 2, cap.CONTEXT)
    table = {tuple(r): k for k, r in enumerate(prompt_ids.reshape(6, -1))}
    monkeypatch.setattr(m, "encode_image", lambda x: t64(u))
    monkeypatch.setattr(m, "encode_text", lambda ids: t64(v.reshape(6, 4)[
        [table[tuple(r)] for r in backend.to_numpy(ids)]]))
    pred = backend.to_numpy(m.zero_shot(np.zeros((len(y), 1, 28, 28)), prompt_ids))
    assert np.array_equal(pred, y)


def test_retrieve_and_clip_score():
    """Retrieval by dot product; Hessel et al. 2021, CLIP-S = 2.5 max(cos, 0)."""
    rng = np.random.default_rng(6)
    g = unit(rng.normal(size=(20, 5)))
    q = unit(g[[3, 17, 8]] + 0.05 * rng.normal(size=(3, 5)))
    top = backend.to_numpy(C.retrieve(t64(q), t64(g), k=2))
    assert top[:, 0].tolist() == [3, 17, 8]
    sims = q @ g.T
    assert top[:, 1].tolist() == np.argsort(-sims, axis=1)[:, 1].tolist()
    a, b = unit(rng.normal(size=(6, 5))), unit(rng.normal(size=(6, 5)))
    cos = (a * b).sum(1)
    assert (cos < 0).any() and (cos > 0).any()
    got = np_value(C.clip_score(t64(a), t64(b)))
    assert got == pytest.approx(2.5 * np.maximum(cos, 0), rel=1e-12, abs=1e-15)


# ----------------------------------------------------------------------------- the model
def _tiny():
    return create("clip", data_shape=(1, 28, 28), vocab_size=len(cap.Tokenizer()), embed_dim=16,
                  width=16, layers=1, heads=2, channels=4, seed=3)


def test_text_encoder_reads_at_eot_and_ignores_padding():
    m = _tiny()
    tok = cap.Tokenizer()
    ids = tok.encode_batch(["a thick seven", "the number 3"])
    v = np_value(m.encode_text(ids))
    noisy = ids.copy()
    noisy[:, -2:] = tok.index["seven"]  # change what lies after <eot>
    assert np_value(m.encode_text(noisy)) == pytest.approx(v, abs=1e-6)
    changed = tok.encode_batch(["a thin seven", "the number 3"])
    w = np_value(m.encode_text(changed))
    assert np.abs(w[0] - v[0]).max() > 1e-4 and w[1] == pytest.approx(v[1], abs=1e-6)
    assert np.linalg.norm(v, axis=1) == pytest.approx(1.0, rel=1e-5)


def test_bad_input_is_refused_in_one_line():
    m = _tiny()
    x = Tensor(backend.asarray(np.zeros((2, 1, 28, 28), np.float32)))
    with pytest.raises(ValueError, match="mnist-captions"):
        m.loss(Batch(x, backend.asarray(np.array([1, 2]))), default_rng(0))
    with pytest.raises(ValueError, match="<eot>"):
        m.encode_text(np.ones((2, cap.CONTEXT), dtype=np.int64))
    with pytest.raises(ValueError, match=r"expected \(B, 12\)"):
        m.encode_text(np.ones((2, 5), dtype=np.int64))


def _captioned(n=64, seed=0):
    """A small stand-in for mnist-captions: images whose class is a bright square's place."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    x = -np.ones((n, 1, 28, 28), np.float32)
    r, c = 2 + 8 * (labels // 4), 2 + 6 * (labels % 4)
    for k in range(n):  # building the toy data, not model code
        x[k, 0, r[k]:r[k] + 6, c[k]:c[k] + 5] = 1.0
    lev = rng.integers(0, 3, (n, 4))
    return cap.CaptionDataset("mnist-captions", "train", x, labels, "continuous", x.shape[1:],
                              num_classes=10, vocab=cap.Tokenizer().words, value_range=(-1.0, 1.0),
                              captions=cap.CaptionData(labels, lev))


def test_training_through_the_loop_lowers_the_loss(tmp_path):
    from refgen.train import train
    ds = _captioned()
    m = _tiny()
    start = float(np_value(m.loss(Batch(*_batch(ds)), default_rng(0))))
    metrics = train(m, ds, steps=40, batch_size=32, lr=3e-3, seed=0, out_dir=tmp_path,
                    progress=False, samples=False)
    end = float(np_value(m.loss(Batch(*_batch(ds)), default_rng(0))))
    assert metrics["steps"] == 40 and end < start - 0.5


def _batch(ds):
    xb, ids = ds.batch(np.arange(32), 0)
    return Tensor(backend.asarray(xb)), backend.asarray(ids)


@pytest.mark.slow
def test_cli_trains_clip_on_mnist_captions(mnist_dir, tmp_path):
    from refgen.cli import main
    assert main(["train", "clip", "--data", "mnist-captions", "--steps", "2", "--batch-size", "8",
                 "--out", str(tmp_path / "run"), "-q", "--set", "width=16", "--set", "layers=1"]) == 0
    run = tmp_path / "run"
    assert (run / "checkpoint.npz").exists() and (run / "metrics.json").exists()
    assert not (run / "samples.png").exists()  # CLIP embeds; it draws nothing
