"""Flows on 2D toy densities with exact entropies: test NLL minus the data entropy, heat maps.

    python benchmarks/flows_2d.py                                   # every model and data set
    python benchmarks/flows_2d.py --models realnvp --data checkerboard --steps 2000

For each (model, data set): train with refgen.train.train on 50,000 samples, score the
10,000 test samples, and report

  test_nll_nats      -mean log q(x) over the test set
  entropy_gap_nats   test_nll - H(p), i.e. KL(p || q) up to the test set's sampling error
                     (refgen.data.toy2d.entropy: exact for checkerboard, 10^6-sample Monte
                     Carlo for 8gaussians)
  grid_mass          the integral of q over [-6, 6]^2 by a 300 x 300 midpoint rule (a check
                     that the log-determinants are right: it should be close to 1)

and write benchmarks/results/flows_2d_<model>_<data>.png: the exact density, the model's
density and the model's samples (orange) over the test data (blue). Results are merged
into benchmarks/results/flows_2d.json, one entry per (model, data), each with the command,
the machine and the wall time. ``--smoke``: every model, 2 steps of a 2-layer version on
256 points of 8gaussians, coarse grids.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, SMOKE, add_smoke, command, load, log_probs, machine, rel,  # noqa: E402
                    run_dir, smoke)

import numpy as np  # noqa: E402

from refgen import backend, data, io  # noqa: E402
from refgen.autograd import no_grad  # noqa: E402
from refgen.models.flows import MAF, NICE, Glow, RealNVP  # noqa: E402
from refgen.train import train  # noqa: E402

# the classes directly, not through the registry: a broken family elsewhere cannot stop us
MODELS = {"nice": NICE, "realnvp": RealNVP, "glow": Glow, "maf": MAF}

# Per-model settings: constructor keywords and training flags (the same for both data sets).
CONFIGS = {
    "nice": dict(kwargs=dict(couplings=12, hidden=[128, 128]), steps=8000, batch_size=512, lr=1e-3),
    "realnvp": dict(kwargs=dict(couplings=12, hidden=[128, 128]), steps=8000, batch_size=512, lr=1e-3),
    "glow": dict(kwargs=dict(depth=12, hidden=[128, 128]), steps=8000, batch_size=512, lr=1e-3),
    "maf": dict(kwargs=dict(layers=12, hidden=[128, 128]), steps=8000, batch_size=512, lr=1e-3),
}
TARGETS = {"8gaussians": 0.05, "checkerboard": 0.15}  # entropy gap, nats (not for NICE)
EXTENT = (-4.0, 4.0, -4.0, 4.0)


def grid_mass(model, half_width=6.0, n=smoke(300, 30)) -> float:
    """The integral of exp(log q) over [-w, w]^2 by the midpoint rule."""
    pts = io.grid_points((-half_width, half_width, -half_width, half_width), n).astype(np.float32)
    cell = (2 * half_width / n) ** 2
    return float(np.exp(log_probs(model, pts)).sum() * cell)


def picture(model, dname, test_x, path, n_grid=smoke(200, 20)):
    """[exact density | model density | model samples over the data] as one PNG."""
    pts = io.grid_points(EXTENT, n_grid)
    true = np.exp(data.toy2d.log_prob(dname, pts)).reshape(n_grid, n_grid)
    q = np.exp(log_probs(model, pts.astype(np.float32))).reshape(n_grid, n_grid)
    hi = max(true.max(), 1e-12)  # one colour scale for both densities
    with no_grad():
        model.eval()
        s = backend.to_numpy(model.sample(smoke(3000, 100), rng=backend.default_rng(0)))
        model.train()
    panels = [io.heatmap_image(true, EXTENT, size=256, vmin=0.0, vmax=hi),
              io.heatmap_image(q, EXTENT, size=256, vmin=0.0, vmax=hi),
              io.scatter_image(s, reference=test_x[:3000], size=256)]
    io.write_png(path, io.concat_images_horizontal(panels))


def run_one(mname, dname, steps, out_root, seed=0):
    """Train one flow on one data set; its scores and picture."""
    cfg = CONFIGS[mname]
    steps = int(steps or cfg["steps"])
    if SMOKE:
        size = {"nice": "couplings", "realnvp": "couplings", "glow": "depth", "maf": "layers"}[mname]
        cfg = dict(cfg, kwargs=dict(cfg["kwargs"], **{size: 2, "hidden": [16]}), batch_size=64)
    train_ds = load(dname, "train", n_smoke=256, seed=seed)
    test_ds = load(dname, "test", n_smoke=256, seed=seed)
    model = MODELS[mname](train_ds.shape, seed=seed, **cfg["kwargs"])
    t0 = time.perf_counter()
    train(model, train_ds, steps=steps, batch_size=cfg["batch_size"], lr=cfg["lr"], seed=seed,
          out_dir=Path(out_root) / f"{mname}-{dname}", schedule="cosine",
          log_every=max(1, steps // 10), ckpt_every=steps, progress=False, samples=False)
    wall = time.perf_counter() - t0
    nll = float(-log_probs(model, test_ds.x).mean())
    entropy, entropy_se = data.toy2d.entropy(dname)
    png = RESULTS / f"flows_2d_{mname}_{dname}.png"
    picture(model, dname, test_ds.x, png)
    gap = nll - entropy
    res = {"model": mname, "data": dname, "model_kwargs": cfg["kwargs"], "steps": steps,
           "batch_size": cfg["batch_size"], "lr": cfg["lr"], "schedule": "cosine", "seed": seed,
           "num_parameters": model.num_parameters(), "test_nll_nats": nll,
           "entropy_nats": entropy, "entropy_se_nats": entropy_se, "entropy_gap_nats": gap,
           "target_gap_nats": None if mname == "nice" else TARGETS.get(dname),
           "grid_mass": grid_mass(model), "train_wall_s": round(wall, 1),
           "steps_per_s": round(steps / wall, 2), "png": rel(png)}
    print(f"{mname:8s} {dname:13s} NLL {nll:.4f}  H {entropy:.4f}  gap {gap:+.4f}  "
          f"mass {res['grid_mass']:.4f}  {wall:.0f} s", flush=True)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="nice,realnvp,glow,maf")
    ap.add_argument("--data", default="8gaussians,checkerboard")
    ap.add_argument("--steps", type=int, default=None, help="override every model's steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/refgen_flows_2d", help="where run directories go")
    ap.add_argument("--results", default="flows_2d", help="results JSON name (no suffix)")
    args = add_smoke(ap).parse_args(argv)
    if SMOKE:
        args.data, args.steps, args.out = "8gaussians", 2, str(run_dir("flows_2d"))

    path = RESULTS / f"{args.results}.json"
    results = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    for dname in args.data.split(","):
        for mname in args.models.split(","):
            res = run_one(mname, dname, args.steps, args.out, args.seed)
            res.update(command=command(), machine=machine())
            results["runs"][f"{mname}/{dname}"] = res
            RESULTS.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
