"""How close refgen's core ops come to the machine's own matrix-multiply speed.

    python benchmarks/ops.py [--repeats 10] [--blas-threads N]

One run measures the float32 matmul rate (square 1024 and 2048 products, best of several:
the "peak"), then forward + backward of four workloads, float32, best of ``--repeats``:

    conv2d            batch 64, 32 -> 64 channels, 28x28, 3x3, padding 1, with bias
    conv_transpose2d  the same sizes, stride 1
    mlp               batch 256, 784-1024-1024-10, matmul + bias + relu
    attention         batch 32, 4 heads, 196 tokens, head dim 32 (scaled_dot_product_attention)

FLOPs are counted analytically from the matrix products only (2 per multiply-add; a backward
pass is two more products of the same size for each one whose both inputs need a gradient),
and each rate is printed as a fraction of the peak. Peak memory is the tracemalloc peak
(NumPy reports its allocations to tracemalloc) of one forward + backward, counting what it
allocates: outputs, saved tensors, temporaries and gradients, but not the inputs, parameters
and upstream gradient made beforehand. conv2d's is compared with 3 x (input + output +
weights). Results go to benchmarks/results/ops.json and ops.md.

Timings on a shared machine are noisy; best-of-N takes the least disturbed run of each, but
the ratios are only as good as the quietest moment each measurement got. ``--smoke``: one
repeat of each workload at a small batch, written to a temporary directory.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=10, help="timed runs per workload (best is kept)")
    p.add_argument("--blas-threads", type=int, default=None,
                   help="set OPENBLAS_NUM_THREADS / OMP_NUM_THREADS (default: leave as is)")
    p.add_argument("--out", type=Path, default=RESULTS / "ops.json", help="JSON output (ops.md beside it)")
    p.add_argument("--smoke", action="store_true",
                   help="a few steps on tiny data, written to a temporary directory (what the tests run)")
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.blas_threads is not None:  # must precede the first numpy import
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.blas_threads)

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (after NumPy: it leaves the BLAS threads chosen above alone)
from common import machine, smoke  # noqa: E402

import refgen  # noqa: E402
import refgen.functional as F  # noqa: E402
from refgen import backend  # noqa: E402


# --- measurement -----------------------------------------------------------------------------

def best_time(fn, repeats):
    """(best wall-clock seconds, best CPU seconds of this process) over ``repeats`` runs.

    CPU time does not count the time other processes held the core, so with one BLAS thread
    it is the contention-robust figure; with several, idle BLAS threads spinning inflate it.
    """
    fn()  # warm-up: first-touch page faults, BLAS buffers
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu)


def peak_alloc(fn):
    """Bytes allocated at the high-water mark of ``fn()``, beyond what existed before."""
    fn()  # warm caches outside the trace
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak - base


def matmul_peak(rng, repeats):
    out = {}
    for n in smoke((1024, 2048), (64, 128)):
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        t, c = best_time(lambda: a @ b, repeats)
        out[n] = (2 * n ** 3 / t / 1e9, 2 * n ** 3 / c / 1e9)
    return out


# --- workloads -------------------------------------------------------------------------------

def leaf(rng, shape, scale=1.0, grad=True):
    return refgen.tensor((rng.standard_normal(shape) * scale).astype(np.float32), requires_grad=grad)


def fwd_bwd(forward, upstream, params):
    """One training step's worth of work: forward, backward with a given upstream gradient."""
    def step():
        for p in params:
            p.grad = None
        y = forward()
        y.backward(upstream)
    return step


def conv2d_workload(rng):
    n, cin, cout, hw, k = smoke(64, 2), 32, 64, 28, 3
    x = leaf(rng, (n, cin, hw, hw))
    w = leaf(rng, (cout, cin, k, k), 0.1)
    b = leaf(rng, (cout,), 0.1)
    gy = refgen.tensor(rng.standard_normal((n, cout, hw, hw)).astype(np.float32))
    flops = 3 * 2 * n * cout * hw * hw * cin * k * k  # y, dL/dx and dL/dw: one product each
    sizes = {"input": x.data.nbytes, "output": gy.data.nbytes, "weights": w.data.nbytes + b.data.nbytes}
    return fwd_bwd(lambda: F.conv2d(x, w, b, padding=1), gy, [x, w, b]), flops, sizes


def conv_transpose2d_workload(rng):
    n, cin, cout, hw, k = smoke(64, 2), 32, 64, 28, 3
    x = leaf(rng, (n, cin, hw, hw))
    w = leaf(rng, (cin, cout, k, k), 0.1)
    b = leaf(rng, (cout,), 0.1)
    gy = refgen.tensor(rng.standard_normal((n, cout, hw, hw)).astype(np.float32))
    flops = 3 * 2 * n * cin * hw * hw * cout * k * k
    sizes = {"input": x.data.nbytes, "output": gy.data.nbytes, "weights": w.data.nbytes + b.data.nbytes}
    return fwd_bwd(lambda: F.conv_transpose2d(x, w, b, padding=1), gy, [x, w, b]), flops, sizes


