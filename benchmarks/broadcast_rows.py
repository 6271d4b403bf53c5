"""What NumPy's ufunc buffering costs a per-row broadcast pass, by row length.

    python benchmarks/broadcast_rows.py      # writes results/broadcast_rows.json

A float32 array of 802,816 numbers (64 x 16 x 28 x 28, a U-Net activation) viewed as rows of
L numbers is multiplied by one number per row into a preallocated buffer, ``a * s[:, None]``,
the pass group norm and a convolution's bias make, with NumPy's default ufunc buffer (8192
elements) and with a 16-element one (what ``refgen.backend.long_rows`` sets), beside a plain
pass by one scalar over the same array. Median wall time of ``--repeats`` calls, one BLAS
thread. The row length from which the short buffer is faster is ``refgen.backend.LONG_ROW``.
``--smoke``: a small array, three repeats.
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

ROWS = (49, 64, 128, 196, 392, 784, 1568, 6272)


def median_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(statistics.median(times) * 1e3, 4)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=31)
    args = add_smoke(ap).parse_args()
    repeats, n = smoke(args.repeats, 3), smoke(802816, 6272 * 4)
    rng = np.random.default_rng(0)
    x = rng.random(n, dtype=np.float32)
    out = np.empty_like(x)
    res = {"command": command(), "numbers": n, "repeats": repeats,
           "plain_pass_ms": median_ms(lambda: np.multiply(x, np.float32(2), out=out), repeats), "rows": []}
    for L in ROWS:
        a, o = x.reshape(-1, L), out.reshape(-1, L)
        s = rng.random((a.shape[0], 1), dtype=np.float32)
        row = {"row": L, "default_buffer_ms": median_ms(lambda: np.multiply(a, s, out=o), repeats)}
        with np.errstate():
            np.setbufsize(16)
            row["buffer_16_ms"] = median_ms(lambda: np.multiply(a, s, out=o), repeats)
        res["rows"].append(row)
        print(f"rows of {L:5d}: default buffer {row['default_buffer_ms']:.3f} ms, "
              f"16-element buffer {row['buffer_16_ms']:.3f} ms", flush=True)
    print(f"plain pass: {res['plain_pass_ms']:.3f} ms")
    res["machine"] = machine()
    write_json(RESULTS / "broadcast_rows.json", res)


if __name__ == "__main__":
    main()
