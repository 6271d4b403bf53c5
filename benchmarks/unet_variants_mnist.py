"""The U-Net variants on mnist-14 at equal CPU time: arch=ddpm (refgen's U-Net), arch=adm
(Dhariwal & Nichol 2021) and arch=imagen (Saharia et al. 2022's efficient U-Net).

    OPENBLAS_NUM_THREADS=1 nice python benchmarks/unet_variants_mnist.py --budget-cpu-min 4 --n 500

Each architecture: its step cost (CPU seconds of this process per step, batch 64, the mean
of ``--cost-steps`` steps after an untimed one), then as many steps as ``--budget-cpu-min``
CPU-minutes buy, through refgen's training loop (EMA weights); then ``--n`` DDIM samples
(``--sample-steps`` steps, eta = 0) scored by fid_mnist and kid_mnist at that same N against
the test set (refgen.metrics), and the parameter count. Result:
benchmarks/results/<--tag>.json (default unet_variants_mnist14). ``--smoke``: 3 steps and 8
samples of tiny U-Nets, in a temporary directory.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SMOKE, add_smoke, command, load, machine, smoke, train_and_load, write_result  # noqa: E402

import numpy as np  # noqa: E402

from refgen import backend  # noqa: E402
from refgen.autograd import Tensor  # noqa: E402
from refgen.metrics.evaluation import _image_metrics  # noqa: E402
from refgen.models.base import Batch  # noqa: E402
from refgen.models.diffusion import DDPM  # noqa: E402
from refgen.optim import Adam  # noqa: E402


def step_cost(model, ds, batch_size, n=3):
    """CPU seconds of this process per training step (forward, backward, Adam): the mean of
    ``n`` steps after one untimed warm-up step (the first step pays for first-touch memory)."""
    opt = Adam(model.parameters(), lr=1e-4)
    rng, gen = np.random.default_rng(0), backend.default_rng(0)

    def step():
        idx = rng.integers(0, len(ds.x), batch_size)
        loss = model.loss(Batch(Tensor(ds.x[idx]), None), gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    step()
    t0 = time.process_time()
    for _ in range(n):
        step()
    return (time.process_time() - t0) / n


def main():
    p = add_smoke(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--archs", default="ddpm,adm,imagen")
    p.add_argument("--budget-cpu-min", type=float, default=4.0)
    p.add_argument("--n", type=int, default=500, help="samples for FID and KID (the same N)")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cost-steps", type=int, default=3, help="timed steps behind the step cost")
    p.add_argument("--tag", default="unet_variants_mnist14", help="result name (without .json)")
    args = p.parse_args()
    train_ds, test_ds = load("mnist-14"), load("mnist-14", "test")
    n, budget = smoke(args.n, 8), smoke(args.budget_cpu_min * 60, 0.0)
    opts = dict(channels=smoke(args.channels, 8), T=smoke(1000, 40), class_cond=False)
    out = {"command": command(), "data": "mnist-14", "n_samples": n, "sampler": "ddim",
           "sample_steps": smoke(args.sample_steps, 3), "budget_cpu_s": budget,
           "batch_size": args.batch_size, "options": opts, "archs": {}}
    for arch in args.archs.split(","):
        model = DDPM((1, 14, 14), arch=arch, seed=0, **opts)
        cost = step_cost(DDPM((1, 14, 14), arch=arch, seed=0, **opts), train_ds, args.batch_size,
                         smoke(args.cost_steps, 1))
        steps = max(3, int(budget / cost))
        cpu0 = time.process_time()
        rec = train_and_load(model, train_ds, steps=steps, batch_size=args.batch_size,
                             settings=DDPM.default_train, seed=0, quiet=SMOKE)
        train_cpu = time.process_time() - cpu0
        t0 = time.process_time()
        model.eval()
        model.sample_steps, model.sampler = out["sample_steps"], "ddim"
        m = _image_metrics(model, test_ds, n, backend.default_rng(1), 250)
        out["archs"][arch] = {
            "params": int(sum(p.data.size for p in model.parameters())),
            "step_cpu_s": round(cost, 3), "steps": steps, "train_cpu_s": round(train_cpu, 1),
            "sample_cpu_s": round(time.process_time() - t0, 1),
            "final_loss": rec["final_loss"], "loss_curve": rec["loss_curve"],
            **{k: m[k] for k in ("fid_mnist", "kid_mnist", "kid_mnist_se", "fid_n_samples",
                                 "kid_n_samples") if k in m}}
        print(arch, out["archs"][arch], file=sys.stderr)
    out["machine"] = machine()
    write_result(args.tag, out)


if __name__ == "__main__":
    main()
