"""What every refgen model promises (the model contract of DESIGN.md).

A model is an ``nn.Module`` registered under a name, with

- ``loss(batch, rng)``: the scalar training objective, as the derivation writes it;
- ``sample(n, cond=None, *, rng)``: ``n`` samples in data space, an xp array;
- where the family has them: ``log_prob(x)`` (exact, nats per example), ``elbo(x)``,
  ``iwae(x, k)``, ``energy(x)``, ``score(x, t)``;
- ``train_step(batch, optimizers, rng)`` only where one backward and one step is not the
  algorithm (GAN alternation, EMA teachers, replay buffers).

``batch`` is a :class:`Batch`: ``x`` a Tensor of examples (B, *data_shape) and ``y`` an
integer xp array of labels (B,) or None.

Construction: ``__init__(self, data_shape, *, seed=0, <hyperparameters with defaults>)``;
conditional models also take ``num_classes`` and text models ``vocab_size``. The CLI passes
whichever of data_shape, num_classes, vocab_size and seed the constructor names (see
:func:`constructor_kwargs`), plus ``--set key=value`` hyperparameters. Initial weights come
from a NumPy generator seeded by ``seed`` (refgen.nn.init), so CPU and GPU start alike.

Class attributes the tools read (all optional):

- ``data_spec``: a :class:`DataSpec`, checked by :func:`check_data` before training;
- ``default_train = dict(steps=..., batch_size=..., lr=..., ema=...)``: what ``refgen train``
  uses for flags that are not given;
- ``demo = True``: ``refgen demo`` trains this model on the toy 2D data.

Randomness. A model keeps no generator: every method that draws noise takes it as ``rng``, a
backend generator (``refgen.backend.default_rng``). In training that is the loop's generator,
created from the run's seed, handed to ``loss`` / ``train_step`` at every step and saved in
every checkpoint: that is what makes a resumed run on NumPy end bit-for-bit equal to an
uninterrupted one. ``sample`` and the estimators that sample (a VAE's ``elbo`` and ``iwae``, an
ODE likelihood's probes) take ``rng`` as a required keyword; the evaluation hands them one
seeded generator, so two evaluations of a model agree.

Several optimizers. A model with ``train_step`` may define ``param_groups() -> dict`` mapping
a name to a list of parameters, or to ``dict(params=[...], lr=..., optimizer='rmsprop',
options=dict(...))`` for a group with its own learning rate, optimizer or optimizer keywords
(e.g. a GAN's generator and discriminator, WGAN's RMSprop, WGAN-GP's Adam betas); the loop builds one optimizer per
group and passes ``{name: optimizer}`` to ``train_step``. Without it the dict holds a single
optimizer, ``'model'``, over all parameters. ``train_step`` returns a dict of floats that
includes ``'loss'``.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import NamedTuple

__all__ = ["Batch", "DataSpec", "check_data", "constructor_kwargs", "hyperparameters"]


class Batch(NamedTuple):
    x: object          # Tensor (B, *shape)
    y: object = None   # xp int array (B,) or None


class DataSpec(NamedTuple):
    """What a model accepts: data kinds ('continuous', 'binary', 'categorical'), the
    number of dimensions of one example (1 for vectors such as toy 2D data, 3 for images),
    and, for models whose math fixes it, the interval images must lie in: (-1, 1) for
    diffusion (its discretized decoder's bins), (0, 1) for the flows (their logit layer)."""
    kinds: tuple
    ndims: tuple
    image_range: tuple | None = None


def check_data(model_cls, dataset):
    """Raise ValueError, in one line, when ``dataset`` does not fit ``model_cls``."""
    spec = getattr(model_cls, "data_spec", None)
    if spec is None:
        return
    name = getattr(model_cls, "registry_name", model_cls.__name__)
    if dataset.kind not in spec.kinds:
        raise ValueError(f"model {name!r} takes {'/'.join(spec.kinds)} data, but dataset "
                         f"{dataset.name!r} is {dataset.kind}")
    if len(dataset.shape) not in spec.ndims:
        want = " or ".join({1: "vectors", 2: "sequences/matrices", 3: "images (C, H, W)"}.get(d, f"{d}-d")
                           for d in spec.ndims)
        raise ValueError(f"model {name!r} takes {want}, but dataset {dataset.name!r} has "
                         f"examples of shape {tuple(dataset.shape)}")
    have = getattr(dataset, "value_range", None)
    if (spec.image_range is not None and len(dataset.shape) == 3 and have is not None
            and tuple(float(v) for v in have) != tuple(float(v) for v in spec.image_range)):
        lo, hi = spec.image_range
        raise ValueError(f"model {name!r} takes images in [{lo:g}, {hi:g}], but dataset "
                         f"{dataset.name!r} is in [{have[0]:g}, {have[1]:g}]")


_DATA_ARGS = ("data_shape", "num_classes", "vocab_size", "seed")


def hyperparameters(model_cls) -> dict:
    """name -> default of the constructor's keyword hyperparameters (data arguments left out).

    A keyword whose default is a dataclass (a group of options, such as DDPM's) stands for its
    fields, each a hyperparameter of its own name (the constructor then takes them by name)."""
    sig = inspect.signature(model_cls.__init__)
    out = {}
    for k, p in sig.parameters.items():
        if k == "self" or k in _DATA_ARGS or p.kind not in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
            continue
        if dataclasses.is_dataclass(p.default):
            out.update({f.name: getattr(p.default, f.name) for f in dataclasses.fields(p.default)})
        else:
            out[k] = p.default
    return out


def constructor_kwargs(model_cls, *, data_shape, num_classes=None, vocab_size=None, seed=0,
                       overrides=None) -> dict:
    """The keyword arguments to build ``model_cls`` for a data set, plus ``overrides``.

    Passes whichever of data_shape, num_classes, vocab_size and seed the constructor accepts;
    raises ValueError, in one line, for an override the constructor does not take.
    """
    params = inspect.signature(model_cls.__init__).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    given = {"data_shape": tuple(int(d) for d in data_shape), "num_classes": num_classes,
             "vocab_size": vocab_size, "seed": int(seed)}
    kwargs = {k: v for k, v in given.items() if k in params and v is not None}
    name = getattr(model_cls, "registry_name", model_cls.__name__)
    for k, v in (overrides or {}).items():
        if k in _DATA_ARGS:
            raise ValueError(f"{k!r} is set from the data set and the run's flags, not with --set")
        if k not in params and not takes_any:
            accepted = ", ".join(f"{h}={d!r}" for h, d in hyperparameters(model_cls).items())
            raise ValueError(f"model {name!r} has no hyperparameter {k!r}; accepted: "
                             f"{accepted or '(none)'}")
        kwargs[k] = v
    return kwargs
