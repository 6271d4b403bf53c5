"""The array backend: one switch, ``REFGEN_BACKEND=numpy|cupy``, picks the array module.

Everything in refgen that touches arrays does so through :data:`xp`, a thin proxy that
forwards attribute access to the active module (NumPy or CuPy). Because it is a proxy,
``from refgen.backend import xp`` stays valid when :func:`use_backend` switches modules
inside a ``with`` block (tests use that to force float64 checks onto NumPy).
"""
from __future__ import annotations

import contextlib
import os
import sys

import numpy as np

__all__ = ["xp", "name", "to_numpy", "asarray", "copy_to_active", "default_rng", "scatter_add",
           "use_backend", "BackendError", "is_array", "erf"]


class BackendError(ImportError):
    """Raised, with a one-line reason, when the requested backend cannot be used."""


def _first_line(e) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def _load(which: str):
    if which == "numpy":
        return np
    if which == "cupy":
        try:
            import cupy
        except ModuleNotFoundError as e:
            if e.name != "cupy":
                raise BackendError(f"REFGEN_BACKEND=cupy but CuPy failed to import ({_first_line(e)}); "
                                   "reinstall it with pip install 'refgen[gpu]'") from None
            raise BackendError(
                "REFGEN_BACKEND=cupy but CuPy is not installed; install it with "
                "pip install 'refgen[gpu]' or unset REFGEN_BACKEND to use NumPy") from None
        except ImportError as e:  # installed, but a CUDA library or the driver is missing
            raise BackendError(f"REFGEN_BACKEND=cupy but CuPy failed to import ({_first_line(e)}); "
                               "check the CUDA installation or pip install 'refgen[gpu]'") from None
        try:
            n = cupy.cuda.runtime.getDeviceCount()
        except Exception as e:  # no driver, no device
            raise BackendError(
                f"REFGEN_BACKEND=cupy but no usable GPU was found ({type(e).__name__}: {e}); "
                "unset REFGEN_BACKEND to use NumPy") from None
        if n < 1:
            raise BackendError("REFGEN_BACKEND=cupy but no GPU is visible; unset REFGEN_BACKEND to use NumPy")
        return cupy
    raise BackendError(f"REFGEN_BACKEND={which!r} is not a backend; use 'numpy' or 'cupy'")


def _one_line_hook(previous):
    """Show an uncaught BackendError as one line, not a traceback, and exit with status 2
    (CLI and scripts alike)."""
    def hook(exc_type, exc, tb):
        if issubclass(exc_type, BackendError):
            sys.stderr.write(f"refgen: error: {exc}\n")
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os._exit(2)  # bad input, as the CLI's other errors (Python's own exit would be 1)
        else:
            previous(exc_type, exc, tb)
    return hook


sys.excepthook = _one_line_hook(sys.excepthook)
_module = _load(os.environ.get("REFGEN_BACKEND", "numpy").strip().lower() or "numpy")


class _XP:
    """Forwards ``xp.anything`` to the active array module."""

    def __getattr__(self, attr):
        return getattr(_module, attr)

    def __repr__(self):
        return f"<refgen xp -> {_module.__name__}>"


xp = _XP()


def name() -> str:
    """'numpy' or 'cupy': the active backend."""
    return "cupy" if _module is not np else "numpy"


@contextlib.contextmanager
def use_backend(which: str):
    """Run a block on a given backend, then restore the previous one."""
    global _module
    previous = _module
    _module = _load(which)
    try:
        yield _module
    finally:
        _module = previous


