"""DALL-E's transformer: the attention layout (no position depends on a later one, text never
on the image; by gradients), exact normalisation of the joint model over every sequence of a
tiny vocabulary, sampling with the key/value cache against the model's own conditionals (a
chi-square test), the 1/8 : 7/8 loss, CLIP re-ranking, and bad input."""
import itertools

import numpy as np
import pytest

import refgen
import refgen.functional as F
from refgen import backend
from refgen.autograd import Tensor, no_grad
from refgen.backend import default_rng
from refgen.data import captions as cap
from refgen.models import create
from refgen.models.base import Batch
from refgen.models.text_to_image import DalleTransformer, attention_layout
from refgen.testing.stats import chi2_sf

T, N, V, K = 3, 3, 4, 2          # tiny: text length, image length, text vocabulary, codes


def np_(t):
    return backend.to_numpy(t.data if hasattr(t, "data") else t)


def sharp(net, seed=0, scale=0.6):
    """Re-draw every weight at a larger scale so that the conditionals are far from uniform."""
    g = np.random.default_rng(seed)
    for name, p in net.named_parameters():
        if "ln" not in name:
            p.data = backend.asarray((g.standard_normal(p.shape) * scale).astype(np.float32))
    return net


@pytest.fixture
def net():
    return sharp(DalleTransformer(V, T, K, N, width=8, layers=2, heads=2, rng=0))


