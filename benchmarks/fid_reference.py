"""The scale of fid_mnist: the floor (train vs test) and the FID of simple corruptions.

    OPENBLAS_NUM_THREADS=1 python benchmarks/fid_reference.py

FID values mean little without a yardstick. This script measures, with the committed MNIST
classifier (refgen/metrics/classifier.py):

  - the floor: FID between the 60,000 training and the 10,000 test images, and between
    random halves of the test set (5,000 vs 5,000) and random 1,000s (the small-sample bias
    is visible there), and between the first and last 5,000 test digits (other writers);
  - corruptions of the 10,000 test images, each compared with the clean test set (column
    "vs test") and with the training set ("vs train"): Gaussian noise of std 0.1, 0.3, 0.5
    in [-1, 1] pixel units (then clipped to [-1, 1], as evaluate clips samples), box blur
    3x3 and 5x5 (edge pixels replicated), salt & pepper on 5% and 20% of the pixels,
    the 14x14 version of each image (2x2 average, blown up again), and mode dropping (only
    the test digits 0-4, which no image-level corruption can show).

Writes benchmarks/results/fid_reference.json and .md. ``--smoke``: the same on the first 64
training and test images, into a temporary directory.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, add_smoke, load, low_res, machine  # noqa: E402

import numpy as np  # noqa: E402

from refgen.metrics import classifier as C  # noqa: E402
from refgen.metrics.fid import mnist_features  # noqa: E402
from refgen.metrics.frechet import frechet_distance, gaussian_stats  # noqa: E402


def box_blur(x, k):
    """Mean over k x k neighbourhoods, edges replicated: (N, 1, 28, 28) -> same shape."""
    r = k // 2
    xp_ = np.pad(x, ((0, 0), (0, 0), (r, r), (r, r)), mode="edge")
    h, w = x.shape[2:]
    return sum(xp_[:, :, i:i + h, j:j + w] for i in range(k) for j in range(k)) / (k * k)


def salt_pepper(x, frac, rng):
    """A fraction ``frac`` of pixels set to -1 or +1 (half each)."""
    y = x.copy()
    hit = rng.random(x.shape) < frac
    y[hit] = np.where(rng.random(int(hit.sum())) < 0.5, -1.0, 1.0)
    return y


def main():
    add_smoke(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args()
    t0 = time.perf_counter()
    cmd = "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])
    C.load_classifier()  # verify the weights first: a clear error beats a wrong table
    train, test = load("mnist", "train"), load("mnist", "test")
    rng = np.random.default_rng(0)
    stats_train = gaussian_stats(mnist_features(train.x))
    stats_test = gaussian_stats(mnist_features(test.x))
    floor = floor_rows(mnist_features(test.x), stats_train, stats_test, rng)
    rows = corruption_rows(test, stats_train, stats_test, rng)
    wall = time.perf_counter() - t0
    result = {"command": cmd, "machine": machine(), "wall_s": round(wall, 1),
              "classifier_sha256": C.CLASSIFIER_SHA256, "floor": floor, "corruptions": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fid_reference.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "fid_reference.md").write_text(markdown(result, cmd, wall))
    print(json.dumps(floor), flush=True)


def floor_rows(f_test, stats_train, stats_test, rng):
    """FID between real image sets: what a perfect sampler scores at each N."""
    half = len(f_test) // 2
    k = min(1000, half)
    perm = rng.permutation(len(f_test))
    return {
        "train vs test (60,000 vs 10,000)": frechet_distance(*stats_train, *stats_test),
        "test random half A vs half B (5,000 vs 5,000)": frechet_distance(
            *gaussian_stats(f_test[perm[:half]]), *gaussian_stats(f_test[perm[half:]])),
        "test first 5,000 vs last 5,000 (different writers)": frechet_distance(
            *gaussian_stats(f_test[:half]), *gaussian_stats(f_test[half:])),
        "test random 1,000 vs another 1,000": frechet_distance(
            *gaussian_stats(f_test[perm[:k]]), *gaussian_stats(f_test[perm[k:2 * k]])),
    }


def corruption_rows(test, stats_train, stats_test, rng):
    """FID of each corruption of the test images against the clean test and train sets."""
    x = test.x
    corruptions = {
        "gaussian noise std 0.1": np.clip(x + 0.1 * rng.standard_normal(x.shape), -1, 1),
        "gaussian noise std 0.3": np.clip(x + 0.3 * rng.standard_normal(x.shape), -1, 1),
        "gaussian noise std 0.5": np.clip(x + 0.5 * rng.standard_normal(x.shape), -1, 1),
        "box blur 3x3": box_blur(x, 3),
        "box blur 5x5": box_blur(x, 5),
        "salt & pepper 5%": salt_pepper(x, 0.05, rng),
        "salt & pepper 20%": salt_pepper(x, 0.20, rng),
        "14x14 resolution (2x2 blocks)": low_res(x),
        "digits 0-4 only (mode dropping)": x[test.y < 5],
    }
    rows = {}
    for name, images in corruptions.items():
        s = gaussian_stats(mnist_features(images.astype(np.float32)))
        rows[name] = {"vs_test": frechet_distance(*s, *stats_test),
                      "vs_train": frechet_distance(*s, *stats_train), "n": len(images)}
        print(f"{name:34s} {rows[name]['vs_test']:9.3f} {rows[name]['vs_train']:9.3f}", flush=True)
    return rows


def markdown(result, cmd, wall):
    m, floor, rows = result["machine"], result["floor"], result["corruptions"]
    lines = [
        "# fid_mnist: the floor and the scale\n",
        f"Command: `OPENBLAS_NUM_THREADS=1 {cmd}`\n",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), backend {m['backend']}, NumPy {m['numpy']}; "
        f"wall {wall:.0f} s. Classifier sha256 `{C.CLASSIFIER_SHA256}`.\n",
        "Features: the 128-d penultimate layer of the committed MNIST classifier; pixels in "
        "[-1, 1]. FID grows as the sample size shrinks (compare the 5,000 and 1,000 rows), so "
        "compare models at equal N. The first and last 5,000 test digits were written by "
        "different people, which FID sees.\n",
        "Corruptions: Gaussian noise in [-1, 1] pixel units, then clipped to [-1, 1]; box blur "
        "with edge pixels replicated; salt & pepper sets that fraction of pixels to -1 or +1; "
        "14x14 is the 2x2 average shown as 2x2 blocks; mode dropping keeps digits 0-4 only.\n",
        "## Floor\n", "| pair | FID |", "|---|---|",
        *[f"| {k} | {v:.3f} |" for k, v in floor.items()],
        "", "## Corruptions of the 10,000 test images\n",
        "| corruption | N | FID vs test | FID vs train |", "|---|---|---|---|",
        *[f"| {k} | {v['n']} | {v['vs_test']:.3f} | {v['vs_train']:.3f} |" for k, v in rows.items()],
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
