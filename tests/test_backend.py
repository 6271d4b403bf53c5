"""The backend switch, its error messages, and the helpers ops rely on (scatter_add, erf)."""
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from refgen import Tensor, backend
from refgen.backend import (BackendError, asarray, default_rng, erf, is_array, scatter_add,
                            to_numpy, use_backend, xp)
from refgen.testing import on_backend

ROOT = Path(__file__).resolve().parents[1]
# an uncaught BackendError ends stderr with one line: refgen's own "refgen: error: ..." (its
# excepthook) or, without the hook, Python's last traceback line
ONE_LINE_PREFIXES = ("refgen: error: ", "refgen.backend.BackendError: ")


def _import_refgen(env_backend, extra_path=None):
    """Import refgen in a fresh interpreter with REFGEN_BACKEND set (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != "REFGEN_BACKEND"}
    if env_backend is not None:
        env["REFGEN_BACKEND"] = env_backend
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, str(ROOT)) if p)
    return subprocess.run([sys.executable, "-c", "import refgen; print(refgen.backend.name())"],
                          env=env, capture_output=True, text=True, timeout=60)


def test_numpy_is_the_default():
    r = _import_refgen(None)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "numpy"


@pytest.mark.parametrize("failure", [
    "raise ModuleNotFoundError(\"No module named 'cupy'\")",
    "raise ImportError('simulated failure deep in cupy internals\\nlibcudart.so: not found')",
])
def test_cupy_backend_without_cupy_fails_with_one_clear_line(tmp_path, failure):
    # a stand-in 'cupy' package whose import fails, whether or not the real one is installed
    (tmp_path / "cupy").mkdir()
    (tmp_path / "cupy" / "__init__.py").write_text(failure + "\n")
    r = _import_refgen("cupy", str(tmp_path))
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith(ONE_LINE_PREFIXES), lines[-1]
    assert "REFGEN_BACKEND=cupy" in lines[-1] and "pip install 'refgen[gpu]'" in lines[-1]
    # the cause's first line may be quoted, but no inner traceback and nothing past that line
    assert "cupy/__init__.py" not in r.stderr and "libcudart" not in r.stderr
    assert "During handling of the above exception" not in r.stderr


def test_bad_backend_names_are_rejected():
    r = _import_refgen("tensorflow")
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(ONE_LINE_PREFIXES) and "'numpy' or 'cupy'" in last
    with pytest.raises(BackendError, match="not a backend"):
        with use_backend("torch"):
            pass
    with pytest.raises(BackendError, match="not a backend"), on_backend("jax"):
        pass
    assert issubclass(BackendError, ImportError)


def test_use_backend_switches_and_restores(monkeypatch):
    fake = types.SimpleNamespace(__name__="fakexp", marker="fake", ndarray=np.ndarray)
    load = backend._load
    monkeypatch.setattr(backend, "_load", lambda which: fake if which == "fake" else load(which))
    before = backend.name()
    with use_backend("fake") as m:
        assert m is fake and xp.marker == "fake"  # the proxy follows the switch
        with use_backend("numpy") as inner:
            assert inner is np and xp.float32 is np.float32
        assert xp.marker == "fake"
    assert backend.name() == before
    with pytest.raises(KeyError), use_backend("fake"):
        raise KeyError("restored even when the block raises")
    assert backend.name() == before and not hasattr(xp, "marker")


def test_on_backend_runs_on_numpy():
    with on_backend("numpy") as m:
        assert m is np and backend.name() == "numpy"
        assert isinstance(Tensor([1.0]).data, np.ndarray)


def test_scatter_add_accumulates_repeated_indices():
    a = np.zeros(4)
    out = scatter_add(a, np.array([0, 0, 2, 0]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert out is a
    np.testing.assert_array_equal(a, [7.0, 0.0, 3.0, 0.0])
    b = np.zeros((2, 3))
    scatter_add(b, (np.array([1, 1, 0]), np.array([2, 2, 0])), np.array([1.0, 1.0, 5.0]))
    np.testing.assert_array_equal(b, [[5, 0, 0], [0, 0, 2]])
    c = xp.zeros((3, 2))
    scatter_add(c, xp.asarray([2, 2]), xp.ones((2, 2)))  # on the active backend
    np.testing.assert_array_equal(to_numpy(c), [[0, 0], [0, 0], [2, 2]])


def test_erf_matches_math_erf_to_1e_15_relative():
    x = np.concatenate([np.linspace(-7, 7, 4001), np.geomspace(1e-300, 30, 400),
                        -np.geomspace(1e-300, 30, 400), [0.0, 0.5, np.nextafter(0.5, 0), 4.0,
                                                         np.nextafter(4.0, 5), -4.0]])
    want = np.array([math.erf(v) for v in x])
    got = to_numpy(erf(asarray(x)))
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)
    x32 = np.linspace(-3, 3, 7, dtype=np.float32)
    assert erf(x32).dtype == np.float32


def test_erf_at_infinity():
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(erf(np.array([np.inf, -np.inf])), [1.0, -1.0])


def test_to_numpy_and_array_helpers():
    a = np.arange(3.0)
    assert to_numpy(a) is a
    np.testing.assert_array_equal(to_numpy(Tensor(a)), a)
    np.testing.assert_array_equal(to_numpy([1, 2]), [1, 2])
    assert to_numpy(asarray(2.5)).shape == ()
    assert isinstance(to_numpy(xp.ones(2)), np.ndarray)
    assert asarray([1, 2], dtype=np.float32).dtype == np.float32
    assert is_array(xp.ones(1)) and is_array(a) and not is_array([1.0])


def test_a_numpy_generator_seeds_a_device_generator():
    """sample(rng=np.random.default_rng(0)) must not hand host noise to a GPU model: on a
    device backend a NumPy generator seeds a device one with one draw."""
    from refgen.testing.strict_device import DeviceArray, strict_device
    with strict_device():
        host = np.random.default_rng(3)
        g = default_rng(host)
        assert isinstance(g.standard_normal(4), DeviceArray) and default_rng(g) is g
        assert host.integers(2 ** 63) == np.random.default_rng(3).integers(2 ** 63, size=2)[1]
        a = to_numpy(default_rng(np.random.default_rng(3)).standard_normal(4))
        np.testing.assert_array_equal(a, to_numpy(default_rng(np.random.default_rng(3)).standard_normal(4)))
    with use_backend("numpy"):
        host = np.random.default_rng(3)
        assert default_rng(host) is host


def test_copy_to_active_copies_onto_the_active_backend():
    from refgen.backend import copy_to_active
    from refgen.testing.strict_device import DeviceArray, strict_device
    a = np.arange(4.0)
    with use_backend("numpy"):
        b = copy_to_active(a, dtype=np.float32)
        assert b.dtype == np.float32 and not np.shares_memory(a, b)
        b[0] = 9.0
        assert a[0] == 0.0 and not np.shares_memory(copy_to_active(a), a)
    with strict_device():
        d = copy_to_active(a)
        assert isinstance(d, DeviceArray) and isinstance(copy_to_active(d), DeviceArray)
        assert not np.shares_memory(copy_to_active(d), d)
    with use_backend("numpy"):
        assert type(copy_to_active(d)) is np.ndarray               # device -> host


def test_default_rng_is_seeded_and_passes_generators_through():
    a = to_numpy(default_rng(5).standard_normal(4))
    np.testing.assert_array_equal(a, to_numpy(default_rng(5).standard_normal(4)))
    g = default_rng(1)
    assert default_rng(g) is g                      # a generator of the active backend


@on_backend("numpy")
def test_long_rows_drops_numpy_buffering_only_inside_and_only_for_long_rows():
    """long_rows(r) runs its block with NumPy's ufunc buffer shorter than a row for rows of
    196 and 784 numbers (14x14 and 28x28 planes, where unbuffered passes measured faster),
    leaves it alone for rows of 49 (7x7, where they measured slower), and restores it on
    leaving, also when the block raises."""
    before = np.getbufsize()
    for row in (196, 784):
        with backend.long_rows(row):
            assert np.getbufsize() < 196
    assert np.getbufsize() == before
    with backend.long_rows(49):
        assert np.getbufsize() == before
    with pytest.raises(KeyError):
        with backend.long_rows(784):
            raise KeyError("inside")
    assert np.getbufsize() == before


def test_batch_slices_cut_a_batch_by_bytes_with_at_least_one_item_each():
    """7 items of 10 bytes under a 25-byte limit: chunks of 2, the last one short; a limit
    below one item still gives one item per chunk; the slices cover the batch once, in order."""
    cuts = backend.batch_slices(7, 10, 25)
    assert [(s.start, s.stop) for s in cuts] == [(0, 2), (2, 4), (4, 6), (6, 7)]
    assert [s.stop - s.start for s in backend.batch_slices(3, 100, 1)] == [1, 1, 1]
    assert backend.batch_slices(5, 8, 1 << 20) == [slice(0, 5)]
