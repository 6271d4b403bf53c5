"""Every model trains, checkpoints, resumes and samples on a stand-in GPU backend that
refuses host/device mixing as CuPy does (refgen.testing.strict_device), so the CuPy path is
checked for that class of bug on machines without a GPU."""
import numpy as np
import pytest

from refgen import backend, models
from refgen.autograd import Tensor, no_grad
from refgen.backend import use_backend
from refgen.data import Dataset
from refgen.data.datasets import value_range
from refgen.testing.strict_device import DeviceArray, HostDeviceMix, strict_device
from refgen.train import train

IMG = (1, 8, 8)


def _data(name, shape, n=16, classes=False):
    rng = np.random.default_rng(0)
    lo, hi = value_range(name) or (-1.0, 1.0)
    x = rng.random((n,) + shape)
    x = (x < 0.3) if name.endswith("binary") else lo + (hi - lo) * x
    kind = "binary" if name.endswith("binary") else "continuous"
    y = rng.integers(0, 10, n) if classes else None
    if classes == "control":  # a control image per example (the ControlNet data sets)
        y = (rng.random((n,) + shape) > 0.5).astype(np.float32)
    return Dataset(name, "train", x.astype(np.float32), y, kind, shape,
                   num_classes=10 if classes is True else None, value_range=value_range(name))


with use_backend("numpy"):
    _TEACHER = models.create("ddpm", data_shape=(2,), T=30, parameterization="v", hidden=16, depth=1)
    _AUTOENCODER = models.create("kl-autoencoder", data_shape=IMG, channels=4, levels=1)
    _BASE = models.create("ddpm", data_shape=IMG, T=30, channels=8, groups=4, num_res_blocks=1,
                          class_cond=False, sample_steps=3)

