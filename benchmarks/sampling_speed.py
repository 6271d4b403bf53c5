"""Samples per second of the MNIST 28x28 generators on this machine: the GANs' DCGAN generator
at the size gan_mnist.py trains (channels 32) beside the diffusion U-Net of
diffusion_mnist28_small (16 channels, one block per level, 10 classes plus the null label),
drawing with ancestral DDPM over all T = 1000 steps, over 50 strided steps, and DDIM-50.

    OPENBLAS_NUM_THREADS=1 python benchmarks/sampling_speed.py [--n 64] [--repeat 3]

Each row draws ``--n`` images in one call of the model's ``sample`` (without a graph), after
one warm-up call, ``--repeat`` times (once for the 1000-step chain); samples per second =
n / median wall seconds, with the median process CPU seconds beside. A draw's cost does not
depend on the weights' values, so the models are freshly initialised at the trained runs'
sizes. gan, nsgan, wgan, wgan-gp and fgan share one generator network (only the losses
differ); cgan adds a label embedding. Writes benchmarks/results/sampling_speed_cpu.json.
``--smoke``: tiny networks, 4 images, T = 40 and 2 strided steps.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SMOKE, add_smoke, command, machine, smoke, write_result  # noqa: E402

from refgen import backend, models  # noqa: E402

GAN = smoke({"channels": 32}, {"channels": 4, "hidden": 16, "z_dim": 8})
UNET = smoke({"channels": 16, "num_res_blocks": 1}, {"channels": 4, "num_res_blocks": 1, "groups": 2})
T = smoke(1000, 40)
S = smoke(50, 2)  # the strided chains' steps

# (row, model, options, sample keywords, repeats: None = --repeat)
ROWS = [
    ("DCGAN generator (gan, nsgan, wgan, wgan-gp, fgan)", "nsgan", GAN, {}, None),
    ("conditional DCGAN generator (cgan), balanced labels", "cgan", dict(GAN, num_classes=10), {},
     None),
    (f"DDPM, ancestral, all {T} steps", "ddpm", dict(UNET, T=T, num_classes=10), {"steps": T}, 1),
    (f"DDPM, ancestral, {S} strided steps", "ddpm", dict(UNET, T=T, num_classes=10), {"steps": S}, None),
    (f"DDIM, {S} steps (eta = 0)", "ddpm", dict(UNET, T=T, num_classes=10),
     {"steps": S, "sampler": "ddim", "eta": 0.0}, None),
]


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="images per draw")
    ap.add_argument("--repeat", type=int, default=3, help="timed draws per row")
    args = add_smoke(ap).parse_args(argv)
    if SMOKE:
        args.n, args.repeat = 4, 1
    return args


def time_draws(model, n, repeat, **kw):
    """(median wall s, median process CPU s) of ``repeat`` draws of n images, after a warm-up."""
    model.sample(n, rng=backend.default_rng(0), **kw)
    walls, cpus = [], []
    for i in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        model.sample(n, rng=backend.default_rng(i + 1), **kw)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def main(argv=None):
    args = parse(argv)
    rows = []
    for name, kind, options, kw, repeat in ROWS:
        model = models.create(kind, data_shape=(1, 28, 28), seed=0, **options)
        model.eval()
        wall, cpu = time_draws(model, args.n, repeat or args.repeat, **kw)
        rows.append(dict(row=name, model=kind, options=options, sample=kw, n=args.n,
                         draws=repeat or args.repeat, wall_s=round(wall, 4), cpu_s=round(cpu, 4),
                         samples_per_s=round(args.n / wall, 3), params=model.num_parameters()))
        print(f"{name:55s} {args.n / wall:10.2f} samples/s  ({wall:.3f} s per {args.n})", flush=True)
    gan = rows[0]["samples_per_s"]
    for r in rows:
        r["gan_is_faster_by"] = round(gan / r["samples_per_s"], 1)
    write_result("sampling_speed_cpu", {"command": command(), "machine": machine(), "rows": rows,
                                        "note": "fresh weights at the trained runs' sizes: a "
                                                "draw's cost does not depend on their values"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
