"""ddpm with net=dit: the options reach the transformer, the learned-variance channels come out
of it, bad choices are one clear line, and the public loss falls on a tiny overfit."""
import math

import numpy as np
import pytest

from refgen.autograd import Tensor
from refgen.backend import default_rng
from refgen.models.base import Batch, constructor_kwargs
from refgen.models.diffusion import DDPM
from refgen.nn import DiT, UNet
from refgen.optim import Adam
from refgen.runs import parse_sets

SMALL = dict(net="dit", patch_size=2, dit_width=16, dit_depth=1, dit_heads=2, T=50)


def _images(n, seed=0, size=8):
    rng = np.random.default_rng(seed)
    return Tensor((np.rint(rng.uniform(0, 255, (n, 1, size, size))) / 127.5 - 1).astype(np.float32))


def _loss(m, batch, seed):
    """The public loss with its noise drawn from a generator seeded ``seed``."""
    return m.loss(batch, default_rng(seed))


def test_the_cli_options_build_the_transformer():
    sets = parse_sets(["net=dit", "patch_size=4", "dit_width=24", "dit_depth=3", "dit_heads=3",
                       "dit_cond=cross_attn", "T=40"])
    m = DDPM(**constructor_kwargs(DDPM, data_shape=(1, 28, 28), num_classes=10, overrides=sets))
    assert isinstance(m.net, DiT) and m.net.conditioning == "cross_attn"
    assert (m.net.patch_size, m.net.grid, len(m.net.blocks)) == (4, 7, 3)
    assert m.net.patch_embed.weight.shape == (24, 16)                      # D x (p p C)
    assert m.net.blocks[0].attn.num_heads == 3
    assert m.net.y_embed.weight.shape == (11, 24)                          # 10 classes + null
    assert isinstance(DDPM((1, 8, 8), channels=8, num_res_blocks=1).net, UNet)  # the default


@pytest.mark.parametrize("learn", [False, True])
def test_the_output_has_the_variance_channels_when_learned(learn):
    m = DDPM((1, 8, 8), num_classes=3, learn_sigma=learn, **SMALL)
    assert m.net.final.linear.weight.shape == ((2 if learn else 1) * 4, 16)
    loss = _loss(m, Batch(_images(4), np.array([0, 1, 2, 1])), 0)
    loss.backward()
    assert math.isfinite(loss.item()) and all(p.grad is not None for p in m.parameters())
    s = m.sample(2, cond=np.array([1, 2]), rng=default_rng(1), steps=3)
    assert s.shape == (2, 1, 8, 8) and np.all(np.abs(s) <= 1 + 1e-6)


def test_bad_network_choices():
    with pytest.raises(ValueError, match="net must be 'unet' or 'dit'"):
        DDPM((1, 8, 8), net="vit")
    with pytest.raises(ValueError, match="image network"):
        DDPM((2,), net="dit")
    with pytest.raises(ValueError, match="patch_size"):
        DDPM((1, 14, 14), net="dit", patch_size=4)
    with pytest.raises(ValueError, match="conditioning must be one of"):
        DDPM((1, 8, 8), net="dit", dit_cond="film")


@pytest.mark.parametrize("cond", ["adaln_zero", "in_context", "cross_attn"])
def test_loss_falls_on_a_tiny_overfit(cond):
    """Eight labelled 8 x 8 images, 40 Adam steps: the loss at one fixed draw of (t, eps) and
    label dropout falls to under 0.8 of its starting value (about 1: eps ~ N(0, I) against a
    network that outputs 0)."""
    m = DDPM((1, 8, 8), num_classes=3, dit_cond=cond, **SMALL)
    batch = Batch(_images(8, 1), np.array([0, 1, 2, 0, 1, 2, 0, 1]))
    before = _loss(m, batch, 123).item()
    opt = Adam(m.parameters(), lr=3e-3)
    for i in range(40):
        opt.zero_grad()
        _loss(m, batch, i).backward()
        opt.step()
    after = _loss(m, batch, 123).item()
    assert 0.7 < before < 1.5 and after < 0.8 * before


def test_dit_runs_on_a_device_backend():
    """On the stand-in device backend (refuses host/device mixing as CuPy does): the loss,
    its backward pass and a DDIM draw of each variant stay on the device."""
    from refgen import backend
    from refgen.testing.strict_device import DeviceArray, strict_device
    x, y = _images(4), np.array([0, 1, 2, 3])
    for cond in ("adaln_zero", "in_context", "cross_attn"):
        with strict_device():
            m = DDPM((1, 8, 8), num_classes=4, learn_sigma=True, dit_cond=cond, **SMALL)
            batch = Batch(Tensor(backend.asarray(x.numpy())), backend.asarray(y))
            _loss(m, batch, 0).backward()
            s = m.sample(2, cond=backend.asarray(np.array([1, 2])), rng=default_rng(0),
                         sampler="ddim", steps=2)
            assert isinstance(s, DeviceArray) and np.all(np.isfinite(backend.to_numpy(s)))
