"""DiT against the U-Net as DDPM's denoiser on MNIST at equal CPU time and a similar number of
parameters: FID and KID of the same N samples, beside the real-data floor at that N.

    OPENBLAS_NUM_THREADS=1 nice python benchmarks/dit_mnist.py --data mnist-14 --budget-min 25

The two models train in turns, a chunk of steps at a time, and the next chunk always goes to
the one that has used fewer CPU seconds, so each gets the same CPU time whatever else the
machine runs; training stops when the wall-clock budget less ``--eval-min`` is spent. Both
use the same DDPM process (linear schedule, T = 1000, eps, class-conditional with label
dropout), optimiser and EMA; samples are the EMA weights', drawn with the null label by DDIM
(eta = 0, ``--ddim`` steps). FID is against the test set's statistics and KID against the
test set's features (refgen.metrics), both of the same ``--n`` samples; the floor is N real
training images scored the same way. FID at small N is biased upwards: compare equal N only.

Writes benchmarks/results/dit_<data>.json (the command, machine and load average with it)
and dit_<data>_<model>.png sample grids. ``--smoke``: tiny nets, T = 30, a few seconds each.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SMOKE, add_smoke, command, load, machine, smoke, write_json  # noqa: E402

import numpy as np  # noqa: E402

from refgen import backend, io, models  # noqa: E402
from refgen.autograd import no_grad  # noqa: E402
from refgen.train import CHECKPOINT, load_weights, train  # noqa: E402

# similar parameter counts on mnist-14 (177,553 and 179,588)
NETS = {"unet": dict(channels=16, num_res_blocks=1),
        "dit": dict(net="dit", patch_size=2, dit_width=64, dit_depth=2, dit_heads=4)}
SMOKE_NETS = {"unet": dict(channels=8, num_res_blocks=1, T=30),
              "dit": dict(net="dit", patch_size=2, dit_width=16, dit_depth=1, dit_heads=2, T=30)}
TRAIN = dict(batch_size=64, lr=1e-3, ema_decay=0.995, warmup=100, grad_clip=1.0,
             optimizer="adam", schedule="constant", seed=0)


class Run:
    """One model trained a chunk at a time in its own run directory, with its CPU seconds."""

    def __init__(self, name, model, ds, out, chunk):
        self.name, self.model, self.ds, self.out, self.chunk = name, model, ds, out, chunk
        self.steps, self.cpu_s, self.wall_s, self.loss = 0, 0.0, 0.0, None

    def advance(self):
        c, t = time.process_time(), time.perf_counter()
        m = train(self.model, self.ds, steps=self.steps + self.chunk, out_dir=self.out,
                  resume=self.steps > 0, progress=False, samples=False, evaluate_at_end=False,
                  ckpt_every=self.chunk, log_every=self.chunk, **smoke(TRAIN, dict(TRAIN, warmup=1)))
        self.cpu_s += time.process_time() - c
        self.wall_s += time.perf_counter() - t
        self.steps, self.loss = m["steps"], m["loss"]

    def ema_model(self):
        load_weights(self.model, io.load_checkpoint(self.out / CHECKPOINT)[0])
        return self.model


def draw(model, n, steps, seed=1234, chunk=250):
    """n null-label DDIM samples (eta = 0), host array."""
    rng, parts = backend.default_rng(seed), []
    with no_grad():
        for i in range(0, n, chunk):
            parts.append(backend.to_numpy(model.sample(min(chunk, n - i), rng=rng, sampler="ddim",
                                                       steps=steps, eta=0.0, guidance=0.0)))
    return np.concatenate(parts)


def scores(x, test_x):
    """FID (against the test statistics) and KID with its s.e. (against the test features)."""
    from refgen.metrics import fid_mnist, kid, mnist_features
    x = np.clip(x, -1, 1)
    ref = "test" if not SMOKE else test_x
    k, se = kid(mnist_features(x), mnist_features(test_x), rng=0)
    return {"fid": float(fid_mnist(x, reference=ref)), "kid": k, "kid_se": se}


def main():
    p = add_smoke(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    p.add_argument("--data", default="mnist-14")
    p.add_argument("--budget-min", type=float, default=25.0, help="wall-clock budget, all in")
    p.add_argument("--eval-min", type=float, default=7.0, help="wall minutes kept for sampling and scoring")
    p.add_argument("--n", type=int, default=500, help="samples per model for FID and KID")
    p.add_argument("--ddim", type=int, default=20, help="DDIM steps")
    args = p.parse_args()
    t0 = time.perf_counter()
    ds, test = load(args.data, "train"), load(args.data, "test")
    n, ddim = smoke(args.n, 20), smoke(args.ddim, 3)
    nets = smoke(NETS, SMOKE_NETS)
    tmp = Path(tempfile.mkdtemp(prefix="refgen_dit_mnist_", dir=RESULTS if SMOKE else None))
    runs = []
    for name, kw in nets.items():
        model = models.create("ddpm", data_shape=ds.shape, num_classes=ds.num_classes, seed=0, **kw)
        chunk = smoke({"unet": 50, "dit": 150}[name], 2)
        runs.append(Run(name, model, ds, tmp / name, chunk))
    train_until = t0 + 60 * (args.budget_min - args.eval_min)
    while True:  # the next chunk to the run with fewer CPU seconds, until the budget is spent
        r = min(runs, key=lambda r: r.cpu_s)
        if SMOKE and all(x.steps >= 4 for x in runs) or not SMOKE and time.perf_counter() > train_until:
            break
        r.advance()
        print(f"{r.name}: step {r.steps}  loss {r.loss:.4f}  cpu {r.cpu_s:.0f}s  "
              f"(elapsed {time.perf_counter() - t0:.0f}s)", flush=True)
    tag = f"dit_{args.data.replace('-', '')}"
    res = {"command": command(), "data": args.data, "train": TRAIN, "n": n, "sampler": f"ddim{ddim}",
           "models": {}}
    for r in runs:
        model = r.ema_model()
        t = time.perf_counter()
        x = draw(model, n, ddim)
        io.write_png(RESULTS / f"{tag}_{r.name}.png", io.image_grid((np.clip(x[:64], -1, 1) + 1) / 2))
        res["models"][r.name] = dict(settings=nets[r.name], parameters=model.num_parameters(),
                                     steps=r.steps, train_cpu_s=round(r.cpu_s, 1),
                                     train_wall_s=round(r.wall_s, 1), final_loss=r.loss,
                                     sample_wall_s=round(time.perf_counter() - t, 1),
                                     **scores(x, test.x))
        print(r.name, res["models"][r.name], flush=True)
    pick = np.random.default_rng(0).choice(len(ds.x), n, replace=False)
    res["real_floor"] = scores(ds.x[pick], test.x)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    res["machine"] = machine()
    print("floor", res["real_floor"], flush=True)
    write_json(RESULTS / f"{tag}.json", res)


if __name__ == "__main__":
    with backend.use_backend(os.environ.get("REFGEN_BACKEND", "numpy")):
        main()
