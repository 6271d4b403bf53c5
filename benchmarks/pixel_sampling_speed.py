"""Images per second of the PixelCNN samplers: the full sampler (a network pass per pixel)
against the cached one (refgen/models/autoregressive/fast_sampling.py), on 28x28 images.

    python benchmarks/pixel_sampling_speed.py     # writes results/pixel_sampling_speed.json

For the gated PixelCNN's defaults (the CPU-hour recipe of pixelcnn_mnist.py: 12 layers of 24
channels, a 27x27 first layer) and the plain PixelCNN's defaults, with random-initialised
weights (seed 0; the cost of a draw does not depend on the weights' values), at a batch of
--batch images: the full sampler once and the cached sampler --repeat times (the median),
as CPU seconds of this process (one BLAS thread) and wall seconds, and whether the two drew
the same images from the same generator. Then the command line: ``refgen train`` 2 steps of
gated-pixelcnn on mnist-binary into a temporary run directory (needs REFGEN_DATA_DIR) and
the wall seconds of ``refgen sample`` of 64 images there.

``--smoke``: 8x8 images, 2-layer 8-channel models, a batch of 2, and a 2-layer CLI run.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SMOKE, add_smoke, command, machine, smoke, write_result  # noqa: E402

import numpy as np  # noqa: E402

from pixelcnn_mnist import architecture  # noqa: E402
from refgen import backend, models  # noqa: E402

SMALL = {"gated-pixelcnn": dict(channels=8, layers=2, first_kernel=5, head_channels=8),
         "pixelcnn": dict(channels=8, blocks=2, head_channels=8)}


def timed(f):
    """f()'s result, CPU seconds of this process and wall seconds."""
    cpu, wall = time.process_time(), time.perf_counter()
    out = f()
    return out, time.process_time() - cpu, time.perf_counter() - wall


def measure(name, batch, repeat, size):
    model = models.create(name, data_shape=(1, size, size), seed=0, **(SMALL[name] if SMOKE else {}))
    draw = {s: (lambda s=s: backend.to_numpy(model.sample(batch, rng=backend.default_rng(1), sampler=s)))
            for s in model.samplers}
    full, full_cpu, full_wall = timed(draw["full"])
    runs = [timed(draw["cached"]) for _ in range(repeat)]
    cached_cpu = statistics.median(r[1] for r in runs)
    cached_wall = statistics.median(r[2] for r in runs)
    return {"architecture": architecture(model), "parameters": model.num_parameters(),
            "full_cpu_s": round(full_cpu, 2), "full_wall_s": round(full_wall, 2),
            "cached_cpu_s_median": round(cached_cpu, 3), "cached_wall_s_median": round(cached_wall, 3),
            "full_images_per_cpu_s": round(batch / full_cpu, 3),
            "cached_images_per_cpu_s": round(batch / cached_cpu, 2),
            "speedup_cpu": round(full_cpu / cached_cpu, 1),
            "identical_images": all(np.array_equal(r[0], full) for r in runs)}


def cli(args, out):
    """Wall and CPU seconds of ``refgen ARGS`` in a subprocess (one BLAS thread)."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "refgen", *args], cwd=out, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"refgen {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return round(wall, 2), round(cpu, 2)


def cli_sample_time(n):
    with tempfile.TemporaryDirectory() as tmp:
        run = str(Path(tmp) / "gated")
        sets = [a for k, v in SMALL["gated-pixelcnn"].items() for a in ("--set", f"{k}={v}")]
        train = ["train", "gated-pixelcnn", "--data", "mnist-binary", "--steps", "2",
                 "--out", run, "--no-eval", "-q"] + (sets if SMOKE else [])
        sample = ["sample", run, "-n", str(n), "-q"]
        train_wall, _ = cli(train, tmp)
        wall, cpu = cli(sample, tmp)
    named = lambda argv: "refgen " + " ".join("RUN" if a == run else a for a in argv)  # noqa: E731
    return {"train": named(train), "train_wall_s": train_wall, "sample": named(sample),
            "sample_wall_s": wall, "sample_cpu_s": cpu,
            "note": "wall time of the whole command: Python start, imports, loading the run, "
                    "sampling and writing the PNG"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=36)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-cli", action="store_true", help="skip the refgen train/sample timing")
    args = add_smoke(ap).parse_args()
    size = smoke(28, 8)
    if SMOKE:
        args.batch, args.repeat = 2, 1
    out = {"batch": args.batch, "image": [1, size, size], "weights": "random initialisation, seed 0",
           "timing": "CPU seconds of this process on one BLAS thread (time.process_time); "
                     "full sampler once, cached sampler median of repeat"}
    for name in ("gated-pixelcnn", "pixelcnn"):
        out[name] = measure(name, args.batch, args.repeat, size)
        print(name, out[name], flush=True)
    if not args.no_cli:
        out["cli"] = cli_sample_time(smoke(64, 2))
        print(out["cli"])
    out.update(command=command(), machine=machine())
    write_result("pixel_sampling_speed", out)


if __name__ == "__main__":
    main()
