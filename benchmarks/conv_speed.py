"""Convolution speed at the recipes' shapes, against this machine's float32 matmul.

    python benchmarks/conv_speed.py           # writes results/conv_speed_cpu.json (--tag NAME: NAME.json)
    python benchmarks/conv_speed.py --tune    # times every algorithm per raw shape and prints
                                              # the table for refgen/functional/conv.py::MEASURED
    python benchmarks/conv_speed.py --torch   # the U-Net's layers against PyTorch's (conv_vs_torch_cpu.json)

The shapes are those of one training step of two recipes: the 28x28 diffusion U-Net (ddpm,
16 channels, one block per level, batch 64) and the gated PixelCNN at its defaults (batch 16).
Their convolutions are recorded while the step runs (each conv layer's input, weight and
geometry, and for --tune each raw kernel call), then re-run alone on random arrays:

- default mode: each conv layer's forward and backward (the input gradient where the step
  needs one, and the weight gradient) through refgen's autograd, 2 x N x O x C/g x kh x kw x
  Ho x Wo floating-point operations for each of the three (or two) products, as
  GFLOP/s, "before" (every shape forced to im2col at CHUNK_BYTES: the implementation without
  the table) and "after" (the table), timed alternately so both see the same machine load,
  and set against a 1024 x 1024 float32 matmul timed between them. Then whole training
  steps in fresh processes: CPU seconds and page faults per step with and without
  refgen.allocator, and with neither it nor the table. Medians of process CPU time, one BLAS
  thread: on a shared machine CPU time, not wall time, is what a run costs.
- --torch: each U-Net conv layer's forward and backward beside PyTorch's (torch.nn.functional
  conv2d on one thread, the same shapes, timed alternately), and beside
  the layer's forward product alone, (O, C kh kw) @ (C kh kw, N Ho Wo) as float32 GEMMs over
  column blocks of 256 KiB, one block reused so that it stays in cache: what a convolution
  built on BLAS GEMMs pays at that shape before any copy.
- --tune: every one-group raw kernel (forward, and weight gradient) under each algorithm
  that applies (im2col, channels-last; shifted and stacked at stride 1) at chunks of 256 KiB,
  1 MiB and 4 MiB, rounds in rotating order; prints the shapes where a candidate beat im2col at
  CHUNK_BYTES by more than 10%.

``--smoke``: 4-channel models at batch 2, one repeat.
"""
from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SMOKE, add_smoke, command, machine, smoke, write_json  # noqa: E402

import numpy as np  # noqa: E402

from refgen import models  # noqa: E402
from refgen.autograd import Tensor  # noqa: E402
from refgen.functional import conv  # noqa: E402
from refgen.models.base import Batch  # noqa: E402

CANDIDATES = [(alg, kib << 10) for alg in ("im2col", "shifted", "stacked", "nhwc")
              for kib in (256, 1024, 4096)]


def recipes():
    """name -> (model, batch): the two recipes' models, tiny in smoke mode."""
    rng = np.random.default_rng(0)
    b_unet, b_pix = smoke(64, 2), smoke(16, 2)
    unet = models.create("ddpm", data_shape=(1, 28, 28), num_classes=10, channels=smoke(16, 4),
                         num_res_blocks=1, **({"groups": 2} if SMOKE else {}))
    x = rng.uniform(-1, 1, (b_unet, 1, 28, 28)).astype(np.float32)
    pix = models.create("gated-pixelcnn", data_shape=(1, 28, 28),
                        **({"channels": 4, "layers": 2} if SMOKE else {}))
    xb = (rng.random((b_pix, 1, 28, 28)) < 0.2).astype(np.float32)
    return {"unet28": (unet, Batch(Tensor(x), np.arange(b_unet) % 10)),
            "gated_pixelcnn": (pix, Batch(Tensor(xb), None))}


def loss(model, batch):
    """model.loss with an explicit generator where the model's contract takes one."""
    if "rng" in inspect.signature(model.loss).parameters:
        from refgen import backend
        return model.loss(batch, rng=backend.default_rng(0))
    return model.loss(batch)


class Recorder:
    """Wraps conv.<name> while active and keeps one entry per call (see ``key``)."""

    def __init__(self, owner, name, key):
        self.owner, self.name, self.key, self.calls = owner, name, key, []

    def __enter__(self):
        self.orig = getattr(self.owner, self.name)

        def wrapped(*a, **k):
            self.calls.append(self.key(*a, **k))
            return self.orig(*a, **k)
        setattr(self.owner, self.name, wrapped)
        return self

    def __exit__(self, *exc):
        setattr(self.owner, self.name, self.orig)


