"""Classifier guidance, eq. (25), on MNIST: a classifier trained on noisy x_t steers a trained
diffusion model (its unconditional mode: the null label) towards a chosen digit.

    # 1. train the noisy classifier f_phi(y | x_t, t) with the diffusion run's schedule
    OPENBLAS_NUM_THREADS=1 python benchmarks/diffusion_classifier_guidance.py train \\
        --run runs/diffusion_mnist14_long --out runs/dm14_classifier --budget-min 15
    # 2. its accuracy on noisy test images, and guided samples for each scale
    OPENBLAS_NUM_THREADS=1 python benchmarks/diffusion_classifier_guidance.py eval \\
        --run runs/diffusion_mnist14_long --classifier runs/dm14_classifier \\
        --scales 0,1,3,10 --n 500 --steps 50

eval reports, for each classifier scale s (the w of eq. (25)): cond_accuracy of the guided
samples (the fixed MNIST classifier of refgen.metrics reads them) and fid_mnist of the same
samples, a grid sorted by target digit, and the FID-vs-s curve. The sampler is DDIM (eta = 0)
with the eps of eq. (25), as in Dhariwal & Nichol's guided DDIM. Scale 0 is the unguided
unconditional model. With --mode conditional the network gets the label too (the classifier
then sharpens a conditional model). Results: benchmarks/results/<tag>.json and <tag>_*.png.

``--smoke`` (no subcommand) trains a tiny diffusion run with diffusion_mnist.py's smoke
settings, a tiny classifier for 4 steps, and evaluates scales 0 and 1 on 20 samples, all in a
temporary directory.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, SMOKE, add_smoke, asked_flags, command, continue_run, dest, fill_defaults,  # noqa: E402
                    load, run_dir)
from diffusion_mnist import (SMOKE_RUNS, _fid, _fid_floor, _grid, _save,  # noqa: E402
                             _tradeoff_plot, train_in_chunks)

import numpy as np  # noqa: E402

from refgen import backend, io  # noqa: E402
from refgen.autograd import no_grad  # noqa: E402
from refgen.runs import load_run, parse_sets  # noqa: E402
from refgen.models.diffusion import NoisyClassifier  # noqa: E402
from refgen.models.diffusion.process import q_sample  # noqa: E402
from refgen.train import load_weights  # noqa: E402


def _diffusion_config(run):
    cfg = json.loads((Path(run) / "config.json").read_text())
    kw = cfg["model_kwargs"]
    return cfg, kw.get("schedule", "linear"), int(kw.get("T", 1000))


def _build(cfg_c):
    """The classifier described by its own config.json."""
    return NoisyClassifier(cfg_c["data_shape"], cfg_c["num_classes"], seed=cfg_c["seed"],
                           schedule=cfg_c["schedule"], T=cfg_c["T"], **cfg_c["kwargs"])


def load_classifier(path):
    """(classifier with its EMA weights, config) from a directory written by ``train``."""
    path = Path(path)
    cfg_c = json.loads((path / "config.json").read_text())
    clf = _build(cfg_c)
    load_weights(clf, io.load_checkpoint(path / "checkpoint.npz")[0])
    clf.eval()
    return clf, cfg_c


# ----------------------------------------------------------------------------- train
# the classifier's flags a run that continues compares with its own settings, and their defaults
FLAGS = {"--batch-size": 64, "--lr": 1e-3, "--ema": 0.999, "--seed": 0}


def train_classifier(args):
    out = Path(args.out)
    dcfg, schedule, T = _diffusion_config(args.run)
    ds = load(dcfg["data"], "train")
    cfg_path = out / "config.json"
    asked = asked_flags(args, FLAGS)  # the flags given at all (their parser default is None)
    if cfg_path.exists():  # a classifier to continue: its own settings, but for --lr and --ema
        cfg_c = json.loads(cfg_path.read_text())
        stored = {f: cfg_c[dest(f)] for f in FLAGS}
        stored.update({f"--set {k}": v for k, v in cfg_c["kwargs"].items()})
        now, changes = continue_run(out, stored, asked, changeable=("--lr", "--ema"))
        cfg_c.update({dest(f): now[f] for f in FLAGS})
        cfg_c["train_changes"] = cfg_c.get("train_changes", []) + changes
        cfg_path.write_text(json.dumps(cfg_c, indent=2) + "\n")
    else:
        fill_defaults(args, FLAGS)
        out.mkdir(parents=True, exist_ok=True)
        cfg_c = {"data": dcfg["data"], "data_shape": list(ds.shape), "num_classes": ds.num_classes,
                 "schedule": schedule, "T": T, "seed": args.seed, "kwargs": parse_sets(args.set),
                 "diffusion_run": str(args.run), "batch_size": args.batch_size, "lr": args.lr,
                 "ema": args.ema, "command": command()}
        cfg_path.write_text(json.dumps(cfg_c, indent=2) + "\n")
    clf = _build(cfg_c)
    train_in_chunks(clf, ds, out, steps=args.steps, budget_min=args.budget_min, chunk=args.chunk,
                    batch_size=cfg_c["batch_size"], lr=cfg_c["lr"], seed=cfg_c["seed"],
                    ema_decay=cfg_c["ema"], grad_clip=1.0, warmup=200,
                    log_every=max(1, args.chunk // 4), config=cfg_c)


# ----------------------------------------------------------------------------- eval
def noisy_accuracy(clf, test, ts, n, seed=0):
    """Accuracy of f_phi(y | x_t, t) on the first n test images noised to each t by eq. (3)."""
    rng = np.random.default_rng(seed)
    x0 = backend.asarray(test.x[:n])
    y = test.y[:n]
    out = {}
    with no_grad():
        for t in ts:
            eps = backend.asarray(rng.standard_normal(x0.shape).astype(x0.dtype))
            tt = backend.asarray(np.full(n, t))
            xt = q_sample(clf.schedule, x0, tt, eps)                      # (3)
            logits = backend.to_numpy(clf(xt, tt).data)
            out[str(t)] = float((logits.argmax(-1) == y).mean())
    return out


def evaluate(args):
    model, dcfg = load_run(args.run)
    clf, cfg_c = load_classifier(args.classifier)
    name = dcfg["data"]
    tag = args.tag or f"diffusion_{name.replace('-', '')}_classifier_guidance"
    log = [json.loads(ln) for ln in (Path(args.classifier) / "log.jsonl").read_text().splitlines()
           if ln.strip()]
    test = load(name, "test")
    res = {"command": command(), "diffusion_run": args.run, "classifier": args.classifier,
           "classifier_config": cfg_c, "classifier_steps": log[-1]["step"] if log else 0,
           "classifier_train_wall_s": log[-1]["wall_s"] if log else None,
           "classifier_parameters": sum(int(np.prod(p.shape)) for p in clf.parameters()),
           "mode": args.mode, "sampler": f"ddim{args.steps}", "n": args.n, "scales": {}}
    t = time.perf_counter()
    res["classifier_noisy_test_accuracy"] = noisy_accuracy(
        clf, test, sorted({1} | {round(f * clf.T) for f in (0.1, 0.25, 0.5, 0.75, 1.0)}), args.acc_n)
    res["classifier_acc_wall_s"] = round(time.perf_counter() - t, 1)
    print("noisy accuracy", res["classifier_noisy_test_accuracy"], flush=True)
    labels = np.arange(args.n) % 10
    for s in [float(v) for v in args.scales.split(",")]:
        parts, t = [], time.perf_counter()
        rng = backend.default_rng(99)
        for i in range(0, args.n, 250):
            y = labels[i:i + 250]
            parts.append(backend.to_numpy(model.sample(
                len(y), cond=y, rng=rng, sampler="ddim", steps=args.steps, eta=0.0,
                guidance=0.0, classifier=clf, classifier_scale=s,
                unconditional=args.mode == "unconditional")))
        x = np.concatenate(parts)
        r = {"wall_s": round(time.perf_counter() - t, 1)}
        try:
            from refgen.metrics import cond_accuracy
            r["cond_accuracy"] = float(cond_accuracy(np.clip(x, -1, 1), labels))
        except Exception as e:  # the metrics classifier is missing
            r["cond_accuracy"], r["error"] = None, f"{type(e).__name__}: {e}"[:300]
        r.update(_fid(x, args.n))
        order = np.argsort(labels[:100], kind="stable")
        _grid(x[:100][order], RESULTS / f"{tag}_s{s:g}.png")
        res["scales"][f"s={s:g}"] = r
        print("scale", s, r, flush=True)
        _save(res, tag)
    _tradeoff_plot(res["scales"], RESULTS / f"{tag}_tradeoff.png", xlabel="classifier scale s")
    res["fid_real_floor"] = _fid_floor(name, [args.n])
    _save(res, tag)


def main():
    p = add_smoke(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    sub = p.add_subparsers(dest="cmd", required=not SMOKE)
    t = sub.add_parser("train")
    t.add_argument("--run", required=True, help="the diffusion run whose schedule to match")
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=1_000_000)
    t.add_argument("--budget-min", type=float, default=0)
    t.add_argument("--chunk", type=int, default=500)
    # FLAGS default to None here (given at all: asked by a classifier that continues), FLAGS' value else
    t.add_argument("--batch-size", type=int, default=None, help=f"default {FLAGS['--batch-size']}")
    t.add_argument("--lr", type=float, default=None,
                   help=f"default {FLAGS['--lr']}; given to a classifier that continues, the rate from its step on")
    t.add_argument("--ema", type=float, default=None,
                   help=f"default {FLAGS['--ema']}; given to a classifier that continues, the decay from its step on")
    t.add_argument("--seed", type=int, default=None, help=f"default {FLAGS['--seed']}")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="NoisyClassifier options (channels, channel_mult, groups)")
    e = sub.add_parser("eval")
    e.add_argument("--run", required=True)
    e.add_argument("--classifier", required=True)
    e.add_argument("--tag")
    e.add_argument("--scales", default="0,1,3,10")
    e.add_argument("--n", type=int, default=500)
    e.add_argument("--steps", type=int, default=50)
    e.add_argument("--acc-n", type=int, default=2000)
    e.add_argument("--mode", choices=("unconditional", "conditional"), default="unconditional")
    args = p.parse_args()
    with backend.use_backend(os.environ.get("REFGEN_BACKEND", "numpy")):
        if SMOKE and args.cmd is None:
            return smoke_pipeline(p)
        {"train": train_classifier, "eval": evaluate}[args.cmd](args)


def smoke_pipeline(p):
    """A tiny diffusion run, a tiny classifier on its schedule, and the evaluation."""
    import diffusion_mnist
    run, clf = str(run_dir("diffusion_mnist")), str(run_dir("noisy_classifier"))
    dm = diffusion_mnist.main_parser().parse_args(
        [a for a in SMOKE_RUNS if a[0] == "train"][0] + ["--out", run])
    diffusion_mnist.train_run(dm)
    train_classifier(p.parse_args(["train", "--run", run, "--out", clf, "--steps", "4",
                                   "--chunk", "2", "--batch-size", "8", "--set", "channels=8"]))
    evaluate(p.parse_args(["eval", "--run", run, "--classifier", clf, "--scales", "0,1",
                           "--n", "20", "--steps", "3", "--acc-n", "16"]))


if __name__ == "__main__":
    main()
