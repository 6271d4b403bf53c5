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
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import cProfile  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import RESULTS, command, machine, write_json  # noqa: E402
from pixelcnn_mnist import architecture  # noqa: E402
from refgen import models  # noqa: E402
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
    args = ap.parse_args()
    shape = (1, 28, 28)
    given = {"channels": args.channels, "layers": args.layers, "first_kernel": args.first_kernel}
    model = models.create("gated-pixelcnn", data_shape=shape,
                          **{k: v for k, v in given.items() if v is not None})
    arch = architecture(model)
    opt = Adam(list(model.parameters()), lr=1e-3)
    x = (np.random.default_rng(0).random((args.batch_size,) + shape) < 0.2).astype(np.float32)
    batch = Batch(Tensor(x), None)

    def step():
        loss = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.repeat):
        step()
    prof.disable()
    stats = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    total = sum(v[2] for v in stats.values())
    # _conv_transpose_raw runs _conv2d_raw at stride 1, so the two kernels' cumulative times
    # cover every convolution without counting one twice
    conv = sum(v[3] for k, v in stats.items() if k[2] in CONV_KERNELS and "conv.py" in k[0])

    macs = conv_macs_per_pixel(model)
    paper = conv_macs_per_pixel(models.create("gated-pixelcnn", data_shape=shape, channels=128,
                                              layers=15, first_kernel=7))
    step_s = statistics.median(times)
    flops = 3 * 2 * macs * 28 * 28 * args.batch_size
    out = {"model": (f"gated-pixelcnn, {arch['depth']} layers, {arch['channels']} channels, "
                     f"{arch['first_kernel']}x{arch['first_kernel']} first layer"),
           "parameters": model.num_parameters(), "batch_size": args.batch_size,
           "step_s_median": round(step_s, 4), "conv_macs_per_pixel": macs,
           "conv_gflop_per_step": round(flops / 1e9, 2),
           "conv_gflops_achieved": round(flops / step_s / 1e9, 1),
           "conv_kernel_share_of_step": round(conv / total, 3),
           "matmul_gflops_1024_float32": round(matmul_gflops(), 1),
           "paper_size_conv_macs_per_pixel": paper, "paper_size_ratio": round(paper / macs, 1),
           "command": command(), "machine": machine()}
    for k, v in out.items():
        print(f"{k}: {v}")
    write_json(RESULTS / "gated_pixelcnn_step_cost.json", out)


if __name__ == "__main__":
    main()
