"""GLIDE's upsampler: the loss against a hand-made L_simple (19) with the low-resolution image
augmented by (3) and only the caption dropped; a one-step sample against the network's own
prediction, guided by (26) between the caption and the null caption on the same z_s, with the
augmentation replayed from the generator; the image, the caption and the level reach the
network; training through the
loop (and the evaluation's upsampling of test images); bad input."""
import numpy as np
import pytest

from refgen import backend
from refgen.autograd import Tensor, no_grad
from refgen.backend import default_rng
from refgen.data import captions as cap
from refgen.models import create
from refgen.models.base import Batch
from refgen.models.diffusion.process import q_sample
from refgen.models.text_to_image import null_caption
from refgen.models.text_to_image.upsampler import Upsampling
from tests.models.text_to_image.test_glide import _captioned14, stepped

TOK = cap.Tokenizer()
CAPTIONS = ["a thick slanted seven", "the number 3", "a small thin 1", "a handwritten zero"]


def tiny(**kw):
    opts = dict(data_shape=(1, 8, 8), T=20, channels=8, text_width=16, text_layers=1,
                text_heads=2, heads=2, seed=0, aug_max=10)
    opts.update(kw)
    return create("glide-upsampler", **opts)


def ids(texts=CAPTIONS):
    return backend.asarray(TOK.encode_batch(texts))


def images(n=4, seed=0, side=8):
    return backend.asarray(np.random.default_rng(seed).uniform(-1, 1, (n, 1, side, side)).astype(np.float32))


def npv(a):
    return backend.to_numpy(a.data if isinstance(a, Tensor) else a)


def pool(x):
    """2x2 averages (n, 1, 8, 8) -> (n, 1, 4, 4), and nearest-neighbour back up."""
    x = npv(x)
    return x.reshape(len(x), 1, 4, 2, 4, 2).mean(axis=(3, 5))


def up(z):
    return np.repeat(np.repeat(z, 2, axis=-2), 2, axis=-1)


@pytest.fixture(scope="module")
def trained():
    return stepped(tiny(p_uncond=0.5), 3)   # GLIDE's helper: the output layers move


def _eps(m, xt, t_net, c, low, s):
    with no_grad():
        return npv(m.eps_net(Tensor(backend.asarray(xt)), backend.asarray(t_net),
                             Upsampling(backend.asarray(c), backend.asarray(low), backend.asarray(s))))


def test_loss_is_l_simple_on_the_augmented_low_res_image_with_only_the_caption_dropped(trained):
    """L_simple (19) replayed from the generator: s, the augmentation's noise, t, eps, the
    dropped rows; z_s = sqrt(ab_s) z + sqrt(1 - ab_s) eps' of z = down(x) (3), the network fed
    [x_t, up(z_s)]."""
    m, x0 = trained, images(seed=6)
    got = float(npv(m.loss(Batch(Tensor(x0), ids()), default_rng(9))))
    r = default_rng(9)                                  # the draws in loss's order
    s = npv(r.integers(0, m.aug_max + 1, size=4))
    eps_aug = npv(r.standard_normal((4, 1, 4, 4), dtype=np.float32))
    t = r.integers(1, m.T + 1, size=4)
    eps = r.standard_normal(x0.shape, dtype=x0.dtype)
    keep = npv(r.random((4,))) >= 0.5
    assert 0 < keep.sum() < 4 and len(set(s.tolist())) > 1
    ab_s = npv(m.schedule.alpha_bar)[s].reshape(-1, 1, 1, 1)
    z_s = np.sqrt(ab_s) * pool(x0) + np.sqrt(1 - ab_s) * eps_aug           # (3) on z
    c = np.where(keep[:, None], npv(ids()), npv(null_caption(TOK, 4)))
    xt = npv(q_sample(m.schedule, x0, t, eps))                             # (3) on x
    out = _eps(m, xt, npv(m.schedule.net_t[t]), c, up(z_s), s)
    assert got == pytest.approx(float(np.mean((npv(eps) - out) ** 2)), rel=1e-5)
    clean = _eps(m, xt, npv(m.schedule.net_t[t]), c, up(pool(x0)), np.zeros(4, np.int64))
    assert np.abs(out - clean).max() > 1e-4                                # the augmentation shows


def test_dropping_replaces_the_caption_and_keeps_the_image(trained):
    low, s = backend.asarray(np.ones((4000, 1, 8, 8), np.float32)), backend.asarray(np.arange(4000))
    cond = Upsampling(backend.asarray(np.tile(npv(ids())[:1], (4000, 1))), low, s)
    out = trained.drop(cond, default_rng(5))
    dropped = (npv(out.ids) == npv(null_caption(TOK, 1))).all(axis=1)
    assert abs(dropped.mean() - 0.5) < 3 * np.sqrt(0.25 / 4000)
    assert out.low is low and out.s is s


