"""A 14 -> 28 cascade on MNIST: a super-resolution diffusion model with and without noise
conditioning augmentation, fed real low-resolution images and base models' samples.

    OPENBLAS_NUM_THREADS=1 nice python benchmarks/cascade_mnist.py --budget-min 22 \\
        --base-run /tmp/refgen_dm14_v --base-samples /tmp/refgen_glide_mnist14_45m/samples_w1.npz

Trains two ``cascade-sr`` models on 28x28 MNIST (factor 2; the same U-Net, schedule and
budget), one with Gaussian conditioning augmentation (s ~ U{0..--aug-max}) and one without
(aug_max = 0), each in /tmp/refgen_<tag>_{aug,noaug} with refgen's loop in resumable chunks
for --budget-min minutes. Then upsamples N low-resolution images from each source,

  real14          the test images' own 2x2-pooled versions (what super-resolution alone adds)
  base            N samples of the mnist-14 diffusion run --base-run (a refgen run
                  directory), drawn here (--base-steps DDIM steps)
  <file stem>     each --base-samples file: x (N, 1, 14, 14) in [-1, 1] and, when present,
                  labels (N,) (the text-to-image benchmarks write these, e.g. GLIDE's w = 1
                  samples)

with the model without augmentation at s = 0 and the model with it at each level of
--levels (the non-truncated cascade: z_s ~ q(z_s | z_0), the level told to the network), and
reports FID / KID of the 28x28 outputs against the MNIST test set, their cond_accuracy where
labels are known, and the mean squared difference between each output pooled back to 14x14
and its input (how faithful the upsampling is). Writes benchmarks/results/<tag>.json and
<tag>_<source>.png (rows: the 14x14 input, shown 2x, then each model's output).
``--smoke``: tiny models, a few steps, 16 images.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, SMOKE, add_smoke, command, load, machine, read_log, run_dir,  # noqa: E402
                    smoke, train_in_chunks, write_result)

import numpy as np  # noqa: E402

from refgen import backend, io  # noqa: E402
from refgen.autograd import no_grad  # noqa: E402
from refgen.metrics import cond_accuracy, kid, mnist_features  # noqa: E402
from refgen.metrics.fid import reference_stats  # noqa: E402
from refgen.metrics.frechet import frechet_distance, gaussian_stats  # noqa: E402
from refgen.models import create  # noqa: E402
from refgen.models.diffusion.cascade import downsample  # noqa: E402
from refgen.runs import load_run  # noqa: E402
from refgen.train import CHECKPOINT, load_weights  # noqa: E402


def upsample_all(sr, z, level, steps, seed, chunk=100):
    """sr's 28x28 samples (N, 1, 28, 28) for the low-res images z (N, 1, 14, 14) at level s."""
    rng, out = backend.default_rng(seed), []
    with no_grad():
        for i in range(0, len(z), chunk):
            zb = backend.asarray(z[i:i + chunk])
            out.append(backend.to_numpy(sr.sample(len(zb), cond=zb, rng=rng, steps=steps, aug_level=level)))
    return np.clip(np.concatenate(out), -1.0, 1.0)


def scores(x, z, labels, ref, f_ref):
    feats = mnist_features(x)
    k, k_se = kid(feats, f_ref, rng=0)
    pooled = backend.to_numpy(downsample(backend.asarray(x), 2))
    return {"fid_mnist": frechet_distance(*gaussian_stats(feats), *ref), "kid_mnist": k, "kid_mnist_se": k_se,
            "cond_accuracy": None if labels is None else cond_accuracy(x, labels),
            "pooled_mse_to_input": float(np.mean((pooled - z) ** 2)), "n": int(len(x))}


