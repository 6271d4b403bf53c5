"""The teacher of a distilled model: a trained ``ddpm`` read from its run directory.

A run directory (``refgen train ddpm ... --out DIR``) holds config.json (the model's name,
the data's shape, the seed and the ``--set`` options) and checkpoint.npz; the teacher is
rebuilt from the first and given the second's weights (their EMA averages when saved),
through refgen.train.load_weights, the loading every run uses.
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["load_teacher", "clone"]


def clone(model):
    """A new DDPM of model's class and options, on the active backend, with its weights."""
    out = type(model)(model.data_shape, num_classes=model.num_classes, process=model.process,
                      network=model.network, sampling=model.sampling)
    out.load_state_dict(model.state_dict())
    return out


def load_teacher(teacher, data_shape, who: str, option: str = "teacher"):
    """A DDPM in eval mode: a copy of ``teacher`` when it is one, else the run directory it names.
    ``who`` names the student and ``option`` its hyperparameter in error messages; data_shape
    must be the teacher's."""
    from refgen import io
    from refgen.models.base import constructor_kwargs
    from refgen.models.diffusion.ddpm import DDPM
    from refgen.train import load_weights
    if teacher is None:
        raise ValueError(f"{who} {'distils' if option == 'teacher' else 'builds on'} a trained ddpm: "
                         f"pass its run directory, --set {option}=runs/<ddpm run>")
    if isinstance(teacher, DDPM):
        # a copy, built on the active backend: a student that updates its teacher (progressive
        # distillation's rounds) must not change the caller's model
        teacher = clone(teacher)
    else:
        d = Path(str(teacher))
        if not (d / "config.json").is_file() or not (d / "checkpoint.npz").is_file():
            raise ValueError(f"{option}={str(teacher)!r} is not a refgen run directory (it needs "
                             f"config.json and checkpoint.npz from 'refgen train ddpm')")
        cfg = json.loads((d / "config.json").read_text())
        if cfg.get("model") != "ddpm":
            raise ValueError(f"{option} {d} is a {cfg.get('model')!r} run; {who} needs a ddpm {option}")
        kwargs = constructor_kwargs(DDPM, data_shape=cfg["data_facts"]["shape"],
                                    num_classes=cfg.get("num_classes"), seed=cfg["train"]["seed"],
                                    overrides=cfg.get("model_kwargs") or {})
        model = DDPM(**kwargs)
        arrays, _ = io.load_checkpoint(d / "checkpoint.npz")
        load_weights(model, arrays, use_ema=True)
        teacher = model
    if tuple(int(s) for s in data_shape) != tuple(teacher.data_shape):
        raise ValueError(f"{who}: the data has shape {tuple(data_shape)} but the {option} was "
                         f"trained on {tuple(teacher.data_shape)}")
    teacher.eval()
    return teacher