def test_attention_layout():
    # Ramesh et al. 2021, attention layout
    m = np_(attention_layout(2, 3))
    want = np.array([[1, 0, 0, 0, 0],      # text: causal over the text
                     [1, 1, 0, 0, 0],
                     [1, 1, 1, 0, 0],      # image: all text, earlier image
                     [1, 1, 1, 1, 0],
                     [1, 1, 1, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(m, want)


def test_no_position_depends_on_a_later_one_and_text_never_on_the_image(net):
    """d hidden_i / d input_j == 0 exactly where the layout forbids i -> j, and nonzero where it
    allows it (so the image sees the whole text)."""
    # Ramesh et al. 2021, attention layout
    L = T + N
    h0 = net.embed(np.array([[1, 3, 0]]), np.array([[1, 0, 1]]))          # (1, L, E)
    x = Tensor(h0.data.copy(), requires_grad=True)
    w = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    dep = np.zeros((L, L), dtype=bool)
    for i in range(L):
        out = net.hidden(x)
        g = np_(refgen.grad(F.sum(out[:, i] * Tensor(backend.asarray(w[:, i]))), [x])[0])[0]  # (L, E)
        dep[i] = np.abs(g).max(axis=1) > 0
    np.testing.assert_array_equal(dep, np_(attention_layout(T, N)))
    assert not dep[:T, T:].any()                                            # text never sees the image


def test_the_joint_model_normalises_over_every_sequence(net):
    """sum over t_2..t_T in V^(T-1) and z in K^N of p(t_2.., z | t_1) == 1, for each t_1."""
    # Ramesh et al. 2021, sec. 2.2
    rest = np.array(list(itertools.product(range(V), repeat=T - 1)))       # (V^(T-1), T-1)
    imgs = np.array(list(itertools.product(range(K), repeat=N)))           # (K^N, N)
    for t1 in range(V):
        text = np.concatenate([np.full((len(rest), 1), t1), rest], axis=1)
        tt = np.repeat(text, len(imgs), axis=0)
        zz = np.tile(imgs, (len(text), 1))
        with no_grad():
            lp = np_(net.log_prob(tt, zz)).astype(np.float64)
        assert lp.max() > np.log(8.0 / len(lp))                            # far from uniform
        np.testing.assert_allclose(np.exp(lp).sum(), 1.0, rtol=2e-5)


def test_cached_sampling_draws_from_the_models_conditional(net):
    """Image tokens drawn by ``generate`` (key/value cache, temperature 1, no top-k) have the
    frequencies p(z | t) = exp(-CE_image) of the full forward pass: chi-square."""
    # Ramesh et al. 2021, sampling
    text = np.array([[2, 1, 3]])
    imgs = np.array(list(itertools.product(range(K), repeat=N)))
    with no_grad():
        _, ce = net.nll_terms(np.repeat(text, len(imgs), 0), imgs)
    p = np.exp(-np_(ce).astype(np.float64))
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-5)
    n = 6000
    z = np_(net.generate(np.repeat(text, n, 0), default_rng(0)))
    counts = np.bincount(z @ (K ** np.arange(N)[::-1]), minlength=len(imgs))
    chi2 = ((counts - n * p) ** 2 / (n * p)).sum()
    assert chi2_sf(chi2, df=len(imgs) - 1) > 1e-3, (counts / n, p)
    # top_k = 1 is greedy decoding: the most likely token at every step
    greedy = np_(net.generate(text, default_rng(1), top_k=1))
    np.testing.assert_array_equal(greedy, np_(net.generate(text, default_rng(2), temperature=0)))


def test_temperature_and_top_k_reshape_each_conditional():
    """One image token (N = 1): at temperature tau the draws follow p^(1/tau) renormalised, and
    top-k = 2 keeps only the two most likely codes (renormalised): chi-square tests."""
    # Ramesh et al. 2021, sampling
    net = sharp(DalleTransformer(V, T, 4, 1, width=8, layers=2, heads=2, rng=0), seed=3, scale=0.3)
    text = np.array([[2, 1, 3]])
    with no_grad():
        _, ce = net.nll_terms(np.repeat(text, 4, 0), np.arange(4)[:, None])
    p = np.exp(-np_(ce).astype(np.float64))
    n = 6000
    for tau, top_k in ((0.5, None), (1.0, 2)):
        want = p ** (1 / tau)
        if top_k:
            want[np.argsort(p)[:-top_k]] = 0
        want /= want.sum()
        z = np_(net.generate(np.repeat(text, n, 0), default_rng(7), temperature=tau, top_k=top_k))[:, 0]
        counts = np.bincount(z, minlength=4)
        keep = want > 0
        assert counts[~keep].sum() == 0
        chi2 = ((counts[keep] - n * want[keep]) ** 2 / (n * want[keep])).sum()
        assert chi2_sf(chi2, df=keep.sum() - 1) > 1e-3, (tau, top_k, counts / n, want)
    assert np.abs(p ** 2 / (p ** 2).sum() - p).max() > 0.05               # tau = 0.5 visibly differs


# ----------------------------------------------------------------------------- the model
@pytest.fixture(scope="module")
def dvae():
    return create("dvae", data_shape=(1, 8, 8), seed=1, num_codes=5, code_dim=4, channels=4)


def model(dvae, **kw):
    return create("dalle", data_shape=(1, 8, 8), vocab_size=len(cap.Tokenizer()), seed=0, dvae=dvae,
                  width=16, layers=1, heads=2, **kw)


def batch(n=4):
    tok = cap.Tokenizer()
    x = np.random.default_rng(0).uniform(-1, 1, (n, 1, 8, 8)).astype(np.float32)
    ids = tok.encode_batch(["a thick slanted seven", "the number 3", "a handwritten zero", "4 , thin , small"][:n])
    return Batch(Tensor(backend.asarray(x)), backend.asarray(ids))


@pytest.mark.parametrize("w", [1 / 8, 0.3])
def test_loss_weights_text_and_image_per_token(dvae, w):
    # Ramesh et al. 2021, 1/8 and 7/8
    m = model(dvae, text_weight=w)
    b = batch()
    ce_t, ce_z = m.net.nll_terms(b.y, m.image_tokens(b.x))
    want = w * np_(ce_t).mean() / (cap.CONTEXT - 1) + (1 - w) * np_(ce_z).mean() / 4   # N = 2 x 2
    np.testing.assert_allclose(float(np_(m.loss(b, default_rng(0)))), want, rtol=1e-5)
    np.testing.assert_allclose(np_(m.log_prob(b.x, b.y)), -(np_(ce_t) + np_(ce_z)), rtol=1e-5)


def test_the_dvae_is_frozen(dvae):
    m = model(dvae)
    assert m.text_weight == 1 / 8                                         # the paper's default
    m.loss(batch(), default_rng(0)).backward()
    assert all(p.grad is None for p in m.dvae.parameters())
    assert all(p.grad is not None for p in m.net.parameters())


def test_image_tokens_are_in_the_raster_order_sampling_decodes():
    """The stream's image tokens, reshaped as sampling reshapes them, decode to the dVAE's
    reconstruction of the image."""
    m = model(sharp(create("dvae", data_shape=(1, 8, 8), seed=2, num_codes=5, code_dim=4, channels=4),
                    seed=1, scale=1.0))
    x = np.random.default_rng(3).uniform(-1, 1, (4, 1, 8, 8)).astype(np.float32)
    z = m.image_tokens(x)                                                   # (4, N)
    assert len(np.unique(np_(z))) > 1
    np.testing.assert_array_equal(np_(m.dvae.decode_tokens(np_(z).reshape(4, 2, 2))),
                                  np_(m.dvae.reconstruct(x)))


def test_sample_shapes_and_range(dvae):
    m = model(dvae)
    x = np_(m.sample(5, cond=m.encode_prompt("a thick seven"), rng=default_rng(0), top_k=3))
    assert x.shape == (5, 1, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert np_(m.sample(3, rng=default_rng(0))).shape == (3, 1, 8, 8)      # no prompt: a random digit


def test_reranking_keeps_the_candidate_clip_scores_highest(dvae):
    # Ramesh et al. 2021, sec. 2.5
    clip = create("clip", data_shape=(1, 8, 8), seed=0, embed_dim=8, width=16, layers=1, channels=4)
    m = model(dvae, clip=clip)
    ids = np.asarray(batch(2).y)
    best = np_(m.sample(2, cond=ids, rng=default_rng(5), candidates=4))
    z = m.net.generate(np.repeat(ids, 4, 0), default_rng(5))               # the same draws
    cands = np_(m.dvae.decode_tokens(np_(z).reshape(8, 2, 2))).reshape(2, 4, 1, 8, 8)
    score = np_(clip.clip_score(cands.reshape(8, 1, 8, 8), np.repeat(ids, 4, 0))).reshape(2, 4)
    assert len(set(score[0])) > 1 or len(set(score[1])) > 1                 # the choice matters
    np.testing.assert_array_equal(best, cands[np.arange(2), score.argmax(1)])


def test_bad_input(dvae):
    with pytest.raises(ValueError, match="--set dvae=runs/<dvae run>"):
        create("dalle", data_shape=(1, 8, 8))
    m = model(dvae)
    with pytest.raises(ValueError, match="mnist-captions"):
        m.loss(Batch(batch().x, None), default_rng(0))
    with pytest.raises(ValueError, match="CLIP"):
        m.sample(2, cond=np.asarray(batch(2).y), rng=default_rng(0), candidates=3)
    with pytest.raises(ValueError, match="outside the vocabulary: zebra"):
        m.encode_prompt("a zebra")
    with pytest.raises(ValueError, match="^dvae: run directory '/nonexistent/run' does not exist"):
        create("dalle", data_shape=(1, 8, 8), dvae="/nonexistent/run")
    with pytest.raises(ValueError, match="shape"):
        create("dalle", data_shape=(1, 12, 12), dvae=dvae)
