"""MAF: density in one MADE pass, sampling in D passes, and the two agree."""
import numpy as np
import pytest

from refgen.autograd import Tensor
from refgen.backend import default_rng, to_numpy
from refgen.models.flows import MAF, AutoregressiveAffine
from refgen.testing import on_backend



@on_backend("numpy")  # compares with NumPy in float64 / finite differences: run there
def test_samples_pushed_back_through_the_density_pass_give_the_base_noise(fl):
    model = fl.randomize(MAF((3,), layers=3, hidden=[16, 16]).double(), seed=4)
    x = model.sample(50, rng=default_rng(11))
    eps = model.base.sample((50, 3), default_rng(11), np.float64)     # the noise sample() drew
    z, _ = fl.forward(model, x)
    np.testing.assert_allclose(z, eps, rtol=0, atol=1e-9)


def test_layer_is_autoregressive_with_the_diagonal_giving_the_logdet(fl):
    layer = fl.randomize(AutoregressiveAffine(4, (8, 8)).double(), seed=2)
    x = np.random.default_rng(0).standard_normal(4)
    jac = fl.jacobian(lambda t: layer(t)[0], x)
    np.testing.assert_allclose(np.triu(jac, 1), 0.0, atol=1e-15)    # z_i depends on x_<=i only
    _, logdet = fl.forward(layer, x[None])
    np.testing.assert_allclose(logdet[0], np.log(np.abs(np.diag(jac))).sum(), rtol=1e-10)


def test_one_made_pass_for_the_density_and_d_passes_for_sampling(fl):
    layer = fl.randomize(AutoregressiveAffine(5, (8,)).double(), seed=1)
    calls = []
    made_forward = layer.made.forward
    layer.made.forward = lambda *a, **k: calls.append(1) or made_forward(*a, **k)
    x = np.random.default_rng(0).standard_normal((2, 5))
    z, _ = fl.forward(layer, x)
    assert len(calls) == 1
    np.testing.assert_allclose(fl.inverse(layer, z), x, atol=1e-10)
    assert len(calls) == 1 + 5


@pytest.mark.parametrize("layers", [2, 3, 4])
def test_order_reverses_between_layers(layers):
    model = MAF((3,), layers=layers)
    kinds = [type(m).__name__ for m in model.flow]
    assert kinds == ["AutoregressiveAffine"] + ["Reverse", "AutoregressiveAffine"] * (layers - 1)
    x = Tensor(np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32))
    z, ld = model(x)                     # fresh MADE layers are identities: only the reversals
    want = to_numpy(x.data)[:, ::-1] if layers % 2 == 0 else to_numpy(x.data)
    np.testing.assert_array_equal(to_numpy(z.data), want)
    np.testing.assert_array_equal(to_numpy(ld.data), 0.0)
