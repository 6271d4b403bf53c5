"""Energy-based models on MNIST 28x28: a maximum-likelihood EBM and JEM, trained with
persistent Langevin chains, then scored on their samples.

    OPENBLAS_NUM_THREADS=1 python benchmarks/energy_mnist.py --model ebm --steps 4000
    OPENBLAS_NUM_THREADS=1 python benchmarks/energy_mnist.py --model jem --steps 5000 \\
        --lr 1e-3 --warmup 200 --schedule cosine
    OPENBLAS_NUM_THREADS=1 python benchmarks/energy_mnist.py --model jem --steps 5000 \\
        --lr 1e-3 --warmup 200 --schedule cosine --sweep 50,100,200 \\
        --set px_weight=0.03 --set augment_shift=1      # the row that passes 0.99

Both use the conv energy net of refgen/models/energy/nets.py (three stride-2 3x3 convs,
32-64-128 channels, SiLU) and JEM's SGLD: 20 tempered Langevin steps per training step,
x <- x + eps/2 grad log p + sigma z with eps = 2 and sigma = 0.01, from a replay buffer of
10,000 chains, 5% restarted from uniform noise. The run directory (``--out``, default
/tmp/refgen_<tag>) has the layout of ``refgen train``; an existing one is resumed, or only
evaluated when its checkpoint has reached ``--steps``.

After training, with the evaluation generator of refgen.metrics.evaluate:
  - chain-length sweep: FID at N = 500 of samples drawn from uniform noise with each of
    ``--sweep`` sampler steps; the best length is the model's sample_steps from then on;
  - fid_mnist, kid_mnist (with its standard error), precision / recall and class_kl of
    N = ``--eval-n`` samples, beside the real-data floor at 10,000;
  - long-run chains (Nijkamp et al. 2019): 64 samples continued for ``--long-steps`` more
    steps of the same sampler; at each checkpoint the mean energy and the MNIST classifier's
    mean top-class probability (do the chains stay digits?), and one PNG, a row per checkpoint;
  - the training diagnostics of Nijkamp et al. 2019 from log.jsonl (energy gap
    mean E(x+) - mean E(x-) and the chains' mean |grad_x E|) as a PNG over steps;
  - JEM: test accuracy of argmax_y f(x)[y] on the 10,000 test images (target >= 0.99).
Writes benchmarks/results/<tag>.json (tag: energy_mnist_<model>) and its PNGs.
``--smoke``: 3 steps of a tiny model on 64 images, metrics on 20 samples.
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
                    load, machine, read_log, rel, run_dir, sample_grid, write_result)

import numpy as np  # noqa: E402

from refgen import backend, io  # noqa: E402
from refgen.autograd import Tensor, no_grad  # noqa: E402
from refgen.metrics import fid as _fid  # noqa: E402
from refgen.metrics.evaluation import EVAL_SEED, evaluate  # noqa: E402
from refgen.runs import build_model, load_run, parse_sets  # noqa: E402
from refgen.train import CHECKPOINT, data_facts, load_weights, train  # noqa: E402

FLOOR_10K = 3.204          # train vs test at N = 10,000, benchmarks/results/fid_reference.json
SGLD = dict(mcmc="ula", mcmc_steps=20, mcmc_step_size=2.0, noise_scale=0.01, buffer_size=10000,
            reinit=0.05, sampler="ula", sample_step_size=2.0, sample_noise_scale=0.01)
TARGETS = {"jem": {"test_accuracy": ">= 0.990"}}
# the flags a run that continues compares with its own settings, and their defaults
FLAGS = {"--model": "ebm", "--batch-size": 64, "--lr": 1e-4, "--schedule": "constant",
         "--warmup": 0, "--seed": 0}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # FLAGS default to None here (given at all: asked by a run that continues), FLAGS' value else
    ap.add_argument("--model", default=None, choices=["ebm", "jem"], help="default ebm")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="model hyperparameter")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=None, help="default 64")
    ap.add_argument("--lr", type=float, default=None,
                    help="default 1e-4; given to a run that continues, the rate from its step on")
    ap.add_argument("--schedule", default=None, choices=["constant", "cosine"], help="default constant")
    ap.add_argument("--warmup", type=int, default=None,
                    help="steps of linear learning-rate warmup (default 0)")
    ap.add_argument("--seed", type=int, default=None, help="default 0")
    ap.add_argument("--sweep", default="50,100,200,400", help="sampler steps to compare at N = 500")
    ap.add_argument("--eval-n", type=int, default=10000, help="samples for the metrics")
    ap.add_argument("--long-steps", type=int, default=5000, help="steps of the long-run chains")
    ap.add_argument("--accuracy-only", action="store_true",
                    help="jem: train and report the test accuracy only (no sampling), e.g. for the "
                         "classifier-alone control --set px_weight=0")
    ap.add_argument("--init-from", default=None, metavar="RUN_DIR",
                    help="start from the weights of a run of the same network (e.g. the classifier "
                         "trained alone with --set px_weight=0); a resumed run ignores it")
    ap.add_argument("--tag", default=None)
    ap.add_argument("--out", default=None, help="run directory (default /tmp/refgen_<tag>)")
    args = add_smoke(ap).parse_args(argv)
    if args.accuracy_only and (args.model or FLAGS["--model"]) != "jem":
        ap.error("--accuracy-only reports a classifier's test accuracy: it needs --model jem")
    if args.init_from and not (Path(args.init_from) / CHECKPOINT).exists():
        ap.error(f"--init-from: no {CHECKPOINT} in {args.init_from}")
    if SMOKE:
        args.steps, args.batch_size, args.eval_n, args.long_steps = 3, 8, 20, 4
        args.sweep = "2,4"
        args.set = (args.set or []) + ["channels=4", "buffer_size=16", "mcmc_steps=2"]
    return args


def diagnostics_plot(out, path, points=60):
    """Energy gap and chain gradient norm (each log line's value) over training, side by side."""
    lines = read_log(out, "energy_gap")
    if len(lines) < 2:
        return None
    keep = np.unique(np.linspace(0, len(lines) - 1, points).round().astype(int))
    steps = np.array([lines[i]["step"] for i in keep], dtype=np.float64)
    panels = [io.line_plot(steps, np.array([lines[i][key] for i in keep]), xlabel="step",
                           ylabel=label)[0]
              for key, label in (("energy_gap", "E(x+) - E(x-)"),
                                 ("chain_grad_norm", "mean grad norm on chains"))]
    io.write_png(path, io.concat_images_horizontal(panels))
    return path


def fid_at(model, test_ds, n, steps):
    model.sample_steps = int(steps)
    t = time.perf_counter()
    r = evaluate(model, test_ds, n_samples=n)
    return {"sample_steps": int(steps), "fid_mnist": r["fid_mnist"], "kid_mnist": r.get("kid_mnist"),
            "kid_mnist_se": r.get("kid_mnist_se"), "n": n, "wall_s": round(time.perf_counter() - t, 1)}


def long_run(model, n, total, path):
    """n samples from noise continued ``total`` more steps; energy and digit confidence at
    checkpoints, one grid row of 8 per checkpoint in ``path``."""
    rng = backend.default_rng(EVAL_SEED + 1)
    x = model.sample(n, rng=rng)
    marks = sorted({0, *[m for m in (100, 500, 1000, 2000, 5000, 10000) if m < total], total})
    rows, out, done = [], [], 0
    for m in marks:
        if m > done:
            x = model.run_chains(x, m - done, model.sample_step_size, rng, model.sampler,
                                 model.sample_noise_scale)
            done = m
        xs = backend.to_numpy(x).astype(np.float32)
        with no_grad():
            e = backend.to_numpy(model.energy(Tensor(x)).data).astype(np.float64)
        _, logits = _fid.mnist_features_and_logits(np.clip(xs, -1.0, 1.0))
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        out.append({"extra_steps": m, "mean_energy": float(e.mean()),
                    "mean_top_class_prob": float(p.max(1).mean()),
                    "frac_top_class_prob_above_0.9": float((p.max(1) > 0.9).mean()),
                    "pixel_range": [float(xs.min()), float(xs.max())]})
        rows.append(np.clip((xs[:8] + 1.0) / 2.0, 0.0, 1.0))
        print(f"long run: +{m} steps  energy {out[-1]['mean_energy']:.3f}  "
              f"top-class p {out[-1]['mean_top_class_prob']:.3f}", flush=True)
    io.write_png(path, io.image_grid(np.concatenate(rows), nrow=8))
    return out


def test_accuracy(model, ds, chunk=1000):
    with no_grad():
        pred = np.concatenate([backend.to_numpy(model.logits(Tensor(backend.asarray(ds.x[i:i + chunk])))
                                                .data).argmax(1) for i in range(0, len(ds.x), chunk)])
    return float((pred == ds.y).mean())


def main(argv=None):
    args = parse(argv)
    asked = asked_flags(args, FLAGS)  # the flags given at all
    tag = args.tag or f"energy_mnist_{args.model or FLAGS['--model']}"
    out = run_dir(tag, args.out)
    train_ds, test_ds = load("mnist", "train"), load("mnist", "test")
    settings = dict(SGLD, **parse_sets(args.set))
    resume = (out / "checkpoint.npz").exists()
    if not resume:
        fill_defaults(args, FLAGS)
    st = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
              schedule=args.schedule, warmup=args.warmup, log_every=max(min(args.steps // 100, 25), 1),
              ckpt_every=max(args.steps // 8, 1))
    changes = []
    if resume:  # a run to continue: its own settings, but for --lr
        cfg = json.loads((out / "config.json").read_text())
        settings, st = cfg["model_kwargs"], dict(cfg["train"], steps=args.steps)
        keys = {f: dest(f) for f in FLAGS if f != "--model"}
        stored = {"--model": cfg["model"], **{f: st[k] for f, k in keys.items()},
                  **{f"--set {k}": v for k, v in settings.items()}}
        now, new = continue_run(out, stored, asked, changeable=("--lr",))
        st.update({k: now[f] for f, k in keys.items()})
        args.model, changes = cfg["model"], cfg.get("train_changes", []) + new
        tag = args.tag or f"energy_mnist_{args.model}"  # the run's model names its results
    cfg = {"model": args.model, "data": "mnist", "model_kwargs": settings,
           "data_dir": os.environ.get("REFGEN_DATA_DIR"), "data_facts": data_facts(train_ds),
           "num_classes": train_ds.num_classes, "vocab_size": None, "vocab": None,
           "train": st, "train_changes": changes, "backend": backend.name(), "command": command()}
    model = build_model(args.model, data_shape=train_ds.shape, num_classes=train_ds.num_classes,
                        seed=st["seed"], overrides=settings)
    if args.init_from and not resume:
        load_weights(model, io.load_checkpoint(Path(args.init_from) / CHECKPOINT)[0])
        cfg["init_from"] = str(args.init_from)
    cpu0 = time.process_time()
    meta = io.load_checkpoint(out / CHECKPOINT)[1] if resume else {}
    if resume and int(meta["step"]) >= args.steps:  # a finished run: evaluate only
        m = {"steps": int(meta["step"]), "wall_s": float(meta.get("wall_s", 0.0))}
    else:
        m = train(model, train_ds, out_dir=out, resume=resume, config=cfg, samples=False,
                  evaluate_at_end=False, **st)
    train_cpu = time.process_time() - cpu0
    model, run_cfg = load_run(out)
    model.eval()
    result = {"model": args.model, "data": "mnist", "command": command(),
              "train_command": run_cfg.get("command"), "init_from": run_cfg.get("init_from"),
              "model_kwargs": run_cfg["model_kwargs"],
              "train": run_cfg["train"], "steps": m["steps"], "params": model.num_parameters(),
              "epochs": round(m["steps"] * st["batch_size"] / len(train_ds.x), 2),
              "train_wall_s": round(m["wall_s"], 1), "train_cpu_s_this_call": round(train_cpu, 1),
              "targets": TARGETS.get(args.model, {})}
    if args.model == "jem":
        result["test_accuracy"] = test_accuracy(model, test_ds)
        print(f"test accuracy {result['test_accuracy']:.4f}", flush=True)
        if args.accuracy_only:
            result["log"] = read_log(out, "loss")
            result["machine"] = machine()
            write_result(tag, result)
            return
    sweep = [fid_at(model, test_ds, 20 if SMOKE else 500, k) for k in map(int, args.sweep.split(","))]
    result["chain_length_sweep_at_500"] = sweep
    best = min(sweep, key=lambda r: r["fid_mnist"])["sample_steps"]
    result["sample_steps"] = best
    print("sweep " + "  ".join(f"{r['sample_steps']}: {r['fid_mnist']:.1f}" for r in sweep), flush=True)
    model.sample_steps = best
    t = time.perf_counter()
    result["metrics"] = evaluate(model, test_ds, n_samples=args.eval_n)
    result["eval_wall_s"] = round(time.perf_counter() - t, 1)
    result["fid_real_floor_at_10000"] = FLOOR_10K
    print(json.dumps(result["metrics"]), flush=True)
    grid, chains = RESULTS / f"{tag}_samples.png", RESULTS / f"{tag}_long_run.png"
    result["sample_s_for_64"] = round(sample_grid(model, grid, value_range=(-1.0, 1.0)), 1)
    result["long_run"] = long_run(model, 64, args.long_steps, chains)
    result["pngs"] = [rel(grid), rel(chains)]
    plot = diagnostics_plot(out, RESULTS / f"{tag}_diagnostics.png")
    if plot is not None:
        result["pngs"].append(rel(plot))
    result["log"] = read_log(out, "energy_gap")
    result["machine"] = machine()
    write_result(tag, result)


if __name__ == "__main__":
    main()
