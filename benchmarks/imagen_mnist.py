"""Imagen on mnist-captions-14: a frozen text encoder, and what dynamic thresholding buys at
large guidance weights.

    OPENBLAS_NUM_THREADS=1 nice python benchmarks/imagen_mnist.py --budget-min 40 \\
        --out /tmp/refgen_imagen_mnist14 --n 1000

Builds on a trained CLIP (dalle_mnist.py's, in /tmp/refgen_<--clip-run>; trained here to
--clip-steps when that directory holds none), whose text tower is Imagen's frozen encoder.
Trains ``imagen`` on the 14x14 images with refgen's loop in resumable chunks until --steps or
--budget-min, then draws N images (DDIM, --sample-steps) for the captions of the first N test
images (glide_mnist.py's prompts) at every guidance weight w of --guidance, once with static
clipping of the predicted x_0 to [-1, 1] and once with dynamic thresholding (p = 0.995), and
reports per (threshold, w): cond_accuracy, attribute agreement (glide_mnist.py's measure),
FID and KID against the mnist-14 test set, all at the same N and from the same noise.

Writes benchmarks/results/<tag>.json, <tag>_fid_vs_w.png (FID against w, one line per
threshold, each point labelled with its cond_accuracy) and <tag>_<threshold>_w<w>.png grids,
and the samples with their labels as samples_<threshold>_w<w>.npz in the run directory (what
cascade_mnist.py upsamples).
``--eval-only`` evaluates the checkpoint in --out. ``--smoke``: a tiny model, a few steps.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, add_smoke, command, load, machine, read_log, run_dir, smoke, write_result  # noqa: E402
from t2i_common import (DATA, add_clip_args, add_run_args, agreement, chunks, eval_context,  # noqa: E402
                        frozen_clip, image_scores, settings_from, train_command, train_or_load)

import numpy as np  # noqa: E402

from refgen import backend, io  # noqa: E402
from refgen.models import create  # noqa: E402

THRESHOLDS = ("static", "dynamic")


def main():
    p = add_smoke(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    add_run_args(p, "imagen_mnist14")
    add_clip_args(p)
    p.add_argument("--n", type=int, default=1000, help="captions per (threshold, w)")
    p.add_argument("--guidance", default="0,1,3,5,7,10")
    p.add_argument("--sample-steps", type=int, default=25)
    args = p.parse_args()
    settings = settings_from(dict(channels=16, heads=2), args.set, dict(channels=8, T=50))
    train_ds, test_ds = load(DATA, "train"), load(DATA, "test")
    clip, clip_train = frozen_clip(args, len(train_ds.vocab))
    model = create("imagen", data_shape=train_ds.shape, seed=args.seed, clip=clip, **settings)
    out = run_dir(args.tag, args.out)
    meta, used_ema = train_or_load(model, train_ds, out, args)
    n, steps = smoke(args.n, 16), smoke(args.sample_steps, 3)
    ev = eval_context(train_ds, test_ds, n)
    ids, labels = ev["ids"], ev["labels"]
    weights = [float(g) for g in args.guidance.split(",")]
    per = {th: {} for th in THRESHOLDS}
    for th in THRESHOLDS:
        for w in weights:
            rng, ts = backend.default_rng(args.seed + 13), time.perf_counter()   # the same noise for every cell
            x = np.clip(chunks(lambda s: model.sample(s.stop - s.start, backend.asarray(ids[s]), rng=rng,
                                                      guidance=w, threshold=th, steps=steps), n), -1, 1)
            per[th][f"w={w:g}"] = dict(image_scores(x, labels, ev["ref_stats"], ev["f_ref"]),
                                       attribute_agreement=agreement(x, ev["lev"], ev["templates"], ev["cuts"]),
                                       sample_wall_s=round(time.perf_counter() - ts, 1))
            io.write_png(RESULTS / f"{args.tag}_{th}_w{w:g}.png", io.image_grid((x[:64] + 1) / 2))
            np.savez(out / f"samples_{th}_w{w:g}.npz", x=x, labels=labels)   # for cascade_mnist.py
            print(th, w, json.dumps(per[th][f"w={w:g}"]), flush=True)
    img, _ = io.line_plot(weights, [[per[th][f"w={w:g}"]["fid_mnist"] for w in weights] for th in THRESHOLDS],
                          xlabel="guidance w", ylabel="FID", series_labels=list(THRESHOLDS),
                          point_labels=[[f"{per[th][f'w={w:g}']['cond_accuracy']:.2f}" for w in weights]
                                        for th in THRESHOLDS])
    io.write_png(RESULTS / f"{args.tag}_fid_vs_w.png", img)

    log = read_log(out, "loss")
    hi = [w for w in weights if 5 <= w <= 10]
    result = {
        "command": command(), "train_command": train_command(out), "machine": machine(), "data": DATA,
        "settings": settings,
        "clip": {"run": f"/tmp/refgen_{args.clip_run}", "train": clip_train,
                 "role": "frozen text encoder (its text tower)"},
        "parameters": model.num_parameters(), "steps": int(meta["step"]),
        "batch_size": smoke(args.batch_size, 8), "lr": args.lr, "ema": args.ema,
        "sampled_with": "EMA weights" if used_ema else "trained weights",
        "train_wall_s": round(log[-1]["wall_s"], 1) if log else None,
        "loss_curve": [(r["step"], round(r["loss"], 4)) for r in log[::max(1, len(log) // 12)]],
        "sampler": f"ddim{steps}", "n": n, "dynamic_percentile": 0.995,
        "prompts": "the test images' captions, training template i mod 8 for image i",
        "per_threshold": per,
        "attribute_agreement_real": agreement(test_ds.x[:n], ev["lev"], ev["templates"], ev["cuts"]),
        "eval_wall_s": round(time.perf_counter() - ev["t0"], 1),
        "targets": {"cond_accuracy_at_w_ge_1": 0.98,
                    "dynamic_fid_below_static_at_w_5_to_10": True},
        "plot": f"{args.tag}_fid_vs_w.png",
    }
    result["met"] = {
        **{f"cond_accuracy_at_w_ge_1_{th}": all(v["cond_accuracy"] >= 0.98 for k, v in per[th].items()
                                                if float(k[2:]) >= 1) for th in THRESHOLDS},
        "dynamic_fid_below_static_at_w_5_to_10": bool(hi) and all(
            per["dynamic"][f"w={w:g}"]["fid_mnist"] < per["static"][f"w={w:g}"]["fid_mnist"] for w in hi)}
    write_result(args.tag, result)


if __name__ == "__main__":
    main()
