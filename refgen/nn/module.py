"""Parameter and Module: the bookkeeping every layer and model shares.

A ``Module`` finds its pieces by assignment: ``self.w = Parameter(...)`` registers a learned
parameter, ``self.block = Linear(...)`` a sub-module, and ``register_buffer`` a fixed array
(a noise schedule, an "initialized" flag) that is saved with the weights but never trained.
Names are dotted paths in assignment order (``block.weight``), so ``state_dict()`` is
deterministic and a checkpoint written on one backend loads on the other.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterator, NamedTuple

from refgen import backend
from refgen.autograd import Tensor
from refgen.backend import xp

__all__ = ["Parameter", "Module", "Sequential", "ModuleList", "ModuleDict", "Identity",
           "LoadResult"]


class Parameter(Tensor):
    """A Tensor that a Module registers as learned (``requires_grad=True`` by default)."""

    __slots__ = ()

    def __init__(self, data, requires_grad: bool = True):
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self):
        return f"Parameter(shape={tuple(self.shape)}, dtype={self.dtype})"


class LoadResult(NamedTuple):
    """What ``load_state_dict(strict=False)`` could not match."""
    missing_keys: list
    unexpected_keys: list


class Module:
    """Base class of layers and models; subclasses define ``forward``."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # --- registration ------------------------------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                                 f"before assigning {name!r}")
        params, bufs, mods = self._parameters, self._buffers, self._modules
        if isinstance(value, Parameter):
            self._forget(name)
            params[name] = value
        elif isinstance(value, Module):
            self._forget(name)
            mods[name] = value
        elif name in params:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} to parameter {name!r} "
                                "(use a Parameter, or None)")
            params[name] = None
        elif name in bufs:
            bufs[name] = _buffer_array(value)
        elif name in mods:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} to sub-module {name!r}")
            mods[name] = None
        else:
            object.__setattr__(self, name, value)

    def _forget(self, name):
        for d in (self._parameters, self._buffers, self._modules):
            d.pop(name, None)
        self.__dict__.pop(name, None)

    def __getattr__(self, name):  # only called when normal lookup fails
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for store in (self._parameters, self._buffers, self._modules):
            if name in store:
                del store[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name: str, array, persistent: bool = True):
        """A fixed array saved in ``state_dict`` (when persistent) and moved by ``to``."""
        self._forget(name)
        self._buffers[name] = _buffer_array(array)
        if not persistent:
            self.__dict__.setdefault("_non_persistent", set()).add(name)
        return self._buffers[name]

    def register_parameter(self, name: str, param):
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter({name!r}) needs a Parameter or None")
        self._forget(name)
        self._parameters[name] = param

    def add_module(self, name: str, module):
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module({name!r}) needs a Module or None")
        self._forget(name)
        self._modules[name] = module

    # --- traversal ---------------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        """(dotted name, module) for this module and every descendant, pre-order, each once."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, m = stack.pop()
            if id(m) in seen:
                continue
            seen.add(id(m))
            yield name, m
            children = [(f"{name}.{k}" if name else k, c) for k, c in m._modules.items()
                        if c is not None]
            stack.extend(reversed(children))

    def modules(self) -> Iterator["Module"]:
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        for k, m in self._modules.items():
            if m is not None:
                yield k, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def _named(self, store: str, remove_duplicate: bool = True):
        seen = set()
        for mname, m in self.named_modules():
            for k, v in getattr(m, store).items():
                if v is None or (remove_duplicate and id(v) in seen):
                    continue
                seen.add(id(v))
                yield (f"{mname}.{k}" if mname else k), v, m, k

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, Parameter), each shared parameter once, in registration order."""
        for name, p, _, _ in self._named("_parameters"):
            yield name, p

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self):
        for name, b, _, _ in self._named("_buffers"):
            yield name, b

    def buffers(self):
        for _, b in self.named_buffers():
            yield b

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(int(p.size) for p in self.parameters() if p.requires_grad or not trainable_only)

    # --- modes and gradients -----------------------------------------------------------------
    def train(self, mode: bool = True):
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, mode: bool = True):
        """Freeze (False) or unfreeze every parameter, e.g. a frozen encoder or a target net."""
        for p in self.parameters():
            p.requires_grad = mode
        return self

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def apply(self, fn):
        """Call ``fn(module)`` on every descendant and then on this module (torch order)."""
        for m in reversed(list(self.modules())):
            fn(m)
        return self

    # --- state -------------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, object]":
        """name -> array (the live arrays, not copies) for parameters and persistent buffers.

        Shared parameters appear under every name they are reachable by, as in torch.
        """
        out = OrderedDict()
        for mname, m in self._all_modules_with_names():
            skip = m.__dict__.get("_non_persistent", ())
            for k, p in m._parameters.items():
                if p is not None:
                    out[f"{mname}.{k}" if mname else k] = p.data
            for k, b in m._buffers.items():
                if b is not None and k not in skip:
                    out[f"{mname}.{k}" if mname else k] = b
        return out

    def _all_modules_with_names(self, prefix: str = ""):
        # like named_modules but a module reachable by two paths is listed under both
        yield prefix, self
        for k, c in self._modules.items():
            if c is not None:
                yield from c._all_modules_with_names(f"{prefix}.{k}" if prefix else k)

    def load_state_dict(self, state, strict: bool = True) -> LoadResult:
        """Copy arrays from ``state`` (name -> array, e.g. an ``np.load`` result) into place.

        Shapes must match. With ``strict``, missing or unexpected names are an error that
        lists them; otherwise they are returned. Values are copied onto the active backend in
        each target's dtype.
        """
        targets = {}
        for mname, m in self._all_modules_with_names():
            skip = m.__dict__.get("_non_persistent", ())
            for k, p in m._parameters.items():
                if p is not None:
                    targets[f"{mname}.{k}" if mname else k] = (m, "_parameters", k)
            for k, b in m._buffers.items():
                if k not in skip:
                    targets[f"{mname}.{k}" if mname else k] = (m, "_buffers", k)
        keys = list(state.keys())
        missing = [k for k in targets if k not in state]
        unexpected = [k for k in keys if k not in targets]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict for {type(self).__name__}: missing keys {missing}, "
                           f"unexpected keys {unexpected}")
        def current(m, store, k):
            v = getattr(m, store)[k]
            return v.data if (store == "_parameters" and v is not None) else v

        bad = []
        for name, (m, store, k) in targets.items():
            cur = current(m, store, k)
            if name in state and cur is not None and tuple(state[name].shape) != tuple(cur.shape):
                bad.append(f"{name}: checkpoint {tuple(state[name].shape)} vs model "
                           f"{tuple(cur.shape)}")
        if bad:
            raise ValueError("load_state_dict: shape mismatch for " + "; ".join(bad))
        for name, (m, store, k) in targets.items():
            if name not in state:
                continue
            value = state[name]
            value = value.data if isinstance(value, Tensor) else value
            cur = current(m, store, k)
            new = backend.copy_to_active(value, dtype=None if cur is None else cur.dtype)
            if store == "_parameters":
                m._parameters[k].data = new
            else:
                m._buffers[k] = new
        return LoadResult(missing, unexpected)

    def to(self, backend_name: str | None = None, dtype=None):
        """Move every parameter and buffer to ``backend_name`` ('numpy'/'cupy'; default: the
        active backend), casting floating arrays to ``dtype`` when given."""
        def move(a):
            want = dtype if (dtype is not None and a.dtype.kind == "f") else a.dtype
            return backend.copy_to_active(a, dtype=want)

        def run():
            for m in self.modules():
                for k, p in m._parameters.items():
                    if p is not None:
                        p.data = move(p.data)
                        if p.grad is not None:
                            p.grad = Tensor(move(p.grad.data))
                for k, b in m._buffers.items():
                    if b is not None:
                        m._buffers[k] = move(b)

        if backend_name is None or backend_name == backend.name():
            run()
        else:
            with backend.use_backend(backend_name):
                run()
        return self

    def to_backend(self):
        """Move every array to the active backend."""
        return self.to()

    def double(self):
        return self.to(dtype=xp.float64)

    def float(self):
        return self.to(dtype=xp.float32)

    # --- calling -----------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for k, m in self.named_children():
            child = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({k}): {child}")
        return lines[0] + ")" if len(lines) == 1 else "\n".join(lines) + "\n)"


def _buffer_array(value):
    """Buffers hold plain arrays: a Tensor gives its data, a number a 0-d array."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        return value.data
    if backend.is_array(value):
        return value
    return xp.asarray(value)


