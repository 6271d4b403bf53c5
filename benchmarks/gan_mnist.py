"""DCGAN-style GAN on MNIST: train for a wall-clock budget, then FID, KID, precision, recall
and the class-histogram KL of its samples, a sample grid and the D / G loss curves.

    OPENBLAS_NUM_THREADS=1 python benchmarks/gan_mnist.py --model nsgan --data mnist \\
        --set channels=32 --budget-min 25 --eval-n 10000

Trains with refgen.train.train in chunks of ``--chunk`` steps, each resuming the checkpoint
of the run directory (``--out``, default /tmp/refgen_<tag>; it has the layout of ``refgen
train``, so ``refgen sample DIR`` works on it), until ``--steps`` or ``--budget-min``
minutes (checked between chunks). ``--budget-min 0`` with an existing run only evaluates it.

Then, in eval mode (BatchNorm's running statistics) with the evaluation generator of
refgen.metrics.evaluate:
  - every sample metric of ``evaluate`` at N = ``--eval-n`` (fid_mnist, kid_mnist with its
    standard error, precision / recall at k = 3, class_kl), and fid_mnist at N = 500 beside
    the diffusion U-Net's FID at 500 (FID is biased upwards at small N: compare equal N);
  - <tag>_samples.png (64 samples) and <tag>_losses.png (moving averages over 5 log lines
    of the discriminator loss and of the generator loss);
  - for a model with a code (infogan, infowgan-gp), what its code means: ``code_classes``
    (each code's class histogram by the MNIST classifier, purity) and <tag>_codes.png (a
    row per code value);
  - with ``--truncation T1,T2,...``: the same metrics at N = ``--eval-n`` for z truncated to
    [-T, T] per component, <tag>_truncation_samples.png (32 samples per T, one noise seed)
    and <tag>_truncation_pr.png (precision and recall against T);
  - with ``--drs G1,G2,...``: the same for discriminator rejection sampling at each gamma
    (refgen.models.gan.drs; the share of proposals kept and the bound M in each row),
    <tag>_drs_samples.png and <tag>_drs_pr.png; ``--drs-fit STEPS`` first trains D alone
    against the fixed G that is thinned; ``--drs-fit S1,S2`` scores the gammas after S1
    fitting steps and again after S2 in all (``drs.by_fit_steps``, <tag>_drs_fit<S>_*.png).
    A Wasserstein critic (wgan-gp, infowgan-gp) is no log p / q: with
    ``--drs-fit`` a copy of it with a new score head at zero (``minimax_copy``) is fitted on
    the minimax loss and thins instead; without, the script stops before training.
Writes benchmarks/results/<tag>.json (tag: gan_mnist, or gan_mnist14 for mnist-14).
``--smoke``: 4 steps of a tiny GAN on 64 images, the metrics on 20 samples.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, SMOKE, Draw, add_smoke, asked_flags, command, continue_run, load,  # noqa: E402
                    machine, read_log, rel, run_dir, sample_grid, write_result)

import numpy as np  # noqa: E402

from refgen import backend, io  # noqa: E402
from refgen.metrics.evaluation import evaluate  # noqa: E402
from refgen.models.gan import RejectionSampler, fit_discriminator, minimax_copy  # noqa: E402
from refgen.models.gan.drs import supports  # noqa: E402
from refgen.runs import build_model, load_run, parse_sets  # noqa: E402
from refgen.train import TrainingDiverged, data_facts, train  # noqa: E402

# the diffusion U-Net's FID at N = 500 on the same data, and the real-data floor at 500
DIFFUSION_AT_500 = {
    "mnist": ("benchmarks/results/diffusion_mnist28_small.json", ("samplers", "ddpm50")),
    "mnist-14": ("benchmarks/results/diffusion_mnist14_cosine_fixed.json", ("samplers", "ddpm50")),
}
FLOOR_10K = {"mnist": 3.204}  # train vs test, benchmarks/results/fid_reference.json
TARGETS = {"fid_mnist_at_10000": "<= 10", "precision": ">= 0.8", "recall": ">= 0.8",
           "class_kl": "<= 0.05 nats"}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, choices=["gan", "nsgan", "wgan-gp", "cgan", "fgan", "infogan",
                                                         "infowgan-gp"],
                    help="default nsgan")
    ap.add_argument("--data", default=None, choices=["mnist", "mnist-14"], help="default mnist")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="model hyperparameter")
    ap.add_argument("--steps", type=int, default=1_000_000, help="most loop steps")
    ap.add_argument("--budget-min", type=float, default=25.0, help="training minutes (0: no training; only evaluate the run in --out)")
    ap.add_argument("--chunk", type=int, default=500, help="steps between checkpoints")
    ap.add_argument("--batch-size", type=int, default=None, help="default 64")
    ap.add_argument("--lr", type=float, default=None,
                    help="default 2e-4; given to a run that continues, the rate from its step on")
    ap.add_argument("--seed", type=int, default=None, help="default 0")
    ap.add_argument("--eval-n", type=int, default=10000, help="samples for the metrics")
    ap.add_argument("--ema", type=float, default=None,
                    help="EMA decay of the weights (default: none); given to a run that "
                         "continues, the decay from its step on")
    ap.add_argument("--variants-n", type=int, default=2000,
                    help="samples per row of the sampling-variants FID table (0: no table)")
    ap.add_argument("--truncation", type=taus, default=None, metavar="T1,T2,...",
                    help="also score samples with z truncated to [-T, T] per component (the "
                         "truncation trick), at each T, at N = --eval-n")
    ap.add_argument("--drs", type=gammas, default=None, metavar="G1,G2,...",
                    help="also score discriminator rejection sampling at each gamma (0: exact; "
                         "with --drs-trained the trained, not the EMA, weights; a Wasserstein "
                         "critic needs --drs-fit)")
    ap.add_argument("--drs-burn-in", type=int, default=10000,
                    help="proposals whose largest logit sets the bound M")
    ap.add_argument("--drs-fit", type=fit_lengths, default=None, metavar="S1,S2,...",
                    help="first train D alone for S1 steps against the fixed G that is thinned "
                         "(refgen.models.gan.fit_discriminator; batch and lr as training), and "
                         "score the gammas; then on to S2 steps in all and score them again, ...")
    ap.add_argument("--drs-trained", action="store_true",
                    help="thin with the trained G and D (the pair the game made), not the EMA")
    ap.add_argument("--tag", default=None)
    ap.add_argument("--out", default=None, help="run directory (default /tmp/refgen_<tag>)")
    args = add_smoke(ap).parse_args(argv)
    if SMOKE:
        args.steps, args.chunk, args.eval_n = min(args.steps, 4), 2, 20
        args.batch_size = args.batch_size or 8
        args.variants_n = min(args.variants_n, 20)
        args.set = (args.set or []) + ["channels=4", "hidden=16", "z_dim=8"]
    return args


def numbers(text, positive):
    """'0.5,1,1.5' -> [0.5, 1.0, 1.5]; finite numbers only, and > 0 when ``positive``."""
    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        vals = []
    if not vals or not all((0 < v if positive else -math.inf < v) and v < math.inf for v in vals):
        what = "positive numbers" if positive else "finite numbers"
        raise argparse.ArgumentTypeError(f"{text!r}: give {what}, comma-separated")
    return vals


def fit_lengths(text):
    """'1000,3000' -> [1000, 3000]: increasing step counts >= 1."""
    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        vals = []
    if not vals or vals[0] < 1 or any(b <= a for a, b in zip(vals, vals[1:])):
        raise argparse.ArgumentTypeError(f"{text!r}: give increasing step counts >= 1, "
                                         "comma-separated")
    return vals


def taus(text):
    return numbers(text, positive=True)


def gammas(text):
    return numbers(text, positive=False)


def sweep(test_ds, values, make_draw, n, tag, name, xlabel, plot_x=None, plot_xlabel=None):
    """The sample metrics at N = n of the draw ``make_draw(v)`` returns for each value v (the
    untruncated, unthinned prior's beside them by the caller); a PNG of 32 samples per value
    (the same noise seed), <tag>_<name>_samples.png, and one of precision and recall against
    the value (or ``plot_x(v, row)``, a number >= 0), <tag>_<name>_pr.png. ``make_draw(v)``
    -> (draw, extras(): dict of numbers to record after the metrics). {"rows": {v: metrics}, "pngs": [...]}."""
    rows, panels = {}, []
    for v in values:
        t = time.perf_counter()
        draw, extras = make_draw(v)
        rows[str(v)] = dict(evaluate(draw, test_ds, n_samples=n), **extras(),
                            eval_wall_s=round(time.perf_counter() - t, 1))
        x = backend.to_numpy(draw.sample(32, rng=backend.default_rng(1234)))
        panels.append(io.captioned(io.image_grid((np.clip(x, -1, 1) + 1) / 2, nrow=8), f"{xlabel} {v:g}"))
        print(name, v, json.dumps(rows[str(v)]), flush=True)
    grid = RESULTS / f"{tag}_{name}_samples.png"
    io.write_png(grid, io.concat_images_horizontal(panels))
    pr = [[rows[str(v)]["precision"] for v in values], [rows[str(v)]["recall"] for v in values]]
    plot = RESULTS / f"{tag}_{name}_pr.png"
    xs = [plot_x(v, rows[str(v)]) for v in values] if plot_x else values
    io.write_png(plot, io.line_plot(xs, pr, xlabel=plot_xlabel or xlabel, ylabel="precision, recall",
                                    series_labels=["precision", "recall"])[0])
    return {"n": n, "rows": rows, "pngs": [rel(grid), rel(plot)]}


def truncation_sweep(model, test_ds, taus, n, tag):
    """``sweep`` over truncations tau: z from N(0, I) truncated to [-tau, tau] per component."""
    model.eval()                                   # BatchNorm's running statistics, as sample uses
    return sweep(test_ds, taus, lambda tau: (
        Draw(lambda k, rng: model.sample(k, rng=rng, truncation=tau)), dict), n, tag,
        "truncation", "truncation tau")


def drs_sweep(model, test_ds, gammas, n, tag, burn_in, discriminator=None, name="drs"):
    """``sweep`` over discriminator rejection sampling's gamma (refgen.models.gan.drs): G's
    samples kept with probability alpha / (alpha + (1 - alpha) e^gamma), alpha = e^{a - M},
    a the logit of the model's D or of ``discriminator``; each row records the share kept
    and the bound M its burn-in of ``burn_in`` found."""
    model.eval()

    def make(gamma):
        drs = RejectionSampler(model, gamma=gamma, burn_in=burn_in, discriminator=discriminator)
        return Draw(lambda k, rng: drs.sample(k, rng=rng)), lambda: dict(
            acceptance_rate=drs.acceptance_rate, proposed=drs.proposed, max_logit=drs.max_logit)
    return dict(sweep(test_ds, gammas, make, n, tag, name, "gamma",
                      plot_x=lambda g, row: row["acceptance_rate"],
                      plot_xlabel="share of proposals kept"), burn_in=burn_in)


def code_classes(model, n, tag, seed=0):
    """What a coded model's code means to the MNIST classifier: ``n`` samples per code value (z
    from the prior, the weights and mode ``sample`` uses), each classified. Per code: its class
    histogram, its majority class and that class's share; overall: the share of samples in
    their code's majority class (purity: the code read as a cluster label), and the number of
    distinct majority classes (10 when the codes name the ten digits); <tag>_codes.png, one
    row of 16 samples per code value."""
    from refgen.metrics.fid import mnist_features_and_logits
    model.eval()
    rng, rows = backend.default_rng(seed), []
    for k in range(model.codes):
        x = backend.to_numpy(model.sample(n, cond=np.full(n, k), rng=rng))
        hist = np.bincount(mnist_features_and_logits(np.clip(x, -1, 1))[1].argmax(1), minlength=10)
        rows.append({"code": k, "class_counts": hist.tolist(), "majority_class": int(hist.argmax()),
                     "majority_share": float(hist.max() / n)})
    grid = RESULTS / f"{tag}_codes.png"
    sample_grid(model, grid, n=16 * model.codes, nrow=16, value_range=(-1.0, 1.0),
                cond=np.repeat(np.arange(model.codes), 16))
    return {"n_per_code": n, "purity": float(np.mean([r["majority_share"] for r in rows])),
            "distinct_majority_classes": len({r["majority_class"] for r in rows}),
            "codes": rows, "png": rel(grid)}


def train_in_chunks(model, ds, out, cfg, *, steps, budget_min, chunk, **train_kw):
    """refgen.train.train in calls of ``chunk`` steps, each resuming the checkpoint in
    ``out``, until ``steps`` or ``budget_min`` minutes. Returns the step the checkpoint holds."""
    done = 0
    if (out / "checkpoint.npz").exists():
        done = int(io.load_checkpoint(out / "checkpoint.npz")[1]["step"])
    t0 = time.perf_counter()
    deadline = t0 + 60 * budget_min if budget_min else -math.inf
    while done < steps and time.perf_counter() < deadline:
        m = train(model, ds, steps=min(steps, done + chunk), out_dir=out, ckpt_every=chunk,
                  resume=done > 0, progress=False, samples=False, config=cfg, **train_kw)
        done = m["steps"]
        print(f"step {done}  d_loss {m['loss']:.4f}  wall {m['wall_s']:.0f}s", flush=True)
    return done


def moving_average(v, k):
    """Means of each k consecutive values of v: len(v) - k + 1 of them."""
    return np.convolve(np.asarray(v, dtype=np.float64), np.ones(k) / k, mode="valid")


def loss_plot(out, path, points=60):
    """The D loss (each log line's average since the previous one) and a moving average of
    the logged G losses (one step's value per line), side by side, at most ``points``
    points each; None when the log has fewer than two lines."""
    lines = read_log(out, "g_loss")
    if len(lines) < 2:
        return None
    k = min(5, len(lines))
    steps = np.array([ln["step"] for ln in lines], dtype=np.float64)[k - 1:]
    keep = np.unique(np.linspace(0, len(steps) - 1, points).round().astype(int))
    panels = []
    for key, label in (("loss", "D loss"), ("g_loss", "G loss")):
        ys = moving_average([ln[key] for ln in lines], k)
        panels.append(io.line_plot(steps[keep], ys[keep], xlabel="step", ylabel=label)[0])
    io.write_png(path, io.concat_images_horizontal(panels))
    return path


def sampling_variants(out, n, batch_size, seed=0):
    """FID at N = n of the generator's samples drawn four ways: its trained or its EMA weights
    (when the run has them), each with BatchNorm's running statistics (eval mode, what
    ``sample`` does) or with each batch's own statistics (train mode, the statistics G was
    trained under; batches of ``batch_size``, the training batch). {row: fid_mnist}."""
    from refgen.metrics import fid_mnist
    rows = {}
    has_ema = any(k.startswith("ema/") for k in io.load_checkpoint(out / "checkpoint.npz")[0])
    for use_ema in (False, True) if has_ema else (False,):
        model, _ = load_run(out, use_ema=use_ema)
        for stats in ("running", "batch"):
            model.train() if stats == "batch" else model.eval()
            rng = backend.default_rng(seed)
            x = np.concatenate([backend.to_numpy(model.sample(min(batch_size, n - i), rng=rng))
                                for i in range(0, n, batch_size)])
            key = f"{'ema' if use_ema else 'trained'} weights, {stats} statistics"
            rows[key] = fid_mnist(np.clip(x, -1, 1))
            print("variant", key, rows[key], flush=True)
    return rows


def diffusion_at_500(data):
    """The diffusion U-Net's FID at N = 500 and its file, where there is one."""
    if data not in DIFFUSION_AT_500:
        return None
    path, keys = DIFFUSION_AT_500[data]
    full = Path(__file__).resolve().parent.parent / path
    if not full.is_file():
        return None
    d = json.loads(full.read_text())
    entry = d
    for k in keys:
        entry = entry[k]
    return {"fid_mnist": entry["fid_mnist"], "fid_n": entry["fid_n"], "sampler": keys[-1],
            "fid_real_floor_at_500": d.get("fid_real_floor", {}).get("500"), "file": path}


