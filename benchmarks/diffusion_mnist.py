"""DDPM with the U-Net on MNIST: step cost, training, sample grids, FID, bits/dim, DDIM vs DDPM,
classifier-free guidance.

    # cost of one training step (time, peak traced and resident memory) at batch 64
    OPENBLAS_NUM_THREADS=1 python benchmarks/diffusion_mnist.py measure --data mnist
    # train for a wall-clock budget (resumable, chunked), then evaluate
    OPENBLAS_NUM_THREADS=1 python benchmarks/diffusion_mnist.py train --data mnist-14 \\
        --budget-min 22 --out runs/diffusion_mnist14 --set channels=32 --set num_res_blocks=1
    OPENBLAS_NUM_THREADS=1 python benchmarks/diffusion_mnist.py eval --run runs/diffusion_mnist14 \\
        --grid-steps 50 --ddim 10,50,100 --fid-n 1000 --vlb-n 100 --vlb-k 20 --cfg 0,1,3

MNIST is read from REFGEN_DATA_DIR (else refgen's cache). The run directory has the layout of
``refgen train`` (config.json, checkpoint.npz, log.jsonl), so ``refgen sample DIR`` works on it.

eval reports, with the EMA weights when the run has them:
  - sample grids (64 images): DDPM over ``--grid-steps`` strided steps (all T with 0), DDPM
    at each of ``--ddpm`` strided steps (with each fixed sigma^2 of ``--variances`` too), and
    DDIM (eta = 0) at each of ``--ddim`` steps; null-label samples, or class-balanced
    conditional ones with ``--labels``;
  - fid_mnist of ``--fid-n`` samples per sampler (or those in ``--fid-on``) against the test
    set (refgen.metrics; biased upwards at small n, compare equal n only);
  - bits/dim from L_VLB (eqs. 13-16) with the discretized decoder on ``--vlb-n`` test images,
    ``--vlb-k`` stratified t per image (0: every t) - an upper bound on the 8-bit NLL;
  - for a class-conditional run, cond_accuracy of classifier-free guided samples (eq. 26)
    for each w in ``--cfg``.
Results go to benchmarks/results/<tag>.json and <tag>_*.png (tag: diffusion_<data>).

    # how noisy FID is at N: 8 draws of N real images (benchmarks/results/fid_noise_*.json)
    python benchmarks/diffusion_mnist.py fid-noise --data mnist-14 --n 500

``--smoke`` (no subcommand) runs all four on 64 images with a tiny T = 30 U-Net: measure one
step, train 4 steps, evaluate every kind of sampler, the bound and guidance on a handful of
samples, and the FID floor of 20 images, all in a temporary directory.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, SMOKE, add_smoke, asked_flags, command, continue_run, dest, fill_defaults,  # noqa: E402
                    load, machine, run_dir, smoke, train_in_chunks, write_json)

import numpy as np  # noqa: E402

from refgen.runs import parse_sets  # noqa: E402
from refgen import backend, io, models  # noqa: E402
from refgen.autograd import Tensor, no_grad  # noqa: E402
from refgen.runs import load_run  # noqa: E402
from refgen.models.base import Batch  # noqa: E402
from refgen.optim import Adam  # noqa: E402
from refgen.train import data_facts  # noqa: E402

TRAIN = dict(batch_size=64, lr=2e-4, ema=0.999, warmup=500, optimizer="adam",
             schedule="constant", grad_clip=1.0)
# the flags of `train` a run that continues compares with its own settings, and their defaults
TRAIN_FLAGS = {"--data": "mnist-14", "--batch-size": TRAIN["batch_size"], "--lr": TRAIN["lr"],
               "--ema": TRAIN["ema"], "--warmup": TRAIN["warmup"], "--seed": 0}



def _rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ----------------------------------------------------------------------------- measure
def measure(args):
    """Seconds and memory of one training step (forward, backward, Adam) at --batch-size."""
    ds = load(args.data, "train")
    settings = parse_sets(args.set)
    model = models.create("ddpm", data_shape=ds.shape, num_classes=ds.num_classes, **settings)
    opt = Adam(list(model.parameters()), lr=1e-4)
    idx = np.arange(args.batch_size)
    batch = Batch(Tensor(backend.asarray(ds.x[idx])), backend.asarray(ds.y[idx]))
    rss0 = _rss_mib()

    noise = backend.default_rng(0)

    def step():
        loss = model.loss(batch, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.item())

    step()  # warm up (Adam state, caches)
    tracemalloc.start()
    t, c = time.perf_counter(), time.process_time()
    for _ in range(args.repeat):
        step()
    wall, cpu = (time.perf_counter() - t) / args.repeat, (time.process_time() - c) / args.repeat
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    with no_grad():
        t = time.perf_counter()
        model.net(batch.x, np.full(args.batch_size, 500), model._labels(batch.y, args.batch_size))
        fwd = time.perf_counter() - t
    out = {"data": args.data, "settings": settings, "batch_size": args.batch_size,
           "parameters": model.num_parameters(), "step_wall_s": round(wall, 3),
           "step_cpu_s": round(cpu, 3), "forward_nograd_wall_s": round(fwd, 3),
           "peak_traced_mib": round(peak / 2 ** 20, 1), "max_rss_mib": round(_rss_mib(), 1),
           "rss_before_steps_mib": round(rss0, 1), "command": command(), "machine": machine()}
    print(json.dumps(out, indent=2))
    if args.save:
        write_json(RESULTS / f"diffusion_{args.data.replace('-', '')}_step_cost.json", out)
    return out


# ----------------------------------------------------------------------------- train
def train_run(args):
    """Train in chunks until --steps or --budget-min is reached; resumable (--resume)."""
    out = Path(args.out)
    settings = parse_sets(args.set)
    cfg_path = out / "config.json"
    asked = asked_flags(args, TRAIN_FLAGS)  # the flags given at all (their parser default is None)
    if cfg_path.exists():  # a run to continue: its own settings, but for --lr and --ema
        cfg = json.loads(cfg_path.read_text())
        settings, st = cfg["model_kwargs"], dict(cfg["train"], steps=args.steps)
        keys = {f: dest(f) for f in TRAIN_FLAGS if f != "--data"}
        stored = {"--data": cfg["data"], **{f: st[k] for f, k in keys.items()},
                  **{f"--set {k}": v for k, v in settings.items()}}
        now, changes = continue_run(out, stored, asked, changeable=("--lr", "--ema"))
        st.update({k: now[f] for f, k in keys.items()})
        cfg["train"], cfg["train_changes"] = st, cfg.get("train_changes", []) + changes
        train_ds = load(cfg["data"], "train")
    else:
        fill_defaults(args, TRAIN_FLAGS)
        train_ds = load(args.data, "train")
        st = dict(TRAIN, batch_size=args.batch_size, lr=args.lr, steps=args.steps, seed=args.seed,
                  ema=args.ema, warmup=args.warmup,
                  eval_every=0, log_every=args.chunk // 4 or 1, ckpt_every=args.chunk)
        out.mkdir(parents=True, exist_ok=True)
        cfg = {"model": "ddpm", "data": args.data, "model_kwargs": settings,
               "data_dir": os.environ.get("REFGEN_DATA_DIR"), "data_facts": data_facts(train_ds),
               "num_classes": train_ds.num_classes, "vocab_size": None, "vocab": None,
               "train": st, "backend": backend.name(), "command": command()}
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    model = models.create("ddpm", data_shape=train_ds.shape, num_classes=train_ds.num_classes,
                          seed=st["seed"], **settings)
    done = train_in_chunks(model, train_ds, out, steps=args.steps, budget_min=args.budget_min,
                           chunk=args.chunk, batch_size=st["batch_size"], lr=st["lr"],
                           seed=st["seed"], optimizer=st["optimizer"], ema_decay=st["ema"],
                           grad_clip=st["grad_clip"], warmup=st["warmup"],
                           schedule=st["schedule"], log_every=st["log_every"], config=cfg)
    cfg["train"]["steps"] = done  # what the checkpoint holds
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return done


# ----------------------------------------------------------------------------- eval
def _grid(x, path):
    io.write_png(path, io.image_grid((np.clip(x, -1, 1) + 1) / 2))


def _fid(samples, n_note):
    """FID against the test set's statistics (in smoke mode: against its first 64 images)."""
    try:
        from refgen.metrics import fid_mnist
        ref = "test"
        if SMOKE:
            ref = load("mnist-14" if samples.shape[-1] == 14 else "mnist", "test").x
        return {"fid_mnist": float(fid_mnist(np.clip(samples, -1, 1), reference=ref)), "fid_n": n_note}
    except Exception as e:  # classifier weights missing or not yet verified
        return {"fid_mnist": None, "fid_error": f"{type(e).__name__}: {e}"[:300]}


