"""Where a gated PixelCNN training step goes, and how far it is from the papers' model.

    python benchmarks/pixelcnn_step_cost.py        # writes results/gated_pixelcnn_step_cost.json

Reports, for the model's defaults (or the flags) on one BLAS thread at batch 16 on 28x28
binarized MNIST:
  - the seconds of one training step (forward, backward, Adam), median of --repeat;
  - the convolutions' multiply-adds per pixel (every conv here keeps the image size, so a
    conv's weight count is its multiply-adds per output pixel), and the GFLOP/s that makes
    over a step (forward, input gradient and weight gradient: three times the forward);
  - the share of the step spent in the raw convolution kernels (cProfile);
  - a float32 matmul's GFLOP/s on the same core, the ceiling BLAS reaches here;
  - the same multiply-add count for the papers' size (15 layers, 128 channels, 7x7 first layer).

``--smoke``: a 2-layer, 8-channel model at batch 2, one timed and one profiled step.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SMOKE, add_smoke, command, machine, smoke, write_json  # noqa: E402

import numpy as np  # noqa: E402

from pixelcnn_mnist import architecture  # noqa: E402
from refgen import backend, models  # noqa: E402
from refgen.autograd import Tensor  # noqa: E402
from refgen.models.base import Batch  # noqa: E402
from refgen.nn import Conv2d  # noqa: E402
from refgen.optim import Adam  # noqa: E402

CONV_KERNELS = ("_conv2d_raw", "_conv2d_weight_raw")


def conv_macs_per_pixel(model):
    return sum(int(m.weight.size) for m in model.modules() if isinstance(m, Conv2d))


def matmul_gflops(n=1024, repeat=5):
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    a @ a
    t = time.perf_counter()
    for _ in range(repeat):
        a @ a
    return 2 * n ** 3 * repeat / (time.perf_counter() - t) / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--channels", type=int, default=None, help="default: the model's")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--first-kernel", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=20)
    args = add_smoke(ap).parse_args()
    if SMOKE:
        args.batch_size, args.channels, args.layers, args.repeat = 2, 8, 2, 1
    shape = (1, 28, 28)
    given = {"channels": args.channels, "layers": args.layers, "first_kernel": args.first_kernel}
    model = models.create("gated-pixelcnn", data_shape=shape,
                          **{k: v for k, v in given.items() if v is not None})
    arch = architecture(model)
    step = training_step(model, args.batch_size, shape)
    for _ in range(smoke(3, 1)):  # warm up
        step()
    step_s, conv_share = time_and_profile(step, args.repeat)
    macs = conv_macs_per_pixel(model)
    paper = conv_macs_per_pixel(models.create("gated-pixelcnn", data_shape=shape, channels=128,
                                              layers=15, first_kernel=7))
    flops = 3 * 2 * macs * 28 * 28 * args.batch_size
    out = {"model": (f"gated-pixelcnn, {arch['depth']} layers, {arch['channels']} channels, "
                     f"{arch['first_kernel']}x{arch['first_kernel']} first layer"),
           "parameters": model.num_parameters(), "batch_size": args.batch_size,
           "step_s_median": round(step_s, 4), "conv_macs_per_pixel": macs,
           "conv_gflop_per_step": round(flops / 1e9, 2),
           "conv_gflops_achieved": round(flops / step_s / 1e9, 1),
           "conv_kernel_share_of_step": round(conv_share, 3),
           "matmul_gflops_1024_float32": round(matmul_gflops(n=smoke(1024, 64)), 1),
           "paper_size_conv_macs_per_pixel": paper, "paper_size_ratio": round(paper / macs, 1),
           "command": command(), "machine": machine()}
    for k, v in out.items():
        print(f"{k}: {v}")
    write_json(RESULTS / "gated_pixelcnn_step_cost.json", out)


def training_step(model, batch_size, shape):
    """One forward, backward and Adam step on a fixed random binary batch, as a function."""
    opt = Adam(list(model.parameters()), lr=1e-3)
    x = (np.random.default_rng(0).random((batch_size,) + shape) < 0.2).astype(np.float32)
    batch, noise = Batch(Tensor(x), None), backend.default_rng(0)

    def step():
        loss = model.loss(batch, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def time_and_profile(step, repeat):
    """The median seconds of ``repeat`` steps, and the share of another ``repeat`` steps
    that cProfile finds in the raw convolution kernels."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(repeat):
        step()
    prof.disable()
    stats = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    total = sum(v[2] for v in stats.values())
    # _conv_transpose_raw runs _conv2d_raw at stride 1, so the two kernels' cumulative times
    # cover every convolution without counting one twice
    conv = sum(v[3] for k, v in stats.items() if k[2] in CONV_KERNELS and "conv.py" in k[0])
    return statistics.median(times), conv / total


if __name__ == "__main__":
    main()
