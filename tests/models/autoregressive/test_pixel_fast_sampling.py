"""The cached sampler of PixelCNN and Gated PixelCNN (fast_sampling.py): the same images as
the full sampler for the same generator, the full network's logits at every position, and
about one network pass of work an image instead of H W C."""
import numpy as np
import pytest

from refgen.backend import asarray, default_rng, to_numpy
from refgen.cli import sample_options
from refgen.models import create
from refgen.models.autoregressive import fast_sampling, gated_pixelcnn, pixelcnn
from refgen.nn import Conv2d

# name, data shape, options: binary and L-way outputs, one-hot inputs, colour groups, and a
# first gated kernel wider than the image
CASES = [
    ("pixelcnn", (1, 5, 6), dict(channels=8, blocks=2, first_kernel=5, head_channels=8)),
    ("pixelcnn", (1, 5, 6), dict(channels=8, blocks=2, head_channels=8, levels=5)),
    ("pixelcnn", (1, 5, 6), dict(channels=8, blocks=2, head_channels=8, levels=5, one_hot=True)),
    ("pixelcnn", (3, 4, 5), dict(channels=12, blocks=2, first_kernel=3, head_channels=6)),
    ("gated-pixelcnn", (1, 5, 6), dict(channels=8, layers=3, first_kernel=5, head_channels=8)),
    ("gated-pixelcnn", (1, 5, 6), dict(channels=8, layers=3, first_kernel=3, head_channels=8,
                                       levels=4)),
    ("gated-pixelcnn", (1, 5, 6), dict(channels=6, layers=2, first_kernel=13, head_channels=8)),
]
IDS = [f"{n}-{'x'.join(map(str, s))}-{'-'.join(f'{k}{v}' for k, v in o.items())}"
       for n, s, o in CASES]


def _perturbed(name, shape, opts, seed=0, double=False):
    """A model whose weights are its initial ones plus noise of their own scale, so the test
    does not rely on the symmetries of an initialisation (zero-mean, small weights)."""
    model = create(name, data_shape=shape, seed=seed, **opts)
    if double:
        model.double()
    g = np.random.default_rng(100 + seed)
    for p in model.parameters():
        scale = float(np.std(to_numpy(p.data))) or 0.1
        p.data[...] = p.data + asarray((0.5 * scale * g.standard_normal(p.data.shape)).astype(p.data.dtype))
    return model


@pytest.mark.parametrize("name,shape,opts", CASES, ids=IDS)
def test_cached_sampler_draws_the_full_samplers_images(name, shape, opts):
    model = _perturbed(name, shape, opts)
    for seed in (0, 1, 2):
        full = to_numpy(model.sample(6, rng=default_rng(seed), sampler="full"))
        cached = to_numpy(model.sample(6, rng=default_rng(seed)))      # the default sampler
        np.testing.assert_array_equal(cached, full)
        assert len(np.unique(full)) > 1                  # the images are not one constant value
    # a different generator draws different images: equality above is not a coincidence
    assert not np.array_equal(to_numpy(model.sample(6, rng=default_rng(9))), cached)


def _recorded_logits(model, n, seed, monkeypatch):
    """Sample with the cached sampler, keeping the logits it hands to the draw at each step."""
    seen = []
    draw = pixelcnn._draw

    def recording(logits, rng):
        seen.append(np.array(to_numpy(logits)))
        return draw(logits, rng)
    monkeypatch.setattr(pixelcnn, "_draw", recording)
    x = model.sample(n, rng=default_rng(seed))
    monkeypatch.undo()
    return x, seen


