"""The command line: ``refgen`` (or ``python -m refgen``).

    refgen list                                   models, data sets, metrics
    refgen train MODEL --data DATA [...]          a run directory under runs/MODEL-DATA
    refgen sample DIR [-n N] [--out FILE.png]     samples from a run's checkpoint
    refgen eval DIR                               recompute DIR/metrics.json
    refgen demo [--out DIR]                       the 2D demo models on toy data, CPU, minutes

Bad input (an unknown name, data a model cannot take, a missing run, a malformed --set)
gets one line on stderr, ``refgen: error: ...``, and exit status 2; everything is checked
before any file is written, so nothing already on disk is touched. A run whose loss turns
NaN exits with status 1 and keeps its last good checkpoint.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from refgen import backend, data, io, models
from refgen.autograd import Tensor, no_grad
from refgen.models.base import check_data, constructor_kwargs, hyperparameters
from refgen.train import (CHECKPOINT, OPTIMIZERS, SCHEDULES, TrainingDiverged, data_facts,
                          load_weights, train, write_samples)

__all__ = ["main", "UsageError", "parse_sets", "build_model", "load_run", "evaluate", "METRIC_NAMES",
           "DEMO_DATASETS"]

from refgen.metrics.evaluation import METRIC_NAMES  # noqa: E402  (the list lives with evaluate)
DEMO_DATASETS = ("8gaussians", "checkerboard")
_TRAIN_DEFAULTS = dict(steps=2000, batch_size=128, lr=1e-3, ema=None, optimizer="adam",
                       schedule="constant", warmup=0, grad_clip=None)
_DEMO_MARK = ".refgen-demo"


class UsageError(Exception):
    """Bad input: reported as one line on stderr with exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise UsageError(f"{message} (see '{self.prog} --help')")


# ----------------------------------------------------------------------------- helpers
def parse_sets(pairs) -> dict:
    """--set key=value ...: values are JSON literals (3, 0.5, true, [1, 2]) or else strings."""
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
    return out


def _model_class(name):
    try:
        return models.get(name)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _load_data(name, split, data_dir=None, seed=0):
    try:
        return data.load(name, split, data_dir=data_dir, seed=seed)
    except (ValueError, OSError) as e:
        raise UsageError(str(e).replace("\n", " ")) from None


def _describe(name):
    """(kind, example shape) of a data set name without loading it (None, None if unknown),
    so that a model/data mismatch is refused before MNIST is read or downloaded."""
    if name in data.toy2d.names():
        return "continuous", (2,)
    if name.startswith("mnist"):
        side = 14 if name.startswith("mnist-14") else 28
        return ("binary" if name.endswith("binary") else "continuous"), (1, side, side)
    if name.startswith("text:"):
        return "categorical", (64,)
    return None, None


def _check_fit(cls, name, kind, shape):
    try:
        check_data(cls, argparse.Namespace(name=name, kind=kind, shape=shape,
                                           value_range=data.datasets.value_range(name)))
    except ValueError as e:
        raise UsageError(str(e)) from None


def _vocab_size(ds):
    return None if ds.vocab is None else len(ds.vocab)


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


def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None


def _write_json(path, obj):
    with io.atomic_write(path) as f:
        f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _run_dir(path) -> Path:
    d = Path(path)
    if not d.is_dir():
        raise UsageError(f"run directory {str(d)!r} does not exist (make one with refgen train)")
    for f in ("config.json", CHECKPOINT):
        if not (d / f).is_file():
            raise UsageError(f"{d} is not a refgen run directory: it has no {f}")
    return d


