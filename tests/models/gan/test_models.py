"""The GAN models through the one training loop: alternation, weight clipping, exact resume,
packing, the DCGAN shapes, conditioning, and bad options refused before any file is written."""
import json
import math

import numpy as np
from refgen.backend import default_rng
import pytest

from refgen import backend, data, io, models
from refgen.backend import to_numpy
from refgen.cli import main
from refgen.data.datasets import Dataset
from refgen.models.base import Batch
from refgen.autograd import Tensor
from refgen.train import _make_optimizers, train

pytestmark = pytest.mark.usefixtures("numpy_backend")
NAMES = ["gan", "nsgan", "wgan", "wgan-gp", "fgan", "cgan", "infogan", "infowgan-gp"]


def _toy(n=512, seed=0):
    return data.load("8gaussians", "train", seed=seed) if n is None else Dataset(
        "8gaussians", "train", data.toy2d.sample("8gaussians", n, seed).astype(np.float32), None,
        "continuous", (2,))


def _quadrants(n=2048, seed=0, shuffled=False):
    """4 labelled Gaussians at (+-1.5, +-1.5), std 0.25; label k is the quadrant."""
    r = np.random.default_rng(seed)
    centres = np.array([[1.5, 1.5], [-1.5, 1.5], [-1.5, -1.5], [1.5, -1.5]])
    y = r.integers(0, 4, n)
    x = (centres[y] + 0.25 * r.standard_normal((n, 2))).astype(np.float32)
    if shuffled:
        y = r.permutation(y)
    return Dataset("quadrants", "train", x, y, "continuous", (2,), num_classes=4), centres


def test_registry_names():
    assert set(NAMES) <= set(models.names())


def _step(model, batch, opts, rng):
    return model.train_step(batch, opts, rng)


def test_generator_steps_every_n_critic_and_clipping_holds():
    model = models.create("wgan", data_shape=(2,), seed=0)
    assert (model.clip, model.n_critic) == (0.01, 5)
    opts, _ = _make_optimizers(model, "adam", 5e-5)
    assert type(opts["D"]).__name__ == "RMSprop" and type(opts["G"]).__name__ == "RMSprop"
    noise = backend.default_rng(0)
    ds = _toy()
    g_before = [to_numpy(p.data).copy() for p in model.G.parameters()]
    g_steps = []
    for i in range(11):
        x, _ = ds.batch(np.arange(64) + 64 * (i % 8))
        info = _step(model, Batch(Tensor(backend.asarray(x))), opts, noise)
        for p in model.D.parameters():                      # every critic weight in [-c, c]
            assert np.abs(to_numpy(p.data)).max() <= 0.01
        g_steps.append("g_loss" in info)
        if i == 3:   # four critic steps so far: G has not moved
            assert all(np.array_equal(a, to_numpy(p.data)) for a, p in zip(g_before, model.G.parameters()))
    assert g_steps == [False] * 4 + [True] + [False] * 4 + [True, False]
    assert opts["D"].step_count == 11 and opts["G"].step_count == 2


def test_resume_ends_bit_for_bit_where_the_uninterrupted_run_ends(tmp_path):
    """WGAN-GP with BatchNorm in G, spectral norm in D, n_critic = 3 and an EMA: 7 steps,
    then a resume to 12, against 12 steps at once."""
    ds = _toy()
    kw = dict(data_shape=(2,), seed=1, hidden=[16, 16], g_norm="batch", d_norm="spectral",
              n_critic=3)
    run = dict(batch_size=32, lr=1e-3, seed=3, ema_decay=0.9, progress=False, samples=False,
               ckpt_every=100)
    a = models.create("wgan-gp", **kw)
    train(a, ds, steps=12, out_dir=tmp_path / "a", **run)
    b = models.create("wgan-gp", **kw)
    train(b, ds, steps=7, out_dir=tmp_path / "b", **run)
    b = models.create("wgan-gp", **kw)
    train(b, ds, steps=12, out_dir=tmp_path / "b", resume=True, **run)
    sa, sb = a.state_dict(), b.state_dict()
    assert any(k.endswith("running_var") for k in sa) and any(k.endswith(".u") for k in sa)
    for k in sa:
        np.testing.assert_array_equal(to_numpy(sa[k]), to_numpy(sb[k]), err_msg=k)
    ca, _ = io.load_checkpoint(tmp_path / "a" / "checkpoint.npz")
    cb, _ = io.load_checkpoint(tmp_path / "b" / "checkpoint.npz")
    assert set(ca) == set(cb) and any(k.startswith("ema/") for k in ca)
    assert any(k.startswith("opt/D/") for k in ca) and any(k.startswith("opt/G/") for k in ca)
    for k in ca:
        np.testing.assert_array_equal(ca[k], cb[k], err_msg=k)


