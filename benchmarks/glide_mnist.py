"""GLIDE on mnist-captions-14: does a caption steer the digit and its attributes?

    OPENBLAS_NUM_THREADS=1 nice python benchmarks/glide_mnist.py --budget-min 30 \\
        --out runs/glide_mnist14 --n 500

Trains ``glide`` (jointly trained text transformer, U-Net with cross-attention to the caption
tokens and the pooled caption in the time embedding, captions dropped with p_uncond) with
refgen's loop, in chunks until --steps or --budget-min, then draws N images (DDIM, --sample-
steps) for the captions of N test images, one training template per image in turn, at each
classifier-free guidance weight w of --guidance (eq. (26)), and reports per w:

  cond_accuracy        refgen's MNIST classifier (refgen.metrics.cond_accuracy, which
                       upsamples 14x14 images 2x) agrees with the digit the caption names
  attribute_agreement  per attribute, over the captions that name it: the level measured on
                       the generated image (refgen.data.captions measurements on the image
                       upsampled 2x, nearest) equals the level the caption names. The cut
                       points are the tertiles of the same measurement of the training images
                       at 14x14, and ``attribute_agreement_real`` is the same score of the
                       test images themselves (their captions were measured at 28x28): the
                       ceiling the pooling leaves (chance is about 1/3)
  fid_mnist, kid_mnist against the mnist-14 test set, all w at the same N

With --clip-scales, also GLIDE's alternative to eq. (26), CLIP guidance: a noised CLIP
(``clip-noised``, trained on the same 14x14 images and schedule for --noised-clip-steps in
/tmp/refgen_<tag>_noised_clip) steers the conditional model (eq. (26)'s w = --clip-w) by the
gradient of its similarity to the caption at each step, scored the same way on --n-clip
captions per scale s (``--guidance ""`` skips the classifier-free part).

Writes benchmarks/results/<tag>.json (and <tag>_w<w>.png, <tag>_clip_s<s>.png grids of the
first 64 images), and each w's samples with their labels as samples_w<w>.npz in the run
directory (what cascade_mnist.py upsamples).
``--smoke``: a few steps of a tiny model on 64 images, into a temporary directory.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, SMOKE, add_smoke, command, load, machine, read_log, run_dir,  # noqa: E402
                    smoke, write_result)

import numpy as np  # noqa: E402

from refgen import backend, io  # noqa: E402
from refgen.autograd import no_grad  # noqa: E402
from refgen.data import captions as cap  # noqa: E402
from refgen.metrics import cond_accuracy, kid, mnist_features  # noqa: E402
from refgen.metrics.fid import reference_stats  # noqa: E402
from refgen.metrics.frechet import frechet_distance, gaussian_stats  # noqa: E402
from refgen.models import create  # noqa: E402
from refgen.train import CHECKPOINT, load_weights, train  # noqa: E402

DATA = "mnist-captions-14"


def up2(x):
    """(N, 1, 14, 14) -> (N, 1, 28, 28), nearest: the measurements' own resolution."""
    return np.repeat(np.repeat(x, 2, axis=-2), 2, axis=-1)


def named(template):
    """Indices (into ATTRIBUTES) of the attributes a template names."""
    return [k for k, a in enumerate(cap.ATTRIBUTES) if "{" + a + "}" in template]


def prompts(ds, n):
    """Caption ids (n, L) of the first n images, template i mod 8 for image i (the first
    allowed one after it where the combination is held out), and the template of each."""
    k = np.arange(n) % len(cap.TEMPLATES)
    allowed = ds.captions.allowed[:n]
    k = np.where(allowed[np.arange(n), k], k, allowed.argmax(axis=1))
    return ds.captions.ids[np.arange(n), k], k


def agreement(images, lev_named, templates, cuts):
    """{attribute: fraction of the captions naming it whose level the images show}."""
    got = cap.levels(cap.measure(up2(images)), cuts)                      # (n, 4)
    out = {}
    for a_k, a in enumerate(cap.ATTRIBUTES):
        rows = np.array([a_k in named(cap.TEMPLATES[t]) for t in templates])
        if rows.any():
            out[a] = float(np.mean(got[rows, a_k] == lev_named[rows, a_k]))
    return out


