"""Module bookkeeping (registration, names, state dicts, modes) and the initialisers."""
import math

import numpy as np
import pytest

import refgen
from refgen import nn
from refgen.autograd import Tensor
from refgen.nn import init


class Block(nn.Module):
    def __init__(self, rng):
        super().__init__()
        self.fc = nn.Linear(3, 4, rng=rng)
        self.scale = nn.Parameter(np.ones(4, dtype=np.float32))
        self.register_buffer("initialized", np.zeros((), dtype=np.float32))

    def forward(self, x):
        return self.fc(x) * self.scale


class Net(nn.Module):
    def __init__(self, rng=0):
        super().__init__()
        rng = init.get_rng(rng)
        self.a = Block(rng)
        self.layers = nn.ModuleList([nn.Linear(4, 4, rng=rng), nn.Identity()])
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(4, 2, bias=False, rng=rng))

    def forward(self, x):
        x = self.a(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


# a module's own parameters come before its children's (torch's order)
NAMES = ["a.scale", "a.fc.weight", "a.fc.bias", "layers.0.weight", "layers.0.bias",
         "head.1.weight"]


def test_registration_and_names_are_deterministic():
    net = Net()
    assert [k for k, _ in net.named_parameters()] == NAMES
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in net.parameters())
    assert list(net.state_dict()) == NAMES[:1] + ["a.initialized"] + NAMES[1:]
    assert net.num_parameters() == 12 + 4 + 4 + 16 + 4 + 8
    kinds = [type(m).__name__ for m in net.modules()]
    assert kinds == ["Net", "Block", "Linear", "ModuleList", "Linear", "Identity",
                     "Sequential", "ReLU", "Linear"]
    assert [k for k, _ in net.named_buffers()] == ["a.initialized"]


def test_plain_attributes_and_reassignment():
    m = nn.Module()
    m.k = 3  # a plain attribute is not registered
    m.w = nn.Parameter(np.zeros(2))
    assert m.k == 3 and [k for k, _ in m.named_parameters()] == ["w"]
    m.w = None  # a parameter slot may be emptied
    assert list(m.parameters()) == []
    m.register_buffer("flag", np.zeros(()))
    m.flag = np.ones(())  # reassigning a buffer updates the buffer
    assert float(m.state_dict()["flag"]) == 1.0
    m.flag = Tensor(np.full((), 2.0))  # a Tensor gives its array
    assert float(m.state_dict()["flag"]) == 2.0
    with pytest.raises(AttributeError):
        m.missing
    m.w = nn.Parameter(np.zeros(2))
    with pytest.raises(TypeError):
        m.w = Tensor(np.zeros(2))  # a plain Tensor cannot replace a Parameter
    del m.w
    assert list(m.parameters()) == []


def test_forgetting_super_init_is_a_clear_error():
    class Bad(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.zeros(1))

    with pytest.raises(AttributeError, match="super"):
        Bad()


def test_shared_parameters_counted_once():
    lin = nn.Linear(2, 2, rng=0)
    seq = nn.Sequential(lin, lin)
    assert len(list(seq.parameters())) == 2
    assert seq.num_parameters() == 6
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"]


def test_state_dict_round_trip_through_npz(tmp_path):
    net, other = Net(rng=0), Net(rng=1)
    net.a.initialized = np.ones((), dtype=np.float32)
    x = Tensor(np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32))
    state = {k: refgen.backend.to_numpy(v) for k, v in net.state_dict().items()}
    np.savez(tmp_path / "ckpt.npz", **state)
    with np.load(tmp_path / "ckpt.npz") as z:
        result = other.load_state_dict(z)
    assert result.missing_keys == [] and result.unexpected_keys == []
    np.testing.assert_array_equal(other(x).numpy(), net(x).numpy())
    assert float(other.a.initialized) == 1.0
    # loaded arrays are copies: changing the source does not touch the model
    state["a.scale"][:] = 7.0
    assert np.all(other.a.scale.numpy() == 1.0)
    assert other.a.fc.weight.dtype == np.float32


def test_load_state_dict_errors_list_keys_and_shapes():
    net = Net()
    state = dict(net.state_dict())
    del state["a.scale"]
    state["extra.weight"] = np.zeros(3)
    with pytest.raises(KeyError) as e:
        net.load_state_dict(state)
    assert "a.scale" in str(e.value) and "extra.weight" in str(e.value)
    result = net.load_state_dict(state, strict=False)
    assert result.missing_keys == ["a.scale"] and result.unexpected_keys == ["extra.weight"]
    bad = dict(net.state_dict())
    bad["head.1.weight"] = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"head\.1\.weight.*\(3, 4\).*\(2, 4\)"):
        net.load_state_dict(bad)


def test_non_persistent_buffer_is_not_saved():
    m = nn.Module()
    m.register_buffer("tmp", np.zeros(3), persistent=False)
    assert "tmp" not in m.state_dict()
    assert [k for k, _ in m.named_buffers()] == ["tmp"]