@pytest.mark.parametrize("name", NAMES)
def test_every_model_trains_a_few_steps_and_samples(name, tmp_path):
    ds, _ = _quadrants(256) if name == "cgan" else (_toy(256), None)
    model = models.create(name, data_shape=(2,), seed=0, hidden=[16],
                          **({"num_classes": 4} if name == "cgan" else {}))
    m = train(model, ds, steps=6, batch_size=32, lr=1e-3, out_dir=tmp_path, progress=False,
              samples=False)
    assert m["steps"] == 6 and np.isfinite(m["loss"])
    s = to_numpy(model.sample(10, rng=default_rng(0)))
    assert s.shape == (10, 2) and np.isfinite(s).all()
    np.testing.assert_array_equal(s, to_numpy(model.sample(10, rng=default_rng(0))))   # rng decides


def test_packing_groups_consecutive_examples():
    model = models.create("nsgan", data_shape=(2,), seed=0, pack=2, hidden=[8])
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    packed = to_numpy(model.D.packed(Tensor(x)).data)
    np.testing.assert_array_equal(packed, x.reshape(3, 4))          # (B, 2) -> (B / 2, 4)
    assert model.D.layers[0].weight.shape[1] == 4
    assert model.D(Tensor(x)).shape == (3,)
    with pytest.raises(ValueError, match="multiple of 2"):
        model.D(Tensor(x[:5]))
    img = models.create("nsgan", data_shape=(1, 14, 14), seed=0, pack=2)
    assert img.D(Tensor(np.zeros((4, 1, 14, 14), np.float32))).shape == (2,)


@pytest.mark.parametrize("side", [14, 28])
def test_dcgan_shapes_and_range(side):
    model = models.create("nsgan", data_shape=(1, side, side), seed=0)
    assert model.G.arch == "conv" and any(k.endswith("running_mean") for k in model.state_dict())
    noise = backend.default_rng(0)
    x = to_numpy(model.sample(3, rng=noise))
    assert x.shape == (3, 1, side, side) and np.abs(x).max() <= 1.0
    assert model.D(Tensor(backend.asarray(x))).shape == (3,)
    c = models.create("cgan", data_shape=(1, side, side), num_classes=10, seed=0, cond="projection")
    y = to_numpy(c.sample(4, cond=np.array([0, 1, 2, 3]), rng=noise))
    assert y.shape == (4, 1, side, side)


def _nearest_accuracy(model, centres, n=800):
    labels = np.arange(n) % 4
    s = to_numpy(model.sample(n, cond=labels, rng=default_rng(5)))
    nearest = np.linalg.norm(s[:, None] - centres[None], axis=-1).argmin(1)
    return float((nearest == labels).mean())


@pytest.mark.parametrize("cond", ["concat", "projection"])
def test_conditioning_is_used(cond, tmp_path):
    """cond_accuracy (the nearest mode is the asked-for label) is high after training on
    true labels, and falls to chance (1/4) when the labels were shuffled."""
    acc = {}
    for shuffled in (False, True):
        ds, centres = _quadrants(shuffled=shuffled)
        model = models.create("cgan", data_shape=(2,), num_classes=4, seed=0, hidden=[32, 32],
                              z_dim=2, cond=cond)
        train(model, ds, steps=150, batch_size=64, lr=2e-3, out_dir=tmp_path / str(shuffled),
              progress=False, samples=False)
        acc[shuffled] = _nearest_accuracy(model, centres)
    assert acc[False] > 0.9
    assert abs(acc[True] - 0.25) < 0.12