def _draw(model, n, chunk, labels=False, **kw):
    """n samples, ``chunk`` at a time; labels: class-balanced conditional draws (label i mod
    K, no guidance); kw goes to DDPM.sample (sampler, steps, eta, variance)."""
    parts, t = [], time.perf_counter()
    rng = backend.default_rng(1234)
    with no_grad():
        for i in range(0, n, chunk):
            m = min(chunk, n - i)
            cond = (np.arange(i, i + m) % model.num_classes) if labels else None
            parts.append(backend.to_numpy(model.sample(m, cond=cond, rng=rng, guidance=0.0, **kw)))
    return np.concatenate(parts), time.perf_counter() - t


def evaluate_run(args):
    """Sample grids, FID, the bound and guidance of a finished run, as the flags say."""
    run = Path(args.run)
    model, cfg = load_run(run)  # EMA weights when the checkpoint has them
    name = cfg["data"]
    tag = args.tag or f"diffusion_{name.replace('-', '')}"
    log = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines() if ln.strip()]
    res = {"command": command(), "train_command": cfg.get("command"), "run": str(run),
           "data": name, "model_kwargs": cfg["model_kwargs"],
           "train": cfg["train"], "steps": log[-1]["step"] if log else 0,
           "train_wall_s": log[-1]["wall_s"] if log else None,
           "loss_curve": [(r["step"], round(r["loss"], 4)) for r in log],
           "parameters": model.num_parameters(), "samplers": {}}
    res["sampler_labels"] = "class-balanced conditional (w = 0)" if args.labels else "null label"
    res["variance"] = model.variance
    for label, kw in samplers(args, model):
        res["samplers"][label] = sampler_scores(args, model, tag, label, kw)
        _save(res, tag)
    if args.vlb_n:
        res["vlb"] = vlb_bits_per_dim(args, model, name)
        print("vlb", res["vlb"], flush=True)
        _save(res, tag)
    if model.num_classes and args.cfg:
        res["cfg"] = {}
        for w in [float(v) for v in args.cfg.split(",")]:
            res["cfg"][f"w={w:g}"] = guidance_scores(args, model, tag, w)
            _save(res, tag)
        _tradeoff_plot(res["cfg"], RESULTS / f"{tag}_cfg_tradeoff.png")
    if args.fid_n:  # the floor at the same N: real images of the same resolution
        sizes = {args.fid_n} | ({args.cfg_n} if res.get("cfg") else set())
        res["fid_real_floor"] = _fid_floor(name, sorted(sizes))
        print("fid floor", res["fid_real_floor"], flush=True)
    _save(res, tag)


