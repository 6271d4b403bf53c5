"""Mode collapse on the 2D mixtures of the GAN literature: GAN, NS-GAN, WGAN-GP and PacGAN2.

    python benchmarks/gan_2d.py                     # the default models, ring8 and grid25, 10 seeds
    python benchmarks/gan_2d.py --seeds 3 --steps 2000 --models nsgan,pacgan2 --data grid25
    python benchmarks/gan_2d.py --smoke             # seconds: one tiny run per model

The protocol of VEEGAN (Srivastava et al., 2017) and PacGAN (Lin et al., 2018), on their
data sets (refgen.data.toy2d): ``ring8``, 8 Gaussians on the unit circle with std 0.01, and
``grid25``, 25 Gaussians on {-4, -2, 0, 2, 4}^2 with std 0.05. After training, 2,500
samples are drawn; a sample is high quality when it lies within 3 std of its nearest mode,
and a mode is covered when it is the nearest mode of at least one high-quality sample
(refgen.metrics.mode_stats with min_share=0). refgen's default, stricter rule (a mode
holds at least a quarter of its uniform share of the high-quality samples) is reported
beside it as ``modes_covered_strict``. Each entry gives mean +- standard error over seeds
and every seed's numbers.

Models: gan (saturating minimax), nsgan (non-saturating), wgan-gp (n_critic = 5, lambda =
10, Adam (0, 0.9)) and pacgan2 (nsgan with pack = 2), the default set; and f-GAN with the KL,
reverse KL and Jensen-Shannon divergences (fgan-kl, fgan-reverse-kl, fgan-js: mode covering
against mode seeking); the same MLPs for all. Results go to
benchmarks/results/gan_2d.json with the command, the machine and the wall time, and a
scatter of seed 0's samples per (model, data set) to benchmarks/results/gan_2d_<model>_<data>.png
(``--pngs`` sets the prefix). With ``--drs GAMMA`` the unpacked minimax models (gan, nsgan)
also score 2,500 samples of the same generator thinned by discriminator rejection sampling
(refgen.models.gan.drs), with the share of proposals kept, and seed 0's thinned samples in
<prefix>_<model>_<data>_drs.png.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small matrices: one BLAS thread is fastest
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, command, machine, write_json  # noqa: E402

from refgen import backend, data, io, metrics  # noqa: E402
from refgen.models.gan import FGAN, NSGAN, GAN, WGANGP, RejectionSampler, drs as drs_  # noqa: E402
from refgen.train import TrainingDiverged, train  # noqa: E402

N_SAMPLES = 2500          # the published protocol's sample count
NETS = dict(hidden=[128, 128], z_dim=2, g_norm="batch")   # BatchNorm in G, as PacGAN's
# name -> (class, constructor keywords, learning rate)
MODELS = {
    "gan": (GAN, {}, 1e-3),
    "nsgan": (NSGAN, {}, 1e-3),
    "wgan-gp": (WGANGP, {}, 1e-3),
    "pacgan2": (NSGAN, {"pack": 2}, 1e-3),
    # f-GAN with the divergences that cover modes (KL), seek them (reverse KL), or sit between
    "fgan-kl": (FGAN, {"divergence": "kl"}, 1e-3),
    "fgan-reverse-kl": (FGAN, {"divergence": "reverse_kl"}, 1e-3),
    "fgan-js": (FGAN, {"divergence": "jensen_shannon"}, 1e-3),
}
DEFAULT_MODELS = "gan,nsgan,wgan-gp,pacgan2"
PUBLISHED = {  # Lin et al. 2018 (PacGAN), Table 1, grid25: modes covered (of 25), high quality %
    "grid25": {"PacGAN2": [23.8, 91.3]},
}


def run_one(name, data_name, seed, steps, batch_size, out_dir, schedule="cosine", drs=None):
    cls, kw, lr = MODELS[name]
    ds = data.load(data_name, "train", seed=seed)
    model = cls(data_shape=(2,), seed=seed, **NETS, **kw)
    t0 = time.perf_counter()
    try:
        train(model, ds, steps=steps, batch_size=batch_size, lr=lr, seed=seed, out_dir=out_dir,
              schedule=schedule, progress=False, samples=False, ckpt_every=steps)
    except TrainingDiverged as e:  # kept as a result of its own: the run has no samples
        return {"seed": seed, "diverged": str(e), "wall_s": round(time.perf_counter() - t0, 2)}, None, None
    wall = time.perf_counter() - t0
    model.eval()
    x = backend.to_numpy(model.sample(N_SAMPLES, rng=backend.default_rng(10_000 + seed))).astype(np.float64)
    rec, xd = {"seed": seed, **_scores(x, data_name), "wall_s": round(wall, 2)}, None
    if drs is not None and drs_.supports(model):
        sampler = RejectionSampler(model, gamma=drs)        # the same G thinned by its D
        xd = backend.to_numpy(sampler.sample(N_SAMPLES, rng=backend.default_rng(20_000 + seed)))
        xd = xd.astype(np.float64)
        rec["drs"] = dict(_scores(xd, data_name), acceptance_rate=round(sampler.acceptance_rate, 4))
    return rec, x, xd


def _scores(x, data_name):
    """The published protocol's and the strict rule's numbers for samples x (N, 2)."""
    centres, std = data.toy2d.modes(data_name)
    published = metrics.mode_stats(x, centres, std, min_share=0)
    strict = metrics.mode_stats(x, centres, std)
    return {"modes_covered": published["modes_covered"], "hq_fraction": published["hq_fraction"],
            "modes_covered_strict": strict["modes_covered"]}


def _mean_se(v):
    v = np.asarray(v, dtype=np.float64)
    if not len(v):  # every seed diverged
        return [float("nan"), float("nan")]
    se = v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return [float(v.mean()), float(se)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT_MODELS, help=f"of {', '.join(MODELS)}")
    ap.add_argument("--data", default="grid25,ring8")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--schedule", default="cosine", choices=["constant", "cosine"])
    ap.add_argument("--hidden", default=None, help="e.g. 128,128 (default %s)" % NETS["hidden"])
    ap.add_argument("--g-norm", default=None, choices=["batch", "none"],
                    help="the generator's normalisation (default %s, as PacGAN's)" % NETS["g_norm"])
    ap.add_argument("--drs", type=float, default=None, metavar="GAMMA",
                    help="also score 2,500 samples thinned by discriminator rejection sampling "
                         "at this gamma (0: exact), for the unpacked minimax models")
    ap.add_argument("--smoke", action="store_true", help="one 30-step run per model, no files")
    ap.add_argument("--out", default=str(RESULTS / "gan_2d.json"))
    ap.add_argument("--pngs", default=str(RESULTS / "gan_2d"),
                    help="prefix of the scatter PNGs: <prefix>_<model>_<data>.png")
    args = ap.parse_args(argv)
    names, datasets = args.models.split(","), args.data.split(",")
    for n in names:
        if n not in MODELS:
            ap.error(f"unknown model {n!r}; accepted: {', '.join(MODELS)}")
    if args.hidden:
        NETS["hidden"] = [int(h) for h in args.hidden.split(",")]
    if args.g_norm:
        NETS["g_norm"] = args.g_norm
    if args.smoke:
        args.seeds, args.steps, args.batch_size = 1, 30, 32
    t_all = time.perf_counter()
    result = {"command": command(), "protocol": __doc__.split("\n\n")[1].strip(),
              "n_samples": N_SAMPLES, "steps": args.steps, "batch_size": args.batch_size,
              "drs_gamma": args.drs,
              "schedule": args.schedule,
              "nets": NETS, "published": PUBLISHED, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for data_name in datasets:
            for name in names:
                per_seed = []
                for seed in range(args.seeds):
                    rec, x, xd = run_one(name, data_name, seed, args.steps, args.batch_size,
                                     Path(tmp) / f"{name}-{data_name}-{seed}", args.schedule,
                                     args.drs)
                    per_seed.append(rec)
                    print(f"{data_name:7s} {name:8s} seed {seed}: {rec}", file=sys.stderr)
                    if seed == 0 and x is not None and not args.smoke:
                        ref = data.load(data_name, "test").x[:2500]
                        e = 5.0 if data_name == "grid25" else 1.5
                        io.scatter_png(f"{args.pngs}_{name}_{data_name}.png", x,
                                       reference=ref, extent=(-e, e, -e, e))
                        if xd is not None:
                            io.scatter_png(f"{args.pngs}_{name}_{data_name}_drs.png", xd,
                                           reference=ref, extent=(-e, e, -e, e))
                done = [r for r in per_seed if "diverged" not in r]   # the seeds with samples
                summary = {k: _mean_se([r[k] for r in done])
                           for k in ("modes_covered", "hq_fraction", "modes_covered_strict")}
                summary["diverged_seeds"] = len(per_seed) - len(done)
                thinned = [r["drs"] for r in done if "drs" in r]
                if thinned:
                    summary["drs"] = {k: _mean_se([r[k] for r in thinned]) for k in (
                        "modes_covered", "hq_fraction", "modes_covered_strict", "acceptance_rate")}
                result["runs"][f"{name}/{data_name}"] = {
                    "model": name, "data": data_name, "lr": MODELS[name][2],
                    "model_kwargs": {**NETS, **MODELS[name][1]}, "seeds": args.seeds,
                    "mean_se": summary, "per_seed": per_seed}
                if not args.smoke:  # after every (model, data set): a partial run keeps its results
                    result["wall_s"] = round(time.perf_counter() - t_all, 1)
                    result["machine"] = machine()
                    write_json(args.out, result)
    result["wall_s"] = round(time.perf_counter() - t_all, 1)
    result["machine"] = machine()
    if not args.smoke:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