@pytest.mark.parametrize("argv, words", [
    (["wgan", "--set", "gp=10"], "clip or gp"),
    (["wgan-gp", "--set", "n_critic=0"], "n_critic=0; accepted: an integer >= 1"),
    (["cgan"], "needs labelled data"),
    (["nsgan", "--set", "pack=0"], "pack=0; accepted"),
    (["wgan-gp", "--set", "d_norm=batch"], "batch-normalized critic"),
    (["fgan", "--set", "divergence=tv"], "accepted: kl, reverse_kl"),
])
def test_bad_options_get_one_line_and_no_run_directory(argv, words, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", argv[0], "--data", "8gaussians", "--steps", "2", "--out", str(out),
                 "-q"] + argv[1:])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and words in err, err
    assert not out.exists()


def _truncated_normal_cdf(x, tau):
    """CDF of N(0, 1) restricted to [-tau, tau]."""
    phi = np.vectorize(lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2))))
    return (phi(x) - phi(-tau)) / (phi(tau) - phi(-tau))


@pytest.mark.parametrize("tau", [0.6, 1.7])
def test_truncated_noise_is_the_truncated_normal(tau):
    model = models.create("nsgan", data_shape=(2,), seed=0, hidden=[8], z_dim=5)
    z = to_numpy(model.noise(8000, default_rng(1), truncation=tau)).astype(np.float64)
    assert z.shape == (8000, 5) and np.abs(z).max() <= tau
    # the closed-form variance of the truncated normal: 1 - 2 tau phi(tau) / (2 Phi(tau) - 1);
    # clipping to [-tau, tau] instead of drawing again would pile mass at +-tau and raise it
    pdf = math.exp(-tau ** 2 / 2) / math.sqrt(2 * math.pi)
    var = 1 - 2 * tau * pdf / math.erf(tau / math.sqrt(2))
    assert abs(z.var() - var) < 4 * var * math.sqrt(2 / z.size), (z.var(), var)
    # Kolmogorov-Smirnov against its CDF, per component (critical value at alpha = 0.001)
    for j in range(5):
        v = np.sort(z[:, j])
        F = _truncated_normal_cdf(v, tau)
        n = len(v)
        d = max((np.arange(1, n + 1) / n - F).max(), (F - np.arange(n) / n).max())
        assert d < 1.95 / math.sqrt(n), (j, d)


def test_truncation_changes_only_the_noise_and_is_refused_unless_positive():
    model = models.create("nsgan", data_shape=(1, 14, 14), seed=0, z_dim=6, channels=4).eval()
    plain = to_numpy(model.noise(7, default_rng(3)))
    np.testing.assert_array_equal(plain, default_rng(3).standard_normal((7, 6), dtype=np.float32))
    # a bound no draw reaches redraws nothing: the same numbers as the untruncated prior
    np.testing.assert_array_equal(to_numpy(model.noise(7, default_rng(3), truncation=1e6)), plain)
    z = model.noise(7, default_rng(3), truncation=0.5)
    kept = np.abs(plain) <= 0.5                        # components inside the bound stay as drawn
    np.testing.assert_array_equal(to_numpy(z)[kept], plain[kept])
    assert not np.array_equal(to_numpy(z), plain)
    x = to_numpy(model.sample(7, rng=default_rng(3), truncation=0.5))
    np.testing.assert_array_equal(x, to_numpy(model.G(Tensor(z), None).data))   # G of that z
    for bad in (0, -1.0, float("nan"), float("inf"), "wide", True):
        with pytest.raises(ValueError, match="truncation=.*accepted: a positive number"):
            model.sample(2, rng=default_rng(0), truncation=bad)


def test_cli_trains_a_gan_and_writes_its_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "nsgan", "--data", "ring8", "--steps", "20", "--batch-size", "32",
                 "--out", str(out), "-q", "--set", "pack=2", "--set", "hidden=[16]"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"modes_covered", "hq_fraction", "steps"} <= set(metrics)
    assert (out / "samples.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    for name, extra in (("t.png", ["--truncation", "0.5"]), ("u.png", [])):
        assert main(["sample", str(out), "-n", "300", "-q", "--out", str(tmp_path / name)] + extra) == 0
    t, u = (tmp_path / "t.png").read_bytes(), (tmp_path / "u.png").read_bytes()
    assert t[:4] == b"\x89PNG" and t != u          # the flag reaches the model: other points