def samplers(args, model):
    """(label, DDPM.sample keywords) of every sampler the flags ask for."""
    out = []
    if args.grid_steps >= 0:
        steps = args.grid_steps or None
        out.append((f"ddpm{steps or model.T}", dict(sampler="ddpm", steps=steps)))
    variances = [v for v in args.variances.split(",") if v]
    if variances and model.variance == "learned":
        print(f"--variances {args.variances} ignored: this run learns its variance", flush=True)
        variances = []
    for s in [int(v) for v in args.ddpm.split(",") if v]:
        out.append((f"ddpm{s}", dict(sampler="ddpm", steps=s)))
        out += [(f"ddpm{s}_{v}", dict(sampler="ddpm", steps=s, variance=v))
                for v in variances if v != model.variance]
    for s in [int(v) for v in args.ddim.split(",") if v]:
        out.append((f"ddim{s}", dict(sampler="ddim", steps=s, eta=0.0)))
    return out


def sampler_scores(args, model, tag, label, kw):
    """One sampler's 64-image grid, and the FID of --fid-n of its samples."""
    x, took = _draw(model, smoke(64, 4), 64, labels=args.labels, **kw)
    _grid(x, RESULTS / f"{tag}_{label}.png")
    r = {"grid_wall_s": round(took, 1)}
    if args.fid_n and (args.fid_on is None or label in args.fid_on.split(",")):
        xs, took = _draw(model, args.fid_n, 250, labels=args.labels, **kw)
        r.update(_fid(xs, args.fid_n), fid_sample_wall_s=round(took, 1))
    print(label, r, flush=True)
    return r


