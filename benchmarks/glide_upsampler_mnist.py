"""GLIDE's text-conditioned upsampler, 14 -> 28 on mnist-captions, beside the image-only one.

    OPENBLAS_NUM_THREADS=1 nice python benchmarks/glide_upsampler_mnist.py --budget-min 13 \\
        --sr-run /tmp/refgen_cascade_mnist_aug \\
        --base-samples /tmp/refgen_glide_mnist14_45m/samples_w1.npz --n 1000

Trains ``glide-upsampler`` on 28x28 mnist-captions (factor 2, noise conditioning augmentation
s ~ U{0..--aug-max}, the same U-Net size, schedule, batch and lr as cascade_mnist.py's
``cascade-sr`` models) with refgen's loop in resumable chunks for --budget-min minutes, in
/tmp/refgen_<tag>. Then upsamples N low-resolution images with the captions of
glide_mnist.py's prompts (the first N test images' captions, template i mod 8 for image i):

  real14          the test images' own 2x2-pooled versions
  <file stem>     each --base-samples file (x (N, 1, 14, 14), labels), drawn for those
                  captions (glide_mnist.py's samples_w<w>.npz)

with the upsampler given its caption, given another caption (the captions rolled by one, so
each names another image's digit and attributes: does the caption move the 28x28 output?),
and with the image-only ``cascade-sr`` of --sr-run (cascade_mnist.py's augmented model, when
given), each at every level of --levels. Reports FID / KID of the 28x28 outputs against the
MNIST test set, cond_accuracy against the input's digit and against the other caption's
digit, attribute agreement with the caption measured at 28x28 (cut points: the tertiles of
the 28x28 training images), and the mean squared difference between each output pooled back
to 14x14 and its input. Writes benchmarks/results/<tag>.json and <tag>_<source>.png (rows: the
input shown 2x, then the upsampler with its caption at each level). ``--smoke``: tiny, fast.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SMOKE, add_smoke, command, load, machine, read_log, run_dir, smoke, write_result  # noqa: E402
from t2i_common import add_run_args, agreement, prompts, settings_from, train_command, train_or_load  # noqa: E402

import numpy as np  # noqa: E402

from refgen import backend, io  # noqa: E402
from refgen.autograd import no_grad  # noqa: E402
from refgen.data import captions as cap  # noqa: E402
from refgen.metrics import cond_accuracy, kid, mnist_features  # noqa: E402
from refgen.metrics.fid import reference_stats  # noqa: E402
from refgen.metrics.frechet import frechet_distance, gaussian_stats  # noqa: E402
from refgen.models import create  # noqa: E402
from refgen.models.diffusion.cascade import downsample  # noqa: E402
from refgen.train import CHECKPOINT, load_weights  # noqa: E402

DATA = "mnist-captions"


def upsample(model, z, level, steps, seed, caption=None, chunk=100):
    """The model's 28x28 outputs (N, 1, 28, 28) for low-res images z (N, 1, 14, 14) at level s,
    with caption ids (N, L) for the text-conditioned upsampler (None: cascade-sr)."""
    rng, out = backend.default_rng(seed), []
    with no_grad():
        for i in range(0, len(z), chunk):
            zb = backend.asarray(z[i:i + chunk])
            kw = {} if caption is None else {"caption": backend.asarray(caption[i:i + chunk])}
            out.append(backend.to_numpy(model.sample(len(zb), cond=zb, rng=rng, steps=steps, aug_level=level, **kw)))
    return np.clip(np.concatenate(out), -1.0, 1.0)


def load_sr(path):
    """The image-only upsampler of a cascade_mnist.py run directory (its settings from
    cascade_mnist.json, its EMA weights), in eval mode."""
    d = json.loads((RESULTS / "cascade_mnist.json").read_text())
    aug = next(m["aug_max"] for m in d["models"].values() if Path(m["run"]) == Path(path))
    sr = create("cascade-sr", data_shape=(1, 28, 28), seed=0, aug_max=aug, **d["settings"])
    load_weights(sr, io.load_checkpoint(Path(path) / CHECKPOINT)[0])
    return sr.eval()


def scores(x, z, ev, other):
    """FID / KID at 28x28, the digit (of the input, and of the other caption), attribute
    agreement with the caption, and how faithful the output is to its input."""
    feats = mnist_features(x)
    k, k_se = kid(feats, ev["f_ref"], rng=0)
    pooled = backend.to_numpy(downsample(backend.asarray(x), 2))
    return {"fid_mnist": frechet_distance(*gaussian_stats(feats), *ev["ref"]), "kid_mnist": k, "kid_mnist_se": k_se,
            "cond_accuracy": cond_accuracy(x, ev["labels"]),
            "cond_accuracy_other_caption": cond_accuracy(x, ev["labels"][other]),
            "attribute_agreement": agreement(x, ev["lev"], ev["templates"], ev["cuts"], upscale=False),
            "pooled_mse_to_input": float(np.mean((pooled - z) ** 2)), "n": int(len(x))}


def main():
    p = add_smoke(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    add_run_args(p, "glide_upsampler_mnist")
    p.add_argument("--aug-max", type=int, default=250, help="the largest augmentation level (T = 1000)")
    p.add_argument("--levels", default="0,250", help="inference levels s")
    p.add_argument("--sr-run", help="a cascade-sr run directory of cascade_mnist.json (its augmented model), "
                   "for comparison")
    p.add_argument("--base-samples", action="append", default=[], help=".npz with x and labels")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--sample-steps", type=int, default=25)
    args = p.parse_args()
    settings = settings_from(dict(channels=16, num_res_blocks=1, schedule="cosine", aug_max=args.aug_max),
                             args.set, dict(channels=8, T=50, aug_max=12, text_width=16))
    train_ds, test_ds = load(DATA, "train"), load(DATA, "test")
    model = create("glide-upsampler", data_shape=train_ds.shape, seed=args.seed, **settings)
    out = run_dir(args.tag, args.out)
    meta, used_ema = train_or_load(model, train_ds, out, args)
    n, steps = smoke(args.n, 16), smoke(args.sample_steps, 3)
    ids, templates = prompts(test_ds, n)
    other = np.roll(np.arange(n), 1)                                       # image i gets caption i - 1
    f_ref = mnist_features(load("mnist", "test").x)
    ev = {"labels": test_ds.y[:n], "lev": test_ds.captions.lev[:n], "templates": templates,
          "cuts": cap.thresholds(cap.measure(train_ds.x[:smoke(10_000, 64)])), "f_ref": f_ref,
          "ref": gaussian_stats(f_ref) if SMOKE else reference_stats("test", 28)}
    sr = load_sr(args.sr_run) if args.sr_run else None
    levels = [smoke(int(v), min(int(v), 12)) for v in args.levels.split(",")]
    sources = {"real14": backend.to_numpy(downsample(backend.asarray(test_ds.x[:n]), 2))}
    for path in args.base_samples:
        d = np.load(path)
        if not np.array_equal(d["labels"][:n], ev["labels"]):
            raise SystemExit(f"{path}: its labels are not the first {n} test images' (glide_mnist.py's prompts)")
        sources[Path(path).stem] = d["x"][:n].astype(np.float32)

    t0, results = time.perf_counter(), {}
    for src, z in sources.items():
        row, grid = {}, [np.repeat(np.repeat(z[:8], 2, axis=-2), 2, axis=-1)]
        for s in levels:
            for name, kw in (("caption", dict(caption=ids)), ("other caption", dict(caption=ids[other])),
                             ("cascade-sr, no caption", None)):
                if kw is None and sr is None:
                    continue
                x = upsample(model if kw else sr, z, s, steps, args.seed + 2, **(kw or {}))
                row[f"{name} s={s}"] = scores(x, z, ev, other)
                print(src, name, s, json.dumps(row[f"{name} s={s}"]), flush=True)
                if name == "caption":
                    grid.append(x[:8])
        results[src] = row
        io.write_png(RESULTS / f"{args.tag}_{src}.png", io.image_grid((np.concatenate(grid) + 1) / 2, nrow=8))

    log = read_log(out, "loss")
    write_result(args.tag, {
        "command": command(), "train_command": train_command(out), "machine": machine(), "data": DATA,
        "settings": settings, "parameters": model.num_parameters(), "steps": int(meta["step"]),
        "batch_size": smoke(args.batch_size, 8), "lr": args.lr,
        "sampled_with": "EMA weights" if used_ema else "trained weights",
        "train_wall_s": round(log[-1]["wall_s"], 1) if log else None,
        "loss_curve": [(r["step"], round(r["loss"], 4)) for r in log[::max(1, len(log) // 10)]],
        "sr_run": args.sr_run, "sampler": f"ddim{steps}, guidance 0", "n": n, "levels": levels,
        "captions": "glide_mnist.py's prompts; 'other caption': image i given caption i - 1",
        "sources": results, "eval_wall_s": round(time.perf_counter() - t0, 1),
        "grids": [f"{args.tag}_{s}.png" for s in results],
        "note": "rows of each grid: the 14x14 input shown 2x, then the upsampler with its caption at each level"})


if __name__ == "__main__":
    main()
