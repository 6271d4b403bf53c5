"""DDPM on the 2D toys (MLP denoiser): modes covered, MMD, the VLB in nats beside the data
entropy, sample plots, wall times.

    OPENBLAS_NUM_THREADS=1 python benchmarks/diffusion_2d.py
    OPENBLAS_NUM_THREADS=1 python benchmarks/diffusion_2d.py --variant hybrid --set learn_sigma=true

For each data set (8gaussians, checkerboard) a ``ddpm`` is trained with refgen.train.train
(its default_train settings unless overridden), then, with the EMA weights:

  - samples: ancestral DDPM over all T steps (eq. 17) and DDIM (eta = 0) over 50 strided steps;
    modes covered / high-quality fraction (8gaussians), MMD^2 against the test set, and the
    MMD^2 of a second test sample as the floor;
  - the bound L_VLB (eqs. 13-16) in nats per point on ``--vlb-n`` test points, exact in t,
    with each of the model's variances (for an L_simple model sigma_t^2 = beta_tilde_t and
    beta_t are both valid reverse processes of one network), beside the data's entropy H:
    -log p(x) >= H on average, so L_VLB - H must be >= 0 and is an upper bound on
    KL(p_data || p_model).

Writes benchmarks/results/<tag>.json and <tag>_<data>.png (data | DDPM samples | DDIM-50).
``--smoke``: 2 steps of a T = 30 model on 256 points of each data set, 64 samples.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, SMOKE, add_smoke, command, load, machine, smoke,  # noqa: E402
                    train_and_load, write_json)

import numpy as np  # noqa: E402

from refgen.runs import parse_sets  # noqa: E402
from refgen import backend, data, io, metrics, models  # noqa: E402
from refgen.autograd import no_grad  # noqa: E402



def panel(points, reference=None):
    img = io.scatter_image(points, reference=reference, size=256)
    img[[0, -1], :] = img[:, [0, -1]] = 190
    return img


def run(name, args, settings):
    """Train on one data set, then score its samples and its bound."""
    train_ds, test_ds = load(name, "train", n_smoke=256), load(name, "test", n_smoke=256)
    model, out = fit(name, args, settings, train_ds)
    model.eval()
    out.update(sample_scores(name, args, model, test_ds))
    out.update(vlb_scores(name, args, model, test_ds))
    return out


def fit(name, args, settings, train_ds):
    """A ddpm trained with its default_train settings; the EMA weights loaded at the end."""
    st = dict(models.get("ddpm").default_train)
    steps, batch_size = args.steps or st["steps"], smoke(st["batch_size"], 32)
    model = models.create("ddpm", data_shape=(2,), seed=args.seed, **settings)
    out = {"data": name, "settings": settings, "steps": steps, "batch_size": batch_size,
           "lr": st["lr"], "ema": st["ema"]}
    # evaluated with the EMA weights, as refgen's own samples.png is drawn
    out.update(train_and_load(model, train_ds, steps=steps, batch_size=batch_size, settings=st,
                              seed=args.seed, quiet=args.quiet))
    return model, out


def sample_scores(name, args, model, test_ds):
    """DDPM over all T steps and DDIM-50: MMD^2 (and modes), beside the MMD^2 floor of a
    second test sample; the picture."""
    out = {}
    ref = test_ds.x[:args.samples]
    floor_ds = load(name, "test", n_smoke=256, seed=args.seed + 1)
    out["mmd_floor"] = metrics.mmd(floor_ds.x[:2000], test_ds.x[:2000])
    pictures = [panel(np.zeros((0, 2)), reference=test_ds.x[:3000])]
    ddim_steps = min(50, model.T)
    for label, kw in (("ddpm", dict()), ("ddim50", dict(sampler="ddim", steps=ddim_steps, eta=0.0))):
        t = time.perf_counter()
        with no_grad():
            s = backend.to_numpy(model.sample(args.samples, rng=backend.default_rng(args.seed), **kw))
        res = {"sample_wall_s": round(time.perf_counter() - t, 1),
               "mmd": metrics.mmd(s[:2000], ref[:2000])}
        if name in data.toy2d.MODES:
            res.update(metrics.mode_stats(s, *data.toy2d.modes(name)))
        out[label] = res
        pictures.append(panel(s[:3000]))
    io.write_png(RESULTS / f"{args.tag}_{name}.png", io.concat_images_horizontal(pictures))
    return out


def vlb_scores(name, args, model, test_ds):
    """L_VLB in nats on --vlb-n test points, exact in t, with each of the model's variances,
    beside the data's entropy."""
    h, h_se = data.toy2d.entropy(name)
    out = {"entropy_nats": h}
    x = test_ds.x[:args.vlb_n]
    variances = ["learned"] if model.learn_sigma else ["beta_tilde", "beta"]
    for var in variances:
        model.variance = var
        t = time.perf_counter()
        with no_grad():
            parts = model.vlb_terms(x, timesteps=None, rng=backend.default_rng(args.seed))
        v = parts["vlb"]
        out[f"vlb_{var}"] = {
            "vlb_nats": float(v.mean()), "vlb_se": float(v.std() / math.sqrt(len(v))),
            "gap_to_entropy_nats": float(v.mean() - h),
            "prior_LT": float(parts["prior"].mean()), "sum_Lt": float(parts["terms"].mean()),
            "decoder_L0": float(parts["decoder"].mean()), "wall_s": round(time.perf_counter() - t, 1)}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="8gaussians,checkerboard")
    p.add_argument("--steps", type=int, default=None, help="default: ddpm's default_train")
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--vlb-n", type=int, default=2000, help="test points the VLB is averaged over")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="ddpm hyperparameter")
    p.add_argument("--variant", default="simple", help="a name for this configuration")
    p.add_argument("--quiet", action="store_true")
    args = add_smoke(p).parse_args()
    settings = parse_sets(args.set)
    if SMOKE:
        args.steps, args.samples, args.vlb_n = 2, 64, 4
        settings = dict(settings, T=30, hidden=16, depth=1)
    args.tag = "diffusion_2d" + ("" if args.variant == "simple" else f"_{args.variant}")
    t0 = time.perf_counter()
    results = {"command": command(), "variant": args.variant, "runs": []}
    with backend.use_backend("numpy"):
        for name in args.data.split(","):
            r = run(name, args, settings)
            print(json.dumps({k: r[k] for k in r if k != "loss_curve"}, default=float), flush=True)
            results["runs"].append(r)
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    results["machine"] = machine()
    write_json(RESULTS / f"{args.tag}.json", results)


if __name__ == "__main__":
    main()