class Identity(Module):
    def forward(self, x, *args, **kwargs):
        return x


class Sequential(Module):
    """Modules applied in order: ``Sequential(a, b, c)(x) == c(b(a(x)))``."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (dict, OrderedDict)):
            for k, m in modules[0].items():
                self.add_module(str(k), m)
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, i):
        mods = list(self._modules.values())
        if isinstance(i, slice):
            return Sequential(*mods[i])
        return mods[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        self.add_module(str(len(self._modules)), module)
        return self


class ModuleList(Module):
    """A list of modules whose parameters are registered (named '0', '1', ...)."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        self.add_module(str(len(self._modules)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def __getitem__(self, i):
        mods = list(self._modules.values())
        if isinstance(i, slice):
            return ModuleList(mods[i])
        return mods[i]

    def __setitem__(self, i, module):
        key = list(self._modules.keys())[i]
        self.add_module(key, module)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class ModuleDict(Module):
    """A dict of modules whose parameters are registered under their keys."""

    def __init__(self, modules=None):
        super().__init__()
        for k, m in (modules or {}).items():
            self[k] = m

    def __getitem__(self, key):
        return self._modules[key]

    def __setitem__(self, key, module):
        self.add_module(str(key), module)

    def __contains__(self, key):
        return key in self._modules

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def keys(self):
        return self._modules.keys()

    def values(self):
        return self._modules.values()

    def items(self):
        return self._modules.items()