@pytest.mark.parametrize("double,tol", [(True, 1e-10), (False, 1e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("name,shape,opts", CASES, ids=IDS)
def test_cached_logits_are_the_networks_logits_on_the_finished_image(name, shape, opts, double,
                                                                      tol, monkeypatch):
    """Every logit the cached sampler computed while drawing equals the full network's logit at
    that sub-pixel on the finished image: each cached value was final when computed."""
    model = _perturbed(name, shape, opts, seed=1, double=double)
    x, seen = _recorded_logits(model, 5, 3, monkeypatch)
    want = to_numpy(model.logits(x).data)                                # (n, C, K, H, W)
    c, h, w = shape
    assert len(seen) == c * h * w
    n, _, k = want.shape[:3]
    got = np.stack(seen, axis=-1).reshape(n, k, h, w, c)                  # raster order (i, j, ch)
    got = got.transpose(0, 4, 1, 2, 3)                                    # (n, C, K, H, W)
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * scale)


def test_vqvae_prior_samples_the_same_codes():
    m = create("vqvae", data_shape=(1, 16, 12), seed=0, code_dim=3, channels="4,8", num_codes=7,
               prior_channels=8, prior_blocks=2)
    g = np.random.default_rng(5)
    for p in m.prior.parameters():
        p.data[...] = p.data + asarray((0.3 * g.standard_normal(p.data.shape)).astype(p.data.dtype))
    assert m.prior.one_hot and m.prior.data_shape == (1, 4, 3)
    codes_full = to_numpy(m.prior.sample(8, rng=default_rng(4), sampler="full"))
    assert len(np.unique(codes_full)) > 2
    np.testing.assert_array_equal(to_numpy(m.prior.sample(8, rng=default_rng(4))), codes_full)
    np.testing.assert_array_equal(to_numpy(m.sample(8, rng=default_rng(4))),
                                  to_numpy(m.sample(8, rng=default_rng(4), sampler="full")))


def _full_pass_macs(model, h, w):
    """Multiply-adds of one forward pass over one h x w image: every conv keeps the image size,
    so each does its weight count at each pixel."""
    return sum(int(m.weight.size) for m in model.modules() if isinstance(m, Conv2d)) * h * w


@pytest.mark.parametrize("name,shape,opts", CASES, ids=IDS)
def test_cached_sampler_does_one_network_pass_of_work(name, shape, opts, monkeypatch):
    """Count the multiply-adds of the cached sampler's convolutions (the only arithmetic it does
    besides elementwise ops): C times one network pass for the PixelCNN (each layer at each
    position, once per colour channel), one pass less the vertical stack's last row (never
    needed) for the gated model; it never runs the whole network. The full sampler does
    (H + 1) W C / 2 network passes."""
    model = _perturbed(name, shape, opts)
    c, h, w = shape
    n, macs = 3, [0]

    def count(f, per_call):
        def wrapped(*a):
            out = f(*a)
            macs[0] += per_call(*a)
            return out
        return wrapped
    cache = fast_sampling.ConvCache
    monkeypatch.setattr(cache, "at", count(cache.at, lambda self, i, j: self.weight.size))
    monkeypatch.setattr(cache, "row", count(cache.row, lambda self, i: self.weight.size * w))
    unit = count(fast_sampling.pointwise, lambda wt, b, v: wt.size * v.size // (v.shape[0] * wt.shape[1]))
    for module in (fast_sampling, pixelcnn):
        monkeypatch.setattr(module, "pointwise", unit)

    def no_full_pass(x):
        raise AssertionError("the cached sampler ran the whole network")
    monkeypatch.setattr(model, "logits", no_full_pass)
    model.sample(n, rng=default_rng(0))
    monkeypatch.undo()
    one_pass = _full_pass_macs(model, h, w)
    if name == "pixelcnn":
        assert macs[0] == c * one_pass
    else:
        last_row = sum(int(layer.v_conv.weight.size) for layer in model.layers) * w
        assert macs[0] == one_pass - last_row

    rows = []   # the full sampler: a pass over rows 0..i for each sub-pixel of row i
    logits = model.logits
    monkeypatch.setattr(model, "logits", lambda x: rows.append(x.shape[2]) or logits(x))
    model.sample(n, rng=default_rng(0), sampler="full")
    assert sum(rows) == c * w * h * (h + 1) // 2          # (H + 1) W C / 2 passes of H rows
    assert sum(rows) / h * one_pass >= (h + 1) * w / 2 * macs[0]   # the speed-up in work


def test_sampler_option():
    model = create("gated-pixelcnn", data_shape=(1, 3, 3), channels=4, layers=1, first_kernel=3)
    assert sample_options(model, sampler="full") == {"sampler": "full"}
    with pytest.raises(ValueError, match="sampler must be one of"):
        model.sample(2, rng=default_rng(0), sampler="fast")
    # PixelRNN shares the sampling loop but has no cache: 'full' is its only sampler
    rnn = create("pixelrnn", data_shape=(1, 3, 3), hidden=4, layers=1, head_channels=4)
    assert rnn.samplers == ("full",)
    np.testing.assert_array_equal(to_numpy(rnn.sample(2, rng=default_rng(0))),
                                  to_numpy(rnn.sample(2, rng=default_rng(0), sampler="full")))
    with pytest.raises(ValueError, match="sampler must be one of"):
        rnn.sample(2, rng=default_rng(0), sampler="cached")


def test_gated_vertical_stack_is_computed_once_a_row(monkeypatch):
    """The vertical stack runs on whole rows at the start of each image row (H - 1 rows per
    layer: row i - 1 for row i), the horizontal stack at one position per pixel."""
    model = create("gated-pixelcnn", data_shape=(1, 4, 5), channels=4, layers=2, first_kernel=3)
    calls = {"row": [], "at": 0}
    row, at = fast_sampling.ConvCache.row, fast_sampling.ConvCache.at
    monkeypatch.setattr(fast_sampling.ConvCache, "row",
                        lambda self, i: calls["row"].append(i) or row(self, i))
    monkeypatch.setattr(fast_sampling.ConvCache, "at",
                        lambda self, i, j: calls.__setitem__("at", calls["at"] + 1) or at(self, i, j))
    model.sample(2, rng=default_rng(0))
    assert calls["row"] == [0, 0, 1, 1, 2, 2]
    assert calls["at"] == 2 * 4 * 5
    assert gated_pixelcnn.GatedPixelCNN.samplers == ("cached", "full")
