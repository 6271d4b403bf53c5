"""The GPU check: on a machine with a GPU and CuPy, everything in one run of under 10 minutes.

    REFGEN_BACKEND=cupy python benchmarks/gpu_check.py   # writes results/gpu_check.json (--out)
    benchmarks/gpu_check.sh                              # the same, installing CuPy if missing
    python benchmarks/gpu_check.py --smoke               # NumPy, tiny: what the tests run

Four parts, each with its own time limit; a part that fails is recorded with its error and
the others still run:

1. device: the GPU's name and memory, CuPy's and CUDA's versions;
2. tests: the whole suite with REFGEN_BACKEND=cupy, as a subprocess stopped after
   ``--tests-s`` seconds (the pass/fail/skip counts of what ran, and the failures' names);
3. timings: matmul, conv2d forward+backward, attention forward+backward, a 28x28 U-Net
   training step and a GPT training step, synchronised medians, and the same ops in torch on
   CUDA when torch is importable;
4. training: the 28x28 diffusion U-Net (the diffusion_mnist28_small recipe), the gated
   PixelCNN, the Diagonal BiLSTM PixelRNN (the pixelrnn_diagonal_mnist run's size) and the
   MNIST EBM with its 20 SGLD steps per training step (energy_mnist.py's recipe), and one
   progressive-distillation round and consistency distillation on mnist-14 from a teacher of
   fewsteps_mnist.py's size (a fresh v-parameterised U-Net: the step time, not the quality,
   is measured), JEM (energy_mnist.py's recipe), CLIP, the dVAE and DALL-E (dalle_mnist.py's
   sizes, on mnist-captions), ``--train-s`` seconds each through refgen.train.train: steps per second and
   the loss curve (MNIST from REFGEN_DATA_DIR, else random stand-in images, recorded as such).

``--smoke``: the NumPy backend, one test file, tiny shapes and models, two training steps.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, SMOKE, add_smoke, command, machine, smoke, write_json  # noqa: E402
from energy_mnist import SGLD as EBM_SGLD  # noqa: E402

import numpy as np  # noqa: E402

import refgen  # noqa: E402
import refgen.functional as F  # noqa: E402
from refgen import backend, models  # noqa: E402
from refgen.backend import xp  # noqa: E402
from refgen.models.base import Batch  # noqa: E402
from refgen.optim import Adam  # noqa: E402


def sync():
    if backend.name() == "cupy":
        xp.cuda.Device().synchronize()


def timed(fn, repeat):
    """Median wall seconds of ``repeat`` synchronised calls, after one warm-up call."""
    fn()
    sync()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# --- 1. device -----------------------------------------------------------------------------

def device():
    if backend.name() != "cupy":
        return {"backend": backend.name(), "device": "CPU (NumPy backend)"}
    import cupy
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return {"backend": "cupy", "device": name, "memory_gib": round(props["totalGlobalMem"] / 2 ** 30, 1),
            "cupy": cupy.__version__, "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
            "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
            "devices": cupy.cuda.runtime.getDeviceCount()}


# --- 2. the test suite ----------------------------------------------------------------------

def run_tests(paths, limit_s):
    """pytest -q on ``paths`` with this backend, stopped after ``limit_s`` seconds."""
    env = dict(os.environ, REFGEN_BACKEND=backend.name(), HYPOTHESIS_PROFILE="ci")
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *paths]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit_s)
        out, finished, rc = proc.stdout + proc.stderr, True, proc.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        finished, rc = False, None
    progress = "".join(ln.split(" [")[0] for ln in out.splitlines() if re.fullmatch(r"[.FEsxX]+( +\[ *\d+%\])?", ln))
    summary = [ln for ln in out.splitlines() if re.search(r"\d+ (passed|failed)", ln)]
    return {"command": " ".join(["REFGEN_BACKEND=" + backend.name(), "python -m pytest -q", *paths]),
            "finished": finished, "returncode": rc, "wall_s": round(time.perf_counter() - t, 1),
            "limit_s": limit_s, "summary": summary[-1] if summary else None,
            "counted": {k: progress.count(c) for k, c in
                        (("passed", "."), ("failed", "F"), ("errors", "E"), ("skipped", "s"))},
            "failures": [ln for ln in out.splitlines() if ln.startswith(("FAILED", "ERROR"))][:50],
            "tail": out[-2000:] if rc not in (0, None) else ""}


# --- 3. timings ------------------------------------------------------------------------------

def _loss(model, batch):
    if "rng" in inspect.signature(model.loss).parameters:
        return model.loss(batch, rng=backend.default_rng(0))
    return model.loss(batch)


def train_step(model, batch):
    opt = Adam(list(model.parameters()), lr=1e-4)

    def step():
        opt.zero_grad()
        _loss(model, batch).backward()
        opt.step()
    return step


def refgen_ops(repeat):
    """name -> (seconds, GFLOP per call or None), each timed on the active backend."""
    rng = np.random.default_rng(0)

    def arr(*shape, grad=False):
        return refgen.tensor(backend.asarray(rng.standard_normal(shape).astype(np.float32)), requires_grad=grad)
    n = smoke(4096, 64)
    a, b = arr(n, n), arr(n, n)
    out = {"matmul_%d" % n: (timed(lambda: F.matmul(a, b), repeat), 2 * n ** 3 / 1e9)}
    B, C, H = smoke(64, 2), smoke(32, 4), smoke(28, 8)
    x, w = arr(B, C, H, H, grad=True), arr(C, C, 3, 3, grad=True)

    def conv():
        F.sum(F.conv2d(x, w, padding=1)).backward()
    out[f"conv2d_fwd_bwd_{B}x{C}x{H}x{H}_3x3"] = (timed(conv, repeat), 3 * 2 * B * C * C * 9 * H * H / 1e9)
    bh, L, E = smoke(32 * 4, 2), smoke(256, 16), smoke(64, 8)
    q, k, v = arr(bh, L, E, grad=True), arr(bh, L, E, grad=True), arr(bh, L, E, grad=True)

    def attention():
        F.sum(F.scaled_dot_product_attention(q, k, v, is_causal=True)).backward()
    out[f"attention_fwd_bwd_{bh}x{L}x{E}_causal"] = (timed(attention, repeat), None)
    bs = smoke(64, 2)
    unet = models.create("ddpm", data_shape=(1, 28, 28), num_classes=10, channels=smoke(16, 4),
                         num_res_blocks=1, **({"groups": 2} if SMOKE else {}))
    xb = backend.asarray(rng.uniform(-1, 1, (bs, 1, 28, 28)).astype(np.float32))
    step = train_step(unet, Batch(refgen.tensor(xb), backend.asarray(np.arange(bs) % 10)))
    out[f"unet28_step_batch{bs}"] = (timed(step, repeat), None)
    cfg = dict(n_layer=4, n_head=4, n_embd=64) if not SMOKE else dict(n_layer=1, n_head=2, n_embd=16)
    gpt = models.create("gpt", data_shape=(1, 14, 14), **cfg)
    bg = smoke(32, 2)
    xg = backend.asarray((rng.random((bg, 1, 14, 14)) < 0.3).astype(np.float32))
    out[f"gpt14_step_batch{bg}"] = (timed(train_step(gpt, Batch(refgen.tensor(xg), None)), repeat), None)
    return out


def torch_ops(names, repeat):
    """The matmul, conv and attention of ``names`` in torch, on CUDA when there is one."""
    import torch
    dev = "cuda" if torch.cuda.is_available() else "cpu"

    def tsync():
        if dev == "cuda":
            torch.cuda.synchronize()

    def ttimed(fn):
        fn()
        tsync()
        ts = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            tsync()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)
    out = {"torch": torch.__version__, "device": dev}
    for name in names:
        dims = [int(d) for d in re.findall(r"\d+", name.split("_", 1)[1] if "_" in name else "")]
        if name.startswith("matmul"):
            a = torch.randn(dims[0], dims[0], device=dev)
            out[name] = ttimed(lambda: a @ a)
        elif name.startswith("conv2d"):
            B, C, H = dims[0], dims[1], dims[2]
            x = torch.randn(B, C, H, H, device=dev, requires_grad=True)
            w = torch.randn(C, C, 3, 3, device=dev, requires_grad=True)
            out[name] = ttimed(lambda: torch.nn.functional.conv2d(x, w, padding=1).sum().backward())
        elif name.startswith("attention"):
            bh, L, E = dims[0], dims[1], dims[2]
            q, k, v = (torch.randn(bh, L, E, device=dev, requires_grad=True) for _ in range(3))
            out[name] = ttimed(lambda: torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=True).sum().backward())
    return out


def timings(repeat):
    ours = refgen_ops(repeat)
    res = {name: {"refgen_s": round(s, 6), **({"refgen_gflops": round(fl / s, 1)} if fl else {})}
           for name, (s, fl) in ours.items()}
    try:
        import torch  # noqa: F401
    except ImportError:
        return {"ops": res, "torch": "not importable"}
    theirs = torch_ops(list(ours), repeat)
    for name, s in theirs.items():
        if name in res:
            res[name].update(torch_s=round(s, 6), ratio=round(res[name]["refgen_s"] / s, 2))
    return {"ops": res, "torch": {"version": theirs["torch"], "device": theirs["device"],
                                  "note": "model steps are refgen only (torch models: benchmarks/speed.py)"}}


# --- 4. training -----------------------------------------------------------------------------

def dataset(name):
    """refgen.data.load(name) when MNIST is found, else random stand-in images."""
    from refgen import data
    from refgen.data.mnist import find_mnist_dir
    if find_mnist_dir() is not None and not SMOKE:
        return data.load(name, "train"), name
    rng = np.random.default_rng(0)
    side = 14 if name.startswith("mnist-14") else 28
    x = rng.random((512, 1, side, side)).astype(np.float32)
    if name == "mnist-captions":   # random images with random measured levels
        from refgen.data import captions as cap
        x, y, tok = 2 * x - 1, rng.integers(0, 10, 512), cap.Tokenizer()
        ds = cap.CaptionDataset(name, "train", x, y, "continuous", (1, side, side), num_classes=10,
                                vocab=list(tok.words), value_range=(-1.0, 1.0),
                                captions=cap.CaptionData(y, rng.integers(0, 3, (512, 4)), tok))
        return ds, f"random stand-in for {name} (MNIST not found)"
    binary = name.endswith("binary")
    x = (x < 0.2).astype(np.float32) if binary else 2 * x - 1
    ds = data.Dataset(name, "train", x, rng.integers(0, 10, 512), "binary" if binary else "continuous",
                      (1, side, side), num_classes=10, value_range=(0.0, 1.0) if binary else (-1.0, 1.0))
    return ds, f"random stand-in for {name} (MNIST not found)"


def train_for(model_name, data_name, kwargs, batch_size, lr, seconds):
    """Train through refgen.train.train: a short first call measures the step time, then the
    run resumes for as many steps as fit in ``seconds``."""
    from refgen.train import train
    ds, what = dataset(data_name)
    built = {k: v(ds) for k, v in kwargs.items() if callable(v)}   # a teacher, a dVAE, a CLIP
    extra = {"num_classes": 10} if model_name in ("ddpm", "jem") else {}
    if ds.vocab is not None:
        extra["vocab_size"] = len(ds.vocab)
    model = models.create(model_name, data_shape=ds.shape, seed=0, **extra, **dict(kwargs, **built))
    first = smoke(10, 1)
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(batch_size=batch_size, lr=lr, out_dir=tmp, progress=False, samples=False,
                      evaluate_at_end=False, log_every=max(1, first))
        t = time.perf_counter()
        train(model, ds, steps=first, **common)
        per_step = (time.perf_counter() - t) / first
        total = first + max(1, int((seconds - (time.perf_counter() - t)) / per_step))
        common["log_every"] = max(1, total // 20)
        t2 = time.perf_counter()
        train(model, ds, steps=smoke(total, 2), resume=True, **common)
        wall = time.perf_counter() - t2
        log = [json.loads(ln) for ln in open(os.path.join(tmp, "log.jsonl")) if '"loss"' in ln]
    steps = smoke(total, 2) - first
    settings = {k: (f"a fresh {v.__name__.replace('fresh_', '')}" if callable(v) else v) for k, v in kwargs.items()}
    return {"model": model_name, "settings": settings, "data": what, "batch_size": batch_size, "lr": lr,
            "steps": smoke(total, 2), "steps_per_s": round(steps / wall, 2) if steps > 0 else None,
            "first_steps_s_each": round(per_step, 3),
            "loss_curve": [(r["step"], round(float(r["loss"]), 4)) for r in log],
            "parameters": model.num_parameters()}


def fresh_dvae(ds):
    """An untrained dVAE of dalle_mnist.py's size (7x7 tokens, 64 codes)."""
    return models.create("dvae", data_shape=ds.shape, seed=0, num_codes=smoke(64, 8))