def test_train_eval_zero_grad_requires_grad():
    net = Net()
    assert all(m.training for m in net.modules())
    net.eval()
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    x = Tensor(np.ones((2, 3), dtype=np.float32))
    net(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    net.requires_grad_(False)
    assert net.num_parameters(trainable_only=True) == 0
    assert not net(x).requires_grad


def test_to_casts_floating_arrays():
    net = Net().to(dtype=np.float64)
    assert all(p.dtype == np.float64 for p in net.parameters())
    assert net.a.initialized.dtype == np.float64
    net.float()
    assert all(p.dtype == np.float32 for p in net.parameters())
    net.to_backend()  # a no-op move on the active backend
    assert isinstance(net.a.fc.weight.data, type(refgen.backend.xp.zeros(1)))


def test_containers():
    seq = nn.Sequential(nn.Linear(2, 3, rng=0), nn.Tanh())
    assert len(seq) == 2 and isinstance(seq[1], nn.Tanh) and len(seq[:1]) == 1
    x = Tensor(np.ones((1, 2), dtype=np.float32))
    np.testing.assert_allclose(seq(x).numpy(), np.tanh(seq[0](x).numpy()), rtol=1e-6)
    ml = nn.ModuleList()
    ml.append(nn.Linear(2, 2, rng=0)).extend([nn.ReLU()])
    ml[1] = nn.SiLU()
    assert [type(m).__name__ for m in ml] == ["Linear", "SiLU"]
    md = nn.ModuleDict({"enc": nn.Linear(2, 2, rng=0)})
    md["dec"] = nn.Linear(2, 1, rng=0)
    assert "enc" in md and list(md.keys()) == ["enc", "dec"] and len(md) == 2
    assert [k for k, _ in md.named_parameters()] == ["enc.weight", "enc.bias", "dec.weight",
                                                     "dec.bias"]
    assert nn.Identity()(x) is x
    assert "Linear(2, 3" in repr(seq)


def test_deepcopy_gives_independent_weights():
    import copy
    net = Net()
    twin = copy.deepcopy(net)
    twin.a.fc.weight.data[...] = 0.0
    assert np.abs(net.a.fc.weight.numpy()).sum() > 0
    assert [k for k, _ in twin.named_parameters()] == NAMES


def test_apply_visits_children_first():
    net = nn.Sequential(nn.Linear(1, 1, rng=0))
    seen = []
    net.apply(lambda m: seen.append(type(m).__name__))
    assert seen == ["Linear", "Sequential"]


# --- init ----------------------------------------------------------------------------------

def test_same_seed_same_weights_and_explicit_rng_is_used():
    a = nn.Linear(8, 5, rng=np.random.default_rng(3))
    b = nn.Linear(8, 5, rng=3)
    c = nn.Linear(8, 5, rng=4)
    np.testing.assert_array_equal(a.weight.numpy(), b.weight.numpy())
    assert not np.array_equal(a.weight.numpy(), c.weight.numpy())
    init.manual_seed(11)
    d = nn.Linear(8, 5)
    init.manual_seed(11)
    e = nn.Linear(8, 5)
    np.testing.assert_array_equal(d.weight.numpy(), e.weight.numpy())


def test_fans_and_gains():
    assert init.calculate_fan_in_and_fan_out((16, 3, 5, 5)) == (75, 400)
    assert init.calculate_fan_in_and_fan_out((4, 7)) == (7, 4)
    assert init.calculate_gain("relu") == pytest.approx(math.sqrt(2))
    assert init.calculate_gain("leaky_relu", math.sqrt(5)) == pytest.approx(math.sqrt(1 / 3))
    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)
    with pytest.raises(ValueError):
        init.calculate_gain("swish")


def _param(shape, dtype=np.float64):
    return nn.Parameter(np.zeros(shape, dtype=dtype))


@pytest.mark.parametrize("fn, expected_std", [
    (lambda p, r: init.kaiming_uniform_(p, nonlinearity="relu", rng=r), math.sqrt(2 / 200)),
    (lambda p, r: init.kaiming_normal_(p, nonlinearity="relu", rng=r), math.sqrt(2 / 200)),
    (lambda p, r: init.kaiming_normal_(p, mode="fan_out", nonlinearity="relu", rng=r),
     math.sqrt(2 / 300)),
    (lambda p, r: init.xavier_uniform_(p, rng=r), math.sqrt(2 / 500)),
    (lambda p, r: init.xavier_normal_(p, gain=2.0, rng=r), 2 * math.sqrt(2 / 500)),
    (lambda p, r: init.normal_(p, 0.0, 0.3, rng=r), 0.3),
    (lambda p, r: init.uniform_(p, -1.0, 1.0, rng=r), 1 / math.sqrt(3)),
])
def test_init_statistics(fn, expected_std):
    p = fn(_param((300, 200)), np.random.default_rng(0))  # 60,000 draws: 0.6% sampling error
    v = p.numpy()
    assert abs(v.mean()) < 4 * expected_std / math.sqrt(v.size)
    assert v.std() == pytest.approx(expected_std, rel=0.02)


def test_uniform_bounds_and_constants():
    p = init.kaiming_uniform_(_param((50, 20)), a=math.sqrt(5), rng=0)
    assert np.abs(p.numpy()).max() <= 1 / math.sqrt(20)  # torch's Linear default bound
    p = init.trunc_normal_(_param((1000,)), std=1.0, a=-0.5, b=0.5, rng=0)
    assert p.numpy().min() >= -0.5 and p.numpy().max() <= 0.5
    assert np.all(init.zeros_(_param((3,))).numpy() == 0)
    assert np.all(init.ones_(_param((3,))).numpy() == 1)
    assert np.all(init.constant_(_param((3,)), 0.5).numpy() == 0.5)
    q = init.normal_(_param((4,), np.float32), rng=0)
    assert q.dtype == np.float32 and isinstance(q, nn.Parameter)
    with pytest.raises(TypeError):
        init.normal_(_param((2,)), rng="seed")