def mlp_workload(rng):
    batch, dims = smoke(256, 8), (784, 1024, 1024, 10)
    x = leaf(rng, (batch, dims[0]), grad=False)  # data: no gradient wanted
    layers = [(leaf(rng, (i, o), 1 / np.sqrt(i)), leaf(rng, (o,), 0.01)) for i, o in zip(dims, dims[1:])]
    gy = refgen.tensor(rng.standard_normal((batch, dims[-1])).astype(np.float32))

    def forward():
        h = x
        for i, (w, b) in enumerate(layers):
            h = h @ w + b
            if i < len(layers) - 1:
                h = F.relu(h)
        return h

    products = [2 * batch * i * o for i, o in zip(dims, dims[1:])]
    # forward, dL/dW for every layer, dL/dh for every layer but the first (x needs none)
    flops = sum(products) * 2 + sum(products[1:])
    sizes = {"input": x.data.nbytes, "output": gy.data.nbytes,
             "weights": sum(w.data.nbytes + b.data.nbytes for w, b in layers)}
    params = [p for layer in layers for p in layer]
    return fwd_bwd(forward, gy, params), flops, sizes


def _softmax_fallback(s):
    m = refgen.tensor(s.data.max(axis=-1, keepdims=True))
    e = F.exp(s - m)
    return e / F.sum(e, -1, keepdim=True)


def attention_workload(rng):
    b, h, l, e = smoke(32, 1), 4, 196, 32
    q, k, v = (leaf(rng, (b, h, l, e)) for _ in range(3))
    gy = refgen.tensor(rng.standard_normal((b, h, l, e)).astype(np.float32))
    if hasattr(F, "scaled_dot_product_attention"):
        forward, how = (lambda: F.scaled_dot_product_attention(q, k, v)), "F.scaled_dot_product_attention"
    else:  # written from primitives when the real op is missing
        real = getattr(F, "softmax", None)
        how = "matmul + " + ("F.softmax" if real else "exp(x - max) / sum (no F.softmax)")
        soft = (lambda s: real(s, -1)) if real else _softmax_fallback

        def forward():
            s = F.matmul(q * (1.0 / np.sqrt(e)), F.transpose(k, -1, -2))
            return F.matmul(soft(s), v)
    # Q K^T and A V, then two products per each in backward; softmax/scale are not counted
    flops = 3 * 2 * (2 * b * h * l * l * e)
    sizes = {"input": 3 * q.data.nbytes, "output": gy.data.nbytes, "weights": 0}
    return fwd_bwd(forward, gy, [q, k, v]), flops, sizes, how


# --- reporting ------------------------------------------------------------------------------

def markdown(res):
    m = res["machine"]
    lines = [
        "# refgen op throughput (fwd + bwd, float32)", "",
        f"Command: `{res['command']}`  ",
        f"Date: {res['date']}  ",
        f"Machine: {m['cpu']}, nproc {m['nproc']}, numpy {m['numpy']}, python {m['python']}, "
        f"BLAS threads {m['blas_threads']}  ",
        f"Load average (1 min) before / after: {res['load_avg'][0]:.2f} / {res['load_avg'][1]:.2f}  ",
        f"Matmul peak (float32, best of {max(3, res['repeats'] // 2)} at the start and at the end): "
        f"{res['matmul_peak_gflops']:.1f} GFLOP/s ("
        + ", ".join(f"{n}^3: {g:.1f}" for n, g in res["matmul_gflops"].items())
        + "); per CPU-second of this process: "
        f"{res['matmul_peak_gflops_per_cpu_s']:.1f}", "",
        "| op | time (ms) | GFLOP | GFLOP/s | of peak | of peak, CPU time | target | peak alloc (MB) "
        "| 3x(in+out+w) (MB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in res["ops"].items():
        budget = f"{r['memory_budget_bytes'] / 1e6:.1f}" if "memory_budget_bytes" in r else "—"
        target = f">= {r['target_fraction']:.0%}" if "target_fraction" in r else "—"
        lines.append(f"| {name} | {r['time_s'] * 1e3:.1f} | {r['gflop']:.2f} | {r['gflops']:.1f} | "
                     f"{r['fraction_of_peak']:.0%} | {r['fraction_of_peak_cpu_time']:.0%} | {target} | "
                     f"{r['peak_alloc_bytes'] / 1e6:.1f} | {budget} |")
    lines += ["", f"attention via: {res['ops']['attention']['via']}", "",
              "FLOPs count matrix products only. Times are the best of the repeats; 'of peak' "
              "divides wall-clock rates, 'CPU time' divides rates per CPU-second of this process "
              "(robust to other processes on the machine when BLAS runs one thread). Peak alloc "
              "is tracemalloc's high-water mark of new allocations during one forward + backward "
              "(inputs, parameters and the upstream gradient already exist).", ""]
    return "\n".join(lines)


def main(args):
    if backend.name() != "numpy":
        raise SystemExit("benchmarks/ops.py measures the NumPy backend; unset REFGEN_BACKEND")
    load0 = os.getloadavg()[0]
    t_start = time.perf_counter()
    mm, peak, peak_cpu, ops = measure(args)
    res = {"command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
           "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "machine": machine(), "repeats": args.repeats,
           "load_avg": [load0, os.getloadavg()[0]], "wall_s": time.perf_counter() - t_start,
           "matmul_gflops": {str(n): g[0] for n, g in mm.items()}, "matmul_peak_gflops": peak,
           "matmul_gflops_per_cpu_s": {str(n): g[1] for n, g in mm.items()},
           "matmul_peak_gflops_per_cpu_s": peak_cpu,
           "ops": ops}
    report(res, mm)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(res))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')} ({res['wall_s']:.0f} s)")
    return res


