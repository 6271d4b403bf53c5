"""Energy-based models on 2D toy densities: exact test NLL by grid quadrature, MALA samples.

    python benchmarks/energy_2d.py                                  # every estimator and data set
    python benchmarks/energy_2d.py --models ebm --data checkerboard --steps 3000
    python benchmarks/energy_2d.py --smoke --out /tmp/e2d --results-dir /tmp/e2d   # seconds
    python benchmarks/energy_2d.py --models ebm --data 8gaussians --set alpha=0.01 --results energy_2d_alpha0.01

For each (estimator, data set): the same energy network (MLP 2-128-128-1, SiLU, plus the
quadratic envelope |x|^2 / 18) is trained with refgen.train.train on 50,000 samples, by

  ebm       maximum likelihood: the contrastive gradient, negatives from persistent ULA chains
  ebm-nce   noise-contrastive estimation against N(0, 2^2 I), learned log Z
  ebm-fce   flow contrastive estimation against a jointly trained RealNVP
  ebm-sm    exact score matching (Hessian trace by double backward)

and then normalised by quadrature (refgen.models.energy.quadrature: a 560 x 560 grid on
[-7, 7]^2 plus the band out to 14; ``edge_mass`` is the share on its outermost strip):

  test_nll_nats      -mean log p(x) over the 10,000 test samples, log p = -E - log Z
  entropy_gap_nats   test_nll - H(p_data), i.e. KL(p_data || p_model) up to sampling error
  modes_covered      (8gaussians) of 2,000 MALA chains run 500 steps from uniform noise
  hq_fraction, mala_acceptance   the same chains' quality and MALA's acceptance rate

A PNG per run: exact density | model density | MALA samples over the test data.
Results go to benchmarks/results/energy_2d.json, one entry per (model, data), each with the
command, the machine and the wall time.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small matrices: one BLAS thread is fastest
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, command, machine  # noqa: E402

from refgen import backend, data, io  # noqa: E402
from refgen.autograd import Tensor, no_grad  # noqa: E402
from refgen.metrics import mode_stats  # noqa: E402
from refgen.models.energy import EBM, EBMFCE, EBMNCE, EBMSM  # noqa: E402
from refgen.models.energy.quadrature import grid_log_normalizer  # noqa: E402
from refgen.train import train  # noqa: E402

MODELS = {"ebm": EBM, "ebm-nce": EBMNCE, "ebm-fce": EBMFCE, "ebm-sm": EBMSM}
NET = dict(hidden=[128, 128], base_std=3.0)
CONFIGS = {
    "ebm": dict(kwargs=dict(NET, mcmc_steps=10, mcmc_step_size=0.02, alpha=0.1), steps=3000,
                batch_size=256, lr=2e-3),
    "ebm-nce": dict(kwargs=dict(NET, noise_std=2.0), steps=3000, batch_size=256, lr=2e-3),
    "ebm-fce": dict(kwargs=dict(NET, flow_couplings=4, flow_hidden=[64, 64]), steps=1000,
                    batch_size=256, lr=2e-3),
    "ebm-sm": dict(kwargs=dict(NET), steps=1500, batch_size=256, lr=2e-3),
}
SMOKE = dict(hidden=[8], base_std=3.0)
TARGETS = {"8gaussians": 0.10, "checkerboard": 0.25}   # entropy gap of maximum likelihood, nats
EXTENT = (-4.5, 4.5, -4.5, 4.5)
SAMPLE_N, SAMPLE_STEPS, SAMPLE_EPS = 2000, 500, 0.05


def log_probs(model, x, log_z, chunk=8192):
    out = []
    with no_grad():
        for i in range(0, len(x), chunk):
            e = model.energy(Tensor(backend.asarray(x[i:i + chunk].astype(np.float32))))
            out.append(-backend.to_numpy(e.data).astype(np.float64) - log_z)
    return np.concatenate(out)


def picture(model, dname, log_z, samples, test_x, path, n_grid=200):
    """[exact density | model density | MALA samples over the data] as one PNG."""
    pts = io.grid_points(EXTENT, n_grid)
    q = np.exp(log_probs(model, pts, log_z)).reshape(n_grid, n_grid)
    true = (np.exp(data.toy2d.log_prob(dname, pts)).reshape(n_grid, n_grid)
            if dname in data.toy2d.DENSITIES else q * 0)
    hi = max(true.max(), q.max(), 1e-12)
    panels = [io.heatmap_image(true, EXTENT, size=256, vmin=0.0, vmax=hi),
              io.heatmap_image(q, EXTENT, size=256, vmin=0.0, vmax=hi),
              io.scatter_image(samples, reference=test_x[:3000], extent=EXTENT, size=256)]
    io.write_png(path, io.concat_images_horizontal(panels))


def run_one(mname, dname, steps, out_root, seed=0, smoke=False, png_dir=RESULTS, sets=None,
            results_name="energy_2d"):
    cfg = CONFIGS[mname]
    kwargs = dict(cfg["kwargs"], **SMOKE) if smoke else dict(cfg["kwargs"])
    kwargs.update(sets or {})
    if smoke and mname == "ebm-fce":
        kwargs = dict(kwargs, flow_couplings=2, flow_hidden=[8])
    steps = 3 if smoke else int(steps or cfg["steps"])
    train_ds, test_ds = data.load(dname, "train", seed=seed), data.load(dname, "test", seed=seed)
    test_x = test_ds.x[:200] if smoke else test_ds.x
    model = MODELS[mname](train_ds.shape, seed=seed, **kwargs)
    t0 = time.perf_counter()
    train(model, train_ds, steps=steps, batch_size=cfg["batch_size"], lr=cfg["lr"], seed=seed,
          out_dir=Path(out_root) / f"{mname}-{dname}", schedule="cosine",
          log_every=max(1, steps // 10), ckpt_every=steps, progress=False, samples=False)
    wall = time.perf_counter() - t0
    model.eval()
    log_z, edge = grid_log_normalizer(model.energy, (2,), **(
        dict(n=56) if smoke else {}))
    nll = float(-log_probs(model, test_x, log_z).mean())
    n_s, k_s = (50, 5) if smoke else (SAMPLE_N, SAMPLE_STEPS)
    x0 = model.noise(n_s, backend.default_rng(seed + 7))
    t1 = time.perf_counter()
    samples = backend.to_numpy(model.run_chains(x0, k_s, SAMPLE_EPS, backend.default_rng(seed + 8),
                                                sampler="mala"))
    sample_wall = time.perf_counter() - t1
    res = {"model": mname, "data": dname, "model_kwargs": kwargs, "steps": steps,
           "batch_size": cfg["batch_size"], "lr": cfg["lr"], "schedule": "cosine", "seed": seed,
           "num_parameters": model.num_parameters(), "log_z": log_z, "edge_mass": edge,
           "test_nll_nats": nll, "n_test": len(test_x), "mala_acceptance": model.last_acceptance_rate,
           "mala": dict(chains=n_s, steps=k_s, step_size=SAMPLE_EPS, wall_s=round(sample_wall, 1)),
           "train_wall_s": round(wall, 1), "steps_per_s": round(steps / wall, 2)}
    if dname in data.toy2d.DENSITIES:
        entropy, entropy_se = data.toy2d.entropy(dname)
        res.update(entropy_nats=entropy, entropy_se_nats=entropy_se,
                   entropy_gap_nats=nll - entropy,
                   target_gap_nats=TARGETS.get(dname) if mname == "ebm" else None)
    if dname in data.toy2d.MODES:
        res.update(mode_stats(samples, *data.toy2d.modes(dname)))
    png = Path(png_dir) / f"{results_name}_{mname}_{dname}.png"
    picture(model, dname, log_z, samples, test_x, png)
    res["png"] = str(png.relative_to(RESULTS.parent.parent)) if png.is_relative_to(RESULTS.parent.parent) else str(png)
    print(f"{mname:8s} {dname:13s} NLL {nll:.4f}  gap {res.get('entropy_gap_nats', float('nan')):+.4f}  "
          f"edge {edge:.1e}  modes {res.get('modes_covered', '-')}  "
          f"MALA acc {model.last_acceptance_rate:.2f}  {wall:.0f} s", flush=True)
    return res


def _value(text):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="ebm,ebm-nce,ebm-fce,ebm-sm")
    ap.add_argument("--data", default="8gaussians,checkerboard,rings")
    ap.add_argument("--steps", type=int, default=None, help="override every model's steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny nets, 3 steps: checks the recipe runs")
    ap.add_argument("--out", default="/tmp/refgen_energy_2d", help="where run directories go")
    ap.add_argument("--results-dir", default=str(RESULTS), help="where the JSON and PNGs go")
    ap.add_argument("--results", default="energy_2d", help="results JSON name (no suffix)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a constructor keyword of every model (VALUE read as JSON)")
    args = ap.parse_args(argv)
    sets = {k: _value(v) for k, v in (a.split("=", 1) for a in args.set)}
    out_dir = Path(args.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{args.results}.json"
    results = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    for dname in args.data.split(","):
        for mname in args.models.split(","):
            res = run_one(mname, dname, args.steps, args.out, args.seed, args.smoke, out_dir, sets,
                          args.results)
            res.update(command=command(), machine=machine())
            results["runs"][f"{mname}/{dname}"] = res
            path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