# model -> (data set name, example shape, labels?, tiny constructor arguments)
CASES = {
    "gmm": ("8gaussians", (2,), False, dict(components=3)),
    "linear-autoencoder": ("8gaussians", (2,), False, {}),
    "linear-vae": ("8gaussians", (2,), False, {}),
    "made": ("mnist-binary", IMG, False, dict(hidden=(32,), num_masks=2)),
    "pixelcnn": ("mnist-binary", IMG, False, dict(channels=8, blocks=1, head_channels=8)),
    "gated-pixelcnn": ("mnist-binary", IMG, False, dict(channels=8, layers=2, first_kernel=5,
                                                        head_channels=8)),
    "gpt": ("mnist-binary", (1, 4, 4), False, dict(n_layer=1, n_head=2, n_embd=16)),
    "pixelrnn": ("mnist-binary", IMG, False, dict(hidden=4, layers=1, first_kernel=3, head_channels=8)),
    "nice": ("mnist-dequantized", IMG, False, dict(couplings=2, hidden=(16,))),
    "realnvp": ("mnist-dequantized", IMG, False, dict(couplings=2, hidden=8, scales=1)),
    "glow": ("mnist-dequantized", IMG, False, dict(depth=2, levels=1, hidden=8)),
    "maf": ("mnist-dequantized", (1, 4, 4), False, dict(layers=2, hidden=(16,))),
    "gflow": ("mnist-dequantized", (1, 4, 4), False, dict(layers=2, components=3)),
    "autoencoder": ("mnist-binary", IMG, False, dict(latent_dim=4, hidden="16")),
    "vae": ("mnist-binary", IMG, False, dict(latent_dim=4, hidden="16")),
    "iwae": ("mnist-binary", IMG, False, dict(latent_dim=4, hidden="16", k=3)),
    "beta-vae": ("mnist-binary", IMG, False, dict(latent_dim=4, hidden="16")),
    "cvae": ("mnist-binary", IMG, True, dict(latent_dim=4, hidden="16", num_classes=10)),
    "vqvae": ("mnist-binary", IMG, False, dict(num_codes=8, code_dim=4, channels="8,8",
                                               prior_channels=8, prior_blocks=1)),
    "vqvae2": ("mnist-binary", IMG, False, dict(num_codes=4, top_codes=3, code_dim=4,
                                                channels="8,8", prior_channels=8, prior_layers=1)),
    "ddpm": ("mnist", IMG, True, dict(T=30, num_classes=10, channels=8, groups=4,
                                      num_res_blocks=1, learn_sigma=True, guidance=1.0,
                                      sample_steps=5, vlb_timesteps=3)),
    "kl-autoencoder": ("mnist", IMG, False, dict(channels=4, levels=1)),
    "vq-autoencoder": ("mnist", IMG, False, dict(num_codes=8, code_dim=4, channels="8,8")),
    # ldm copies its (frozen) autoencoder onto the active backend
    "ldm": ("mnist", IMG, True, dict(autoencoder=_AUTOENCODER, num_classes=10, channels=8,
                                     groups=4, num_res_blocks=1, T=30, sample_steps=3,
                                     context_tokens=2, context_dim=8, guidance=1.0)),
    "ebm": ("8gaussians", (2,), False, dict(hidden=(8,), mcmc_steps=2, buffer_size=20, sample_steps=3)),
    "ebm-nce": ("8gaussians", (2,), False, dict(hidden=(8,), sample_steps=3)),
    "ebm-fce": ("8gaussians", (2,), False, dict(hidden=(8,), flow_couplings=2, flow_hidden=(8,),
                                                sample_steps=3)),
    "ebm-sm": ("8gaussians", (2,), False, dict(hidden=(8,), sample_steps=3)),
    "jem": ("mnist", IMG, True, dict(num_classes=10, channels=4, mcmc_steps=2, buffer_size=20,
                                     sample_steps=3, augment_shift=1)),
    # the distilled models copy their teacher onto the active backend
    "progressive-distillation": ("8gaussians", (2,), False, dict(teacher=_TEACHER, teacher_steps=4,
                                                                 round_steps=1)),
    "consistency-distillation": ("8gaussians", (2,), False, dict(teacher=_TEACHER, N=4, hidden=16,
                                                                 depth=1)),
    "consistency-training": ("8gaussians", (2,), False, dict(K=5, hidden=16, depth=1)),
    "controlnet": ("mnist-14-edges", IMG, "control", dict(base=_BASE, hint_channels=4)),
    "gan": ("8gaussians", (2,), False, dict(hidden=[8], r1=1.0)),
    "dvae": ("mnist", IMG, False, dict(num_codes=5, code_dim=4, channels=4)),
    "nsgan": ("mnist", (1, 14, 14), False, dict(channels=4, hidden=[8], z_dim=4, pack=2)),
    "wgan": ("8gaussians", (2,), False, dict(hidden=[8])),
    "wgan-gp": ("8gaussians", (2,), False, dict(hidden=[8], g_norm="batch", d_norm="spectral")),
    "fgan": ("8gaussians", (2,), False, dict(hidden=[8], divergence="kl")),
    "cgan": ("mnist", (1, 14, 14), True, dict(channels=4, hidden=[8], z_dim=4, num_classes=10,
                                              cond="projection")),
    "infogan": ("mnist", (1, 14, 14), False, dict(channels=4, hidden=[8], z_dim=4, codes=3,
                                                  d_norm="spectral", info=0.5)),
    "infowgan-gp": ("mnist", (1, 14, 14), False, dict(channels=4, hidden=[8], z_dim=4, codes=3,
                                                      info=0.5, n_critic=2)),
    "ncsn": ("8gaussians", (2,), False, dict(hidden=16, depth=1, T=2)),
    "sde-ve": ("8gaussians", (2,), False, dict(hidden=16, depth=1, sampler="ode", sample_steps=4)),
    "sde-vp": ("mnist", IMG, False, dict(channels=8, groups=4, num_res_blocks=1, sample_steps=3)),
    "sde-subvp": ("8gaussians", (2,), False, dict(hidden=16, depth=1, sampler="em", sample_steps=3)),
    "cascade-sr": ("mnist", IMG, False, dict(T=30, channels=8, groups=4, num_res_blocks=1,
                                             arch="adm", aug_max=10, sample_steps=3, vlb_timesteps=3)),
}