def layer_calls(model, batch):
    """The conv layers of one forward pass: (kind, x shape, w shape, geom, out_hw, whether x
    needs a gradient) per call."""
    def key(kind):
        return lambda fn_self, x, w, *b, geom, out_hw: (kind, x.shape, w.shape, geom, tuple(out_hw),
                                                        fn_self.inputs[0].requires_grad)
    with Recorder(conv._Conv2d, "forward", key("conv2d")) as a, \
            Recorder(conv._ConvTranspose2d, "forward", key("conv_transpose2d")) as b:
        loss(model, batch)
    return a.calls + b.calls


def raw_calls(model, batch):
    """The raw kernels of one training step's forward and backward, as (kind, args) with the
    arrays replaced by their shapes."""
    def fwd(x, w, b, geom, out_hw, pads=None):
        return ("forward", x.shape, w.shape, geom, tuple(out_hw), pads)

    def wgt(x, gy, kernel, geom):
        return ("weight", x.shape, gy.shape, geom, tuple(kernel), None)
    with Recorder(conv, "_conv2d_raw", fwd) as a, Recorder(conv, "_conv2d_weight_raw", wgt) as b:
        loss(model, batch).backward()
    return a.calls + b.calls


def cpu_time(fn):
    t = time.process_time()
    fn()
    return time.process_time() - t


def matmul_s(n=1024):
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    return cpu_time(lambda: a @ a), 2 * n ** 3


def forced(alg, chunk=None):
    """Set conv.ALGORITHM (and CHUNK_BYTES); returns a function that restores both."""
    old = conv.ALGORITHM, conv.CHUNK_BYTES
    conv.ALGORITHM, conv.CHUNK_BYTES = alg, chunk or conv.CHUNK_BYTES

    def restore():
        conv.ALGORITHM, conv.CHUNK_BYTES = old
    return restore


def layer_flops(kind, xs, ws, geom, out_hw, x_grad=True):
    """Multiply-adds x 2 of the forward pass; the backward does it again per gradient."""
    n = xs[0]
    if kind == "conv2d":  # 2 N O (C/g) kh kw Ho Wo
        return 2 * n * ws[0] * ws[1] * ws[2] * ws[3] * out_hw[0] * out_hw[1]
    return 2 * n * xs[1] * xs[2] * xs[3] * ws[1] * ws[2] * ws[3]  # transpose: per input pixel


def time_layer(call, rng, repeat):
    """Median CPU seconds of forward and of backward for one layer call, before and after."""
    kind, xs, ws, geom, out_hw, x_grad = call
    fn = conv._Conv2d if kind == "conv2d" else conv._ConvTranspose2d
    x = Tensor(rng.standard_normal(xs).astype(np.float32), requires_grad=x_grad)
    w = Tensor(0.1 * rng.standard_normal(ws).astype(np.float32), requires_grad=True)
    y0 = fn.apply(x, w, geom=geom, out_hw=out_hw)
    gy = Tensor(rng.standard_normal(y0.shape).astype(np.float32))
    times = {"before": ([], []), "after": ([], [])}
    for _ in range(repeat + 1):  # the first round warms up
        for label, alg in (("before", "im2col"), ("after", None)):
            restore = forced(alg)
            try:
                out = []
                f = cpu_time(lambda: out.append(fn.apply(x, w, geom=geom, out_hw=out_hw)))
                x.grad = w.grad = None
                b = cpu_time(lambda: out[0].backward(gy))
            finally:
                restore()
            times[label][0].append(f)
            times[label][1].append(b)
    return {k: (statistics.median(f[1:]), statistics.median(b[1:])) for k, (f, b) in times.items()}


