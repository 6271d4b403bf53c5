"""Group norm's cost by chunk size, at the U-Net's shapes.

    python benchmarks/group_norm_chunks.py      # writes results/group_norm_chunks.json

refgen's group norm (8 groups, float32, batch 64) runs its forward and backward over chunks
of whole samples of about ``refgen.functional.nn.GN_CHUNK_BYTES``. For each activation shape
of the diffusion benchmarks' 28x28 U-Net (16 base channels) this times the forward outside a
graph (what a sampler runs) and the forward and backward (what a training step runs) with the
chunk set to each of ``--chunks`` KiB and to the whole batch (one chunk: every pass over the
whole array). Median CPU time of ``--repeats`` interleaved calls after a warm-up, one BLAS
thread. ``--smoke``: two small shapes, three repeats.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, add_smoke, command, machine, smoke, write_json  # noqa: E402

import numpy as np  # noqa: E402

import refgen  # noqa: E402
import refgen.functional as F  # noqa: E402
from refgen.functional import nn as nn_ops  # noqa: E402

SHAPES = ((64, 16, 28, 28), (64, 32, 28, 28), (64, 48, 28, 28), (64, 32, 14, 14),
          (64, 48, 14, 14), (64, 64, 14, 14), (64, 32, 7, 7), (64, 64, 7, 7))
WHOLE = 1 << 40  # one chunk, whatever the batch


def workloads(shape, rng):
    x = refgen.tensor(rng.standard_normal(shape).astype(np.float32), requires_grad=True)
    w = refgen.tensor(rng.standard_normal(shape[1]).astype(np.float32), requires_grad=True)
    b = refgen.tensor(rng.standard_normal(shape[1]).astype(np.float32), requires_grad=True)
    gy = refgen.tensor(rng.standard_normal(shape).astype(np.float32))

    def forward():
        with refgen.no_grad():
            F.group_norm(x, 8, w, b)

    def forward_backward():
        refgen.grad(F.group_norm(x, 8, w, b), [x, w, b], gy)
    return {"forward_no_grad": forward, "forward_backward": forward_backward}


def cpu_ms(fn):
    t = time.process_time()
    fn()
    return (time.process_time() - t) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--chunks", default="128,256,512,1024,4096", help="chunk sizes in KiB")
    args = add_smoke(ap).parse_args()
    repeats = smoke(args.repeats, 3)
    shapes = smoke(SHAPES, ((4, 16, 8, 8), (4, 32, 4, 4)))
    chunks = [int(k) << 10 for k in args.chunks.split(",")] + [WHOLE]
    names = {c: ("whole" if c == WHOLE else f"{c >> 10}K") for c in chunks}
    rng = np.random.default_rng(0)
    res = {"command": command(), "repeats": repeats, "in_use": nn_ops.GN_CHUNK_BYTES >> 10,
           "rows": []}
    default = nn_ops.GN_CHUNK_BYTES
    try:
        for shape in shapes:
            for kind, fn in workloads(shape, rng).items():
                times = {c: [] for c in chunks}
                for _ in range(repeats + 1):  # interleaved; the first round is the warm-up
                    for c in chunks:
                        nn_ops.GN_CHUNK_BYTES = c
                        times[c].append(cpu_ms(fn))
                row = {"shape": list(shape), "kind": kind,
                       "ms": {names[c]: round(statistics.median(t[1:]), 4) for c, t in times.items()}}
                res["rows"].append(row)
                print(f"{str(shape):18s} {kind:16s} " +
                      "  ".join(f"{k} {v:.3f}" for k, v in row["ms"].items()), flush=True)
    finally:
        nn_ops.GN_CHUNK_BYTES = default
    res["machine"] = machine()
    write_json(RESULTS / "group_norm_chunks.json", res)


if __name__ == "__main__":
    main()