def train_chunks(model, ds, out, *, steps, budget_min, chunk, **kw):
    """refgen's loop in calls of ``chunk`` steps, each resuming the last, until ``steps`` or
    ``budget_min`` minutes (checked between chunks). Returns the steps done."""
    done, t0 = 0, time.perf_counter()
    while done < steps and time.perf_counter() - t0 < 60 * budget_min:
        m = train(model, ds, steps=min(steps, done + chunk), out_dir=out, ckpt_every=chunk,
                  resume=done > 0, progress=False, samples=False, evaluate_at_end=False, **kw)
        done = m["steps"]
        print(f"step {done}  loss {m['loss']:.4f}  ({time.perf_counter() - t0:.0f}s)", flush=True)
    return done


def clip_guidance(model, args, train_ds, ids, labels, lev, templates, cuts, f_ref, ref_stats):
    """GLIDE's CLIP guidance: a noised CLIP on the same images and schedule (trained here, or
    loaded from /tmp/refgen_<tag>_noised_clip), then --n-clip samples per scale s at eq. (26)'s
    --clip-w, scored as the classifier-free ones."""
    from dalle_mnist import fit
    clip = create("clip-noised", data_shape=train_ds.shape, vocab_size=len(train_ds.vocab),
                  seed=args.seed, schedule="cosine", T=model.T)
    trained = fit(clip, train_ds, f"{args.tag}_noised_clip", smoke(args.noised_clip_steps, 2),
                  smoke(256, 8), 2e-3, args.seed, schedule="cosine", warmup=smoke(50, 1), grad_clip=1.0)
    n = min(smoke(args.n_clip, 16), len(ids))
    out = {"noised_clip": {"train": trained, "steps": smoke(args.noised_clip_steps, 2)},
           "w": args.clip_w, "n": n}
    for s in [float(v) for v in args.clip_scales.split(",")]:
        ts, rng = time.perf_counter(), backend.default_rng(4321)
        x = np.concatenate([backend.to_numpy(model.sample(min(100, n - i), cond=ids[i:i + 100], rng=rng,
                                                          guidance=args.clip_w, noised_clip=clip, clip_scale=s,
                                                          steps=smoke(args.sample_steps, 3)))
                            for i in range(0, n, 100)])
        x = np.clip(x, -1.0, 1.0)
        feats = mnist_features(x)
        k, k_se = kid(feats, f_ref, rng=0)
        out[f"s={s:g}"] = {"cond_accuracy": cond_accuracy(x, labels[:n]),
                           "attribute_agreement": agreement(x, lev[:n], templates[:n], cuts),
                           "fid_mnist": frechet_distance(*gaussian_stats(feats), *ref_stats),
                           "kid_mnist": k, "kid_mnist_se": k_se,
                           "sample_wall_s": round(time.perf_counter() - ts, 1)}
        io.write_png(RESULTS / f"{args.tag}_clip_s{s:g}.png", io.image_grid((x[:64] + 1) / 2))
        print(f"clip s={s:g}", json.dumps(out[f"s={s:g}"]), flush=True)
    return out


