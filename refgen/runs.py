"""Run directories: what ``refgen train`` writes and ``refgen sample`` / ``eval`` read.

    DIR/config.json      the model, data and every training setting (refgen.train.TrainConfig)
    DIR/checkpoint.npz   weights, optimizer state, generators (refgen.train)
    DIR/log.jsonl, DIR/metrics.json, DIR/samples.png
    DIR/.lock            present while a run writes DIR (holds the writer's process id)

``load_run(DIR)`` rebuilds the trained model; ``load_component`` gives a model the trained
model it builds on (a teacher, a first stage, a dVAE, a CLIP); ``build_model`` and
``parse_sets`` turn a model name and ``--set key=value`` pairs into a model. Bad input raises
UsageError, one line.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from pathlib import Path

from refgen import io, models
from refgen.metrics.evaluation import evaluate_after_training
from refgen.models.base import constructor_kwargs, hyperparameters
from refgen.train import CHECKPOINT, TrainConfig, load_weights, train

__all__ = ["UsageError", "parse_sets", "build_model", "load_run", "load_component", "run_dir", "read_json",
           "write_json", "default_out", "locked", "lock_holder", "LOCK", "check_writable", "run_config",
           "run_training", "train_settings", "TRAIN_DEFAULTS"]

LOCK = ".lock"
TRAIN_DEFAULTS = dict(steps=2000, batch_size=128, lr=1e-3, ema=None, optimizer="adam",
                      schedule="constant", warmup=0, grad_clip=None, seed=0, eval_every=0,
                      log_every=None, ckpt_every=None)
_SETTINGS = tuple(TRAIN_DEFAULTS)


class UsageError(Exception):
    """Bad input: reported as one line on stderr with exit status 2."""


def parse_sets(pairs, model_cls=None) -> dict:
    """--set key=value ...: values are JSON literals (3, 0.5, true, [1, 2]) or else strings.
    With ``model_cls``, a value for an integer hyperparameter must be an integer (2.5 is
    refused, not truncated)."""
    out = {}
    for pair in pairs or ():
        key, eq, text = pair.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise UsageError(f"--set {pair!r} is not key=value (e.g. --set components=16 "
                             "--set hidden='[64, 64]')")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    defaults = hyperparameters(model_cls) if model_cls is not None else {}
    for key, value in out.items():
        default = defaults.get(key)
        if (isinstance(default, int) and not isinstance(default, bool)
                and not (isinstance(value, int) and not isinstance(value, bool))):
            raise UsageError(f"--set {key}={value!r}: {key} is an integer (default {default})")
    return out


def _model_class(name):
    try:
        return models.get(name)
    except ValueError as e:
        raise UsageError(str(e)) from None


def build_model(name: str, *, data_shape, num_classes=None, vocab_size=None, seed=0,
                overrides=None):
    """Construct registered model ``name`` for data of ``data_shape`` with --set ``overrides``."""
    cls = _model_class(name)
    try:
        kwargs = constructor_kwargs(cls, data_shape=data_shape, num_classes=num_classes,
                                    vocab_size=vocab_size, seed=seed, overrides=overrides)
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise UsageError(f"cannot build model {name!r}: {e}".replace("\n", " ")) from None


def read_json(path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None


def write_json(path, obj):
    with io.atomic_write(path) as f:
        f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def default_out(model: str, data_name: str) -> Path:
    return Path("runs") / re.sub(r"[^A-Za-z0-9._-]+", "_", f"{model}-{data_name}")


def run_dir(path) -> Path:
    """``path`` as a run directory, or UsageError saying what it lacks."""
    d = Path(path)
    if not d.is_dir():
        raise UsageError(f"run directory {str(d)!r} does not exist (make one with refgen train)")
    for f in ("config.json", CHECKPOINT):
        if not (d / f).is_file():
            raise UsageError(f"{d} is not a refgen run directory: it has no {f}")
    return d


def load_checkpoint(path) -> tuple[dict, dict]:
    """io.load_checkpoint, with an unreadable file as a UsageError."""
    try:
        return io.load_checkpoint(path)
    except (ValueError, OSError) as e:
        raise UsageError(f"cannot load {path}: {e}".replace("\n", " ")) from None


def load_run(path, use_ema=True):
    """(model with the checkpoint's weights, EMA averages when present and ``use_ema``,
    config dict) from a run directory."""
    d = run_dir(path)
    cfg = read_json(d / "config.json")
    try:
        model = build_model(cfg["model"], data_shape=cfg["data_facts"]["shape"],
                            num_classes=cfg.get("num_classes"), vocab_size=cfg.get("vocab_size"),
                            seed=cfg["train"]["seed"], overrides=cfg.get("model_kwargs"))
    except (KeyError, TypeError) as e:
        raise UsageError(f"{d}/config.json lacks the entry {e}") from None
    arrays, _ = load_checkpoint(d / CHECKPOINT)
    try:
        load_weights(model, arrays, use_ema)
    except (ValueError, KeyError) as e:
        raise UsageError(f"cannot load {d / CHECKPOINT}: {e}".replace("\n", " ")) from None
    model.eval()
    return model, cfg


def load_component(spec, *, who: str, option: str, kinds, data_shape=None, copy=None, hint=""):
    """The trained model that model ``who`` builds on through its option ``option`` (a
    teacher, a ControlNet's base, a first stage, a dVAE, a CLIP), in eval mode: ``spec``
    itself when it is a model of the class of one of ``kinds`` or of a class built on it
    (``copy(spec)`` when a copy is asked for: one on the active backend that the caller may
    change), else the model of the run directory ``spec`` names, which must be of one of
    ``kinds`` by name, with its EMA weights. ``data_shape``, when given, must be
    the component's. Anything else is a ValueError of one line naming ``option`` (and, for a
    run directory that cannot be read, ending with ``hint``: how to make one)."""
    from refgen.nn import Module
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    wanted = " or ".join(kinds)
    if spec is None:
        raise ValueError(f"{who} builds on a trained {wanted}: pass its run directory, "
                         f"--set {option}=runs/<{wanted} run>")
    if isinstance(spec, Module):  # a model of a kind's class, or of a class built on it
        if not isinstance(spec, tuple(models.get(k) for k in kinds)):
            kind = getattr(spec, "registry_name", type(spec).__name__)
            raise ValueError(f"{option} is a {kind!r} model; {who} needs a {wanted}")
        model = spec if copy is None else copy(spec)
    elif isinstance(spec, (str, os.PathLike)):
        try:
            kind = read_json(run_dir(spec) / "config.json").get("model")
            if kind not in kinds:
                raise ValueError(f"{option} {str(spec)!r} is a {kind!r} run; {who} needs a {wanted} run")
            model, _ = load_run(spec)
        except UsageError as e:
            raise ValueError(f"{option}: {e}" + (f"; {hint}" if hint else "")) from None
    else:
        raise ValueError(f"{option} must be a {wanted} run directory or a {wanted} model, "
                         f"got {type(spec).__name__}")
    if data_shape is not None and tuple(int(s) for s in data_shape) != tuple(model.data_shape):
        raise ValueError(f"{who}: the data has shape {tuple(int(s) for s in data_shape)} but the "
                         f"{option} was trained on {tuple(model.data_shape)}")
    return model.eval()


def check_writable(d: Path):
    """UsageError unless files can be made in ``d`` (or in the directory that will hold it)."""
    d = Path(d)
    target = d if d.exists() else next((p for p in d.parents if p.exists()), Path("."))
    if not os.access(target, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to {target}: permission denied")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def lock_holder(d: Path) -> int | None:
    """The id of the living process holding DIR/.lock, else None."""
    try:
        pid = int((Path(d) / LOCK).read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    return pid if pid and _alive(pid) else None


@contextlib.contextmanager
def locked(d: Path):
    """Hold DIR/.lock (this process's id) while writing run directory ``d``; UsageError when
    another living process holds it. A lock left by a process that died is taken over."""
    path = Path(d) / LOCK
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                pid = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                raise UsageError(f"{d} is in use by another refgen run (process {pid}); wait for "
                                 f"it to end, or delete {path} if that process is not refgen") from None
            if pid == os.getpid():
                raise UsageError(f"{d} is already being written by this process") from None
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # a stale lock
    else:
        raise UsageError(f"cannot lock {d}: {path} keeps reappearing")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def os_error_message(e: OSError) -> str | None:
    """One line for an OSError a user can act on (permissions, a full disk), else None."""
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device{where}; free some space and run again"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) or isinstance(e, PermissionError):
        return f"cannot write{where}: {e.strerror or 'permission denied'}"
    return None


def run_config(model: str, data_name: str, train_ds, *, model_kwargs, train: dict, data_dir=None,
               command: str = "") -> dict:
    """config.json of a run: the model and its --set values, the data and what sampling needs
    to know of it, the training settings, the backend and the command that made it."""
    from refgen import backend
    from refgen.train import data_facts
    return {"model": model, "data": data_name, "model_kwargs": dict(model_kwargs or {}),
            "data_dir": str(data_dir) if data_dir else None, "data_facts": data_facts(train_ds),
            "num_classes": train_ds.num_classes,
            "vocab_size": None if train_ds.vocab is None else len(train_ds.vocab),
            "vocab": train_ds.vocab, "train": dict(train), "backend": backend.name(),
            "command": command}


# ----------------------------------------------------------------------------- training a run
def train_settings(flags: dict, cls, old=None, ckpt_step=None) -> dict:
    """The settings of a run: ``flags`` given (not None), else the run's config (on --resume:
    all of it, the length too), else the model's default_train, else TRAIN_DEFAULTS. On
    --resume only --steps may differ, and must pass the checkpoint's step."""
    defaults = dict(TRAIN_DEFAULTS, **getattr(cls, "default_train", {}))
    out = {}
    for key in _SETTINGS:
        given = flags.get(key)
        if old is not None and key in old:
            if given is not None and given != old[key] and key != "steps":
                raise UsageError(f"--{key.replace('_', '-')} {given} differs from the run's "
                                 f"config.json ({old[key]}); a resumed run keeps its settings "
                                 "(only --steps may change)")
            out[key] = given if given is not None else old[key]
        else:
            out[key] = given if given is not None else defaults.get(key)
    if ckpt_step is not None and out["steps"] <= ckpt_step:
        if flags.get("steps") is None:
            raise UsageError(f"the run is complete (its checkpoint is at step {ckpt_step} of "
                             f"{out['steps']}); pass --steps N with N > {ckpt_step} to continue it")
        raise UsageError(f"--steps {out['steps']} is not past the checkpoint's step {ckpt_step}; "
                         f"pass --steps N with N > {ckpt_step}")
    out["log_every"] = out["log_every"] or max(1, min(100, out["steps"] // 10))
    out["ckpt_every"] = out["ckpt_every"] or max(1, min(1000, out["steps"] // 5))
    return out


def _train_config(st: dict) -> TrainConfig:
    keys = {k: v for k, v in st.items() if k != "ema"}
    return TrainConfig(ema_decay=st["ema"], **keys)


def _eval_fn(enabled):
    if not enabled:
        return None
    return lambda model, test, progress=None: evaluate_after_training(model, test, progress)


def _clean_after_early_failure(out: Path, created: bool, wrote: tuple):
    """A run that failed before its first checkpoint leaves nothing behind: the directory
    when this run made it, else the files it wrote."""
    if created:
        shutil.rmtree(out, ignore_errors=True)
    else:
        for name in wrote:
            with contextlib.suppress(OSError):
                (out / name).unlink()


def run_training(model, train_ds, test_ds, *, out: Path, st: dict, config: dict, resume: bool,
                 evaluate_at_end=True, quiet=False, samples=True) -> dict:
    """train() into run directory ``out`` (locked while it writes), leaving no directory
    behind when it fails before its first checkpoint. Returns the metrics."""
    check_writable(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with locked(out):
            return train(model, train_ds, out_dir=out, settings=_train_config(st), resume=resume,
                         test_dataset=test_ds, eval_fn=_eval_fn(evaluate_at_end), config=config,
                         progress=not quiet, samples=samples)
    except BaseException as e:
        if not resume and not (out / CHECKPOINT).exists():
            _clean_after_early_failure(out, created, ("config.json", "log.jsonl", LOCK))
            if isinstance(e, (ValueError, TypeError)):
                # a model/data mismatch its data_spec cannot see (a Bernoulli decoder on
                # real-valued data) fails in the very first step
                raise UsageError(f"model {config['model']!r} cannot train on {config['data']!r}: "
                                 f"{e}".replace("\n", " ")) from None
        raise