def batch_slices(n: int, item_bytes: int, limit: int) -> list:
    """Slices cutting a batch of n items of item_bytes each into chunks of at most ``limit``
    bytes (at least one item per chunk)."""
    step = max(1, limit // max(1, item_bytes))
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


# Rows at least this long take NumPy's unbuffered loop faster than its buffered one (below).
LONG_ROW = 128


@contextlib.contextmanager
def long_rows(row: int):
    """Broadcast passes of same-dtype arrays over rows of ``row`` numbers, each row against one
    per-row number (a scale, a mean), without NumPy's ufunc buffering. NumPy grows a ufunc's
    inner loop to its buffer size (8192 elements) by buffering across rows, which makes such a
    pass cost about 1.6x a plain one at rows of 49 to 1568 numbers; with a buffer shorter than
    a row it runs each row as one loop, at about the plain speed from 196 numbers on. Rows
    below LONG_ROW keep the buffer: their per-row overhead is the larger cost
    (benchmarks/broadcast_rows.py measures both by row length). The setting is NumPy's own,
    scoped to this block (``errstate`` restores it); on the GPU this does nothing."""
    if name() != "numpy" or row < LONG_ROW:
        yield
        return
    with np.errstate():
        np.setbufsize(16)
        yield


def blas_core() -> str | None:
    """The kernel family NumPy's bundled OpenBLAS runs (e.g. 'Haswell' for AVX2, 'SkylakeX'
    for AVX-512): the one it detected for this CPU when it loaded, or the one the environment
    names in OPENBLAS_CORETYPE; None where NumPy links another BLAS."""
    import ctypes
    import glob
    from pathlib import Path
    for lib in glob.glob(str(Path(np.__file__).parent.parent / "numpy.libs" / "*openblas*")):
        for fname in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename",
                      "openblas_get_corename64_", "openblas_get_corename"):
            fn = getattr(ctypes.CDLL(lib), fname, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                return fn().decode()
    return None


def is_array(a) -> bool:
    """True for an array of the active backend (or NumPy)."""
    return isinstance(a, (np.ndarray, _module.ndarray))


def asarray(a, dtype=None):
    """An array on the active backend."""
    return _module.asarray(a, dtype=dtype)


def copy_to_active(a, dtype=None):
    """A copy of array ``a`` (host or device) on the active backend, never sharing memory
    with ``a``: what ``load_state_dict`` (modules, optimizers, EMA) and ``Module.to`` store."""
    if _module is np:
        a = to_numpy(a)
    return _module.array(a, dtype=dtype, copy=True)


def to_numpy(a) -> np.ndarray:
    """A NumPy copy (or view) of any array, host or device."""
    if hasattr(a, "data") and not isinstance(a, (np.ndarray, memoryview)) and hasattr(a, "requires_grad"):
        a = a.data  # a refgen Tensor
    if hasattr(a, "get") and not isinstance(a, np.ndarray):
        return a.get()
    return np.asarray(a)


def default_rng(seed=None):
    """A random generator of the active backend (``numpy.random.Generator`` on NumPy).

    Parameters are always initialised from a NumPy generator (so CPU and GPU start
    identical); this one is for noise drawn inside training and sampling. A generator of
    the active backend passes through. A NumPy generator passes through on NumPy; on a GPU
    it seeds a device generator with one draw (its noise would be host arrays there).
    """
    if _module is not np and isinstance(seed, _module.random.Generator):
        return seed
    if isinstance(seed, np.random.Generator):
        return seed if _module is np else _module.random.default_rng(int(seed.integers(2 ** 63)))
    return _module.random.default_rng(seed)


def scatter_add(a, indices, values):
    """In place ``a[indices] += values`` with repeated indices accumulated."""
    if _module is np or isinstance(a, np.ndarray):
        np.add.at(a, indices, values)
    else:
        import cupyx
        cupyx.scatter_add(a, indices, values)
    return a


# erf is not in NumPy; GELU (exact form) and the Normal CDF need it.
# float64: W. J. Cody's rational Chebyshev approximations (relative error < 1e-15).
def erf(x):
    """The error function, elementwise, on the active backend."""
    if _module is not np and not isinstance(x, np.ndarray):
        import cupyx.scipy.special
        return cupyx.scipy.special.erf(x)
    m = np if isinstance(x, np.ndarray) else _module
    return _erf_cody(m, m.asarray(x))


def _erf_cody(m, x):
    dtype = x.dtype if x.dtype.kind == "f" else np.float64
    y = m.abs(x).astype(np.float64)
    out = m.empty_like(y)
    # |x| <= 0.5
    a = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02,
         3.20937758913846947e03, 1.85777706184603153e-1)
    b = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03,
         2.84423683343917062e03)
    # 0.5 < |x| <= 4
    c = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01,
         2.98635138197400131e02, 8.81952221241769090e02, 1.71204761263407058e03,
         2.05107837782607147e03, 1.23033935479799725e03, 2.15311535474403846e-8)
    d = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02,
         1.62138957456669019e03, 3.29079923573345963e03, 4.36261909014324716e03,
         3.43936767414372164e03, 1.23033935480374942e03)
    # |x| > 4
    p = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1,
         1.60837851487422766e-2, 6.58749161529837803e-4, 1.63153871373020978e-2)
    q = (2.56852019228982242e00, 1.87295284992346725e00, 5.27905102951428412e-1,
         6.05183413124413191e-2, 2.33520497626869185e-3)
    small = y <= 0.5
    mid = (y > 0.5) & (y <= 4.0)
    big = (y > 4.0) & m.isfinite(y)
    ys = y[small]
    z = ys * ys
    xnum, xden = a[4] * z, z
    for i in range(3):
        xnum, xden = (xnum + a[i]) * z, (xden + b[i]) * z
    out[small] = ys * (xnum + a[3]) / (xden + b[3])
    ym = y[mid]
    xnum, xden = c[8] * ym, ym
    for i in range(7):
        xnum, xden = (xnum + c[i]) * ym, (xden + d[i]) * ym
    erfc = (xnum + c[7]) / (xden + d[7])
    zz = m.floor(ym * 16.0) / 16.0
    erfc = m.exp(-zz * zz) * m.exp(-(ym - zz) * (ym + zz)) * erfc
    out[mid] = 1.0 - erfc
    yb = y[big]
    z = 1.0 / (yb * yb)
    xnum, xden = p[5] * z, z
    for i in range(4):
        xnum, xden = (xnum + p[i]) * z, (xden + q[i]) * z
    r = z * (xnum + p[4]) / (xden + q[4])
    r = (0.5641895835477563 - r) / yb  # 1/sqrt(pi) - r
    zz = m.floor(yb * 16.0) / 16.0
    erfc = m.exp(-zz * zz) * m.exp(-(yb - zz) * (yb + zz)) * r
    out[big] = 1.0 - erfc
    out = m.where(m.isinf(y), 1.0, out)  # the tail formula gives inf*0 there
    out = m.where(x < 0, -out, out)
    return out.astype(dtype)