def main():
    p = add_smoke(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--budget-min", type=float, default=30.0)
    p.add_argument("--chunk", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=500, help="images per guidance weight")
    p.add_argument("--guidance", default="0,1,3")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--set", action="append", default=[], help="model option key=value")
    p.add_argument("--out", help="run directory (default /tmp/refgen_glide_mnist14)")
    p.add_argument("--tag", default="glide_mnist14")
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate the checkpoint already in --out (no training)")
    p.add_argument("--clip-scales", default="",
                   help="CLIP guidance scales s to evaluate (GLIDE's alternative to eq. (26)), e.g. 0,50,200")
    p.add_argument("--clip-w", type=float, default=0.0, help="eq. (26)'s w under CLIP guidance")
    p.add_argument("--n-clip", type=int, default=500, help="images per CLIP guidance scale")
    p.add_argument("--noised-clip-steps", type=int, default=2000,
                   help="training steps of the noised CLIP (/tmp/refgen_<tag>_noised_clip)")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the weights")
    p.add_argument("--no-ema", action="store_true",
                   help="sample with the trained weights, not their EMA (for short runs, where "
                        "the average still holds much of the initialisation)")
    args = p.parse_args()
    settings = dict(channels=16, text_width=32, text_layers=1, heads=2)
    settings.update({k: json.loads(v) if v[:1].isdigit() or v[:1] in "[-" else v
                     for k, v in (s.split("=", 1) for s in args.set)})
    if SMOKE:
        settings.update(channels=8, text_width=16, T=50)
    train_ds, test_ds = load(DATA, "train"), load(DATA, "test")
    model = create("glide", data_shape=train_ds.shape, vocab_size=len(train_ds.vocab),
                   seed=args.seed, **settings)
    out = run_dir(args.tag, args.out)
    t0, c0 = time.perf_counter(), time.process_time()
    if args.eval_only:
        arrays, meta = io.load_checkpoint(out / CHECKPOINT)
        steps = int(meta["step"])
    else:
        steps = train_chunks(model, train_ds, out, steps=smoke(args.steps, 4),
                             budget_min=args.budget_min, chunk=smoke(args.chunk, 2),
                             batch_size=smoke(args.batch_size, 8), lr=args.lr, seed=args.seed,
                             ema_decay=args.ema, warmup=smoke(200, 1), grad_clip=1.0,
                             log_every=smoke(25, 1))
        arrays = io.load_checkpoint(out / CHECKPOINT)[0]
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    used_ema = load_weights(model, arrays, use_ema=not args.no_ema)
    model.eval()

    n = smoke(args.n, 16)
    ids, templates = prompts(test_ds, n)
    labels, lev = test_ds.y[:n], test_ds.captions.lev[:n]
    cuts = cap.thresholds(cap.measure(up2(train_ds.x[:smoke(10_000, 64)])))
    ref = load("mnist-14", "test").x
    f_ref = mnist_features(ref)
    mu_r, sigma_r = (gaussian_stats(f_ref) if SMOKE else reference_stats("test", 14))
    per_w = {}
    for w in [float(v) for v in args.guidance.split(",") if v]:
        ts = time.perf_counter()
        rng = backend.default_rng(1234)
        with no_grad():
            x = np.concatenate([backend.to_numpy(model.sample(min(100, n - i), cond=ids[i:i + 100],
                                                              rng=rng, guidance=w,
                                                              steps=smoke(args.sample_steps, 3)))
                                for i in range(0, n, 100)])
        x = np.clip(x, -1.0, 1.0)
        feats = mnist_features(x)
        k, k_se = kid(feats, f_ref, rng=0)
        per_w[f"w={w:g}"] = {
            "cond_accuracy": cond_accuracy(x, labels),
            "attribute_agreement": agreement(x, lev, templates, cuts),
            "fid_mnist": frechet_distance(*gaussian_stats(feats), mu_r, sigma_r),
            "kid_mnist": k, "kid_mnist_se": k_se, "n": n,
            "sample_wall_s": round(time.perf_counter() - ts, 1)}
        io.write_png(RESULTS / f"{args.tag}_w{w:g}.png", io.image_grid((x[:64] + 1) / 2))
        np.savez(out / f"samples_w{w:g}.npz", x=x, labels=labels)        # for cascade_mnist.py
        print(f"w={w:g}", json.dumps(per_w[f"w={w:g}"]), flush=True)
    clip_guided = clip_guidance(model, args, train_ds, ids, labels, lev, templates, cuts, f_ref,
                                (mu_r, sigma_r)) if args.clip_scales else None
    real = agreement(test_ds.x[:n], lev, templates, cuts)
    result = {
        "command": command(), "machine": machine(), "data": DATA, "settings": settings,
        "parameters": model.num_parameters(), "steps": steps,
        "batch_size": smoke(args.batch_size, 8), "lr": args.lr, "ema": args.ema,
        "sampled_with": "EMA weights" if used_ema else "trained weights (no EMA)",
        "train_wall_s": round(read_log(out, "wall_s")[-1]["wall_s"], 1) if args.eval_only else round(train_s, 1),
        "train_cpu_s": None if args.eval_only else round(train_cpu, 1),
        "loss_curve": [(r["step"], round(r["loss"], 4)) for r in read_log(out, "loss")][::4],
        "sampler": f"ddim{smoke(args.sample_steps, 3)}", "n": n,
        "prompts": "the test images' captions, training template i mod 8 for image i",
        "guidance": per_w, "clip_guidance": clip_guided, "attribute_agreement_real": real,
        "targets": {"cond_accuracy_at_w_ge_1": 0.98},
        "grids": [f"{args.tag}_w{w}.png" for w in args.guidance.split(",") if w],
    }
    if per_w:
        result["met"] = {"cond_accuracy_at_w_ge_1": all(v["cond_accuracy"] >= 0.98 for k, v in per_w.items()
                                                        if float(k[2:]) >= 1)}
    write_result(args.tag, result)


if __name__ == "__main__":
    main()