def fresh_clip(ds):
    """An untrained CLIP of the default size (the one dalle_mnist.py re-ranks with)."""
    return models.create("clip", data_shape=ds.shape, vocab_size=len(ds.vocab), seed=0,
                         **({"width": 16, "layers": 1} if SMOKE else {}))


def fresh_teacher(ds):
    """An untrained v-parameterised DDPM of fewsteps_mnist.py's teacher size."""
    size = dict(channels=4, num_res_blocks=1, groups=2, T=64) if SMOKE else dict(channels=16, num_res_blocks=1)
    return models.create("ddpm", data_shape=ds.shape, num_classes=10, seed=0, schedule="cosine",
                         parameterization="v", **size)


# --- main ------------------------------------------------------------------------------------

def part(res, name, fn, out):
    """Run one part, record its result or its error, and rewrite the result file (so a run
    stopped from outside keeps the parts that finished)."""
    t = time.perf_counter()
    try:
        res[name] = fn()
    except Exception as e:  # record and go on: one broken part must not hide the others
        res[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    print(f"[{time.perf_counter() - T0:6.1f} s] {name}: {time.perf_counter() - t:.1f} s", flush=True)
    res["total_wall_s"] = round(time.perf_counter() - T0, 1)
    write_json(out, dict(res, machine=machine()))


T0 = time.perf_counter()


# the training parts, in the order they run (--train picks some of them)
TRAIN_PARTS = ("unet28", "gated_pixelcnn", "diagonal_bilstm", "wgan_gp", "mnist_ebm", "pd_round_mnist14",
               "cd_mnist14", "mnist_jem", "clip", "dvae", "dalle")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tests-s", type=int, default=240, help="time limit of the test suite")
    ap.add_argument("--train-s", type=int, default=25, help="seconds of training per model")
    ap.add_argument("--repeat", type=int, default=10, help="timed calls per op")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: tests,timings,training")
    ap.add_argument("--train", default="", help="comma-separated training parts to run (default: all), "
                                                "e.g. unet28,gated_pixelcnn,mnist_ebm,wgan_gp")
    ap.add_argument("--pytest-args", default="", help="extra pytest arguments, e.g. '-n 8' (pytest-xdist)")
    ap.add_argument("--out", default=None, help="result file (default: results/gpu_check.json)")
    args = add_smoke(ap).parse_args()
    out = Path(args.out) if args.out and not SMOKE else RESULTS / "gpu_check.json"
    skip = set(filter(None, args.skip.split(",")))
    unknown = (skip - {"tests", "timings", "training"}) | (set(filter(None, args.train.split(","))) - set(TRAIN_PARTS))
    if unknown:  # before the device is touched: a typo would otherwise run nothing
        ap.error(f"unknown part(s) {', '.join(sorted(unknown))}; --skip takes tests,timings,training, "
                 f"--train takes {','.join(TRAIN_PARTS)}")
    if backend.name() != "cupy" and not SMOKE:
        print("note: REFGEN_BACKEND is not cupy: this runs on the CPU", file=sys.stderr)
    res = {"command": command()}
    part(res, "device", device, out)
    print(json.dumps(res["device"]), flush=True)
    if "tests" not in skip:
        paths = ["tests/functional/test_discrete.py"] if SMOKE else []
        part(res, "tests", lambda: run_tests(paths + args.pytest_args.split(), smoke(args.tests_s, 120)), out)
    if "timings" not in skip:
        part(res, "timings", lambda: timings(smoke(args.repeat, 1)), out)
    if "training" not in skip:
        secs = smoke(args.train_s, 1)
        wanted = set(filter(None, args.train.split(",")))

        def train_part(res, name, fn, out):  # only the chosen parts
            assert name.removeprefix("train_") in TRAIN_PARTS, f"{name} is missing from TRAIN_PARTS"
            if not wanted or name.removeprefix("train_") in wanted:
                part(res, name, fn, out)
        train_part(res, "train_unet28", lambda: train_for(
            "ddpm", "mnist", dict(channels=smoke(16, 4), num_res_blocks=1, **({"groups": 2} if SMOKE else {})),
            64, 1e-3, secs), out)
        train_part(res, "train_gated_pixelcnn", lambda: train_for(
            "gated-pixelcnn", "mnist-binary", ({"channels": 4, "layers": 2} if SMOKE else {}), 16, 1e-3, secs), out)
        train_part(res, "train_diagonal_bilstm", lambda: train_for(
            "pixelrnn", "mnist-binary", dict(variant="diagonal", hidden=smoke(16, 4), layers=smoke(3, 1)),
            16, 2e-3, secs), out)
        train_part(res, "train_wgan_gp", lambda: train_for(
            "wgan-gp", "mnist", {"channels": smoke(32, 4)}, 64, 1e-4, secs), out)
        train_part(res, "train_mnist_ebm", lambda: train_for(
            "ebm", "mnist", dict(EBM_SGLD, **({"channels": 4, "buffer_size": 16, "mcmc_steps": 2}
                                              if SMOKE else {})), smoke(64, 8), 2e-4, secs), out)
        train_part(res, "train_pd_round_mnist14", lambda: train_for(
            "progressive-distillation", "mnist-14", dict(teacher=fresh_teacher, teacher_steps=smoke(64, 4),
                                                         round_steps=10 ** 6), smoke(64, 8), 2e-4, secs), out)
        train_part(res, "train_cd_mnist14", lambda: train_for(
            "consistency-distillation", "mnist-14", dict(teacher=fresh_teacher, N=smoke(18, 4), mu=0.95,
                                                         solver="heun", channels=smoke(16, 4), num_res_blocks=1,
                                                         **({"groups": 2} if SMOKE else {})),
            smoke(64, 8), 4e-4, secs), out)
        train_part(res, "train_mnist_jem", lambda: train_for(
            "jem", "mnist", dict(EBM_SGLD, **({"channels": 4, "buffer_size": 16, "mcmc_steps": 2}
                                              if SMOKE else {})), smoke(64, 8), 1e-3, secs), out)
        train_part(res, "train_clip", lambda: train_for(
            "clip", "mnist-captions", ({"width": 16, "layers": 1} if SMOKE else {}), smoke(256, 8), 2e-3,
            secs), out)
        train_part(res, "train_dvae", lambda: train_for("dvae", "mnist", {"num_codes": smoke(64, 8)}, smoke(64, 8),
                                                  1e-3, secs), out)
        train_part(res, "train_dalle", lambda: train_for(
            "dalle", "mnist-captions", dict(dvae=fresh_dvae, clip=fresh_clip, width=smoke(128, 16),
                                            layers=smoke(4, 1), heads=smoke(4, 2)), smoke(64, 8), 1e-3, secs), out)
    failed = [k for k, v in res.items() if isinstance(v, dict) and "error" in v]
    if failed:
        print(f"parts that failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