TRAIN_FLAGS = {"--batch-size": "batch_size", "--seed": "seed", "--lr": "lr", "--ema": "ema_decay"}


def continued(args, cfg, out):
    """The settings of the run in ``out`` that continues (common.continue_run): its model and
    training settings as its config stores them, except the learning rate and the EMA decay,
    which --lr and --ema change from the checkpoint's step on. Returns (model settings,
    training settings, the run's changes so far)."""
    train = dict(cfg["train"])
    train.pop("steps", None)
    stored = {"--model": cfg["model"], "--data": cfg["data"],
              **{f: train.get(k) for f, k in TRAIN_FLAGS.items()},
              **{f"--set {k}": v for k, v in cfg["model_kwargs"].items()}}
    # every flag defaults to None here, so a flag given at all is asked, even at its usual value
    asked = asked_flags(args, ["--model", "--data", *TRAIN_FLAGS])
    if "--ema" in asked and not train.get("ema_decay"):
        raise SystemExit(f"gan_mnist.py: {out} was trained without an EMA of its weights; --ema "
                         "changes the decay of a run that has one")
    now, changes = continue_run(out, stored, asked, changeable=("--lr", "--ema"))
    train.update({k: now[f] for f, k in TRAIN_FLAGS.items()})
    return cfg["model_kwargs"], train, list(cfg.get("train_changes", [])) + changes