def measure(repeat):
    rng = np.random.default_rng(0)
    out, mm = {}, []
    for name, (model, batch) in recipes().items():
        calls = layer_calls(model, batch)
        distinct = sorted(set(calls), key=calls.index)
        rows, tot = [], {"before": [0.0, 0.0], "after": [0.0, 0.0], "flops": 0}
        for call in distinct:
            count = calls.count(call)
            t = time_layer(call, rng, repeat)
            mm.append(matmul_s())
            fl = (3 if call[5] else 2) * layer_flops(*call)
            rows.append({"layer": f"{call[0]} x{list(call[1])} w{list(call[2])} stride {call[3][0]} "
                                  f"padding {call[3][1]}" + ("" if call[5] else " (no input gradient)"),
                         "count": count, "gflop": round(fl / 1e9, 4),
                         **{f"gflops_{k}": round(fl / sum(v) / 1e9, 1) for k, v in t.items()}})
            tot["flops"] += count * fl
            for k in ("before", "after"):
                tot[k][0] += count * t[k][0]
                tot[k][1] += count * t[k][1]
        out[name] = {"layers": rows, "conv_calls_per_forward": len(calls),
                     "gflop_per_step": round(tot["flops"] / 1e9, 3),
                     **{f"{k}_forward_s": round(tot[k][0], 4) for k in ("before", "after")},
                     **{f"{k}_backward_s": round(tot[k][1], 4) for k in ("before", "after")},
                     **{f"gflops_{k}": round(tot["flops"] / sum(tot[k]) / 1e9, 1)
                        for k in ("before", "after")}}
    rate = statistics.median(fl / s for s, fl in mm) / 1e9
    for r in out.values():
        for k in ("before", "after"):
            r[f"share_of_matmul_{k}"] = round(r[f"gflops_{k}"] / rate, 3)
    return out, rate