# models that draw no samples: trained and resumed on the stand-in by their own test below
NO_SAMPLE = {"clip"}
# models that need captions and other trained models: their own tests below
CAPTIONED = {"dalle", "clip-noised"}


# text-to-image diffusion: trained on captions, sampled for captions, by their own test below
TEXT_DIFFUSION = {"glide": dict(T=20, channels=8, heads=2, text_width=16, text_layers=1),
                  "imagen": dict(T=20, channels=8, heads=2),
                  "unclip": dict(T=20, prior_T=20, channels=8, heads=2, prior_width=16,
                                 prior_heads=2, prior_layers=1, clip_size=8),
                  "glide-upsampler": dict(T=20, channels=8, heads=2, text_width=16, text_layers=1,
                                          aug_max=5)}


def test_every_model_has_a_case():
    assert set(CASES) | NO_SAMPLE | CAPTIONED | set(TEXT_DIFFUSION) == set(models.names())


def _captioned_stand_in():
    from refgen.data import captions as cap
    rng = np.random.default_rng(0)
    labels, lev = rng.integers(0, 10, 16), rng.integers(0, 3, (16, 4))
    x = rng.uniform(-1, 1, (16,) + IMG).astype(np.float32)
    return cap.CaptionDataset("mnist-captions", "train", x, labels, "continuous", IMG, num_classes=10,
                              vocab=cap.Tokenizer().words, value_range=(-1.0, 1.0),
                              captions=cap.CaptionData(labels, lev))


def test_dalle_and_the_noised_clip_train_resume_and_sample_on_the_device(tmp_path):
    ds = _captioned_stand_in()
    common = dict(batch_size=4, lr=1e-3, ema_decay=0.9, progress=False, log_every=1, ckpt_every=2,
                  samples=False)
    with strict_device():
        clip = models.create("clip-noised", data_shape=IMG, seed=0, embed_dim=8, width=16, layers=1,
                             heads=2, channels=4, T=20)
        train(clip, ds, steps=2, out_dir=tmp_path / "clip", **common)
        train(clip, ds, steps=3, resume=True, out_dir=tmp_path / "clip", **common)
        dvae = models.create("dvae", data_shape=IMG, seed=0, num_codes=5, code_dim=4, channels=4)
        model = models.create("dalle", data_shape=IMG, seed=0, dvae=dvae, clip=clip, width=16, layers=1,
                              heads=2)
        train(model, ds, steps=2, out_dir=tmp_path / "dalle", **common)
        train(model, ds, steps=3, resume=True, out_dir=tmp_path / "dalle", **common)
        model.eval()
        x = model.sample(3, cond=model.encode_prompt("a thick seven"), rng=backend.default_rng(0),
                         top_k=3, candidates=2)
        g = clip.guidance_grad(x, backend.asarray(np.array([1, 5, 19])),
                               backend.asarray(ds.batch(np.arange(3), 0)[1]))
        assert isinstance(x, DeviceArray) and isinstance(g, DeviceArray)
        assert np.all(np.isfinite(backend.to_numpy(x))) and np.all(np.isfinite(backend.to_numpy(g)))


