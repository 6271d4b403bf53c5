"""The model registry: every model family registers its classes under a name.

``create(name, **cfg)`` builds one, ``names()`` lists them, ``get(name)`` returns the class.
Family packages are imported lazily the first time the registry is read, so importing
refgen stays cheap.
"""
from __future__ import annotations

import importlib

__all__ = ["register", "create", "names", "get", "FAMILIES"]

# Family packages (refgen.models.<family>) whose modules call @register on import.
FAMILIES = ["autoregressive", "flows", "vae", "gan", "energy", "score", "diffusion", "text_to_image",
            "baseline"]

_REGISTRY: dict[str, type] = {}
_loaded = False


def register(name: str):
    """Class decorator: make a model available as ``create(name)``."""
    def deco(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model name {name!r} registered twice")
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls
    return deco


def _load_families():
    global _loaded
    if _loaded:
        return
    _loaded = True
    for fam in FAMILIES:
        try:
            importlib.import_module(f"refgen.models.{fam}")
        except ModuleNotFoundError as e:
            if e.name != f"refgen.models.{fam}":  # a family that exists but is broken: say so
                raise


def names() -> list[str]:
    _load_families()
    return sorted(_REGISTRY)


def get(name: str) -> type:
    _load_families()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY)) or '(none)'}")
    return _REGISTRY[name]


def create(name: str, **cfg):
    """Build the model registered as ``name`` with keyword configuration ``cfg``."""
    return get(name)(**cfg)