def vlb_bits_per_dim(args, model, name):
    """L_VLB in bits/dim with the discretized decoder, on --vlb-n test images."""
    test = load(name, "test")
    t = time.perf_counter()
    parts = model.vlb_terms(test.x[:args.vlb_n], timesteps=args.vlb_k or None,
                            rng=backend.default_rng(0))
    d = int(np.prod(test.shape))
    v = parts["vlb"] / (d * math.log(2))
    return {"bits_per_dim": float(v.mean()), "se": float(v.std() / math.sqrt(len(v))),
            "n_images": args.vlb_n, "t_strata": args.vlb_k or "all",
            "prior_LT_bpd": float(parts["prior"].mean() / (d * math.log(2))),
            "decoder_L0_bpd": float(parts["decoder"].mean() / (d * math.log(2))),
            "wall_s": round(time.perf_counter() - t, 1),
            "note": ("discrete 8-bit pixels" if name == "mnist" else
                     "mnist-14 pixels are 2x2 means, not an 8-bit grid: the decoder "
                     "scores the nearest of 256 levels")}


def guidance_scores(args, model, tag, w):
    """Classifier-free guidance at weight w: cond_accuracy and FID of --cfg-n class-balanced
    DDIM samples, and a grid with one row per class."""
    labels = np.arange(args.cfg_n) % model.num_classes
    kw = dict(sampler="ddim", steps=args.cfg_steps, eta=0.0, guidance=w)
    parts, t = [], time.perf_counter()
    with no_grad():
        rng = backend.default_rng(99)
        for i in range(0, len(labels), 250):
            parts.append(backend.to_numpy(model.sample(len(labels[i:i + 250]),
                                                       cond=labels[i:i + 250], rng=rng, **kw)))
    x = np.concatenate(parts)
    r = {"sampler": f"ddim{args.cfg_steps}", "wall_s": round(time.perf_counter() - t, 1)}
    try:
        from refgen.metrics import cond_accuracy
        r["cond_accuracy"] = float(cond_accuracy(np.clip(x, -1, 1), labels))
    except Exception as e:
        r["cond_accuracy"] = None
        r["error"] = f"{type(e).__name__}: {e}"[:300]
    if args.fid_n:  # FID of the same guided samples (cfg_n of them): the trade-off
        r.update(_fid(x, args.cfg_n))
    order = np.argsort(labels[:100], kind="stable")
    _grid(x[:100][order], RESULTS / f"{tag}_cfg_w{w:g}.png")
    print("cfg", w, r, flush=True)
    return r


def _tradeoff_plot(cfg, path, xlabel="guidance w"):
    """FID (y) against the guidance strength (x; keys "w=2" or "s=2"), each point labelled
    with its cond_accuracy."""
    pts = [(float(k[2:]), v["fid_mnist"], v.get("cond_accuracy")) for k, v in cfg.items()
           if v.get("fid_mnist") is not None]
    if len(pts) < 2:
        return
    img, _ = io.line_plot([p[0] for p in pts], [p[1] for p in pts], xlabel=xlabel,
                          ylabel="FID", point_labels=[
                              f"acc {p[2]:.2f}" if p[2] is not None else "" for p in pts])
    io.write_png(path, img)


def _fid_floor(name, sizes):
    """FID of N random real training images of data set ``name`` against the test
    statistics, for each N: what a perfect sampler would score at that sample size."""
    train_x = load(name, "train").x
    rng = np.random.default_rng(0)
    out = {}
    for n in sizes:
        r = _fid(train_x[rng.choice(len(train_x), n, replace=False)], n)
        out[str(n)] = r.get("fid_mnist")
    return out


def fid_noise(args):
    """FID of --draws independently seeded random draws of --n real training images against the
    test statistics: the floor a perfect sampler scores at that N, and its spread, which is how
    far apart two FIDs at that N must be before they differ."""
    x = load(args.data, "train").x
    vals = []
    for s in range(args.draws):
        pick = np.random.default_rng(100 + s).choice(len(x), args.n, replace=False)
        vals.append(_fid(x[pick], args.n)["fid_mnist"])
    out = {"data": args.data, "n": args.n, "fid_real": vals, "mean": float(np.mean(vals)),
           "sd": float(np.std(vals, ddof=1)), "command": command(), "machine": machine()}
    print(json.dumps({k: out[k] for k in ("mean", "sd")}))
    write_json(RESULTS / f"fid_noise_{args.data.replace('-', '')}_n{args.n}.json", out)


def _save(res, tag):
    """Write what is known so far (a run stopped by its time limit keeps its numbers)."""
    res["eval_wall_s"] = round(time.perf_counter() - T0, 1)
    res["machine"] = machine()
    write_json(RESULTS / f"{tag}.json", res)


T0 = time.perf_counter()