@pytest.mark.parametrize("name", sorted(TEXT_DIFFUSION))
def test_text_diffusion_trains_resumes_and_samples_on_the_device(name, tmp_path):
    from refgen.data import captions as cap
    ds = _captioned_stand_in()
    with strict_device():
        kw = dict(TEXT_DIFFUSION[name])
        if name in ("imagen", "unclip"):
            kw["clip"] = models.create("clip", data_shape=IMG, seed=0, embed_dim=8, width=16,
                                       layers=1, heads=2, channels=4)
        model = models.create(name, data_shape=IMG, seed=0, **kw)
        common = dict(batch_size=4, lr=1e-3, out_dir=tmp_path, ema_decay=0.9, progress=False,
                      log_every=1, ckpt_every=2, samples=False, evaluate_at_end=False)
        train(model, ds, steps=2, **common)
        train(model, ds, steps=3, resume=True, **common)
        model.eval()
        ids = backend.asarray(cap.Tokenizer().encode_batch(["a thick seven", "the number 3"]))
        with no_grad():
            if name == "glide-upsampler":  # the condition is the low-res image, the caption a keyword
                low = model.eval_cond(backend.asarray(ds.x[:2]))
                s = model.sample(2, cond=low, caption=ids, rng=backend.default_rng(0), steps=3,
                                 guidance=2.0, aug_level=3)
                u = model.sample(2, cond=low, rng=backend.default_rng(0), steps=3)
            else:
                s = model.sample(2, cond=ids, rng=backend.default_rng(0), steps=3, guidance=2.0)
                u = model.sample(2, rng=backend.default_rng(0), steps=3)
        assert isinstance(s, DeviceArray) and isinstance(u, DeviceArray)
        assert np.all(np.isfinite(backend.to_numpy(s)))


def test_clip_trains_resumes_and_embeds_on_the_device(tmp_path):
    from refgen.data import captions as cap
    rng = np.random.default_rng(0)
    labels, lev = rng.integers(0, 10, 16), rng.integers(0, 3, (16, 4))
    x = rng.uniform(-1, 1, (16,) + IMG).astype(np.float32)
    ds = cap.CaptionDataset("mnist-captions", "train", x, labels, "continuous", IMG, num_classes=10,
                            vocab=cap.Tokenizer().words, captions=cap.CaptionData(labels, lev))
    with strict_device():
        model = models.create("clip", data_shape=IMG, seed=0, embed_dim=8, width=16, layers=1,
                              heads=2, channels=4)
        common = dict(batch_size=4, lr=1e-3, out_dir=tmp_path, ema_decay=0.9, progress=False,
                      log_every=1, ckpt_every=2, samples=False)
        train(model, ds, steps=2, **common)
        train(model, ds, steps=3, resume=True, **common)
        model.eval()
        prompts = np.stack([cap.Tokenizer().encode_batch([f"the number {d}", f"a {w}"])
                            for d, w in enumerate(cap.DIGIT_WORDS)])
        pred = model.zero_shot(backend.asarray(x[:4]), backend.asarray(prompts))
        score = model.clip_score(backend.asarray(x[:4]), backend.asarray(ds.batch(np.arange(4), 0)[1]))
        assert isinstance(pred, DeviceArray) and isinstance(score, DeviceArray)
        assert np.all(np.isfinite(backend.to_numpy(score)))


def test_the_stand_in_refuses_what_cupy_refuses():
    before = backend._module
    with strict_device() as xp:
        a = xp.ones(3)
        assert isinstance(a, DeviceArray) and isinstance(xp.exp(a), DeviceArray)
        assert isinstance(a + 1.0, DeviceArray) and isinstance(a * np.float32(2), DeviceArray)
        assert isinstance(xp.asarray(np.ones(3)) + a, DeviceArray)        # explicit transfer
        for mix in (lambda: a + np.ones(3), lambda: np.ones(3) * a,
                    lambda: xp.concatenate([a, np.ones(3)]), lambda: xp.where(a > 0, a, np.ones(3)),
                    lambda: a.__setitem__(slice(0, 2), np.ones(2)), lambda: xp.asarray([a, a])):
            with pytest.raises(HostDeviceMix, match="host"):
                mix()
        a[:] = np.zeros(3)                                                 # allowed, as in CuPy
        a[1] = 5.0
        assert type(backend.to_numpy(a)) is np.ndarray and backend.name() == "cupy"
        assert backend.to_numpy(a).tolist() == [0.0, 5.0, 0.0]
    assert backend._module is before                                     # restored


