"""Shared test setup: the backend default, hypothesis profiles and the MNIST fixture.

Environment:
  REFGEN_BACKEND       left alone when set; defaults to numpy for the tests.
  HYPOTHESIS_PROFILE   'dev' (default) or 'ci' (derandomized, so CI runs are reproducible);
                       'mutation' is ci without shrinking (benchmarks/mutation.py).
  REFGEN_DATA_DIR      directory holding the four MNIST .gz files.
  REFGEN_REQUIRE_DATA  '1' turns a missing MNIST directory from a skip into a failure (CI).
  OPENBLAS_NUM_THREADS defaults to 1 for the tests (small arrays).
  REFGEN_STRICT_DEVICE '1' runs the whole suite on refgen.testing.strict_device's stand-in
                       GPU backend, which raises where CuPy would on host/device mixing.
"""
import os

os.environ.setdefault("REFGEN_BACKEND", "numpy")  # before anything imports refgen.backend
# The tests' arrays are small: one BLAS thread is faster than a pool that contends for cores
# (measured about 4x on the 2-core machine). Only effective before NumPy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402
from hypothesis import Phase, settings  # noqa: E402


def pytest_configure(config):
    if os.environ.get("REFGEN_STRICT_DEVICE") == "1":
        from refgen import backend
        from refgen.testing.strict_device import make_module
        backend._module = make_module()


settings.register_profile("dev", max_examples=25, deadline=None)
settings.register_profile("ci", derandomize=True, max_examples=25, deadline=None, print_blob=True)
# benchmarks/mutation.py: as ci, but a failure is reported at once, not shrunk (minutes per mutant)
settings.register_profile("mutation", derandomize=True, max_examples=25, deadline=None,
                          phases=[Phase.explicit, Phase.generate])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def require_mnist_dir():
    """The MNIST directory (a Path), else skip the test (or fail it when REFGEN_REQUIRE_DATA=1)."""
    from refgen.data.mnist import find_mnist_dir

    found = find_mnist_dir()
    if found is None:
        msg = ("MNIST files not found: set REFGEN_DATA_DIR to a directory holding "
               "train-images-idx3-ubyte.gz and the three other MNIST files")
        if os.environ.get("REFGEN_REQUIRE_DATA") == "1":
            pytest.fail(msg + " (REFGEN_REQUIRE_DATA=1 makes this a failure)", pytrace=False)
        pytest.skip(msg)
    return found


@pytest.fixture(scope="session")
def mnist_dir():
    """Path of the directory holding the real MNIST files (see require_mnist_dir)."""
    return require_mnist_dir()


@pytest.fixture(scope="module")
def numpy_backend():
    """Pin a module to NumPy (``pytestmark = pytest.mark.usefixtures("numpy_backend")``), for
    modules made only of closed-form oracles compared with NumPy in float64; a single such
    test in a mixed module takes ``@refgen.testing.on_backend("numpy")`` instead. The models
    themselves are checked on the device by tests/test_strict_device.py."""
    from refgen.backend import use_backend
    with use_backend("numpy"):
        yield