def load_run(run_dir, use_ema=True):
    """(model with the checkpoint's weights, EMA averages when present and ``use_ema``,
    config dict) from a run directory."""
    d = _run_dir(run_dir)
    cfg = _read_json(d / "config.json")
    try:
        model = build_model(cfg["model"], data_shape=cfg["data_facts"]["shape"],
                            num_classes=cfg.get("num_classes"), vocab_size=cfg.get("vocab_size"),
                            seed=cfg["train"]["seed"], overrides=cfg.get("model_kwargs"))
    except KeyError as e:
        raise UsageError(f"{d}/config.json lacks the entry {e}") from None
    try:
        arrays, _ = io.load_checkpoint(d / CHECKPOINT)
        load_weights(model, arrays, use_ema)
    except (ValueError, KeyError) as e:
        raise UsageError(f"cannot load {d / CHECKPOINT}: {e}".replace("\n", " ")) from None
    model.eval()
    return model, cfg


def _quick_metrics(model, test_ds) -> dict:
    """The demo's cheap metrics, with no sampling: the exact test NLL (and bits/dim where the
    data convention fixes it) and the gap to a toy density's entropy. The full set is
    `refgen eval DIR` (refgen.metrics.evaluate)."""
    from refgen import metrics
    out = {}
    d = int(np.prod(test_ds.shape))
    if hasattr(model, "log_prob") and test_ds.kind != "categorical":
        with no_grad():
            lp = [backend.to_numpy(model.log_prob(Tensor(backend.asarray(test_ds.x[i:i + 1000]))))
                  for i in range(0, len(test_ds.x), 1000)]
        nll = float(-np.concatenate(lp).astype(np.float64).mean())
        out["test_nll_nats"] = nll
        if test_ds.name in data.toy2d.DENSITIES:
            out["entropy_gap_nats"] = metrics.entropy_gap_nats(nll, data.toy2d.entropy(test_ds.name)[0])
        elif test_ds.kind == "binary":
            out["test_bpd"] = metrics.bits_per_dim(nll, d)
        elif test_ds.name == "mnist-dequantized":
            out["test_bpd"] = metrics.nll_to_bpd(nll, d, "[0,1]")
    return out


def evaluate(model, test_ds, run_dir=None) -> dict:
    """Every metric that applies to the model and data (refgen.metrics.evaluate)."""
    from refgen import metrics
    return dict(metrics.evaluate(model, test_ds, run_dir=run_dir))


def _default_out(model, data_name):
    return Path("runs") / re.sub(r"[^A-Za-z0-9._-]+", "_", f"{model}-{data_name}")


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return v


def _nonneg_int(text):
    return 0 if text.strip() == "0" else _positive_int(text)


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return v


def _ema_decay(text):
    v = _positive_float(text)
    if not v < 1:
        raise argparse.ArgumentTypeError(f"{text}: an EMA decay lies in (0, 1), e.g. 0.999")
    return v


# ----------------------------------------------------------------------------- commands
def cmd_list(args):
    print("models (name: data kinds, example dims; methods):")
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
        if hp:
            print(f"  {'':<16} --set {hp}")
    print("datasets:")
    for name in data.names():
        kind, shape = _describe(name)
        what = "2D points" if shape == (2,) else ("text windows" if kind == "categorical"
                                                  else "x".join(map(str, shape)) + " images")
        exact = ", exact density" if name in data.toy2d.DENSITIES else ""
        print(f"  {name:<18} {kind}, {what}{exact}")
    print("metrics (keys of metrics.json):")
    print("  " + ", ".join(METRIC_NAMES) + ", steps, wall_s, backend, loss")
    return 0


