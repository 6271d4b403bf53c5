"""Gaussianization flows and RBIG on the 2D toy densities with exact entropies.

    python benchmarks/gflow_2d.py                    # gflow and RBIG on 8gaussians, checkerboard
    python benchmarks/gflow_2d.py --smoke            # a few seconds: the pipeline end to end
    python benchmarks/gflow_2d.py --models gflow --data checkerboard --steps 8000   # longer

Runs at other than the default 1,500 steps are kept beside the default ones, under
"gflow-<steps>steps/<data>".

The same protocol and metrics as benchmarks/flows_2d.py (entropy gap = test NLL - H(p), an
estimate of KL(p || q); grid mass over [-6, 6]^2), so the numbers sit beside RealNVP's, Glow's
and MAF's in benchmarks/results/flows_2d.json. gflow is trained with refgen.train.train;
RBIG is fitted once (no gradient steps) on a subsample of the training set. Results go to
benchmarks/results/gflow_2d.json with the command and the machine.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import RESULTS, ROOT, command, log_probs, machine, run_dir  # sets one BLAS thread
import numpy as np  # noqa: E402

from flows_2d import grid_mass  # noqa: E402

from refgen import backend, data, io  # noqa: E402
from refgen.models.flows import RBIG, GaussianizationFlow  # noqa: E402
from refgen.train import train  # noqa: E402

# sized for about 15 minutes on two shared CPU cores (both data sets, both models)
GFLOW = dict(kwargs=dict(layers=8, components=16), steps=1500, batch_size=256, lr=5e-3)
RBIG_CFG = dict(layers=15, max_points=300, fit_points=5000)
SMOKE = dict(gflow=dict(kwargs=dict(layers=2, components=4), steps=20, batch_size=128, lr=5e-3),
             rbig=dict(layers=2, max_points=50, fit_points=500), test_points=500)


def _rbig_grid_mass(model, half_width=6.0, n=100):
    pts = io.grid_points((-half_width, half_width, -half_width, half_width), n)
    return float(np.exp(backend.to_numpy(model.log_prob(pts))).sum() * (2 * half_width / n) ** 2)


def run_gflow(dname, cfg, test_x, out_root, seed):
    train_ds = data.load(dname, "train", seed=seed)
    model = GaussianizationFlow(train_ds.shape, seed=seed, **cfg["kwargs"])
    t0 = time.perf_counter()
    train(model, train_ds, steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"],
          seed=seed, out_dir=Path(out_root) / f"gflow-{cfg['steps']}-{dname}", schedule="cosine",
          log_every=max(1, cfg["steps"] // 10), ckpt_every=cfg["steps"], progress=False,
          samples=False)
    wall = time.perf_counter() - t0
    nll = float(-log_probs(model, test_x).mean())
    return dict(model_kwargs=cfg["kwargs"], steps=cfg["steps"], batch_size=cfg["batch_size"],
                lr=cfg["lr"], schedule="cosine", num_parameters=model.num_parameters(),
                test_nll_nats=nll, grid_mass=grid_mass(model), train_wall_s=round(wall, 1))


def run_rbig(dname, cfg, test_x, seed):
    train_x = data.load(dname, "train", seed=seed).x[:cfg["fit_points"]]
    t0 = time.perf_counter()
    model = RBIG(layers=cfg["layers"], max_points=cfg["max_points"], seed=seed).fit(train_x)
    wall = time.perf_counter() - t0
    nll = float(-np.mean(backend.to_numpy(model.log_prob(test_x))))
    return dict(model_kwargs=cfg, test_nll_nats=nll, grid_mass=_rbig_grid_mass(model),
                fit_wall_s=round(wall, 1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="gflow,rbig")
    ap.add_argument("--data", default="8gaussians,checkerboard")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=GFLOW["steps"], help="gflow training steps")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny settings, results written to a temporary directory")
    ap.add_argument("--out", default=None, help="run directory (default /tmp/refgen_gflow_2d)")
    args = ap.parse_args(argv)
    path = RESULTS / "gflow_2d.json"
    results = json.loads(path.read_text()) if path.exists() and not args.smoke else {"runs": {}}
    reference = json.loads((ROOT / "benchmarks" / "results" / "flows_2d.json").read_text())["runs"]
    args.out = str(run_dir("gflow_2d", args.out))
    for dname in args.data.split(","):
        test_x = data.load(dname, "test", seed=args.seed).x
        if args.smoke:
            test_x = test_x[:SMOKE["test_points"]]
        entropy, entropy_se = data.toy2d.entropy(dname)
        for mname in args.models.split(","):
            t0 = time.perf_counter()
            key = f"{mname}/{dname}"
            if mname == "gflow":
                cfg = SMOKE["gflow"] if args.smoke else dict(GFLOW, steps=args.steps)
                if not args.smoke and args.steps != GFLOW["steps"]:
                    key = f"gflow-{args.steps}steps/{dname}"
                res = run_gflow(dname, cfg, test_x, args.out, args.seed)
            elif mname == "rbig":
                res = run_rbig(dname, SMOKE["rbig"] if args.smoke else RBIG_CFG, test_x, args.seed)
            else:
                raise SystemExit(f"unknown model {mname!r}; use gflow or rbig")
            gap = res["test_nll_nats"] - entropy
            res.update(model=mname, data=dname, seed=args.seed, entropy_nats=entropy,
                       entropy_se_nats=entropy_se, entropy_gap_nats=gap,
                       target_gap_nats=0.05 if mname == "gflow" else None,
                       total_wall_s=round(time.perf_counter() - t0, 1),
                       flows_2d_gaps={k.split("/")[0]: round(v["entropy_gap_nats"], 4)
                                      for k, v in reference.items() if k.endswith("/" + dname)},
                       command=command(), machine=machine())
            print(f"{mname:6s} {dname:13s} NLL {res['test_nll_nats']:.4f}  H {entropy:.4f}  "
                  f"gap {gap:+.4f}  mass {res['grid_mass']:.4f}  {res['total_wall_s']:.0f} s",
                  flush=True)
            results["runs"][key] = res
            path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
