"""The noised-image CLIP: the noising against its closed form (and its moments), the loss as
InfoNCE of noised images at the drawn times, the encoder's dependence on t, and the guidance
gradient against finite differences."""
import numpy as np
import pytest

from refgen import backend
from refgen.autograd import Tensor
from refgen.backend import default_rng
from refgen.data import captions as cap
from refgen.models import create
from refgen.models.base import Batch
from refgen.models.diffusion import make_schedule
from refgen.models.text_to_image import contrastive as C


def np_(t):
    return backend.to_numpy(t.data if hasattr(t, "data") else t)


@pytest.fixture(scope="module")
def model():
    return create("clip-noised", data_shape=(1, 8, 8), seed=0, embed_dim=8, width=16, layers=1,
                  channels=4, T=50)


def data(n=3):
    ids = cap.Tokenizer().encode_batch(["a thick seven", "the number 3", "a handwritten zero"][:n])
    x = np.random.default_rng(0).uniform(-1, 1, (n, 1, 8, 8)).astype(np.float32)
    return x, ids


def test_noising_is_the_closed_form_and_has_its_moments(model):
    # (3)
    ab = backend.to_numpy(make_schedule("cosine", 50).alpha_bar)
    x0 = np.full((4000, 1, 2, 2), 0.6, dtype=np.float32)
    t = np.repeat([0, 10, 30, 50], 1000)
    eps = np.random.default_rng(1).standard_normal(x0.shape).astype(np.float32)
    xt = np_(model.noise(backend.asarray(x0), t, backend.asarray(eps)))
    want = np.sqrt(ab[t])[:, None, None, None] * x0 + np.sqrt(1 - ab[t])[:, None, None, None] * eps
    np.testing.assert_allclose(xt, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(xt[:1000], x0[:1000])                    # t = 0: the clean image
    for k, tt in enumerate([10, 30, 50]):
        block = xt[1000 * (k + 1):1000 * (k + 2)].ravel()
        assert abs(block.mean() - 0.6 * np.sqrt(ab[tt])) < 4 * np.sqrt((1 - ab[tt]) / block.size)
        assert abs(block.var() / (1 - ab[tt]) - 1) < 0.1


def test_loss_is_info_nce_of_the_noised_images(model):
    # Nichol et al. 2022, noised CLIP
    x, ids = data()
    loss = float(np_(model.loss(Batch(Tensor(backend.asarray(x)), ids), rng=default_rng(7))))
    g = default_rng(7)                                                      # the same draws
    t = g.integers(0, 51, size=3)
    eps = g.standard_normal(x.shape, dtype=np.float32)
    u = model.encode_image(model.noise(backend.asarray(x), t, eps), t)
    want = float(np_(C.info_nce(u, model.encode_text(ids), model.logit_scale())))
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    assert np.unique(backend.to_numpy(t)).size > 1


def test_the_image_embedding_depends_on_t(model):
    x, _ = data()
    u0 = np_(model.encode_image(x))
    np.testing.assert_allclose(u0, np_(model.encode_image(x, np.zeros(3, dtype=np.int64))))
    u9 = np_(model.encode_image(x, np.full(3, 9)))
    assert np.abs(u0 - u9).max() > 1e-3
    np.testing.assert_allclose(np.linalg.norm(u9, axis=1), 1.0, rtol=1e-5)


def test_guidance_gradient_matches_finite_differences(model):
    # Nichol et al. 2022, CLIP guidance
    x, ids = data()
    t = np.array([3, 20, 45])
    g = np_(model.guidance_grad(x, t, ids))
    d = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)

    def sim(xx):
        return float((np_(model.encode_image(xx, t)) * np_(model.encode_text(ids))).sum())
    h = 1e-2
    fd = (sim(x + h * d) - sim(x - h * d)) / (2 * h)
    np.testing.assert_allclose((g * d).sum(), fd, rtol=2e-2, atol=1e-4)


def test_bad_input(model):
    x, _ = data()
    with pytest.raises(ValueError, match="mnist-captions"):
        model.loss(Batch(Tensor(backend.asarray(x)), None), rng=default_rng(0))