def _train_settings(args, cls, cfg_train=None):
    """Flags given, else the run's config (on --resume), else the model's default_train."""
    defaults = dict(_TRAIN_DEFAULTS, **getattr(cls, "default_train", {}))
    out = {}
    for key in ("steps", "batch_size", "lr", "ema", "optimizer", "schedule", "warmup", "grad_clip",
                "seed", "eval_every", "log_every", "ckpt_every"):
        given = getattr(args, key)
        if cfg_train is not None and key in cfg_train and key != "steps":
            if given is not None and given != cfg_train[key]:
                raise UsageError(f"--{key.replace('_', '-')} {given} differs from the run's "
                                 f"config.json ({cfg_train[key]}); a resumed run keeps its settings "
                                 "(only --steps may change)")
            out[key] = cfg_train[key]
        elif given is not None:
            out[key] = given
        else:
            out[key] = defaults.get(key, {"seed": 0, "eval_every": 0}.get(key))
    out["log_every"] = out["log_every"] or max(1, min(100, out["steps"] // 10))
    out["ckpt_every"] = out["ckpt_every"] or max(1, min(1000, out["steps"] // 5))
    return out


def cmd_train(args):
    sets = parse_sets(args.set)
    cls = _model_class(args.model)
    out = Path(args.out) if args.out else _default_out(args.model, args.data)
    cfg_old = None
    if args.resume:
        d = _run_dir(out)
        cfg_old = _read_json(d / "config.json")
        for key, given in (("model", args.model), ("data", args.data)):
            if cfg_old.get(key) != given:
                raise UsageError(f"{out} was trained as {key} {cfg_old.get(key)!r}, not {given!r}; "
                                 "resume it with the same model and --data")
        if sets and sets != cfg_old.get("model_kwargs", {}):
            raise UsageError(f"--set {sets} differs from the run's model settings "
                             f"{cfg_old.get('model_kwargs', {})}; a resumed run keeps them")
        sets = cfg_old.get("model_kwargs", {})
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} already exists; pass --resume to continue that run, or --out "
                         "to choose another directory")
    st = _train_settings(args, cls, cfg_old["train"] if cfg_old else None)
    kind, shape = _describe(args.data)
    if kind is not None:
        _check_fit(cls, args.data, kind, shape)  # before reading (or downloading) anything
    data_dir = args.data_dir or (cfg_old or {}).get("data_dir")
    train_ds = _load_data(args.data, "train", data_dir, st["seed"])
    _check_fit(cls, args.data, train_ds.kind, train_ds.shape)
    if st["batch_size"] > len(train_ds):
        raise UsageError(f"--batch-size {st['batch_size']} exceeds the {len(train_ds)} training "
                         f"examples of {args.data!r}")
    test_ds = _load_data(args.data, "test", data_dir, st["seed"])
    model = build_model(args.model, data_shape=train_ds.shape, num_classes=train_ds.num_classes,
                        vocab_size=_vocab_size(train_ds), seed=st["seed"], overrides=sets)
    # everything is valid: from here on files are written
    config = {"model": args.model, "data": args.data, "model_kwargs": sets,
              "data_dir": str(data_dir) if data_dir else None, "data_facts": data_facts(train_ds),
              "num_classes": train_ds.num_classes, "vocab_size": _vocab_size(train_ds),
              "vocab": train_ds.vocab, "train": st, "backend": backend.name(),
              "command": "refgen " + " ".join(args.argv)}
    if not args.resume:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "config.json", config)
    elif st["steps"] != cfg_old["train"]["steps"]:
        cfg_old["train"]["steps"] = st["steps"]
        _write_json(out / "config.json", cfg_old)
    print(f"refgen: training {args.model} on {args.data} for {st['steps']} steps "
          f"({backend.name()}) -> {out}", file=sys.stderr)
    try:
        metrics = train(model, train_ds, steps=st["steps"], batch_size=st["batch_size"], lr=st["lr"],
                        seed=st["seed"], out_dir=out, optimizer=st["optimizer"], ema_decay=st["ema"],
                        grad_clip=st["grad_clip"], warmup=st["warmup"], schedule=st["schedule"],
                        log_every=st["log_every"], eval_every=st["eval_every"],
                        ckpt_every=st["ckpt_every"], resume=args.resume, test_dataset=test_ds,
                        eval_fn=lambda m, t: evaluate(m, t, run_dir=out), config=config,
                        progress=not args.quiet)
    except (ValueError, TypeError) as e:
        # a model/data mismatch its data_spec cannot see (a Bernoulli decoder on real-valued
        # data) fails in the very first step: then the run directory made above holds only
        # config.json and is removed; any later error is a bug and keeps its traceback
        log = out / "log.jsonl"
        if args.resume or (out / CHECKPOINT).exists() or (log.exists() and log.read_text().strip()):
            raise
        shutil.rmtree(out)
        raise UsageError(f"model {args.model!r} cannot train on {args.data!r}: {e}".replace("\n", " ")) from None
    print(json.dumps(metrics, sort_keys=True))
    print(f"refgen: wrote {out}/ (config.json, checkpoint.npz, log.jsonl, metrics.json, samples.png)",
          file=sys.stderr)
    return 0


def cmd_sample(args):
    d = _run_dir(args.dir)
    if args.out is not None and Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a directory; give a file name such as samples.png")
    model, cfg = load_run(d)
    facts = cfg["data_facts"]
    if facts["kind"] == "categorical":
        ids = backend.to_numpy(model.sample(args.n or 4, rng=backend.default_rng(args.seed)))
        vocab = cfg.get("vocab") or []
        text = "\n---\n".join("".join(vocab[int(i)] for i in row) for row in ids.reshape(len(ids), -1))
        if args.out:
            with io.atomic_write(args.out) as f:
                f.write(text.encode())
        print(text)
        return 0
    out = Path(args.out) if args.out else d / f"samples-seed{args.seed}.png"
    ref = None
    if tuple(facts["shape"]) == (2,):
        ref = _load_data(cfg["data"], "test", cfg.get("data_dir"), cfg["train"]["seed"]).x[:2000]
    if write_samples(model, out, n=args.n, seed=args.seed, reference=ref, **facts) is None:
        raise UsageError(f"no picture for data of shape {tuple(facts['shape'])}")
    print(out)
    return 0


def cmd_eval(args):
    d = _run_dir(args.dir)
    model, cfg = load_run(d)
    test_ds = _load_data(cfg["data"], "test", args.data_dir or cfg.get("data_dir"),
                         cfg["train"]["seed"])
    t0 = time.perf_counter()
    new = evaluate(model, test_ds, run_dir=d)
    metrics = {}
    if (d / "metrics.json").is_file():
        try:
            metrics = json.loads((d / "metrics.json").read_text())
        except json.JSONDecodeError:
            metrics = {}
    metrics.update(new)
    metrics.setdefault("backend", backend.name())
    metrics["eval_wall_s"] = round(time.perf_counter() - t0, 3)
    _write_json(d / "metrics.json", metrics)
    print(json.dumps(metrics, sort_keys=True))
    return 0


def _demo_panel(points, reference=None, size=256):
    img = io.scatter_image(points, reference=reference, size=size)
    img[[0, -1], :] = img[:, [0, -1]] = 190  # a grey frame, so white panels stay apart
    return img


def cmd_demo(args):
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / _DEMO_MARK).exists())):
        raise UsageError(f"{out} exists and is not a refgen demo directory; choose another --out")
    names = [n for n in models.names() if getattr(models.get(n), "demo", False)]
    if args.models:
        unknown = [m for m in args.models.split(",") if m not in names]
        if unknown:
            raise UsageError(f"demo model(s) {', '.join(unknown)} unknown; accepted: {', '.join(names)}")
        names = args.models.split(",")
    datasets = args.data.split(",") if args.data else list(DEMO_DATASETS)
    for name in datasets:
        if name not in data.toy2d.names():
            raise UsageError(f"demo data {name!r} is not a toy 2D data set; accepted: "
                             f"{', '.join(data.toy2d.names())}")
    out.mkdir(parents=True, exist_ok=True)
    (out / _DEMO_MARK).write_text("written by refgen demo; safe to delete\n")
    rows, summary = [], []
    t_all = time.perf_counter()
    with backend.use_backend("numpy"):  # the demo is the CPU job, whatever REFGEN_BACKEND says
        for dname in datasets:
            train_ds, test_ds = data.load(dname, "train"), data.load(dname, "test")
            panels = [_demo_panel(np.zeros((0, 2)), reference=test_ds.x[:3000])]
            for mname in names:
                cls = models.get(mname)
                st = dict(_TRAIN_DEFAULTS, **getattr(cls, "default_train", {}))
                steps = args.steps or st["steps"]
                model = build_model(mname, data_shape=train_ds.shape, seed=0)
                run = out / f"{mname}-{dname}"
                if run.exists():
                    shutil.rmtree(run)
                print(f"refgen demo: {mname} on {dname}, {steps} steps", file=sys.stderr)
                m = train(model, train_ds, steps=steps, batch_size=st["batch_size"], lr=st["lr"],
                          seed=0, out_dir=run, optimizer=st["optimizer"], ema_decay=st["ema"],
                          grad_clip=st["grad_clip"], warmup=st["warmup"], schedule=st["schedule"],
                          log_every=max(1, steps // 5), ckpt_every=steps, test_dataset=test_ds,
                          eval_fn=_quick_metrics, progress=not args.quiet)
                with no_grad():
                    x = backend.to_numpy(model.sample(3000, rng=backend.default_rng(0)))
                panels.append(_demo_panel(x))
                summary.append((mname, dname, m))
            rows.append(io.concat_images_horizontal(panels))
    sep = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate([r for row in rows for r in (row, sep)][:-1], axis=0)
    io.write_png(out / "demo.png", grid)
    print(f"columns: data (blue), then samples (orange) of {', '.join(names)}; "
          f"rows: {', '.join(datasets)}")
    for mname, dname, m in summary:
        extra = ""
        if "test_nll_nats" in m and dname in data.toy2d.DENSITIES:
            h = data.toy2d.entropy(dname)[0]
            extra = f"  test NLL {m['test_nll_nats']:.3f} nats (data entropy {h:.3f})"
        print(f"  {mname:<10} {dname:<14} {m['wall_s']:.1f} s{extra}")
    print(f"refgen demo: wrote {out / 'demo.png'} in {time.perf_counter() - t_all:.0f} s")
    return 0


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="refgen", description="Generative models from the derivations, in NumPy.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("list", help="models, data sets and metric names",
                       description="List registered models, data sets and metric names.")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("train", help="train a model, writing a run directory",
                       description="Train MODEL on DATA. Flags left out come from the model's "
                                   "defaults (or, with --resume, from the run's config.json).")
    s.add_argument("model", metavar="MODEL", help="a model name (see refgen list)")
    s.add_argument("--data", required=True, metavar="DATA", help="a data set name (see refgen list)")
    s.add_argument("--steps", type=_positive_int, help="total optimizer steps")
    s.add_argument("--batch-size", type=_positive_int)
    s.add_argument("--lr", type=_positive_float, help="learning rate")
    s.add_argument("--seed", type=int, help="seed of weights, batches and noise (default 0)")
    s.add_argument("--out", metavar="DIR", help="run directory (default runs/MODEL-DATA)")
    s.add_argument("--resume", action="store_true", help="continue DIR from its checkpoint.npz")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a model hyperparameter; VALUE is a JSON literal or a string (repeatable)")
    s.add_argument("--data-dir", metavar="D", help="where the MNIST files are (else REFGEN_DATA_DIR)")
    s.add_argument("--ema", type=_ema_decay, metavar="DECAY", help="keep an EMA of the weights")
    s.add_argument("--eval-every", type=_nonneg_int, metavar="N", help="evaluate every N steps")
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
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_sample)

    s = sub.add_parser("eval", help="recompute a run's metrics.json",
                       description="Evaluate run DIR on its test split and update DIR/metrics.json.")
    s.add_argument("dir", metavar="DIR")
    s.add_argument("--data-dir", metavar="D")
    s.set_defaults(func=cmd_eval)

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


def main(argv=None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 training diverged, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv
        return args.func(args)
    except UsageError as e:
        return _fail(e)
    except backend.BackendError as e:
        return _fail(e)
    except TrainingDiverged as e:
        return _fail(f"training diverged: {e}", code=1)
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    except KeyboardInterrupt:
        return _fail("interrupted; a run continues from its last checkpoint with --resume", 130)


if __name__ == "__main__":
    sys.exit(main())