@pytest.mark.parametrize("name", sorted(CASES))
def test_trains_resumes_and_samples_on_the_device(name, tmp_path):
    data_name, shape, labels, kwargs = CASES[name]
    ds = _data(data_name, shape, classes=labels)
    with strict_device():
        model = models.create(name, data_shape=shape, seed=0, **kwargs)
        assert all(isinstance(p.data, DeviceArray) for p in model.parameters())
        common = dict(batch_size=4, lr=1e-3, out_dir=tmp_path, ema_decay=0.9, progress=False,
                      log_every=1, ckpt_every=2)
        train(model, ds, steps=2, samples=True, **common)
        train(model, ds, steps=3, resume=True, samples=False, **common)
        model.eval()
        # a model conditioned on images (cascade-sr) samples given the data's own low-res
        cond = ({"cond": model.eval_cond(backend.asarray(ds.x[:3]))}
                if hasattr(model, "eval_cond") else {})
        with no_grad():
            x = model.sample(3, rng=backend.default_rng(0), **cond)
        assert isinstance(x.data if isinstance(x, Tensor) else x, DeviceArray)
        assert np.all(np.isfinite(backend.to_numpy(x)))
        if labels == "control":  # and controlled samples
            x = model.sample(2, cond=backend.asarray(ds.y[:2]), rng=backend.default_rng(0))
            assert isinstance(x, DeviceArray) and np.all(np.isfinite(backend.to_numpy(x)))


class _LeakyGMM(models.get("gmm")):
    """A GMM whose loss adds a host array to the batch's device array: the bug the stand-in
    must catch. (Tensors move host arrays to the device themselves; raw arrays do not.)"""

    def loss(self, batch, rng):
        shift = batch.x.data + np.ones(batch.x.shape[1:], np.float32)      # (B, 2) + host (2,)
        return super().loss(batch, rng) + 0.0 * float(shift.sum())


def test_a_host_array_in_a_loss_is_caught(tmp_path):
    ds = _data("8gaussians", (2,))
    with strict_device():
        model = _LeakyGMM((2,), seed=0, components=3)
        with pytest.raises(HostDeviceMix, match=r"shape \(2,\)"):
            train(model, ds, steps=1, batch_size=4, lr=1e-3, out_dir=tmp_path, progress=False)
    with use_backend("numpy"):                                             # NumPy lets it pass
        train(_LeakyGMM((2,), seed=0, components=3), ds, steps=1, batch_size=4, lr=1e-3,
              out_dir=tmp_path, progress=False, samples=False)


@pytest.mark.parametrize("name,sets", [("gmm", []), ("ddpm", ["T=30", "sample_steps=5", "vlb_timesteps=3", "hidden=16"]),
                                       ("maf", ["layers=2"]), ("realnvp", ["couplings=2"])])
def test_the_command_line_on_the_device(name, sets, tmp_path):
    """refgen train / sample / eval with the 2D metrics (NLL, modes, MMD) on the stand-in."""
    from refgen.cli import main
    run = tmp_path / "run"
    argv = ["train", name, "--data", "8gaussians", "--steps", "3", "--out", str(run), "-q"]
    with strict_device():
        assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
        assert main(["sample", str(run), "-n", "50", "--out", str(tmp_path / "s.png")]) == 0
        assert main(["eval", str(run)]) == 0


@pytest.mark.parametrize("name,data_name,kwargs", [
    ("vae", "mnist-binary", dict(latent_dim=4, hidden="16")),
    ("cvae", "mnist-binary", dict(latent_dim=4, hidden="16", num_classes=10)),
    ("realnvp", "mnist-dequantized", dict(couplings=2, hidden=8, scales=1)),
])
def test_image_metrics_on_the_device(name, data_name, kwargs):
    """evaluate() on 14x14 images: NLL / ELBO / IWAE, bits/dim, and the classifier behind
    fid_mnist and cond_accuracy, all fed from device arrays."""
    from refgen.metrics import evaluate
    ds = _data(data_name, (1, 14, 14), n=12, classes=name == "cvae")
    with strict_device():
        model = models.create(name, data_shape=ds.shape, seed=0, **kwargs)
        out = evaluate(model, ds, n_samples=10, iwae_k=3, max_test=6)
    assert np.isfinite(out["fid_mnist"]) and ("cond_accuracy" in out) == (name == "cvae")
    assert ("test_bpd" in out) == (name == "realnvp")