def measure(args):
    """The matmul peak (at the start and the end) and every workload's rates and memory."""
    rng = np.random.default_rng(0)
    mm = matmul_peak(rng, max(3, args.repeats // 2))
    ops = {}
    for name, make in [("conv2d", conv2d_workload), ("conv_transpose2d", conv_transpose2d_workload),
                       ("mlp", mlp_workload), ("attention", attention_workload)]:
        step, flops, sizes, *via = make(rng)
        t, c = best_time(step, args.repeats)
        ops[name] = {"time_s": t, "gflop": flops / 1e9, "gflops": flops / t / 1e9,
                     "cpu_time_s": c, "gflops_per_cpu_s": flops / c / 1e9,
                     "peak_alloc_bytes": peak_alloc(step), "sizes_bytes": sizes}
        if via:
            ops[name]["via"] = via[0]
    mm_end = matmul_peak(rng, max(3, args.repeats // 2))  # the machine may be quieter later
    mm = {n: (max(mm[n][0], mm_end[n][0]), max(mm[n][1], mm_end[n][1])) for n in mm}
    peak, peak_cpu = max(v[0] for v in mm.values()), max(v[1] for v in mm.values())
    for name, r in ops.items():
        r["fraction_of_peak"] = r["gflops"] / peak
        r["fraction_of_peak_cpu_time"] = r["gflops_per_cpu_s"] / peak_cpu
    for name in ("conv2d", "mlp"):
        ops[name]["target_fraction"] = 0.5
        ops[name]["meets_target"] = ops[name]["fraction_of_peak"] >= 0.5
    s = ops["conv2d"]["sizes_bytes"]
    ops["conv2d"]["memory_budget_bytes"] = 3 * (s["input"] + s["output"] + s["weights"])
    ops["conv2d"]["meets_memory_budget"] = ops["conv2d"]["peak_alloc_bytes"] <= ops["conv2d"]["memory_budget_bytes"]
    return mm, peak, peak_cpu, ops


def report(res, mm):
    """The measurements as a table on stdout."""
    peak, peak_cpu, ops = res["matmul_peak_gflops"], res["matmul_peak_gflops_per_cpu_s"], res["ops"]
    sizes = ", ".join(f"{n}^3 {g[0]:.1f}" for n, g in mm.items())
    print(f"matmul peak {peak:.1f} GFLOP/s ({sizes}); "
          f"per CPU-second {peak_cpu:.1f}")
    print(f"{'op':<18}{'ms':>8}{'GFLOP/s':>10}{'of peak':>9}{'(cpu t)':>9}{'peak MB':>9}")
    for name, r in ops.items():
        print(f"{name:<18}{r['time_s'] * 1e3:8.1f}{r['gflops']:10.1f}{r['fraction_of_peak']:9.0%}"
              f"{r['fraction_of_peak_cpu_time']:9.0%}{r['peak_alloc_bytes'] / 1e6:9.1f}")
    c = ops["conv2d"]
    print(f"conv2d peak alloc {c['peak_alloc_bytes'] / 1e6:.1f} MB vs 3x(in+out+w) "
          f"{c['memory_budget_bytes'] / 1e6:.1f} MB; attention via {ops['attention']['via']}")


if __name__ == "__main__":
    if ARGS.smoke:
        ARGS.repeats, ARGS.out = 1, common.RESULTS / "ops.json"
    main(ARGS)
