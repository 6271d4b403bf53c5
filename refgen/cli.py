"""The command line: ``refgen`` (or ``python -m refgen``).

    refgen list                                   models (and the data each accepts), data, metrics
    refgen train MODEL --data DATA [...]          a run directory under runs/MODEL-DATA
    refgen sample DIR [-n N] [--out FILE.png]     samples from a run's checkpoint
    refgen eval DIR                               recompute DIR/metrics.json
    refgen demo [--out DIR]                       the 2D demo models on toy data, CPU, minutes

Bad input (an unknown name, data a model cannot take, a missing or corrupt run, a malformed
--set, a directory that cannot be written, a full disk) gets one line on stderr,
``refgen: error: ...``, and exit status 2; everything is checked before any file is written,
so nothing already on disk is touched. A run whose loss turns NaN exits with status 1 and
keeps its last good checkpoint. Run directories are refgen.runs; the loop is refgen.train.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from refgen import backend, data, io, models
from refgen.data.controls import NAMES as CONTROL_DATA
from refgen.data.datasets import check_data_dir, describe
from refgen.metrics.evaluation import AFTER_TRAINING, METRIC_NAMES, counts_used, evaluate
from refgen.models.base import check_data, hyperparameters
from refgen.progress import Stage
from refgen.runs import (TRAIN_DEFAULTS, LOCK, UsageError, build_model, check_writable, default_out,
                         load_checkpoint, load_run, lock_holder, locked, os_error_message, parse_sets,
                         read_json, run_config, run_dir, run_training, train_settings, write_json)
from refgen.train import (CHECKPOINT, OPTIMIZERS, SCHEDULES, TrainingDiverged, load_run_state,
                          write_samples)

__all__ = ["main", "build_parser", "METRIC_NAMES"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise UsageError(f"{message} (see '{self.prog} --help')")


# ----------------------------------------------------------------------------- checks
def _model_class(name):
    try:
        return models.get(name)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _load_data(name, split, data_dir=None, seed=0):
    try:
        check_data_dir(name, data_dir)
        return data.load(name, split, data_dir=data_dir, seed=seed)
    except (ValueError, OSError) as e:
        raise UsageError(str(e).replace("\n", " ")) from None


def _check_fit(cls, name, kind, shape):
    try:
        check_data(cls, argparse.Namespace(name=name, kind=kind, shape=shape,
                                           value_range=data.datasets.value_range(name)))
    except ValueError as e:
        raise UsageError(str(e)) from None


def _accepted_data(cls) -> list[str]:
    """The data set names whose kind and shape ``cls.data_spec`` accepts."""
    ok = []
    for name in data.names():
        kind, shape = describe(name.replace("PATH", "x"))
        try:
            check_data(cls, argparse.Namespace(name=name, kind=kind, shape=shape,
                                               value_range=data.datasets.value_range(name)))
            ok.append(name)
        except ValueError:
            pass
    return ok


def _vocab_size(ds):
    return None if ds.vocab is None else len(ds.vocab)


# ----------------------------------------------------------------------------- list
def cmd_list(args):
    print("models (name: data kinds, example dims; methods; data sets it accepts):")
    for name in models.names():
        cls = models.get(name)
        spec = getattr(cls, "data_spec", None)
        kinds = "/".join(spec.kinds) if spec else "any"
        dims = "/".join(str(d) for d in spec.ndims) + "-d" if spec else ""
        methods = [m for m in ("log_prob", "elbo", "iwae", "energy", "score", "sample")
                   if hasattr(cls, m)]
        hp = ", ".join(f"{k}={v!r}" for k, v in hyperparameters(cls).items())
        demo = "  [demo]" if getattr(cls, "demo", False) else ""
        print(f"  {name:<16} {kinds} {dims}; {', '.join(methods)}{demo}")
        accepted = _accepted_data(cls)
        toys = [n for n in accepted if n in data.toy2d.names()]
        shown = (["2D toys"] if toys and len(toys) == len(data.toy2d.names()) else toys)
        shown += [n for n in accepted if n not in toys]
        labels = "num_classes" in inspect.signature(cls.__init__).parameters
        print(f"  {'':<16} data: {', '.join(shown) or '(none)'}"
              + ("; uses the labels of labelled data (MNIST)" if labels else ""))
        note = getattr(cls, "data_note", None)
        if note:
            print(f"  {'':<16} {note}")
        if hp:
            print(f"  {'':<16} --set {hp}")
    print("datasets:")
    for name in data.names():
        kind, shape = describe(name.replace("PATH", "x"))
        what = "2D points" if shape == (2,) else ("text windows" if kind == "categorical"
                                                  else "x".join(map(str, shape)) + " images")
        exact = ", exact density" if name in data.toy2d.DENSITIES else ""
        labelled = ", labelled (10 classes)" if name.startswith("mnist") else ""
        if name in CONTROL_DATA:
            labelled = ", with a control image per example (y)"
        print(f"  {name:<18} {kind}, {what}{exact}{labelled}")
    print("metrics (keys of metrics.json; NLLs are positive nats, elbo_nats and iwae_nats are "
          "lower bounds on log p(x)):")
    print("  " + ", ".join(METRIC_NAMES) + ", steps, wall_s, backend, loss")
    return 0


# ----------------------------------------------------------------------------- train
def _check_not_busy(out: Path):
    """Refuse a directory another run is writing, or one a run left before its first
    checkpoint (killed), saying what to do."""
    if not out.is_dir():
        return
    holder = lock_holder(out)
    if holder is not None:
        raise UsageError(f"{out} is in use by another refgen run (process {holder}); wait for it "
                         "to end, or choose another --out")
    if not (out / CHECKPOINT).exists() and any((out / f).exists()
                                               for f in ("config.json", "log.jsonl", LOCK)):
        raise UsageError(f"{out} holds a run that stopped before its first checkpoint, so there is "
                         f"nothing to resume; delete {out} and train again")


def _resume_point(args, out: Path, sets: dict):
    """(config.json, its --set values, checkpoint arrays, checkpoint step) of the run to
    resume, each checked against the command line."""
    d = run_dir(out)
    old = read_json(d / "config.json")
    for key, given in (("model", args.model), ("data", args.data)):
        if old.get(key) != given:
            raise UsageError(f"{out} was trained as {key} {old.get(key)!r}, not {given!r}; "
                             "resume it with the same model and --data")
    if sets and sets != old.get("model_kwargs", {}):
        raise UsageError(f"--set {sets} differs from the run's model settings "
                         f"{old.get('model_kwargs', {})}; a resumed run keeps them")
    arrays, meta = load_checkpoint(d / CHECKPOINT)
    if not isinstance(meta.get("step"), int) or "batcher" not in meta:
        raise UsageError(f"cannot load {d / CHECKPOINT}: its meta lacks the step or batcher state")
    return old, old.get("model_kwargs", {}), arrays, meta["step"]


def cmd_train(args):
    cls = _model_class(args.model)
    sets = parse_sets(args.set, cls)
    out = Path(args.out) if args.out else default_out(args.model, args.data)
    _check_not_busy(out)
    old, ckpt_step, arrays = None, None, None
    if args.resume:
        old, sets, arrays, ckpt_step = _resume_point(args, out, sets)
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} already exists; pass --resume to continue that run, or --out "
                         "to choose another directory")
    flags = {key: getattr(args, key) for key in TRAIN_DEFAULTS}
    st = train_settings(flags, cls, old["train"] if old else None, ckpt_step)
    kind, shape = describe(args.data)
    if kind is not None:
        _check_fit(cls, args.data, kind, shape)  # before reading (or downloading) anything
    data_dir = args.data_dir or (old or {}).get("data_dir")
    train_ds = _load_data(args.data, "train", data_dir, st["seed"])
    _check_fit(cls, args.data, train_ds.kind, train_ds.shape)
    if st["batch_size"] > len(train_ds):
        raise UsageError(f"--batch-size {st['batch_size']} exceeds the {len(train_ds)} training "
                         f"examples of {args.data!r}")
    test_ds = _load_data(args.data, "test", data_dir, st["seed"])
    model = build_model(args.model, data_shape=train_ds.shape, num_classes=train_ds.num_classes,
                        vocab_size=_vocab_size(train_ds), seed=st["seed"], overrides=sets)
    if old is not None:
        try:  # the checkpoint must fit the model before anything is written
            load_run_state(model, arrays)
        except (KeyError, ValueError) as e:
            raise UsageError(f"cannot load {out / CHECKPOINT}: {e}".replace("\n", " ")) from None
        config = dict(old, train=st)
    else:
        config = run_config(args.model, args.data, train_ds, model_kwargs=sets, train=st,
                            data_dir=data_dir, command="refgen " + " ".join(args.argv))
    print(f"refgen: training {args.model} on {args.data} for {st['steps']} steps "
          f"({backend.name()}) -> {out}", file=sys.stderr)
    if not args.no_eval and train_ds.kind != "categorical":
        counts = AFTER_TRAINING["images" if len(train_ds.shape) == 3 else "other"]
        print(f"refgen: then an evaluation on up to {counts['max_test']} test examples and "
              f"{counts['n_samples']} samples (--no-eval skips it; refgen eval DIR runs the full "
              "one)", file=sys.stderr)
    metrics = run_training(model, train_ds, test_ds, out=out, st=st, config=config,
                           resume=args.resume, evaluate_at_end=not args.no_eval, quiet=args.quiet)
    print(json.dumps(metrics, sort_keys=True))
    print(f"refgen: wrote {out}/ (config.json, checkpoint.npz, log.jsonl, metrics.json, samples.png)",
          file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- sample, eval
def _check_out_file(path: Path, force: bool, what: str):
    if path.is_dir():
        raise UsageError(f"--out {path} is a directory; give a file name such as {what}")
    png = what.endswith(".png")
    if path.exists() and not force and not (png and io.is_refgen_png(path)):
        raise UsageError(f"--out {path} exists{' and is not a PNG refgen wrote' if png else ''}; "
                         "pass --force to overwrite it")
    check_writable(path.parent if str(path.parent) else Path("."))


def sample_options(model, steps=None, sampler=None, truncation=None, drs=None) -> dict:
    """The keywords of ``model.sample`` that ``--steps``, ``--sampler``, ``--truncation`` and
    ``--drs`` set; a model whose ``sample`` has no such keyword is refused in one line."""
    params = inspect.signature(model.sample).parameters
    any_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    name = getattr(model, "registry_name", type(model).__name__)
    options = {}
    for flag, key, value in (("--steps", "steps", steps), ("--sampler", "sampler", sampler),
                             ("--truncation", "truncation", truncation), ("--drs", "drs", drs)):
        if value is None:
            continue
        if key not in params and not any_kw:
            takes = [f"--{k}" for k in ("steps", "sampler", "truncation", "drs") if k in params]
            raise UsageError(f"model {name!r} takes no {flag} when sampling"
                             + (f"; it takes {', '.join(takes)}" if takes else ""))
        options[key] = value
    return options


def prompt_ids(model, prompt: str):
    """The caption ids of ``--prompt`` for a text-to-image model; one line for a model that
    takes no prompt and for a prompt its tokenizer refuses (empty, unknown words, too long)."""
    encode = getattr(model, "encode_prompt", None)
    if encode is None:
        raise UsageError(f"model {getattr(model, 'registry_name', type(model).__name__)!r} takes "
                         "no --prompt; text-to-image models (dalle) do")
    try:
        return encode(prompt)
    except ValueError as e:
        raise UsageError(f"--prompt {prompt!r}: {e}") from None


def cmd_sample(args):
    d = run_dir(args.dir)
    model, cfg = load_run(d)
    facts = cfg["data_facts"]
    options = sample_options(model, args.steps, args.sampler, args.truncation, args.drs)
    if hasattr(model, "eval_cond"):  # super-resolution: upsample the test images' low-res versions
        test = _load_data(cfg["data"], "test", cfg.get("data_dir"), cfg["train"]["seed"]).x
        options["cond"] = model.eval_cond(backend.asarray(test[np.arange(args.n or 64) % len(test)]))
    if args.prompt is not None:  # the caption: the condition, or beside the low-res images
        options["caption" if "cond" in options else "cond"] = prompt_ids(model, args.prompt)
    text = facts["kind"] == "categorical"
    if args.out is not None:
        _check_out_file(Path(args.out), args.force, "samples.txt" if text else "samples.png")
    with Stage(f"drawing {args.n or ('4 texts' if text else 'samples')}", not args.quiet) as stage:
        if text:
            ids = backend.to_numpy(model.sample(args.n or 4, rng=backend.default_rng(args.seed),
                                                **options))
            vocab = cfg.get("vocab") or []
            out_text = "\n---\n".join("".join(vocab[int(i)] for i in row)
                                      for row in ids.reshape(len(ids), -1))
        else:
            out = Path(args.out) if args.out else d / f"samples-seed{args.seed}.png"
            ref = None
            if tuple(facts["shape"]) == (2,):
                ref = _load_data(cfg["data"], "test", cfg.get("data_dir"), cfg["train"]["seed"]).x[:2000]
            try:
                written = write_samples(model, out, n=args.n, seed=args.seed, reference=ref,
                                        stage=stage, options=options, caption=args.prompt, **facts)
            except ValueError as e:  # a sampler name or step count the model refuses
                raise UsageError(str(e)) from None
            if written is None:
                raise UsageError(f"no picture for data of shape {tuple(facts['shape'])}")
    if text:
        if args.out:
            with io.atomic_write(args.out) as f:
                f.write(out_text.encode())
        print(out_text)
    else:
        print(out)
    return 0


def cmd_eval(args):
    d = run_dir(args.dir)
    model, cfg = load_run(d)
    test_ds = _load_data(cfg["data"], "test", args.data_dir or cfg.get("data_dir"),
                         cfg["train"]["seed"])
    check_writable(d)
    metrics = {}
    if (d / "metrics.json").is_file():
        with contextlib.suppress(UsageError):
            metrics = read_json(d / "metrics.json")
    with locked(d):
        t0 = time.perf_counter()
        with Stage("evaluating on the test set", not args.quiet) as stage:
            new = evaluate(model, test_ds, run_dir=d, progress=stage.update)
        for key in ("eval_n_test", "eval_n_samples", "eval_iwae_k"):  # the training-end counts
            metrics.pop(key, None)
        metrics.update(new, **counts_used(model, test_ds, new))
        metrics.setdefault("backend", backend.name())
        metrics["eval_wall_s"] = round(time.perf_counter() - t0, 3)
        write_json(d / "metrics.json", metrics)
    print(json.dumps(metrics, sort_keys=True))
    return 0


def cmd_demo(args):
    from refgen.demo import run_demo
    return run_demo(args)


# ----------------------------------------------------------------------------- parser
def _int_at_least(lo: int, what: str):
    """An argparse type: an integer >= lo, refused in one line naming ``what`` it must be."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return v
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonneg_int = _int_at_least(0, "an integer >= 0")


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return v


