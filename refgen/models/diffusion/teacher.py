"""The teacher of a distilled model: a trained ``ddpm`` read from its run directory.

A run directory (``refgen train ddpm ... --out DIR``) holds config.json (the model's name,
the data's shape, the seed and the ``--set`` options) and checkpoint.npz; the teacher is
rebuilt from the first and given the second's weights (their EMA averages when saved) by
refgen.runs.load_component, the loading every model built on a trained one uses.
"""
from __future__ import annotations

__all__ = ["load_teacher", "clone"]


def clone(model):
    """A new DDPM of model's class and options, on the active backend, with its weights."""
    out = type(model)(model.data_shape, num_classes=model.num_classes, process=model.process,
                      network=model.network, sampling=model.sampling)
    out.load_state_dict(model.state_dict())
    return out


def load_teacher(teacher, data_shape, who: str, option: str = "teacher"):
    """A DDPM in eval mode: a copy of ``teacher`` when it is one (a student that updates its
    teacher, as progressive distillation's rounds do, must not change the caller's model),
    else the run directory it names. ``who`` names the student and ``option`` its
    hyperparameter in error messages; data_shape must be the teacher's."""
    from refgen.runs import load_component
    return load_component(teacher, who=who, option=option, kinds="ddpm", data_shape=data_shape,
                          copy=clone)
