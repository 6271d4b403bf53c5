"""Score-based models on the 2D toys: the PF-ODE test NLL beside the data entropy, and samples
from every sampler (modes covered, MMD), with wall times.

    OPENBLAS_NUM_THREADS=1 python benchmarks/score_2d.py
    OPENBLAS_NUM_THREADS=1 python benchmarks/score_2d.py --smoke     (seconds: the test runs it)

For each data set (8gaussians, checkerboard) and model (sde-vp, sde-ve: score SDEs; ncsn) a
model is trained with refgen.train.train (its default_train settings unless overridden);
then, with the EMA weights:

  - score SDEs: the probability-flow ODE log-likelihood (exact divergence, RK45) of
    ``--nll-n`` test points, as test NLL in nats beside the entropy H (the NLL cannot go below
    H on average; NLL - H is KL(p_data || p_model)); samples by the reverse SDE (em), the
    predictor-corrector sampler (pc) and the PF-ODE (ode);
  - ncsn: samples by annealed Langevin dynamics with the final denoising step.

Samples are scored by modes covered / high-quality fraction (8gaussians) and MMD^2 against
the test set, beside the MMD^2 of a second test sample (the floor). Writes
benchmarks/results/<tag>.json and <tag>_<data>.png (data | one panel per sampler).
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import RESULTS, command, machine, train_and_load, write_json  # noqa: E402
from refgen import backend, data, io, metrics, models  # noqa: E402
from refgen.runs import parse_sets  # noqa: E402
from refgen.autograd import no_grad  # noqa: E402


def panel(points, reference=None):
    img = io.scatter_image(points, reference=reference, size=256)
    img[[0, -1], :] = img[:, [0, -1]] = 190
    return img


def sample_stats(name, s, ref):
    res = {"mmd": metrics.mmd(s[:2000], ref[:2000])}
    if name in data.toy2d.MODES:
        res.update(metrics.mode_stats(s, *data.toy2d.modes(name)))
    return res


def run(name, model_name, args):
    train_ds, test_ds = data.load(name, "train"), data.load(name, "test")
    cls = models.get(model_name)
    st = dict(cls.default_train)
    st.update({k: v for k, v in (("lr", args.lr), ("grad_clip", args.grad_clip),
                                 ("schedule", args.schedule)) if v is not None})
    steps = args.steps or st["steps"]
    settings = parse_sets(args.set) if model_name != "ncsn" else {}
    model = models.create(model_name, data_shape=(2,), seed=args.seed, **settings)
    out = {"data": name, "model": model_name, "settings": settings, "steps": steps,
           "batch_size": st["batch_size"],
           "lr": st["lr"], "ema": st["ema"], "grad_clip": st.get("grad_clip"),
           "schedule": st.get("schedule", "constant")}
    out.update(train_and_load(model, train_ds, steps=steps, batch_size=st["batch_size"],
                              settings=st, seed=args.seed, quiet=args.quiet))
    model.eval()
    ref = test_ds.x[:max(args.samples, 2000)]
    pictures = [panel(np.zeros((0, 2)), reference=test_ds.x[:3000])]
    if model_name == "ncsn":
        out["ncsn"] = {"sigma_1": float(model.sigmas[0]), "levels": int(len(model.sigmas)),
                       "T": model.T, "eps": model.langevin_eps()}
        samplers = [("als", dict(steps=args.als_steps))]
    else:
        samplers = [("em", dict(sampler="em", steps=args.sde_steps)),
                    ("pc", dict(sampler="pc", steps=args.sde_steps)),
                    ("ode", dict(sampler="ode"))]
    for label, kw in samplers:
        t = time.perf_counter()
        with no_grad():
            s = backend.to_numpy(model.sample(args.samples, rng=backend.default_rng(args.seed), **kw))
        res = sample_stats(name, s, ref)
        res["sample_wall_s"] = round(time.perf_counter() - t, 1)
        res["finite"] = bool(np.isfinite(s).all())
        out[label] = res
        pictures.append(panel(s[:3000]))
    io.write_png(Path(args.out_dir) / f"{args.tag}_{name}_{model_name}.png",
                 io.concat_images_horizontal(pictures))
    h, h_se = data.toy2d.entropy(name)
    out["entropy_nats"], out["entropy_se"] = h, h_se
    if hasattr(model, "log_prob"):
        x = test_ds.x[:args.nll_n]
        t = time.perf_counter()
        with no_grad():
            lp = backend.to_numpy(model.log_prob(x, rtol=args.tol, atol=args.tol, rng=backend.default_rng(args.seed)))
        nll = -lp
        out["pf_ode_nll"] = {"test_nll_nats": float(nll.mean()),
                             "se": float(nll.std() / math.sqrt(len(nll))), "n": len(nll),
                             "gap_to_entropy_nats": float(nll.mean() - h),
                             "within_0.1_nats": bool(abs(nll.mean() - h) <= 0.1),
                             "rtol_atol": args.tol, "wall_s": round(time.perf_counter() - t, 1)}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="8gaussians,checkerboard")
    p.add_argument("--models", default="sde-vp,sde-ve,ncsn")
    p.add_argument("--steps", type=int, default=None, help="default: each model's default_train")
    p.add_argument("--lr", type=float, default=None, help="default: each model's default_train")
    p.add_argument("--schedule", choices=("constant", "cosine"), default=None,
                   help="learning-rate schedule (default: constant)")
    p.add_argument("--grad-clip", type=float, default=None, help="clip the gradient's norm (default: none)")
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--sde-steps", type=int, default=1000, help="em / pc steps")
    p.add_argument("--als-steps", type=int, default=None, help="ncsn: Langevin steps per level")
    p.add_argument("--nll-n", type=int, default=2000, help="test points of the PF-ODE NLL")
    p.add_argument("--tol", type=float, default=1e-5, help="RK45 rtol = atol of the NLL")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="SDE model hyperparameter")
    p.add_argument("--tag", default="score_2d")
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--smoke", action="store_true", help="a few steps of everything")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    if args.smoke:
        args.steps, args.samples, args.sde_steps, args.als_steps = 30, 300, 20, 3
        args.nll_n, args.tol = 10, 1e-3
    t0 = time.perf_counter()
    results = {"command": command(), "runs": []}
    with backend.use_backend("numpy"):
        for name in args.data.split(","):
            for model_name in args.models.split(","):
                r = run(name, model_name, args)
                print(json.dumps({k: r[k] for k in r if k != "loss_curve"}, default=float), flush=True)
                results["runs"].append(r)
                results["wall_s"] = round(time.perf_counter() - t0, 1)
                results["machine"] = machine()
                write_json(Path(args.out_dir) / f"{args.tag}.json", results)  # after every run


if __name__ == "__main__":
    main()
