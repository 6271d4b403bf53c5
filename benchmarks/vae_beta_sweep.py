"""beta-VAE on binarized MNIST: the rate-distortion curve over several beta, and latent
traversals.

    python benchmarks/vae_beta_sweep.py --betas 0.5,1,2,4,8 --steps 3000

For each beta a beta-VAE is trained (loss = distortion + beta * rate) and scored on the test
set: rate R = KL(q(z | x) || p(z)) and distortion D = -E_q[log p(x | z)], both nats per image
(the ELBO is -(D + R) whatever beta was). Raising beta trades distortion for rate: the curve
D(R) is what the objective slides along. Writes benchmarks/results/vae_beta_sweep.json,
vae_beta_sweep_rd.png (the curve: rate on the horizontal axis, distortion on the vertical,
one labelled dot per beta joined by straight segments, both axes from 0; --plot-only redraws
it from the JSON) and vae_beta_sweep_traversal_b<beta>.png for --traverse-beta: one row per latent
dimension (sorted by its mean KL, most informative first), columns z_j from -3 to 3 with the
other coordinates at the posterior mean of a test digit. ``--smoke``: beta 1 and 4, 2 steps
each on 64 images, then the redraw.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, SMOKE, add_smoke, command, load, machine, rel,  # noqa: E402
                    run_dir, write_result)
from vae_mnist import test_elbo_terms  # noqa: E402

import numpy as np  # noqa: E402

from refgen import backend, io, models  # noqa: E402
from refgen.autograd import Tensor, no_grad  # noqa: E402
from refgen.distributions import kl_normal_std  # noqa: E402


def rd_plot(path, runs):
    """The rate-distortion curve: rate on the horizontal axis, distortion on the vertical,
    one labelled dot per beta (b = beta), both axes from 0 (refgen.io.line_plot)."""
    img, (r_max, d_max) = io.line_plot([r["rate_nats"] for r in runs],
                                       [r["distortion_nats"] for r in runs],
                                       xlabel="rate (nats)", ylabel="distortion (nats)",
                                       point_labels=[f"b={r['beta']:g}" for r in runs])
    io.write_png(path, img)
    return {"png": rel(path),
            "rate_axis_nats": [0.0, r_max], "distortion_axis_nats": [0.0, d_max]}


def traversal(model, x, path, span=3.0, n=9):
    """Rows: latent dims by decreasing KL; columns: z_j over [-span, span], rest at mu(x)."""
    with no_grad():
        mu, logvar = model.encode(Tensor(backend.asarray(x[:200])))
        kl = backend.to_numpy(kl_normal_std(mu, logvar).data).mean(0)           # (latent,)
        order = np.argsort(-kl)
        base = backend.to_numpy(mu.data[0])
        z = np.repeat(base[None], len(order) * n, 0).reshape(len(order), n, -1)
        for row, j in enumerate(order):
            z[row, :, j] = np.linspace(-span, span, n)
        imgs = backend.to_numpy(model.decode_latents(backend.asarray(z.reshape(-1, z.shape[-1]))))
    io.write_png(path, io.image_grid(imgs, nrow=n))
    return kl[order].tolist()


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--betas", default="0.5,1,2,4,8")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--latent-dim", type=int, default=10)
    ap.add_argument("--hidden", default="512,256")
    ap.add_argument("--traverse-beta", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot-only", action="store_true",
                    help="redraw vae_beta_sweep_rd.png from the saved JSON, training nothing")
    args = add_smoke(ap).parse_args(argv)
    if SMOKE:
        args.betas, args.steps, args.batch_size, args.hidden = "1,4", 2, 16, "32"
    return args


def main(argv=None):
    args = parse(argv)
    if args.plot_only:
        return replot()
    t0 = time.perf_counter()
    train_ds, test_ds = load("mnist-binary", "train"), load("mnist-binary", "test")
    runs = [fit_one(args, float(beta), train_ds, test_ds) for beta in args.betas.split(",")]
    plot = rd_plot(RESULTS / "vae_beta_sweep_rd.png", runs)
    write_result("vae_beta_sweep", {
        "model": "beta-vae", "data": "mnist-binary", "command": command(), "machine": machine(),
        "config": {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                   "latent_dim": args.latent_dim, "hidden": args.hidden, "seed": args.seed},
        "runs": runs, "plot": plot,
        "total_wall_s": round(time.perf_counter() - t0, 1)})
    if SMOKE:
        replot()


def fit_one(args, beta, train_ds, test_ds):
    """Train one beta-VAE and score its rate and distortion (and its traversal, for
    --traverse-beta)."""
    from refgen.train import train
    model = models.create("beta-vae", data_shape=train_ds.shape, seed=args.seed, beta=beta,
                          latent_dim=args.latent_dim, hidden=args.hidden)
    m = train(model, train_ds, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
              seed=args.seed, out_dir=run_dir(f"vae_beta_{beta:g}"), schedule="cosine",
              log_every=max(args.steps // 20, 1), ckpt_every=args.steps, samples=False)
    model.eval()
    t = test_elbo_terms(model, test_ds.x)
    run = {"beta": beta, "rate_nats": t["kl_nats"], "distortion_nats": -t["rec_nats"],
           "elbo_nats": t["elbo_nats"], "train_wall_s": m["wall_s"]}
    if beta == args.traverse_beta:
        png = RESULTS / f"vae_beta_sweep_traversal_b{beta:g}.png"
        run["kl_per_dim_sorted"] = traversal(model, test_ds.x, png)
        run["traversal_png"] = rel(png)
    print(json.dumps(run), flush=True)
    return run


def replot():
    """Redraw the rate-distortion curve from the saved JSON."""
    result = json.loads((RESULTS / "vae_beta_sweep.json").read_text())
    result["plot"] = dict(rd_plot(RESULTS / "vae_beta_sweep_rd.png", result["runs"]),
                          command=command())
    write_result("vae_beta_sweep", result)


if __name__ == "__main__":
    main()
