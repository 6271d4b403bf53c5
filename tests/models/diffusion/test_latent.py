"""Latent diffusion: cross-attention conditioning as eq. (33) writes it, the first stages
(KL- and VQ-regularised autoencoders), the latent scale, the frozen first stage, and ``ldm``
trained, sampled and resumed through its public methods and the CLI."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refgen import nn, optim
from refgen.autograd import Tensor, no_grad
from refgen.backend import default_rng, to_numpy
from refgen.models import create
from refgen.models.base import Batch
from refgen.nn.conditioning import ClassTokens
from refgen.testing import check_grads

pytestmark = pytest.mark.usefixtures("numpy_backend")  # float64 oracles, finite differences

IMG = (1, 14, 14)  # -> a (4, 7, 7) latent


def _x(n=8, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n,) + IMG).astype(np.float32)


def _randomize(module, seed, scale=0.3):
    """Generic weights everywhere (zero-started output layers would hide the math)."""
    rng = np.random.default_rng(seed)
    for p in module.parameters():
        p.data = rng.normal(0.0, scale, p.shape).astype(p.data.dtype)
    return module


def _ae(**kw):
    return create("kl-autoencoder", data_shape=IMG, seed=0, channels=8, **kw)


def _ldm(ae=None, **kw):
    kw.setdefault("num_classes", 3)
    return create("ldm", data_shape=IMG, seed=0, autoencoder=ae or _ae(), channels=8,
                  num_res_blocks=1, context_tokens=3, context_dim=6, T=100, sample_steps=5, **kw)


def _softmax(a):
    a = a - a.max(-1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(-1, keepdims=True)


def _group_norm(x, groups, w, b, eps=1e-5):
    n, c = x.shape[:2]
    g = x.reshape(n, groups, -1)
    g = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)
    return g.reshape(x.shape) * w.reshape(1, c, 1, 1) + b.reshape(1, c, 1, 1)


# ------------------------------------------------------------------ eq. (33)
@pytest.mark.parametrize("heads", [1, 2])
def test_cross_attention_is_eq_33_computed_directly(heads):
    """(33): softmax(Q K^T / sqrt(d)) V with Q = W_Q phi(z_t), K = W_K tau(y), V = W_V tau(y),
    per head, on generic weights; the block adds W_O of it to its input."""
    c, d_tau, m_tok = 4, 3, 5
    blk = _randomize(nn.CrossAttnBlock(c, d_tau, heads=heads, groups=2, rng=0, dtype=np.float64), 1)
    rng = np.random.default_rng(2)
    z, tau = rng.standard_normal((2, c, 3, 2)), rng.standard_normal((2, m_tok, d_tau))
    a = blk.attn
    w = {k: to_numpy(getattr(a, f"{k}_proj").weight.data) for k in "qkv"}
    bias = {k: to_numpy(getattr(a, f"{k}_proj").bias.data) for k in "qkv"}
    phi = _group_norm(z, 2, to_numpy(blk.norm.weight.data), to_numpy(blk.norm.bias.data))
    phi = phi.reshape(2, c, 6).transpose(0, 2, 1)                      # (B, HW, C): phi(z_t) tokens
    Q = phi @ w["q"].T + bias["q"]                                     # W_Q phi(z_t)
    K = tau @ w["k"].T + bias["k"]                                     # W_K tau(y)
    V = tau @ w["v"].T + bias["v"]                                     # W_V tau(y)
    dh = c // heads
    heads_out = []
    for h in range(heads):
        s = slice(h * dh, (h + 1) * dh)
        scores = Q[..., s] @ K[..., s].transpose(0, 2, 1) / np.sqrt(dh)  # Q K^T / sqrt(d)
        heads_out.append(_softmax(scores) @ V[..., s])
    att = np.concatenate(heads_out, -1)                                # (B, HW, C)
    out = att @ to_numpy(a.out_proj.weight.data).T + to_numpy(a.out_proj.bias.data)
    want = z + out.transpose(0, 2, 1).reshape(z.shape)
    got = to_numpy(blk(Tensor(z), Tensor(tau)).data)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_cross_attention_ignores_the_order_of_the_condition_tokens():
    """(33) sums over the M tokens of tau(y): permuting them leaves the denoiser's output
    unchanged, while changing one token changes it (the weights are generic)."""
    m = _ldm()
    _randomize(m.net, 3, scale=0.2)
    rng = np.random.default_rng(4)
    z = Tensor(rng.standard_normal((2,) + m.latent_shape).astype(np.float32))
    t = np.array([7, 60])
    ctx = m.context(np.array([0, 2])).data                             # (2, M, d_tau)
    with no_grad():
        out = m.net(z, t, context=Tensor(ctx)).data
        perm = m.net(z, t, context=Tensor(ctx[:, [2, 0, 1]])).data
        other = ctx.copy()
        other[:, 1] += 1.0
        moved = m.net(z, t, context=Tensor(other)).data
    np.testing.assert_allclose(perm, out, rtol=1e-5, atol=1e-6)
    assert np.abs(moved - out).max() > 1e-3


def test_class_tokens_are_layer_normed_rows_of_one_embedding_per_label():
    tau = _randomize(ClassTokens(3, tokens=2, dim=4, rng=0, dtype=np.float64), 5)
    y = np.array([2, 0, 3])                                            # 3: the null label
    e = to_numpy(tau.embed.weight.data)[y].reshape(3, 2, 4)
    g, b = to_numpy(tau.norm.weight.data), to_numpy(tau.norm.bias.data)
    want = (e - e.mean(-1, keepdims=True)) / np.sqrt(e.var(-1, keepdims=True) + 1e-5) * g + b
    np.testing.assert_allclose(to_numpy(tau(y).data), want, rtol=1e-10)
    with pytest.raises(ValueError, match="labels must be in 0..3"):
        tau(np.array([4]))


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2 ** 16))
def test_class_tokens_gradcheck(seed):
    tau = ClassTokens(3, tokens=2, dim=3, rng=seed, dtype=np.float64)
    y = np.array([1, 3, 1])

    def f(w, g, b):
        object.__setattr__(tau.embed, "weight", w)
        object.__setattr__(tau.norm, "weight", g)
        object.__setattr__(tau.norm, "bias", b)
        return tau(y)
    r = np.random.default_rng(seed)
    check_grads(f, [r.standard_normal((4, 6)), r.standard_normal(3), r.standard_normal(3)], order=2)


# ------------------------------------------------------------------ the first stages
def test_kl_autoencoder_kl_is_the_closed_form_and_matches_monte_carlo():
    """(R1)'s KL(N(mu, sigma^2) || N(0, I)) = sum (mu^2 + sigma^2 - 1 - log sigma^2) / 2, and
    the same as E_q[log q(z) - log p(z)] over draws of encode_latent."""
    ae = _randomize(_ae(kl_weight=0.05), 6, scale=0.15)
    x = _x(3)
    mu, lv = (to_numpy(t.data).astype(np.float64) for t in ae.posterior(x))
    want = (-0.5 * lv + 0.5 * (np.exp(lv) + mu ** 2) - 0.5).reshape(3, -1).sum(1)
    np.testing.assert_allclose(to_numpy(ae.kl(x).data), want, rtol=1e-5)
    assert want.min() > 1.0                                            # a generic posterior
    rng = default_rng(7)
    n, tot = 4000, np.zeros(3)
    for _ in range(n // 500):
        xs = np.repeat(x, 500, axis=0)
        z = to_numpy(ae.encode_latent(xs, rng).data).astype(np.float64).reshape(3 * 500, -1)
        m, v = np.repeat(mu.reshape(3, -1), 500, 0), np.repeat(np.exp(lv).reshape(3, -1), 500, 0)
        log_q = -0.5 * ((z - m) ** 2 / v + np.log(v)).sum(1)
        log_p = -0.5 * (z ** 2).sum(1)
        tot += (log_q - log_p).reshape(3, 500).sum(1)
    np.testing.assert_allclose(tot / n, want, rtol=0.05)
    # the loss is the squared error plus kl_weight times this KL, for the same draw of z
    loss = float(ae.loss(Batch(Tensor(x)), default_rng(8)).data)
    mu_t, lv_t = ae.posterior(x)
    eps = default_rng(8).standard_normal(mu_t.shape, dtype=np.float32)
    z = to_numpy(mu_t.data) + np.exp(0.5 * to_numpy(lv_t.data)) * eps
    rec = ((to_numpy(ae.decode_latent(z).data) - x) ** 2).reshape(3, -1).sum(1).mean()
    np.testing.assert_allclose(loss, rec + 0.05 * want.mean(), rtol=1e-4)


def test_vq_autoencoder_is_vqvae_without_its_prior():
    """(Q2) without the prior's NLL: rec + ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2 (both
    squared distances equal in value); decode_latent quantizes to the nearest code first."""
    vq = create("vq-autoencoder", data_shape=(1, 8, 8), seed=0, num_codes=5, code_dim=3,
                channels="4,8", commitment=0.3)
    assert vq.prior is None and vq.latent_shape == (3, 2, 2)
    x = _x(4)[:, :, :8, :8]
    loss = float(vq.loss(Batch(Tensor(x)), default_rng(0)).data)
    s = vq.last_stats
    np.testing.assert_allclose(loss, s["rec"] + 1.3 * s["commit"], rtol=1e-5)
    z = vq.encode_latent(x)
    np.testing.assert_allclose(to_numpy(vq.decode_latent(z).data), vq.reconstruct(x), rtol=1e-6)
    with pytest.raises(ValueError, match="prior=false"):
        vq.prior_log_prob(np.zeros((1, 2, 2), dtype=np.int64))


# ------------------------------------------------------------------ ldm
def test_latent_scale_gives_unit_variance_latents_and_is_saved():
    """s = 1 / std(E(x)) makes the scaled latents of the batch it was measured on unit
    variance; the first training loss measures it; it is in the state dict."""
    ae = _randomize(_ae(), 9, scale=0.3)
    m = _ldm(ae)
    x = _x(16, 1)
    m.train()
    m.loss(Batch(Tensor(x), np.arange(16) % 3), default_rng(0))       # measures s on its batch
    s = float(m.scale_factor)
    z = to_numpy(ae.encode_latent(x, default_rng(0)).data)
    assert abs(z.std() - 1.0) > 0.2                                   # the raw latent is not unit
    np.testing.assert_allclose((s * z).std(), 1.0, rtol=1e-5)
    zo = to_numpy(ae.encode_latent(_x(64, 2), default_rng(1)).data)   # another batch: near 1
    assert abs((s * zo).std() - 1.0) < 0.1
    again = _ldm(_ae())
    again.load_state_dict(m.state_dict())
    assert float(again.scale_factor) == s


def test_frozen_autoencoder_gets_no_gradient_and_is_unchanged_by_a_step():
    given = _ae()
    m = _ldm(given)
    ae = m.first_stage                                                # a frozen copy of the given one
    assert ae is not given and all(p.requires_grad for p in given.parameters())
    m.train()
    assert not ae.training                                            # the first stage: eval mode
    before = {k: v.copy() for k, v in ae.state_dict().items()}
    net_before = to_numpy(m.net.conv_out.weight.data).copy()
    opt = optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    loss = m.loss(Batch(Tensor(_x()), np.arange(8) % 3), default_rng(0))
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in ae.parameters())
    assert m.tau.embed.weight.grad is not None
    opt.step()
    for k, v in ae.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert not np.array_equal(to_numpy(m.net.conv_out.weight.data), net_before)


@pytest.mark.parametrize("class_cond", [False, True])
def test_ldm_loss_is_l_simple_19_on_the_scaled_latent_computed_by_hand(class_cond):
    """(19): mean (eps - eps_theta(sqrt(abar_t) s z + sqrt(1 - abar_t) eps, t, tau(y)))^2, with
    z a draw of the encoder, replayed from the same generator, on generic weights."""
    ae = _randomize(_ae(), 13, scale=0.3)
    m = _ldm(ae, class_cond=class_cond, p_uncond=0.5)
    _randomize(m.net, 14, scale=0.1)
    x, y = _x(6, 4), np.array([0, 1, 2, 0, 1, 2])
    m.train()
    m.measure_scale(x, default_rng(0))
    s = float(m.scale_factor)
    got = float(m.loss(Batch(Tensor(x), y), default_rng(5)).data)
    r = default_rng(5)
    z = to_numpy(ae.encode_latent(x, r).data).astype(np.float64)
    t = r.integers(1, m.T + 1, size=6)
    eps = r.standard_normal(z.shape, dtype=np.float32).astype(np.float64)
    ab = to_numpy(m.schedule.alpha_bar)[t].reshape(-1, 1, 1, 1)
    zt = np.sqrt(ab) * s * z + np.sqrt(1 - ab) * eps
    ctx = None
    if class_cond:
        keep = r.random(6) >= 0.5
        ctx = m.tau(np.where(keep, y, 3))
        assert 0 < keep.sum() < 6                                      # both kinds in the batch
    with no_grad():
        out = to_numpy(m.net(Tensor(zt.astype(np.float32)), t, context=ctx).data)
    np.testing.assert_allclose(got, ((eps - out) ** 2).mean(), rtol=1e-5)


def test_guided_prediction_is_eq_26_on_the_latent():
    """Classifier-free guidance (26): eps = (1 + w) eps(z, t, tau(y)) - w eps(z, t, tau(null))."""
    m = _ldm()
    _randomize(m.net, 15, scale=0.1)
    sch, n, w = m.schedule.strided(5), 3, 1.5
    z = np.random.default_rng(6).standard_normal((n,) + m.latent_shape).astype(np.float32)
    y = np.array([2, 0, 1])
    got = m.predictor(sch, n, y, guidance=w)(z, 4).eps
    t = np.full(n, int(sch.net_t[4]))
    with no_grad():
        e_c = to_numpy(m.net(Tensor(z), t, context=m.tau(y)).data)
        e_u = to_numpy(m.net(Tensor(z), t, context=m.tau(np.full(n, 3))).data)
    np.testing.assert_allclose(to_numpy(got), (1 + w) * e_c - w * e_u, rtol=1e-4, atol=1e-5)
    assert np.abs(e_c - e_u).max() > 1e-3


def test_ldm_loss_is_l_simple_on_the_scaled_latent_and_decreases_in_a_tiny_overfit():
    """(19) on z_0 = s E(x): at fixed draws, the loss falls by half after 80 Adam steps on
    eight images."""
    m = _ldm(_randomize(_ae(), 11, scale=0.3), class_cond=False)
    batch = Batch(Tensor(_x(8, 3)))
    m.train()
    first = float(m.loss(batch, default_rng(100)).data)
    opt = optim.Adam([p for p in m.parameters() if p.requires_grad], lr=3e-3)
    rng = default_rng(1)
    for _ in range(80):
        opt.zero_grad()
        m.loss(batch, rng).backward()
        opt.step()
    last = float(m.loss(batch, default_rng(100)).data)
    assert last < 0.5 * first, (first, last)


def test_sample_shapes_range_determinism_and_decoding():
    m = _ldm()
    with pytest.raises(ValueError, match="not been trained"):
        m.sample(2, rng=default_rng(0))
    m.train()
    m.loss(Batch(Tensor(_x()), np.arange(8) % 3), default_rng(0))
    _randomize(m.net, 12, scale=0.05)
    m.eval()
    a = m.sample(5, rng=default_rng(1))
    assert a.shape == (5,) + IMG and a.min() >= -1.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, m.sample(5, rng=default_rng(1)))
    assert not np.array_equal(a, m.sample(5, rng=default_rng(2)))
    c = m.sample(3, cond=np.array([0, 1, 2]), rng=default_rng(1), guidance=2.0)
    assert c.shape == (3,) + IMG
    z0 = m.sample_latent(4, cond=1, rng=default_rng(3))
    assert z0.shape == (4,) + m.latent_shape
    want = np.clip(to_numpy(m.first_stage.decode_latent(z0 / float(m.scale_factor)).data), -1, 1)
    np.testing.assert_allclose(m.sample(4, cond=1, rng=default_rng(3)), want, rtol=1e-5, atol=1e-6)
    unc = _ldm(class_cond=False)
    unc.train().loss(Batch(Tensor(_x())), default_rng(0))
    with pytest.raises(ValueError, match="unconditional"):
        unc.sample(2, cond=1, rng=default_rng(0))


def test_ldm_on_the_vq_autoencoder_diffuses_the_unquantized_latent():
    vq = create("vq-autoencoder", data_shape=IMG, seed=0, num_codes=8, code_dim=3, channels="4,8")
    m = _ldm(vq, num_classes=None)
    assert m.latent_shape == (3, 3, 3)
    m.train()
    m.loss(Batch(Tensor(_x())), default_rng(0))
    z = to_numpy(vq.encode_latent(_x()).data)
    np.testing.assert_allclose(float(m.scale_factor), 1.0 / z.std(), rtol=1e-5)
    assert m.eval().sample(2, rng=default_rng(0)).shape == (2,) + IMG


def test_bad_autoencoder_settings_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="--set autoencoder="):
        create("ldm", data_shape=IMG)
    with pytest.raises(ValueError, match="does not exist"):
        create("ldm", data_shape=IMG, autoencoder=str(tmp_path / "none"))
    with pytest.raises(ValueError, match="trained on"):
        create("ldm", data_shape=(1, 28, 28), autoencoder=_ae())
    with pytest.raises(ValueError, match="kl_weight"):
        _ae(kl_weight=-1.0)


def test_the_loop_trains_and_resumes_ldm_bit_for_bit(tmp_path):
    """Four steps at once, or two and a resume for two more: the same weights and scale."""
    from refgen.data import Dataset
    from refgen.train import train
    x = _x(16, 5)
    ds = Dataset("tiny", "train", x, np.arange(16) % 3, "continuous", IMG, value_range=(-1.0, 1.0))
    ae = _ae()
    runs = {}
    for name, legs in (("straight", [4]), ("resumed", [2, 4])):
        m = _ldm(ae)
        for i, steps in enumerate(legs):
            train(m, ds, out_dir=tmp_path / name, steps=steps, batch_size=4, lr=1e-3,
                  ema_decay=0.9, resume=i > 0, progress=False, samples=False,
                  evaluate_at_end=False)
        runs[name] = m.state_dict()
    assert float(runs["straight"]["scale_factor"]) > 0
    for k, v in runs["straight"].items():
        np.testing.assert_array_equal(runs["resumed"][k], v, err_msg=k)


@pytest.mark.slow  # reads MNIST three times (about 20 s)
def test_train_sample_and_resume_through_the_cli(tmp_path, mnist_dir, monkeypatch):
    from refgen.cli import main
    monkeypatch.setenv("REFGEN_DATA_DIR", str(mnist_dir))
    ae, ldm = tmp_path / "ae", tmp_path / "ldm"
    common = ["--data", "mnist-14", "--batch-size", "8", "-q", "--no-eval"]
    assert main(["train", "kl-autoencoder", "--steps", "3", "--out", str(ae), *common,
                 "--set", "channels=8"]) == 0
    args = ["train", "ldm", "--out", str(ldm), *common, "--set", f"autoencoder={ae}",
            "--set", "channels=8", "--set", "num_res_blocks=1", "--set", "T=50"]
    assert main(args + ["--steps", "2"]) == 0
    assert main(args + ["--steps", "4", "--resume"]) == 0
    png = tmp_path / "s.png"
    assert main(["sample", str(ldm), "-n", "4", "--steps", "3", "--out", str(png)]) == 0
    assert png.is_file()
    assert main(["train", "ldm", "--out", str(tmp_path / "bad"), *common, "--steps", "1",
                 "--set", f"autoencoder={ldm}"]) != 0