@pytest.mark.parametrize("w", [0.0, 2.0])
def test_a_one_step_sample_is_the_guided_prediction_from_the_augmented_image(trained, w):
    """steps=1 from a given x_T returns the x_0 of (11) from eps_bar of (26) (clipped to
    [-1, 1]), with z_s of (3) drawn from the generator first and the level s told to the network."""
    m, level = trained, 7
    z, x_T = pool(images(seed=3)), npv(images(seed=4))
    got = npv(m.sample(4, cond=backend.asarray(z), rng=default_rng(2), caption=ids(), aug_level=level,
                       guidance=w, steps=1, x_T=backend.asarray(x_T)))
    ab_s = float(npv(m.schedule.alpha_bar)[level])
    z_s = np.sqrt(ab_s) * z + np.sqrt(1 - ab_s) * npv(default_rng(2).standard_normal(z.shape, dtype=np.float32))
    t_net, s = np.full(4, int(npv(m.schedule.net_t)[-1])), np.full(4, level)
    c = _eps(m, x_T, t_net, npv(ids()), up(z_s), s)
    u = _eps(m, x_T, t_net, npv(null_caption(TOK, 4)), up(z_s), s)
    assert np.abs(c - u).max() > 1e-3                                      # the caption matters
    eps = (w + 1) * c - w * u                                              # (26)
    ab_T = float(npv(m.schedule.alpha_bar)[-1])
    want = np.clip((x_T - np.sqrt(1 - ab_T) * eps) / np.sqrt(ab_T), -1, 1)  # (11), static clipping
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_the_low_res_image_and_the_caption_both_change_the_samples(trained):
    kw = dict(rng=None, steps=3, x_T=images(seed=4))
    z = backend.asarray(pool(images(seed=3)))

    def draw(cond, caption):
        return npv(trained.sample(4, cond=cond, caption=caption, **dict(kw, rng=default_rng(1))))
    a = draw(z, ids())
    assert not np.allclose(a, draw(backend.asarray(pool(images(seed=8))), ids()), atol=1e-3)
    assert not np.allclose(a, draw(z, ids(CAPTIONS[::-1])), atol=1e-3)
    assert np.array_equal(a, draw(z, CAPTIONS))                            # texts or ids
    unguided = npv(trained.sample(4, cond=z, rng=default_rng(1), steps=3, x_T=images(seed=4)))
    np.testing.assert_allclose(unguided, draw(z, null_caption(TOK, 4)), atol=1e-6)  # None: null


def test_the_network_reads_the_augmentation_level(trained):
    """The same x_t, z_s and caption at levels s = 0 and s = 7 give different predictions: the
    level reaches the U-Net (its second time embedding), not only the corruption of z."""
    x, low = npv(images(seed=5)), up(pool(images(seed=3)))
    t_net = np.full(4, 400)
    a = _eps(trained, x, t_net, npv(ids()), low, np.zeros(4, np.int64))
    b = _eps(trained, x, t_net, npv(ids()), low, np.full(4, 7))
    assert np.abs(a - b).max() > 1e-4


def test_trains_through_the_loop_and_evaluates_on_the_test_images_low_res(tmp_path):
    from refgen.train import train
    m = tiny()
    metrics = train(m, _captioned14(), steps=3, batch_size=8, lr=1e-3, seed=0, out_dir=tmp_path,
                    progress=False, samples=True, evaluate_at_end=False)
    assert metrics["steps"] == 3 and np.isfinite(metrics["loss"]) and (tmp_path / "samples.png").exists()
    np.testing.assert_allclose(npv(m.eval_cond(images())), pool(images()), rtol=1e-6)


def test_bad_input_is_one_clear_line(trained):
    with pytest.raises(ValueError, match=r"shape \(2, 1, 4, 4\); got \(2, 12\)"):
        trained.sample(2, cond=ids()[:2], rng=default_rng(0))              # a prompt as cond
    with pytest.raises(ValueError, match="pass cond"):
        trained.sample(2, rng=default_rng(0))
    with pytest.raises(ValueError, match="aug_level"):
        trained.sample(2, cond=np.zeros((2, 1, 4, 4), np.float32), rng=default_rng(0), aug_level=21)
    with pytest.raises(ValueError, match="divisible"):
        tiny(data_shape=(1, 7, 7))
    with pytest.raises(ValueError, match="aug_max"):
        tiny(aug_max=21)
    with pytest.raises(ValueError, match="caption ids"):
        trained.loss(Batch(Tensor(images()), backend.asarray(np.arange(4))), default_rng(0))


def test_refgen_sample_upsamples_the_test_images_for_a_prompt(tmp_path, mnist_dir, capsys):
    """`refgen sample DIR --prompt TEXT` on a glide-upsampler run draws 28x28 images from the
    first test images' 14x14 versions with the prompt as their caption."""
    from refgen.cli import main
    from refgen.train import train
    run = tmp_path / "run"
    kw = dict(T=20, channels=8, text_width=16, text_layers=1, text_heads=2, heads=2, aug_max=5)
    m = create("glide-upsampler", data_shape=(1, 28, 28), seed=0, **kw)
    ds = cap.load_split("test", data_dir=mnist_dir)
    cfg = {"model": "glide-upsampler", "data": "mnist-captions", "data_dir": str(mnist_dir),
           "data_facts": {"shape": [1, 28, 28], "kind": "continuous"}, "train": {"seed": 0},
           "vocab_size": len(TOK), "model_kwargs": kw}
    train(m, ds, steps=1, batch_size=4, lr=1e-3, seed=0, out_dir=run, progress=False,
          samples=False, evaluate_at_end=False, config=cfg)
    out = tmp_path / "seven.png"
    assert main(["sample", str(run), "--prompt", "a thick seven", "-n", "3", "--steps", "2",
                 "--out", str(out), "-q"]) == 0
    assert out.exists()