def main(argv=None):
    args = parse(argv)
    tag = args.tag or ("gan_mnist14" if args.data == "mnist-14" else "gan_mnist")
    out = run_dir(tag, args.out)
    settings = parse_sets(args.set)
    cfg_path = out / "config.json"
    old = json.loads(cfg_path.read_text()) if cfg_path.exists() else None  # a run to continue
    if old:  # its own settings, but for --lr and --ema
        settings, st, changes = continued(args, old, out)
        args.model, args.data = old["model"], old["data"]
    args.model, args.data = args.model or "nsgan", args.data or "mnist"
    train_ds, test_ds = load(args.data, "train"), load(args.data, "test")
    num_classes = train_ds.num_classes  # the model takes it only if it is conditional
    if not old:
        st = dict(batch_size=args.batch_size or 64, lr=args.lr or 2e-4, seed=args.seed or 0,
                  optimizer="adam", schedule="constant", log_every=max(args.chunk // 10, 1),
                  ema_decay=args.ema)
        changes = []
    cfg = {"model": args.model, "data": args.data, "model_kwargs": settings,
           "data_dir": os.environ.get("REFGEN_DATA_DIR"), "data_facts": data_facts(train_ds),
           "num_classes": num_classes, "vocab_size": None, "vocab": None,
           "train": dict(st, steps=args.steps), "train_changes": changes,
           "backend": backend.name(), "command": command()}
    model = build_model(args.model, data_shape=train_ds.shape, num_classes=num_classes,
                        seed=st["seed"], overrides=settings)
    if args.drs and not supports(model):  # before any training: the thinning could not run
        if model.pack != 1:
            raise SystemExit(f"gan_mnist.py: --drs with pack={model.pack}; rejection sampling "
                             "scores one sample per discriminator input: pack=1")
        if not args.drs_fit:
            raise SystemExit(f"gan_mnist.py: --drs on {args.model}: its discriminator's score "
                             "is no log p / q; give --drs-fit STEPS to fit a copy of it as a "
                             "minimax discriminator first")
    cpu0, t0 = time.process_time(), time.perf_counter()
    try:
        done = train_in_chunks(model, train_ds, out, cfg, steps=args.steps,
                               budget_min=args.budget_min, chunk=args.chunk, **st)
    except TrainingDiverged as e:  # a result that says so, with the log up to there
        write_result(tag, {"model": args.model, "data": args.data, "command": command(),
                           "model_kwargs": settings, "diverged": str(e),
                           "log": read_log(out, "loss") if (out / "log.jsonl").exists() else [],
                           "machine": machine()})
        raise SystemExit(f"{tag}: {e}")
    train_wall, train_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    model, run_cfg = load_run(out)  # the checkpoint's weights (also when only evaluating)
    run_wall = float(io.load_checkpoint(out / "checkpoint.npz")[1].get("wall_s", train_wall))

    result = {"model": args.model, "data": args.data, "command": command(),
              "train_command": run_cfg.get("command"), "model_kwargs": run_cfg["model_kwargs"],
              "train": dict(run_cfg["train"], steps=done), "steps": done,
              "train_changes": run_cfg.get("train_changes", []),
              "epochs": round(done * st["batch_size"] / len(train_ds.x), 2),
              "params": model.num_parameters(), "train_wall_s": round(run_wall, 1),
              "train_cpu_s_this_call": round(train_cpu, 1),
              "train_s_per_step": round(run_wall / max(done, 1), 4),
              "targets_for_a_longer_run": TARGETS}
    n = args.eval_n
    t = time.perf_counter()
    result["metrics"] = evaluate(model, test_ds, n_samples=n)
    result["eval_wall_s"] = round(time.perf_counter() - t, 1)
    n500 = 20 if SMOKE else 500
    t = time.perf_counter()
    r500 = evaluate(model, test_ds, n_samples=n500)
    result["fid_at_500"] = {"fid_mnist": r500["fid_mnist"], "fid_n_samples": r500["fid_n_samples"],
                            "eval_wall_s": round(time.perf_counter() - t, 1)}
    if args.variants_n:
        t = time.perf_counter()
        result["fid_by_sampling_variant"] = dict(
            n=args.variants_n, rows=sampling_variants(out, args.variants_n, st["batch_size"], st["seed"]),
            eval_wall_s=round(time.perf_counter() - t, 1))
    if hasattr(model, "codes"):
        t = time.perf_counter()
        result["code_classes"] = dict(code_classes(model, 20 if SMOKE else 1000, tag),
                                      eval_wall_s=round(time.perf_counter() - t, 1))
        print("codes", json.dumps({k: v for k, v in result["code_classes"].items() if k != "codes"}),
              flush=True)
    if args.truncation:
        result["truncation"] = truncation_sweep(model, test_ds, args.truncation, n, tag)
    if args.drs:
        drs_model = load_run(out, use_ema=False)[0] if args.drs_trained else model
        burn_in = 50 if SMOKE else args.drs_burn_in
        disc = None if supports(drs_model) else minimax_copy(drs_model)
        fits = args.drs_fit or [0]
        x = backend.asarray(train_ds.x) if args.drs_fit else None      # once, not per fit
        y = None if drs_model.num_classes is None else backend.asarray(train_ds.y)
        fit_rng, rows, done_fit = backend.default_rng(st["seed"] + 1), {}, 0
        for steps in fits:       # each fit continues the last: steps is the count in all
            fit = None
            if steps:
                t = time.perf_counter()
                losses = fit_discriminator(drs_model, x, y=y,
                                           steps=steps - done_fit, rng=fit_rng, lr=st["lr"],
                                           batch_size=st["batch_size"], discriminator=disc)
                done_fit, k = steps, max(len(losses) // 10, 1)
                fit = {"steps": steps, "lr": st["lr"], "batch_size": st["batch_size"],
                       "discriminator": ("the model's own" if disc is None else
                                         "a copy of the critic with a new score head at zero, "
                                         "fitted on the minimax loss"),
                       "d_loss_first_tenth": float(np.mean(losses[:k])),
                       "d_loss_last_tenth": float(np.mean(losses[-k:])),
                       "wall_s": round(time.perf_counter() - t, 1)}
                print("drs fit", json.dumps(fit), flush=True)
            name = "drs" if len(fits) == 1 else f"drs_fit{steps}"
            rows[str(steps)] = dict(drs_sweep(drs_model, test_ds, args.drs, n, tag, burn_in, disc, name),
                                    weights="trained" if args.drs_trained else "as sampled (EMA when kept)",
                                    fit_discriminator=fit)
        # one fit length (or none): the sweep itself; several: a sweep per fit length in all
        result["drs"] = rows[str(fits[0])] if len(fits) == 1 else {"by_fit_steps": rows}
    result["diffusion_unet_at_500"] = diffusion_at_500(args.data)
    result["fid_real_floor_at_10000"] = FLOOR_10K.get(args.data)

    grid = RESULTS / f"{tag}_samples.png"
    sample_grid(model, grid, value_range=(-1.0, 1.0))
    result["pngs"] = [rel(grid)]
    plot = loss_plot(out, RESULTS / f"{tag}_losses.png")
    if plot is not None:
        result["pngs"].append(rel(plot))
    result["log"] = read_log(out, "g_loss")
    result["machine"] = machine()
    write_result(tag, result)
    print(json.dumps(dict(steps=done, train_wall_s=result["train_wall_s"], **result["metrics"],
                          fid_at_500=result["fid_at_500"]["fid_mnist"])))


if __name__ == "__main__":
    main()