def _finite_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return v


def _ema_decay(text):
    v = _positive_float(text)
    if not v < 1:
        raise argparse.ArgumentTypeError(f"{text}: an EMA decay lies in (0, 1), e.g. 0.999")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="refgen", description="Generative models from the derivations, in NumPy.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("list", help="models, data sets and metric names",
                       description="List registered models (and the data each accepts), data "
                                   "sets and metric names.")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("train", help="train a model, writing a run directory",
                       description="Train MODEL on DATA. Flags left out come from the model's "
                                   "defaults (or, with --resume, from the run's config.json).")
    s.add_argument("model", metavar="MODEL", help="a model name (see refgen list)")
    s.add_argument("--data", required=True, metavar="DATA", help="a data set name (see refgen list)")
    s.add_argument("--steps", type=_positive_int, help="total optimizer steps (with --resume: "
                                                       "default the run's own)")
    s.add_argument("--batch-size", type=_positive_int)
    s.add_argument("--lr", type=_positive_float, help="learning rate")
    s.add_argument("--seed", type=_nonneg_int, help="seed of weights, batches and noise (default 0)")
    s.add_argument("--out", metavar="DIR", help="run directory (default runs/MODEL-DATA)")
    s.add_argument("--resume", action="store_true", help="continue DIR from its checkpoint.npz")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a model hyperparameter; VALUE is a JSON literal or a string (repeatable)")
    s.add_argument("--data-dir", metavar="D", help="where the MNIST files are (else REFGEN_DATA_DIR); "
                                                  "an error if D lacks them")
    s.add_argument("--ema", type=_ema_decay, metavar="DECAY", help="keep an EMA of the weights")
    s.add_argument("--eval-every", type=_nonneg_int, metavar="N", help="evaluate every N steps")
    s.add_argument("--no-eval", action="store_true",
                   help="skip the evaluation after the last step (refgen eval DIR runs it later)")
    s.add_argument("--optimizer", choices=OPTIMIZERS)
    s.add_argument("--schedule", choices=SCHEDULES)
    s.add_argument("--warmup", type=_nonneg_int, metavar="N", help="linear warmup steps")
    s.add_argument("--grad-clip", type=_positive_float, metavar="NORM")
    s.add_argument("--log-every", type=_positive_int, metavar="N")
    s.add_argument("--ckpt-every", type=_positive_int, metavar="N")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="draw samples from a trained run",
                       description="Rebuild the model of run DIR (EMA weights if it has them) "
                                   "and write a PNG of its samples.")
    s.add_argument("dir", metavar="DIR")
    s.add_argument("-n", type=_positive_int, help="number of samples (64 images, 2000 points)")
    s.add_argument("--out", metavar="FILE.png", help="default DIR/samples-seedS.png")
    s.add_argument("--force", action="store_true",
                   help="overwrite --out even when it is not a PNG refgen wrote")
    s.add_argument("--seed", type=_nonneg_int, default=0)
    s.add_argument("--steps", type=_positive_int, metavar="K",
                   help="sampling steps, for iterative samplers (diffusion, distilled, MCMC)")
    s.add_argument("--sampler", metavar="NAME", help="which sampler, where a model has several "
                   "(ddpm: ddpm, ddim, euler, heun; pixelcnn, gated-pixelcnn: cached, full)")
    s.add_argument("--truncation", type=_positive_float, metavar="TAU",
                   help="GANs: draw each latent component from N(0, 1) truncated to [-TAU, TAU] "
                        "(the truncation trick: fidelity for variety)")
    s.add_argument("--drs", type=_finite_float, metavar="GAMMA",
                   help="minimax GANs (gan, nsgan, cgan, infogan): keep each sample with the "
                        "discriminator's acceptance probability (discriminator rejection "
                        "sampling; GAMMA 0 is exact, below 0 keeps more)")
    s.add_argument("--prompt", metavar="TEXT", help="the caption to draw, for text-to-image models "
                   "(dalle); written above the grid")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    s.set_defaults(func=cmd_sample)

    s = sub.add_parser("eval", help="recompute a run's metrics.json",
                       description="Evaluate run DIR on its test split and update DIR/metrics.json.")
    s.add_argument("dir", metavar="DIR")
    s.add_argument("--data-dir", metavar="D")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    s.set_defaults(func=cmd_eval)

    from refgen.demo import DEMO_DATASETS
    s = sub.add_parser("demo", help="train the demo models on toy 2D data (CPU, minutes)",
                       description="Train every model marked demo on 2D toy data on the CPU and "
                                   "write one PNG comparing their samples with the data.")
    s.add_argument("--out", default="runs/demo", metavar="DIR")
    s.add_argument("--steps", type=_positive_int, help="steps per model (default: each model's)")
    s.add_argument("--data", metavar="A,B", help=f"toy data sets (default {','.join(DEMO_DATASETS)})")
    s.add_argument("--models", metavar="A,B", help="only these demo models (default: every model "
                                                   "marked for the demo)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    s.set_defaults(func=cmd_demo)
    return p


def _fail(message: str, code: int = 2) -> int:
    print("refgen: error: " + " ".join(str(message).split()), file=sys.stderr)
    return code


def _quiet_broken_pipe():
    """stdout's reader went away (refgen list | head): exit quietly, as a Unix tool does."""
    import os
    with contextlib.suppress(Exception):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0


def main(argv=None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 training diverged, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv
        code = args.func(args)
        sys.stdout.flush()  # here, so that a closed pipe (refgen list | head) is caught below
        return code
    except UsageError as e:
        return _fail(e)
    except backend.BackendError as e:
        return _fail(e)
    except TrainingDiverged as e:
        return _fail(f"training diverged: {e}", code=1)
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except OSError as e:
        message = os_error_message(e)
        if message is None:
            raise
        return _fail(message)
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    except KeyboardInterrupt:
        return _fail("interrupted; a run continues from its last checkpoint with --resume "
                     "(one stopped before its first checkpoint left nothing)", 130)


if __name__ == "__main__":
    sys.exit(main())