SMOKE_RUNS = [  # the four subcommands, at toy size (the smoke directory holds the run)
    ["measure", "--data", "mnist-14", "--batch-size", "4", "--repeat", "1", "--save",
     "--set", "T=30", "--set", "channels=8", "--set", "num_res_blocks=1"],
    ["train", "--data", "mnist-14", "--steps", "4", "--chunk", "2", "--batch-size", "8",
     "--warmup", "1", "--set", "T=30", "--set", "channels=8", "--set", "num_res_blocks=1"],
    ["train", "--steps", "6", "--chunk", "2", "--batch-size", "8", "--lr", "1e-4",  # continued: the
     "--set", "T=30"],                                            # run's data and warmup, a new lr
    ["eval", "--grid-steps", "3", "--ddpm", "3", "--variances", "beta", "--ddim", "3",
     "--labels", "--fid-n", "20", "--fid-on", "ddim3", "--vlb-n", "2", "--vlb-k", "2",
     "--cfg", "0,1", "--cfg-n", "20", "--cfg-steps", "3"],
    ["fid-noise", "--data", "mnist-14", "--n", "20", "--draws", "2"],
]


def main_parser():
    p = add_smoke(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    sub = p.add_subparsers(dest="cmd", required=not SMOKE)
    m = sub.add_parser("measure")
    m.add_argument("--data", default="mnist")
    m.add_argument("--batch-size", type=int, default=64)
    m.add_argument("--repeat", type=int, default=3)
    m.add_argument("--set", action="append", metavar="KEY=VALUE")
    m.add_argument("--save", action="store_true", help="write the JSON to benchmarks/results")
    t = sub.add_parser("train")
    # the flags a continued run compares default to None (given at all: asked), TRAIN_FLAGS' value
    t.add_argument("--data", default=None, help=f"default {TRAIN_FLAGS['--data']}")
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=1_000_000)
    t.add_argument("--budget-min", type=float, default=0, help="stop after this many minutes")
    t.add_argument("--chunk", type=int, default=200, help="steps between checkpoints")
    t.add_argument("--batch-size", type=int, default=None, help=f"default {TRAIN['batch_size']}")
    t.add_argument("--lr", type=float, default=None,
                   help=f"default {TRAIN['lr']}; given to a run that continues, the rate from its step on")
    t.add_argument("--ema", type=float, default=None,
                   help=f"default {TRAIN['ema']}; given to a run that continues, the decay from its step on")
    t.add_argument("--warmup", type=int, default=None, help=f"default {TRAIN['warmup']}")
    t.add_argument("--seed", type=int, default=None, help=f"default {TRAIN_FLAGS['--seed']}")
    t.add_argument("--set", action="append", metavar="KEY=VALUE")
    e = sub.add_parser("eval")
    e.add_argument("--run", required=True)
    e.add_argument("--tag")
    e.add_argument("--grid-steps", type=int, default=0, help="DDPM grid steps (0: all T; -1: none)")
    e.add_argument("--ddim", default="10,50,100")
    e.add_argument("--ddpm", default="", help="comma list of strided ancestral step counts, "
                   "each a sampler of its own (eq. 17 on the strided schedule)")
    e.add_argument("--variances", default="", help="fixed-variance run: also draw each --ddpm "
                   "sampler with these sigma^2 (beta, beta_tilde)")
    e.add_argument("--labels", action="store_true", help="samplers draw class-balanced "
                   "conditional samples (label i mod K, w = 0) instead of the null label")
    e.add_argument("--fid-n", type=int, default=0)
    e.add_argument("--fid-on", help="comma list of sampler labels that get FID (default: all)")
    e.add_argument("--vlb-n", type=int, default=0)
    e.add_argument("--vlb-k", type=int, default=0)
    e.add_argument("--cfg", default="")
    e.add_argument("--cfg-n", type=int, default=1000)
    e.add_argument("--cfg-steps", type=int, default=50)
    f = sub.add_parser("fid-noise", help="the real-data FID floor at N and its spread")
    f.add_argument("--data", default="mnist-14")
    f.add_argument("--n", type=int, default=500)
    f.add_argument("--draws", type=int, default=8)
    return p


def main():
    p = main_parser()
    args = p.parse_args()
    run = str(run_dir("diffusion_mnist"))
    todo = [p.parse_args(a + (["--out", run] if a[0] == "train" else []) +
                         (["--run", run] if a[0] == "eval" else [])) for a in SMOKE_RUNS] \
        if SMOKE and args.cmd is None else [args]
    with backend.use_backend(os.environ.get("REFGEN_BACKEND", "numpy")):
        for a in todo:
            {"measure": measure, "train": train_run, "eval": evaluate_run,
             "fid-noise": fid_noise}[a.cmd](a)


if __name__ == "__main__":
    main()
