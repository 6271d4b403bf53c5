"""The scale of kid_mnist, precision, recall and class_kl on real MNIST, as fid_reference.py
gives it for FID.

    OPENBLAS_NUM_THREADS=1 python benchmarks/sample_metrics_reference.py [--smoke]

Every row compares N "generated" images with N random test images (the reference), in the
features of the committed MNIST classifier, for N = 500, 1,000 and 10,000:

  - train:          N random training digits (the floor: a perfect model's scores);
  - train + noise:  the same digits with Gaussian noise of std 0.3 in [-1, 1] pixel units,
                    clipped to [-1, 1] (worse images, all classes);
  - train 0-4 only: N random training digits of the classes 0-4 (mode dropping).

Each row gives KID with its standard error, precision and recall (k = 3), class_kl (of the
generated images' predicted classes) and, for comparison, FID, plus the seconds each metric
took. ``--smoke`` runs N = 60 and 120 in seconds (tests/metrics/test_sample_metrics_reference.py)
and writes to ``--out`` instead of benchmarks/results/sample_metrics_reference.json.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see common.py
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, command, machine, write_json  # noqa: E402
from refgen import data  # noqa: E402
from refgen.metrics import class_kl, kid, precision_recall  # noqa: E402
from refgen.metrics import classifier as C  # noqa: E402
from refgen.metrics.fid import mnist_features_and_logits  # noqa: E402
from refgen.metrics.frechet import frechet_distance_from_features  # noqa: E402


def _timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, round(time.perf_counter() - t, 2)


def row(gen_feats, gen_logits, ref_feats):
    """Every metric of N generated features against N reference features."""
    (k, se), t_kid = _timed(kid, gen_feats, ref_feats)
    (p, r), t_pr = _timed(precision_recall, gen_feats, ref_feats)
    return {"n": len(gen_feats), "kid_mnist": k, "kid_mnist_se": se, "precision": p, "recall": r,
            "class_kl": class_kl(gen_logits.argmax(axis=1)),
            "fid_mnist": frechet_distance_from_features(gen_feats, ref_feats),
            "kid_s": t_kid, "precision_recall_s": t_pr}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="N = 60 and 120: seconds, for the tests")
    ap.add_argument("--out", default=None, help="result JSON (default: benchmarks/results/...)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    sizes = (60, 120) if args.smoke else (500, 1000, 10_000)
    top = max(sizes)
    C.load_classifier()  # verify the weights first: a clear error beats a wrong table
    train, test = data.load("mnist", "train"), data.load("mnist", "test")
    rng = np.random.default_rng(0)
    ref = test.x[rng.permutation(len(test.x))[:top]]
    pick = rng.permutation(len(train.x))
    clean = train.x[pick[:top]]
    low = train.x[pick[train.y[pick] < 5][:top]]
    noisy = np.clip(clean + 0.3 * rng.standard_normal(clean.shape), -1.0, 1.0).astype(np.float32)
    f_ref, _ = mnist_features_and_logits(ref)
    sets = {"train": clean, "train + noise std 0.3": noisy, "train digits 0-4 only": low}
    feats = {name: mnist_features_and_logits(x) for name, x in sets.items()}
    print(f"features of {top} x {len(sets) + 1} images: {time.perf_counter() - t0:.0f} s",
          flush=True)
    rows = {}
    for name, (f, logits) in feats.items():
        for n in sizes:  # nested subsets: the first n of one random draw
            rows[f"{name}, N={n}"] = r = row(f[:n], logits[:n], f_ref[:n])
            print(f"{name:24s} N={n:6d}  KID {r['kid_mnist']:9.2f} +- {r['kid_mnist_se']:7.2f}  "
                  f"P {r['precision']:.3f}  R {r['recall']:.3f}  class_kl {r['class_kl']:.4f}  "
                  f"FID {r['fid_mnist']:8.2f}  ({r['kid_s']} s, {r['precision_recall_s']} s)",
                  flush=True)
    cmd = command() if argv is None else " ".join(["python", os.path.relpath(__file__, ROOT), *argv])
    result = {"command": "OPENBLAS_NUM_THREADS=1 " + cmd, "machine": machine(),
              "wall_s": round(time.perf_counter() - t0, 1),
              "classifier_sha256": C.CLASSIFIER_SHA256,
              "setup": "N generated vs N random test images, features of the committed MNIST "
                       "classifier; KID: complete unbiased estimate, s.e. by delete-a-subset "
                       "jackknife over 50 subsets; precision/recall k = 3; class_kl in nats",
              "rows": rows}
    out = Path(args.out) if args.out else RESULTS / "sample_metrics_reference.json"
    write_json(out, result)
    return result


if __name__ == "__main__":
    main()