def main():
    p = add_smoke(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--budget-min", type=float, default=20.0, help="training minutes per model")
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--chunk", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--aug-max", type=int, default=250, help="the largest augmentation level (T = 1000)")
    p.add_argument("--levels", default="0,100,250", help="inference levels s of the augmented model")
    p.add_argument("--base-run", help="a refgen run directory of a mnist-14 diffusion model")
    p.add_argument("--base-steps", type=int, default=50)
    p.add_argument("--base-samples", action="append", default=[], help=".npz with x (and labels)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--sample-steps", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], help="cascade-sr option key=value")
    p.add_argument("--tag", default="cascade_mnist")
    args = p.parse_args()
    settings = dict(channels=16, num_res_blocks=1, attn_res=[], schedule="cosine")
    settings.update({k: json.loads(v) if v[:1].isdigit() or v[:1] in "[-" else v
                     for k, v in (s.split("=", 1) for s in args.set)})
    if SMOKE:
        settings.update(channels=8, T=50)
    train_ds, test = load("mnist", "train"), load("mnist", "test")
    n, steps = smoke(args.n, 16), smoke(args.sample_steps, 3)
    models, trained = {}, {}
    for name, aug in (("aug", smoke(args.aug_max, 12)), ("noaug", 0)):
        sr = create("cascade-sr", data_shape=(1, 28, 28), seed=args.seed, aug_max=aug, **settings)
        out = run_dir(f"{args.tag}_{name}")
        train_in_chunks(sr, train_ds, out, steps=smoke(args.steps, 4), budget_min=args.budget_min,
                        chunk=smoke(args.chunk, 2), batch_size=smoke(args.batch_size, 8), lr=args.lr,
                        seed=args.seed, ema_decay=0.999, warmup=smoke(200, 1), grad_clip=1.0,
                        log_every=smoke(25, 1), evaluate_at_end=False)
        arrays, meta = io.load_checkpoint(out / CHECKPOINT)
        load_weights(sr, arrays)
        models[name] = sr.eval()
        log = read_log(out, "loss")
        trained[name] = {"aug_max": aug, "steps": int(meta["step"]), "run": str(out),
                         "train_wall_s": round(log[-1]["wall_s"], 1),
                         "loss_curve": [(r["step"], round(r["loss"], 4)) for r in log[::max(1, len(log) // 10)]]}
        print(name, trained[name]["steps"], "steps", flush=True)

    sources = {"real14": (backend.to_numpy(downsample(backend.asarray(test.x[:n]), 2)), test.y[:n])}
    if args.base_run:
        base, _ = load_run(args.base_run)
        rng = backend.default_rng(args.seed + 1)
        with no_grad():
            z = np.concatenate([backend.to_numpy(base.sample(min(100, n - i), None, rng=rng,
                                                             steps=smoke(args.base_steps, 3)))
                                for i in range(0, n, 100)])
        sources["base"] = (np.clip(z, -1, 1), None)
    for path in args.base_samples:
        d = np.load(path)
        sources[Path(path).stem] = (d["x"][:n].astype(np.float32), d["labels"][:n] if "labels" in d else None)

    f_ref = mnist_features(test.x)
    ref = gaussian_stats(f_ref) if SMOKE else reference_stats("test", 28)
    f_ref14 = mnist_features(load("mnist-14", "test").x)
    ref14 = gaussian_stats(f_ref14) if SMOKE else reference_stats("test", 14)
    levels = [int(v) for v in args.levels.split(",")]
    results = {}
    for src, (z, labels) in sources.items():
        ts = time.perf_counter()
        f14 = mnist_features(z)
        row = {"input_14": {"fid_mnist14": frechet_distance(*gaussian_stats(f14), *ref14),
                            "cond_accuracy": None if labels is None else cond_accuracy(z, labels),
                            "n": int(len(z))}}
        outs = {"noaug s=0": upsample_all(models["noaug"], z, 0, steps, args.seed + 2)}
        for s in levels:
            outs[f"aug s={s}"] = upsample_all(models["aug"], z, smoke(s, min(s, 12)), steps, args.seed + 2)
        for k, x in outs.items():
            row[k] = scores(x, z, labels, ref, f_ref)
            print(src, k, json.dumps(row[k]), flush=True)
        row["wall_s"] = round(time.perf_counter() - ts, 1)
        results[src] = row
        big_z = np.repeat(np.repeat(z[:8], 2, axis=-2), 2, axis=-1)
        grid = np.concatenate([big_z] + [x[:8] for x in outs.values()])           # rows: input, each output
        io.write_png(RESULTS / f"{args.tag}_{src}.png", io.image_grid((grid + 1) / 2, nrow=8))

    result = {"command": command(), "machine": machine(), "settings": settings, "models": trained,
              "sampler": f"ddim{steps} (super-resolution), ddim{smoke(args.base_steps, 3)} (base)",
              "n": n, "levels": levels, "sources": results,
              "grids": [f"{args.tag}_{s}.png" for s in results],
              "note": "rows of each grid: the 14x14 input shown 2x, then noaug s=0, then aug at each level"}
    write_result(args.tag, result)


if __name__ == "__main__":
    main()