def _torch_layer(call, rng, repeat):
    """Median CPU seconds of refgen's forward, its backward, torch's forward and backward, and
    the forward product alone as in-cache GEMMs, for one layer call (timed in rotation)."""
    import torch
    import torch.nn.functional as TF
    kind, xs, ws, geom, out_hw, x_grad = call
    assert kind == "conv2d", "the U-Net has no transposed convolutions"
    (stride, padding, dilation, groups) = geom
    fn = conv._Conv2d
    xa = rng.standard_normal(xs).astype(np.float32)
    wa = (0.1 * rng.standard_normal(ws)).astype(np.float32)
    x, w = Tensor(xa, requires_grad=x_grad), Tensor(wa, requires_grad=True)
    xt, wt = torch.from_numpy(xa.copy()).requires_grad_(x_grad), torch.from_numpy(wa.copy()).requires_grad_()

    def theirs():
        return TF.conv2d(xt, wt, stride=stride, padding=padding, dilation=dilation, groups=groups)
    y0 = fn.apply(x, w, geom=geom, out_hw=out_hw)
    assert tuple(theirs().shape) == tuple(y0.shape), (kind, xs, ws)
    gy = rng.standard_normal(y0.shape).astype(np.float32)
    gy_r, gy_t = Tensor(gy), torch.from_numpy(gy.copy())
    o, k, cols = ws[0], ws[1] * ws[2] * ws[3], xs[0] * out_hw[0] * out_hw[1]
    # the forward product in column blocks of 256 KiB of (C kh kw, cols), one block reused:
    # the GEMM's own time with its operand in cache and no copy to build it
    block = max(1, min(cols, (256 << 10) // (4 * k)))
    a, b = rng.standard_normal((o, k)).astype(np.float32), rng.standard_normal((k, block)).astype(np.float32)
    reps = -(-cols // block)

    def gemm():
        for _ in range(reps):
            a @ b
    t = {"ours_forward": [], "ours_backward": [], "torch_forward": [], "torch_backward": [], "gemm": []}
    for _ in range(repeat + 1):  # the first round warms up
        out = []
        t["ours_forward"].append(cpu_time(lambda: out.append(fn.apply(x, w, geom=geom, out_hw=out_hw))))
        x.grad = w.grad = None
        t["ours_backward"].append(cpu_time(lambda: out[0].backward(gy_r)))
        xt.grad = wt.grad = None
        t["torch_forward"].append(cpu_time(lambda: out.append(theirs())))
        t["torch_backward"].append(cpu_time(lambda: out[-1].backward(gy_t)))
        t["gemm"].append(cpu_time(gemm))
    return {key: statistics.median(v[1:]) for key, v in t.items()}


def against_torch(repeat):
    """The U-Net recipe's conv layers: refgen against PyTorch, and the forward GEMM floor."""
    import torch
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    model, batch = recipes()["unet28"]
    calls = layer_calls(model, batch)
    rows, tot = [], {}
    flops, mm = 0, []
    for call in sorted(set(calls), key=calls.index):
        count, t = calls.count(call), _torch_layer(call, rng, repeat)
        flops += count * layer_flops(*call)
        mm.append(matmul_s())
        rows.append({"layer": f"{call[0]} x{list(call[1])} w{list(call[2])} stride {call[3][0]} "
                              f"padding {call[3][1]}" + ("" if call[5] else " (no input gradient)"),
                     "count": count, **{f"{k}_ms": round(v * 1e3, 3) for k, v in t.items()},
                     "forward_ratio": round(t["ours_forward"] / t["torch_forward"], 2),
                     "backward_ratio": round(t["ours_backward"] / t["torch_backward"], 2)})
        for k, v in t.items():
            tot[k] = tot.get(k, 0.0) + count * v
        print(f"{rows[-1]['layer']:70s} x{count}: forward {rows[-1]['forward_ratio']:.2f}, "
              f"backward {rows[-1]['backward_ratio']:.2f} of torch's", flush=True)
    total = {f"{k}_ms": round(v * 1e3, 2) for k, v in tot.items()}
    total.update(forward_ratio=round(tot["ours_forward"] / tot["torch_forward"], 2),
                 backward_ratio=round(tot["ours_backward"] / tot["torch_backward"], 2),
                 gemm_over_torch_forward=round(tot["gemm"] / tot["torch_forward"], 2),
                 ours_forward_over_gemm=round(tot["ours_forward"] / tot["gemm"], 2),
                 forward_gflop=round(flops / 1e9, 3),
                 **{f"{k}_gflops": round(flops / tot[k] / 1e9, 1)
                    for k in ("ours_forward", "torch_forward", "gemm")})
    total["matmul_gflops_1024_float32"] = round(statistics.median(fl / s for s, fl in mm) / 1e9, 1)
    return {"layers": rows, "per_forward_pass": total, "torch": torch.__version__}


def tune(repeat):
    """Per one-group raw kernel shape: the median CPU seconds of each candidate that applies
    (shifted: stride 1 and no cropping)."""
    rng = np.random.default_rng(0)
    shapes = {}  # table key -> the first raw call with it
    for model, batch in recipes().values():
        loss(model, batch)  # warm up
        for c in raw_calls(model, batch):
            kind, xs, ys, geom, hw, pads = c
            (stride, padding, dilation, groups) = geom
            p = pads or (padding[0], padding[0], padding[1], padding[1])
            o, kernel = (ys[0], ys[2:]) if kind == "forward" else (ys[1], hw)
            key = (kind, xs[1], o) + tuple(kernel) + (xs[2] + p[0] + p[1], xs[3] + p[2] + p[3]) + tuple(stride)
            if groups == 1 and dilation == (1, 1):
                shapes.setdefault(key, c)
    rows, table = [], {}
    for key, (kind, xs, ys, geom, hw, pads) in shapes.items():
        x = rng.standard_normal(xs).astype(np.float32)
        other = rng.standard_normal(ys).astype(np.float32)
        if kind == "forward":
            run = lambda: conv._conv2d_raw(x, other, None, geom, hw, pads=pads)  # noqa: E731
        else:
            run = lambda: conv._conv2d_weight_raw(x, other, hw, geom)  # noqa: E731
        p = pads or (geom[1][0], geom[1][0], geom[1][1], geom[1][1])
        cands = [c for c in CANDIDATES
                 if c[0] not in ("shifted", "stacked") or (geom[0] == (1, 1) and min(p) >= 0)]
        times = {c: [] for c in cands}
        for r in range(repeat + 1):
            for c in cands[r % len(cands):] + cands[:r % len(cands)]:
                restore = forced(*c)
                try:
                    times[c].append(cpu_time(run))
                finally:
                    restore()
        med = {c: statistics.median(t[1:] or t) for c, t in times.items()}
        base = med[("im2col", conv.CHUNK_BYTES)]  # the previous implementation
        best = min(med, key=med.get)
        rows.append({"key": list(key), "batch": xs[0], "im2col_default_ms": round(base * 1e3, 2),
                     "best": [best[0], best[1]], "best_ms": round(med[best] * 1e3, 2),
                     "all_ms": {f"{a}_{c >> 10}K": round(t * 1e3, 2) for (a, c), t in med.items()}})
        if med[best] < 0.9 * base:
            table[key] = best
    return rows, table


def probe_step(name, repeat, im2col):
    """Print one JSON line: the CPU seconds and minor page faults per training step of a
    recipe (run in a fresh process by ``allocator``); ``im2col``: every conv forced to it."""
    import json
    import resource

    from refgen.optim import Adam
    if im2col:
        forced("im2col")
    model, batch = recipes()[name]
    opt = Adam(list(model.parameters()), lr=1e-4)

    def step():
        opt.zero_grad()
        loss(model, batch).backward()
        opt.step()
    step()
    step()
    f0, cpu = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, []
    for _ in range(repeat):
        cpu.append(cpu_time(step))
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / repeat
    print(json.dumps({"cpu_s": statistics.median(cpu), "faults": faults}))


def allocator(repeat, rounds=3):
    """Per recipe: CPU seconds and page faults per whole training step with
    refgen.allocator's thresholds and the conv table (``refgen``: the default), with glibc's
    own thresholds (REFGEN_MALLOC=system) and the table (``system``), and with glibc's and
    every conv on im2col (``before``: neither change); fresh processes in turn."""
    import json
    import os
    import subprocess
    out = {}
    for name in ("unet28", "gated_pixelcnn"):
        runs = {"refgen": [], "system": [], "before": []}
        for _ in range(rounds):
            for label in runs:
                env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
                env["REFGEN_MALLOC"] = "refgen" if label == "refgen" else "system"
                argv = [sys.executable, __file__, "--probe-step", name, "--repeat", str(repeat)]
                argv += ["--smoke"] if SMOKE else []
                argv += ["--probe-im2col"] if label == "before" else []
                proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
                runs[label].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        out[name] = {f"{label}_{k}": round(statistics.median(r[k] for r in rs), 4)
                     for label, rs in runs.items() for k in ("cpu_s", "faults")}
        out[name]["cpu_saving"] = round(1 - out[name]["refgen_cpu_s"] / out[name]["system_cpu_s"], 3)
        out[name]["step_cpu_saving_both"] = round(1 - out[name]["refgen_cpu_s"] / out[name]["before_cpu_s"], 3)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tune", action="store_true", help="time every algorithm per raw shape")
    ap.add_argument("--torch", action="store_true", help="the U-Net's conv layers against PyTorch's")
    ap.add_argument("--tag", default=None,
                    help="result file name without .json (default conv_speed_cpu, or conv_tune_cpu with --tune)")
    ap.add_argument("--probe-step", help=argparse.SUPPRESS)
    ap.add_argument("--probe-im2col", action="store_true", help=argparse.SUPPRESS)
    args = add_smoke(ap).parse_args()
    repeat = smoke(args.repeat, 1)
    if args.probe_step:
        return probe_step(args.probe_step, repeat, args.probe_im2col)
    res = {"command": command()}
    if args.torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            sys.exit("conv_speed.py --torch needs PyTorch: pip install '.[bench]'")
        res["unet28"] = against_torch(repeat)
        tot = res["unet28"]["per_forward_pass"]
        print(f"per U-Net pass: forward {tot['forward_ratio']:.2f} and backward "
              f"{tot['backward_ratio']:.2f} of torch's; the forward GEMMs alone "
              f"{tot['gemm_over_torch_forward']:.2f} of torch's forward")
        res["machine"] = machine()
        return write_json(RESULTS / f"{args.tag or 'conv_vs_torch_cpu'}.json", res)
    if args.tune or SMOKE:
        rows, table = tune(repeat)
        res["tune"] = rows
        res["tune_table"] = {repr(k): list(v) for k, v in table.items()}
        print("MEASURED = {")
        for k, v in table.items():
            print(f"    {k!r}: {v!r},")
        print("}")
    if not args.tune or SMOKE:
        res["recipes"], res["matmul_gflops_1024_float32"] = measure(repeat)
        for name, r in res["recipes"].items():
            print(f"{name}: {r['gflop_per_step']} GFLOP of conv per step; before "
                  f"{r['gflops_before']} GFLOP/s ({r['share_of_matmul_before']:.0%} of matmul), "
                  f"after {r['gflops_after']} GFLOP/s ({r['share_of_matmul_after']:.0%})")
        print(f"matmul 1024 float32: {res['matmul_gflops_1024_float32']:.1f} GFLOP/s")
        res["allocator"] = allocator(repeat, rounds=smoke(3, 1))
        for name, r in res["allocator"].items():
            print(f"{name} per step: {r['system_faults']:.0f} -> {r['refgen_faults']:.0f} page faults, "
                  f"{r['system_cpu_s']:.3f} -> {r['refgen_cpu_s']:.3f} CPU s (glibc's -> refgen.allocator's); "
                  f"whole step before both changes {r['before_cpu_s']:.3f} CPU s")
    res["machine"] = machine()
    tag = args.tag or ("conv_tune_cpu" if args.tune else "conv_speed_cpu")
    write_json(RESULTS / f"{tag}.json", res)


if __name__ == "__main__":
    main()
