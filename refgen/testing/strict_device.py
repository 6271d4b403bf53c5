"""A stand-in GPU backend that runs on NumPy but refuses what CuPy refuses.

``REFGEN_BACKEND=cupy`` runs the same code with arrays on a GPU. The most common way such
code breaks is a host array (NumPy) meeting a device array (CuPy) in one operation: CuPy
raises ``TypeError`` there, NumPy never does, so a CPU-only suite cannot see it. Inside
``with strict_device():`` the active backend is a module whose arrays are
:class:`DeviceArray` (NumPy arrays underneath) and which raises :class:`HostDeviceMix`
wherever CuPy would raise:

- a ufunc or array function (``+``, ``xp.exp``, ``xp.concatenate``, ``np.where``...) given
  a device array and a host array of one or more dimensions (host scalars and 0-d arrays
  are allowed, as in CuPy);
- a host array of one or more dimensions assigned into part of a device array
  (``d[i] = host``; the whole-array copy ``d[:] = host`` is allowed, as in CuPy);
- ``asarray`` / ``array`` of a Python list that holds device arrays.

Every function of the module returns device arrays; ``asarray``, ``array``, ``asanyarray``
and ``ascontiguousarray`` are the explicit host-to-device transfers.

``backend.name()`` reports ``'cupy'``, so the branches refgen chooses by backend name (the
device copies of refgen.nn and refgen.optim, the convolution's chunk size) take their CuPy
side. What it cannot catch: ``numpy.asarray(device_array)`` (a silent host copy here, a
TypeError in CuPy; refgen copies to the host with ``backend.to_numpy``); the branches that
test ``isinstance(a, numpy.ndarray)``, which a DeviceArray passes (``backend.scatter_add``
and ``backend.erf`` take their NumPy side); and anything about speed or memory.
"""
from __future__ import annotations

import contextlib
import types

import numpy as np

__all__ = ["strict_device", "DeviceArray", "HostDeviceMix"]

TRANSFERS = {"asarray", "array", "asanyarray", "ascontiguousarray"}


class HostDeviceMix(TypeError):
    """A host (NumPy) array met a device array in one operation; CuPy raises TypeError here."""


class DeviceArray(np.ndarray):
    """A NumPy array that stands for memory on the device."""

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        _refuse_host(inputs + (out or ()), f"{ufunc.__name__}.{method}" if method != "__call__"
                     else ufunc.__name__)
        args = [_host_view(a) for a in inputs]
        if out is not None:
            kwargs["out"] = tuple(_host_view(o) for o in out)
        result = getattr(ufunc, method)(*args, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _to_device(result)

    def __array_function__(self, func, types_, args, kwargs):
        _refuse_host(_leaves((args, kwargs)), func.__name__)
        return _to_device(func(*_unwrap(args), **_unwrap(kwargs)))

    def __setitem__(self, key, value):
        whole = isinstance(key, slice) and key == slice(None)        # CuPy copies a[:] = host
        if type(value) is np.ndarray and value.ndim > 0 and not whole:
            raise HostDeviceMix(f"setitem: a host (NumPy) array of shape {value.shape} assigned "
                                "into a device array; move it with refgen.backend.asarray first")
        super().__setitem__(_unwrap(key), _unwrap(value))

    def get(self):
        """A host copy, as ``cupy.ndarray.get``."""
        return np.array(self.view(np.ndarray))


def _leaves(obj):
    if isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _leaves(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _leaves(o)
    else:
        yield obj


def _refuse_host(values, what):
    values = list(values)
    if not any(isinstance(v, DeviceArray) for v in values):
        return
    for v in values:
        if type(v) is np.ndarray and v.ndim > 0:
            raise HostDeviceMix(f"{what}: a host (NumPy) array of shape {v.shape} met a device "
                                "array; move it with refgen.backend.asarray first")


def _host_view(a):
    return a.view(np.ndarray) if isinstance(a, DeviceArray) else a


def _unwrap(obj):
    if isinstance(obj, DeviceArray):
        return obj.view(np.ndarray)
    if isinstance(obj, list):
        return [_unwrap(o) for o in obj]
    if isinstance(obj, tuple):
        return tuple(_unwrap(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _unwrap(v) for k, v in obj.items()}
    return obj


def _to_device(result):
    if isinstance(result, np.ndarray):
        return result.view(DeviceArray)
    if isinstance(result, np.generic):                   # CuPy returns 0-d arrays, not scalars
        return np.asarray(result).view(DeviceArray)
    if isinstance(result, tuple):
        return tuple(_to_device(r) for r in result)
    if isinstance(result, list):
        return [_to_device(r) for r in result]
    return result


def _device_function(fn, name):
    def call(*args, **kwargs):
        if name not in TRANSFERS:
            _refuse_host(_leaves((args, kwargs)), name)
        elif args and isinstance(args[0], (list, tuple)) and any(
                isinstance(v, DeviceArray) for v in _leaves(args[0])):
            raise HostDeviceMix(f"{name}: a list holding device arrays; CuPy builds arrays "
                                "from host data only (use xp.stack)")
        return _to_device(fn(*_unwrap(args), **_unwrap(kwargs)))
    call.__name__ = name
    return call


class _Namespace(types.ModuleType):
    """A module (or submodule) of the stand-in: functions return device arrays; types,
    dtypes and constants pass through."""

    def __init__(self, name, target, overrides=None):
        super().__init__(name)
        self._target, self._overrides = target, dict(overrides or {})

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        if attr in self._overrides:
            return self._overrides[attr]
        value = getattr(self._target, attr)
        if isinstance(value, types.ModuleType):
            value = _Namespace(f"{self.__name__}.{attr}", value)
        elif callable(value) and not isinstance(value, type):
            value = _device_function(value, attr)
        setattr(self, attr, value)  # wrapped once: later lookups skip __getattr__
        return value


class _Generator:
    """``numpy.random.Generator`` whose draws land on the device."""

    def __init__(self, seed=None):
        self._rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    def __getattr__(self, attr):
        value = getattr(self._rng, attr)
        return _device_function(value, attr) if callable(value) else value

    @property
    def bit_generator(self):
        return self._rng.bit_generator


def make_module():
    """The stand-in array module (``refgen.backend.xp`` while it is active)."""
    random = _Namespace("strict_device.random", np.random,
                        {"default_rng": _Generator, "Generator": _Generator})
    return _Namespace("strict_device", np, {"ndarray": DeviceArray, "random": random})


@contextlib.contextmanager
def strict_device():
    """Run the block with the stand-in device backend active, then restore the previous one."""
    from refgen import backend
    previous = backend._module
    backend._module = make_module()
    try:
        yield backend._module
    finally:
        backend._module = previous
