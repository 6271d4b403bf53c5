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
from common import RESULTS, add_smoke, command, load, machine, read_log, run_dir, smoke, write_result  # noqa: E402
from t2i_common import (DATA, add_run_args, agreement, chunks, eval_context, image_scores,  # noqa: E402
                        settings_from, train_command, train_or_load)

import numpy as np  # noqa: E402

from refgen import backend, io  # noqa: E402
from refgen.models import create  # noqa: E402


def clip_guidance(model, args, train_ds, ev):
    """GLIDE's CLIP guidance: a noised CLIP on the same images and schedule (trained here, or
    loaded from /tmp/refgen_<tag>_noised_clip), then --n-clip samples per scale s at eq. (26)'s
    --clip-w, scored as the classifier-free ones."""
    from dalle_mnist import fit
    clip = create("clip-noised", data_shape=train_ds.shape, vocab_size=len(train_ds.vocab),
                  seed=args.seed, schedule="cosine", T=model.T)
    trained = fit(clip, train_ds, f"{args.tag}_noised_clip", smoke(args.noised_clip_steps, 2),
                  smoke(256, 8), 2e-3, args.seed, schedule="cosine", warmup=smoke(50, 1), grad_clip=1.0)
    n = min(smoke(args.n_clip, 16), len(ev["ids"]))
    out = {"noised_clip": {"train": trained, "steps": smoke(args.noised_clip_steps, 2)},
           "w": args.clip_w, "n": n}
    for s in [float(v) for v in args.clip_scales.split(",")]:
        ts, rng = time.perf_counter(), backend.default_rng(4321)
        x = np.clip(chunks(lambda c: model.sample(c.stop - c.start, cond=ev["ids"][c], rng=rng, guidance=args.clip_w,
                                                  noised_clip=clip, clip_scale=s,
                                                  steps=smoke(args.sample_steps, 3)), n), -1.0, 1.0)
        out[f"s={s:g}"] = dict(image_scores(x, ev["labels"][:n], ev["ref_stats"], ev["f_ref"]),
                               attribute_agreement=agreement(x, ev["lev"][:n], ev["templates"][:n], ev["cuts"]),
                               sample_wall_s=round(time.perf_counter() - ts, 1))
        io.write_png(RESULTS / f"{args.tag}_clip_s{s:g}.png", io.image_grid((x[:64] + 1) / 2))
        print(f"clip s={s:g}", json.dumps(out[f"s={s:g}"]), flush=True)
    return out


def main():
    p = add_smoke(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    add_run_args(p, "glide_mnist14")
    p.add_argument("--n", type=int, default=500, help="images per guidance weight")
    p.add_argument("--guidance", default="0,1,3")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--clip-scales", default="",
                   help="CLIP guidance scales s to evaluate (GLIDE's alternative to eq. (26)), e.g. 0,50,200")
    p.add_argument("--clip-w", type=float, default=0.0, help="eq. (26)'s w under CLIP guidance")
    p.add_argument("--n-clip", type=int, default=500, help="images per CLIP guidance scale")
    p.add_argument("--noised-clip-steps", type=int, default=2000,
                   help="training steps of the noised CLIP (/tmp/refgen_<tag>_noised_clip)")
    p.add_argument("--no-ema", action="store_true",
                   help="sample with the trained weights, not their EMA (for short runs, where "
                        "the average still holds much of the initialisation)")
    args = p.parse_args()
    settings = settings_from(dict(channels=16, text_width=32, text_layers=1, heads=2), args.set,
                             dict(channels=8, text_width=16, T=50))
    train_ds, test_ds = load(DATA, "train"), load(DATA, "test")
    model = create("glide", data_shape=train_ds.shape, vocab_size=len(train_ds.vocab),
                   seed=args.seed, **settings)
    out = run_dir(args.tag, args.out)
    meta, used_ema = train_or_load(model, train_ds, out, args, use_ema=not args.no_ema)
    n = smoke(args.n, 16)
    ev = eval_context(train_ds, test_ds, n)
    per_w = {}
    for w in [float(v) for v in args.guidance.split(",") if v]:
        ts, rng = time.perf_counter(), backend.default_rng(1234)
        x = np.clip(chunks(lambda c: model.sample(c.stop - c.start, cond=ev["ids"][c], rng=rng, guidance=w,
                                                  steps=smoke(args.sample_steps, 3)), n), -1.0, 1.0)
        per_w[f"w={w:g}"] = dict(image_scores(x, ev["labels"], ev["ref_stats"], ev["f_ref"]),
                                 attribute_agreement=agreement(x, ev["lev"], ev["templates"], ev["cuts"]),
                                 sample_wall_s=round(time.perf_counter() - ts, 1))
        io.write_png(RESULTS / f"{args.tag}_w{w:g}.png", io.image_grid((x[:64] + 1) / 2))
        np.savez(out / f"samples_w{w:g}.npz", x=x, labels=ev["labels"])   # for cascade_mnist.py
        print(f"w={w:g}", json.dumps(per_w[f"w={w:g}"]), flush=True)
    clip_guided = clip_guidance(model, args, train_ds, ev) if args.clip_scales else None
    log = read_log(out, "loss")
    result = {
        "command": command(), "train_command": train_command(out), "machine": machine(), "data": DATA,
        "settings": settings,
        "parameters": model.num_parameters(), "steps": int(meta["step"]),
        "batch_size": smoke(args.batch_size, 8), "lr": args.lr, "ema": args.ema,
        "sampled_with": "EMA weights" if used_ema else "trained weights (no EMA)",
        "train_wall_s": round(log[-1]["wall_s"], 1) if log else None,
        "loss_curve": [(r["step"], round(r["loss"], 4)) for r in log[::max(1, len(log) // 12)]],
        "sampler": f"ddim{smoke(args.sample_steps, 3)}", "n": n,
        "prompts": "the test images' captions, training template i mod 8 for image i",
        "guidance": per_w, "clip_guidance": clip_guided,
        "attribute_agreement_real": agreement(test_ds.x[:n], ev["lev"], ev["templates"], ev["cuts"]),
        "eval_wall_s": round(time.perf_counter() - ev["t0"], 1),
        "targets": {"cond_accuracy_at_w_ge_1": 0.98},
        "grids": [f"{args.tag}_w{w}.png" for w in args.guidance.split(",") if w],
    }
    if per_w:
        result["met"] = {"cond_accuracy_at_w_ge_1": all(v["cond_accuracy"] >= 0.98 for k, v in per_w.items()
                                                        if float(k[2:]) >= 1)}
    write_result(args.tag, result)


if __name__ == "__main__":
    main()
