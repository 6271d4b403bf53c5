"""Score-based models on MNIST: NCSN with Song & Ermon 2019's settings against NCSNv2's,
sampled by annealed Langevin dynamics; the probability-flow ODE bits/dim of a VP-SDE model
and of a trained DDPM beside its own variational bound; sample quality against network
evaluations for every sampler of a DDPM run.

    # (a) NCSN: v1 (Song & Ermon 2019) and v2 (NCSNv2's techniques 1-5), each trained into its
    #     run directory, then N = 10,000 samples scored
    REFGEN_BACKEND=cupy python benchmarks/score_mnist.py --part ncsn --config v1 --steps 20000 --out /tmp/refgen_ncsn_v1
    REFGEN_BACKEND=cupy python benchmarks/score_mnist.py --part ncsn --config v2 --steps 20000 --out /tmp/refgen_ncsn_v2
    #     sample and score a saved run again (no training), here with NCSNv2's T = 5
    REFGEN_BACKEND=cupy python benchmarks/score_mnist.py --part ncsn --config v2 --run /tmp/refgen_ncsn_v2 \
        --langevin-T 5
    # (b) a VP-SDE model: train, then PF-ODE bits/dim of the 10,000 test images
    REFGEN_BACKEND=cupy python benchmarks/score_mnist.py --part vp --steps 20000 --out /tmp/refgen_sde_vp
    REFGEN_BACKEND=cupy python benchmarks/score_mnist.py --part vp --steps 20000 --out /tmp/refgen_sde_vp_lw \
        --set weighting=likelihood --tag score_mnist_vp_lw
    # (c), (d) a ddpm run directory, as benchmarks/diffusion_mnist.py trains it (class-conditional
    #     with label dropout: both parts use the null label, the unconditional model)
    REFGEN_BACKEND=cupy python benchmarks/diffusion_mnist.py train --data mnist --out /tmp/refgen_dm28 --steps 20000
    REFGEN_BACKEND=cupy python benchmarks/score_mnist.py --part ddpm --run /tmp/refgen_dm28
    REFGEN_BACKEND=cupy python benchmarks/score_mnist.py --part nfe --run /tmp/refgen_dm28 --n 2000

Parts (benchmarks/results/score_mnist_<part>[_<config>][_T<T>][_14].json each, _T<T> with
--langevin-T, _14 for mnist-14, unless --tag names it; the PNGs beside it):
  ncsn  train ``ncsn`` with refgen.train (``--steps`` or ``--budget-min``, in resumable chunks
        of ``--chunk`` steps), load its weights (the EMA for v2), draw a 64-sample grid and
        ``--n`` samples in batches of ``--batch``: fid_mnist, kid_mnist, precision, recall,
        the wall times and the network evaluations per sample (counted).
        v1: Song & Ermon 2019's 10 geometric levels sigma 1 -> 0.01, T = 100 steps per level,
        eps = 2e-5, the level's index given to the network, no EMA, for data in [0, 1]; on
        refgen's [-1, 1] the same ladder is sigma 2 -> 0.02 and eps = 8e-5: 1,001 network
        evaluations per sample. v2: the model's defaults (sigma_1 from the data, levels and
        eps by techniques 2 and 4, EMA 0.995): on 28x28 MNIST sigma_1 ~ 29, gamma = 1.082,
        L = 103 levels, so T = 100 costs 10,301 evaluations per sample; ``--langevin-T 5`` (NCSNv2's T) 516.
        ``--workers K`` draws the ``--n`` samples in K forked processes (NumPy backend;
        batch j from its own generator, common.PoolDraw): 1.9 times faster on two free cores.
  vp    train ``sde-vp`` the same way, then bits/dim of the first ``--bpd-n`` test images by
        the model's log_prob: uniform dequantisation, the PF-ODE integrated by RK45
        (rtol = atol = ``--tol``) with the Skilling-Hutchinson divergence; mean and standard
        error, network evaluations per image, wall time.
  ddpm  a trained ``ddpm`` (``--run``) as a VP-SDE score model (refgen.models.score.bridge):
        its PF-ODE bits/dim beside its own L_VLB bits/dim (eqs. 13-16, ``--vlb-k`` strata of
        t) on the same ``--bpd-n`` test images.
  nfe   the same ``ddpm`` run: FID / KID / precision / recall of ``--n`` samples against
        the network evaluations per sample for reverse-SDE Euler-Maruyama and
        predictor-corrector (through the bridge), the PF-ODE (RK4 at fixed steps, RK45),
        strided ancestral DDPM and DDIM; a PNG of FID against log10 NFE, one panel (with
        its own axes) per sampler.
Every part rewrites its JSON after each sub-part (a stopped run keeps what finished).
``--smoke``: every part on 64 mnist-14 images with tiny networks, a few steps, 10 samples.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, SMOKE, Draw, NFECounter, PoolDraw, add_smoke, command, load,  # noqa: E402
                    machine, rel, run_dir, train_in_chunks, write_result)

import numpy as np  # noqa: E402

from refgen import backend, io, models  # noqa: E402
from refgen.metrics.evaluation import evaluate  # noqa: E402
from refgen.models.score.bridge import DDPMScore  # noqa: E402
from refgen.models.score.likelihood import bits_per_dim, check_range, dequantize  # noqa: E402
from refgen.runs import UsageError, load_run, parse_sets  # noqa: E402
from refgen.train import data_facts  # noqa: E402

SEED = 0
# Song & Ermon 2019 (NCSN); v2 keeps every default of refgen's ncsn (NCSNv2's techniques)
# Song & Ermon's sigma 1 -> 0.01 and eps = 2e-5 are for images in [0, 1]; refgen's lie in
# [-1, 1] (x' = 2x - 1): sigmas double and eps, a squared length, grows 4x
CONFIGS = {"v1": dict(settings=dict(sigma_max=2.0, sigma_min=0.02, num_levels=10, T=100,
                                    step_eps=8e-5, conditional=True), ema=None),
           "v2": dict(settings={}, ema="default")}
TINY = dict(channels=4, groups=2, num_res_blocks=1)
METRICS = ("fid_mnist", "kid_mnist", "kid_mnist_se", "precision", "recall", "class_kl",
           "fid_n_samples")


def say(msg):
    print(msg, flush=True)


# ----------------------------------------------------------------------------- runs
def train_model(name, args, train_ds, settings, ema, extra_cfg=None):
    """Train model ``name`` with refgen.train into --out (resumable, chunked) and return it
    loaded as its samples use it (EMA weights when there are any), with its config."""
    st = dict(models.get(name).default_train)
    for key in ("batch_size", "lr", "warmup"):   # the command line over the model's recipe
        if getattr(args, key, None) is not None:
            st[key] = getattr(args, key)
    ema = st.get("ema") if ema == "default" else ema
    if getattr(args, "ema", None) is not None:
        ema = args.ema or None                     # --ema 0: none
    steps = args.steps or (10 ** 6 if args.budget_min else st["steps"])  # a budget: until it ends
    out = run_dir(f"score_mnist_{name}", args.out)
    cfg = {"model": name, "data": args.data, "model_kwargs": settings, "num_classes": None,
           "vocab_size": None, "data_facts": data_facts(train_ds), "backend": backend.name(),
           "train": dict(steps=steps, batch_size=st["batch_size"], lr=st["lr"], seed=SEED,
                         ema=ema, warmup=st.get("warmup", 0), grad_clip=args.grad_clip),
           "command": command(), **(extra_cfg or {})}
    model = models.create(name, data_shape=train_ds.shape, seed=SEED, **settings)
    t = time.perf_counter()
    say(f"training {name} for {steps} steps into {out}")
    done = train_in_chunks(model, train_ds, out, steps=steps, budget_min=args.budget_min,
                           chunk=min(args.chunk, steps), batch_size=st["batch_size"], lr=st["lr"],
                           seed=SEED, ema_decay=ema, warmup=st.get("warmup", 0),
                           grad_clip=args.grad_clip,
                           log_every=max(1, min(args.chunk, steps) // 4), config=cfg)
    model, cfg = load_run(out)
    return model, cfg, {"run": str(out), "steps": done, "train_wall_s": round(time.perf_counter() - t, 1)}


def read_run(path, name, part, data=None):
    """(model, config) of run directory ``path``, refused unless it holds a ``name`` run (of
    data set ``data`` when given)."""
    d = Path(path)
    if not (d / "config.json").is_file() or not (d / "checkpoint.npz").is_file():
        raise SystemExit(f"--run {path}: not a refgen run directory (config.json and "
                         f"checkpoint.npz); pass a {name} run")
    kind = json.loads((d / "config.json").read_text()).get("model")
    if kind != name:
        raise SystemExit(f"--run {path} is a {kind!r} run; --part {part} needs a {name} run")
    try:
        model, cfg = load_run(d)
    except UsageError as e:
        raise SystemExit(f"--run {path}: {e}") from None
    if data is not None and tuple(model.data_shape) != tuple(data.shape):
        raise SystemExit(f"--run {path} models {cfg.get('data', 'images')} of shape "
                         f"{tuple(model.data_shape)}; pass --data {cfg.get('data', 'mnist')}")
    return model, cfg


def get_model(name, args, train_ds, settings, ema, extra_cfg=None):
    if args.run:
        model, cfg = read_run(args.run, name, args.part, train_ds)
        return model, cfg, {"run": str(args.run), "steps": cfg["train"].get("steps")}
    return train_model(name, args, train_ds, settings, ema, extra_cfg)


def loss_curve(run):
    p = Path(run) / "log.jsonl"
    lines = [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()] if p.exists() else []
    return [(r["step"], round(r["loss"], 4)) for r in lines]


# ----------------------------------------------------------------------------- scoring
def progress(label):
    t = time.perf_counter()

    def report(done, total, what):
        say(f"  {label}: {what} {done}/{total}  ({time.perf_counter() - t:.0f}s)")
    return report


def sample_scores(fn, net, test_ds, n, batch, label, workers=1):
    """The sample metrics of n draws of fn(n, rng) (evaluate's generator and seed; with
    ``workers`` > 1, per-batch generators in forked processes, common.PoolDraw), the
    sampling and total wall seconds, and the network evaluations per sample (rows through
    ``net``'s forward)."""
    t = time.perf_counter()
    draw = Draw(fn) if workers <= 1 else PoolDraw(fn, n, batch, workers, SEED + 11, net=net,
                                                             progress=label)
    with NFECounter(net) as c:
        m = evaluate(draw, test_ds, n_samples=n, sample_batch=batch, progress=progress(label))
    rows = c.rows + getattr(draw, "rows", 0)
    return dict({k: m[k] for k in METRICS if k in m}, nfe=round(rows / n, 2),
                sample_wall_s=round(draw.wall_s, 1), wall_s=round(time.perf_counter() - t, 1),
                ms_per_sample=round(1000 * draw.wall_s / n, 3))


def grid(fn, path, n=64):
    """n samples of fn(n, rng) as a PNG grid ([-1, 1] shown as [0, 1]); returns the seconds."""
    draw = Draw(fn)
    x = backend.to_numpy(draw.sample(n, rng=backend.default_rng(SEED + 7)))
    io.write_png(path, io.image_grid(np.clip((x + 1) / 2, 0.0, 1.0)))
    return round(draw.wall_s, 1)


def mean_se(v):
    v = np.asarray(v, dtype=np.float64)
    return {"mean": float(v.mean()), "se": float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1
            else float("nan"), "n": int(len(v))}


def bpd_in_batches(fn, x, batch, label):
    """fn(x_batch) -> (B,) bits/dim over the rows of host array x, batch by batch."""
    out, t = [], time.perf_counter()
    for i in range(0, len(x), batch):
        out.append(np.asarray(backend.to_numpy(fn(backend.asarray(x[i:i + batch]))), dtype=np.float64))
        say(f"  {label}: {i + len(out[-1])}/{len(x)} images  ({time.perf_counter() - t:.0f}s)  "
            f"running mean {np.concatenate(out).mean():.4f}")
    return np.concatenate(out)


def pf_ode_bpd(fn, net, x, args, label):
    """The PF-ODE bits/dim fn(x_batch) of the rows of x, its mean and standard error, with the
    settings, the network evaluations per image (rows through ``net``) and the wall time."""
    t = time.perf_counter()
    with NFECounter(net) as c:
        bpd = bpd_in_batches(fn, x, args.bpd_batch, f"{label} PF-ODE bits/dim")
    res = dict(mean_se(bpd), method="rk45", rtol=args.tol, atol=args.tol,
               divergence="hutchinson (one Rademacher probe per image)",
               dequantisation="uniform, one draw per image",
               nfe_per_image=round(c.per_sample(len(x)), 1), wall_s=round(time.perf_counter() - t, 1))
    say(f"{label} PF-ODE: {json.dumps(res)}")
    return res, bpd


# ----------------------------------------------------------------------------- parts
def part_ncsn(args, res, train_ds, test_ds):
    conf = CONFIGS[args.config]
    settings = dict(conf["settings"], **args.settings)
    model, cfg, info = get_model("ncsn", args, train_ds, settings, conf["ema"],
                                 {"score_mnist_config": args.config})
    if cfg.get("score_mnist_config", args.config) != args.config:
        raise SystemExit(f"--run {args.run} was trained as --config {cfg['score_mnist_config']}, "
                         f"not {args.config}")
    if args.langevin_T:         # T of the model, so that technique 4's eps follows it
        model.T = int(args.langevin_T)
    sig = model.sigmas
    res.update(info, model_kwargs=cfg["model_kwargs"], train=cfg["train"],
               loss_curve=loss_curve(info["run"]), parameters=model.num_parameters(),
               ncsn={"sigma_1": float(sig[0]), "sigma_L": float(sig[-1]), "levels": int(len(sig)),
                     "T": model.T, "T_trained_with": cfg["model_kwargs"].get("T", 100),
                     "eps": model.langevin_eps(), "conditional": model.conditional,
                     "denoise": model.denoise, "ema": cfg["train"].get("ema")})
    say(f"ncsn {args.config}: {json.dumps(res['ncsn'])}")
    yield

    def fn(n, rng):
        return model.sample(n, rng=rng)
    path = RESULTS / f"{res['tag']}.png"
    res["grid"] = {"png": rel(path), "wall_s": grid(fn, path)}
    yield
    res["samples"] = sample_scores(fn, model.net, test_ds, args.n, args.batch, f"ncsn {args.config}",
                                   args.workers)
    say(f"ncsn {args.config}: {json.dumps(res['samples'])}")
    yield


def part_vp(args, res, train_ds, test_ds):
    model, cfg, info = get_model("sde-vp", args, train_ds, dict(args.settings), "default")
    res.update(info, model_kwargs=cfg["model_kwargs"], train=cfg["train"],
               weighting=model.weighting, loss_curve=loss_curve(info["run"]),
               parameters=model.num_parameters())
    yield
    d, rng = math.prod(test_ds.shape), backend.default_rng(SEED + 1)
    res["pf_ode_bpd"], _ = pf_ode_bpd(
        lambda xb: -model.log_prob(xb, rng=rng, rtol=args.tol, atol=args.tol) / (d * math.log(2)),
        model.net, test_ds.x[:args.bpd_n], args, "sde-vp")
    yield


def part_ddpm(args, res, train_ds, test_ds):
    model, cfg = read_run(args.run, "ddpm", args.part, test_ds)
    bridge = DDPMScore(model)
    res.update(run=str(args.run), model_kwargs=cfg.get("model_kwargs"),
               steps=cfg["train"].get("steps"), T=model.T, parameters=model.num_parameters(),
               labels="the null label" if model.num_classes else "unconditional")
    x = test_ds.x[:args.bpd_n]
    check_range(x, (-1.0, 1.0))
    d, rng = math.prod(test_ds.shape), backend.default_rng(SEED + 1)

    def pf_ode(xb):
        xd = dequantize(xb, rng, (-1.0, 1.0))
        return bits_per_dim(bridge.log_prob(xd, rng=rng, rtol=args.tol, atol=args.tol), d)
    res["pf_ode_bpd"], bpd = pf_ode_bpd(pf_ode, model.net, x, args, "ddpm")
    yield
    rng, t = backend.default_rng(SEED + 2), time.perf_counter()
    k = args.vlb_k or "default"
    vlb = bpd_in_batches(lambda xb: model.vlb_terms(xb, rng=rng, timesteps=k)["vlb"] / (d * math.log(2)),
                         x, args.bpd_batch, "ddpm L_VLB bits/dim")
    res["vlb_bpd"] = dict(mean_se(vlb), t_strata=model.vlb_timesteps if k == "default" else k,
                          wall_s=round(time.perf_counter() - t, 1))
    res["pf_ode_minus_vlb"] = mean_se(bpd - vlb)                      # paired: the same images
    res["note"] = ("both bound the bits/dim of the 8-bit pixels from above" if args.data == "mnist"
                   else "mnist-14 pixels are 2x2 means, not an 8-bit grid: both read them at "
                        "the nearest of 256 levels")
    say(f"ddpm L_VLB: {json.dumps(res['vlb_bpd'])}")
    yield


def nfe_samplers(args, model, bridge):
    """(family, label, fn(n, rng)) of every sampler the flags ask for."""
    out = []
    for family, steps in (("em", args.em), ("pc", args.pc)):
        for k in steps:
            out.append((family, f"{family}{k}",
                        lambda n, rng, f=family, k=k: bridge.sample(n, rng=rng, sampler=f, steps=k)))
    for k in args.rk4:
        out.append(("ode", f"rk4-{k}", lambda n, rng, k=k: bridge.sample(n, rng=rng, sampler="ode", steps=k)))
    out.append(("ode", "rk45", lambda n, rng: bridge.sample(n, rng=rng, sampler="ode", rtol=args.tol,
                                                             atol=args.tol)))
    for family, steps in (("ddpm", args.ddpm), ("ddim", args.ddim)):
        for k in steps:
            out.append((family, f"{family}{k}", lambda n, rng, f=family, k=k: model.sample(
                n, rng=rng, sampler=f, steps=k, **({"eta": 0.0} if f == "ddim" else {}))))
    return out


def nfe_plot(samplers, path):
    """One panel per sampler family: FID against log10 NFE, each point labelled."""
    panels = []
    for family in dict.fromkeys(f for f, _, _ in samplers):
        pts = sorted((r["nfe"], r["fid_mnist"], lab) for f, lab, r in samplers
                     if f == family and np.isfinite(r.get("fid_mnist", np.nan)))
        if pts:
            img, _ = io.line_plot([math.log10(max(p[0], 1.0)) for p in pts], [p[1] for p in pts],
                                  xlabel=f"log10 NFE ({family})", ylabel="FID",
                                  point_labels=[p[2] for p in pts])
            panels.append(img)
    if panels:
        io.write_png(path, io.concat_images_horizontal(panels))
        return rel(path)


def part_nfe(args, res, train_ds, test_ds):
    model, cfg = read_run(args.run, "ddpm", args.part, test_ds)
    bridge = DDPMScore(model)
    res.update(run=str(args.run), model_kwargs=cfg.get("model_kwargs"),
               steps=cfg["train"].get("steps"), T=model.T, rk45_tol=args.tol, samplers={},
               labels="the null label" if model.num_classes else "unconditional")
    done = []
    for family, label, fn in nfe_samplers(args, model, bridge):
        r = dict(sample_scores(fn, model.net, test_ds, args.n, args.batch, label), family=family)
        res["samplers"][label] = r
        done.append((family, label, r))
        say(f"{label}: {json.dumps(r)}")
        res["plot"] = nfe_plot(done, RESULTS / f"{res['tag']}.png")
        yield


PARTS = {"ncsn": part_ncsn, "vp": part_vp, "ddpm": part_ddpm, "nfe": part_nfe}


# ----------------------------------------------------------------------------- main
def ints(text):
    return [int(v) for v in text.split(",") if v.strip()]


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=sorted(PARTS), required=not SMOKE)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="v2", help="ncsn: v1 or v2")
    ap.add_argument("--data", choices=["mnist", "mnist-14"], default="mnist")
    ap.add_argument("--tag", help="the result files' name (default from the part, config, T and data)")
    ap.add_argument("--run", help="a saved run directory: sample / score it without training "
                    "(ncsn, vp); the ddpm run of --part ddpm and nfe")
    ap.add_argument("--out", help="where training writes its run (default /tmp/refgen_score_mnist_<model>)")
    ap.add_argument("--steps", type=int, help="training steps (default: the model's "
                    "default_train; with --budget-min, until the budget ends)")
    ap.add_argument("--budget-min", type=float, default=0, help="stop training after this many minutes")
    ap.add_argument("--chunk", type=int, default=500, help="training steps between checkpoints")
    ap.add_argument("--batch-size", type=int, help="training batch (default: the model's)")
    ap.add_argument("--lr", type=float, help="training learning rate (default: the model's)")
    ap.add_argument("--warmup", type=int, help="steps of learning-rate warmup (default: the model's)")
    ap.add_argument("--ema", type=float, help="EMA decay of the weights (default: the model's; "
                    "ncsn v1: none; 0: none)")
    ap.add_argument("--grad-clip", type=float, default=None, help="clip the gradient's norm")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="model option (network size, ...)")
    ap.add_argument("--n", type=int, help="samples per FID / KID (ncsn: 10,000; nfe: 2,000)")
    ap.add_argument("--batch", type=int, default=500, help="samples per sampling batch")
    ap.add_argument("--workers", type=int, default=1, help="ncsn: processes drawing the FID "
                    "samples at once (NumPy; per-batch generators, so the samples differ from "
                    "--workers 1's)")
    ap.add_argument("--langevin-T", type=int, help="ncsn: Langevin steps per level T (default: the "
                    "model's, 100); v2's step eps follows T by technique 4")
    ap.add_argument("--bpd-n", type=int, default=10000, help="test images of the bits/dim")
    ap.add_argument("--bpd-batch", type=int, default=500, help="images per likelihood batch")
    ap.add_argument("--tol", type=float, default=1e-5, help="RK45 rtol = atol")
    ap.add_argument("--vlb-k", type=int, default=0, help="ddpm: strata of t of L_VLB (0: the model's)")
    ap.add_argument("--em", type=ints, default=ints("100,1000"), help="nfe: Euler-Maruyama steps")
    ap.add_argument("--pc", type=ints, default=ints("100,500"), help="nfe: predictor-corrector steps")
    ap.add_argument("--rk4", type=ints, default=ints("10,25,50"), help="nfe: PF-ODE RK4 steps")
    ap.add_argument("--ddpm", type=ints, default=ints("50,250,1000"), help="nfe: strided DDPM steps")
    ap.add_argument("--ddim", type=ints, default=ints("10,50,100"), help="nfe: DDIM steps")
    args = add_smoke(ap).parse_args(argv)
    try:
        args.settings = parse_sets(args.set)
    except UsageError as e:
        raise SystemExit(str(e)) from None
    if not SMOKE and args.part in ("ddpm", "nfe") and not args.run:
        raise SystemExit(f"--part {args.part} scores a trained ddpm: pass its run directory, "
                         "--run DIR (benchmarks/diffusion_mnist.py train --out DIR)")
    if args.run and args.out:
        raise SystemExit("--run loads a trained run and --out trains a new one: pass one of them")
    if SMOKE:
        args.data, args.steps, args.chunk, args.batch_size = "mnist-14", 3, 2, 8
        args.n, args.batch, args.langevin_T, args.bpd_n, args.bpd_batch = 10, 5, 2, 4, 2
        args.tol, args.vlb_k = 1e-2, 2
        args.em, args.pc, args.rk4, args.ddpm, args.ddim = [3], [2], [2], [3], [2]
        args.settings = dict(TINY, **args.settings)
    if args.workers > 1 and backend.name() != "numpy":
        raise SystemExit("--workers > 1 forks CPU processes: it needs REFGEN_BACKEND=numpy")
    if args.n is None:
        args.n = 10000 if args.part == "ncsn" else 2000
    return args


def smoke_jobs(args):
    """Every part at toy size; the ddpm parts score a tiny ddpm trained here."""
    import copy
    jobs = []
    for part, config in (("ncsn", "v1"), ("ncsn", "v2"), ("vp", None)):
        a = copy.copy(args)
        a.part, a.config = part, config or args.config
        a.out = str(RESULTS / "runs" / (f"{part}_{config}" if config else part))
        jobs.append(a)
    ddpm_run = RESULTS / "runs" / "ddpm"
    for part in ("ddpm", "nfe"):
        a = copy.copy(args)
        a.part, a.run = part, str(ddpm_run)
        jobs.append(a)
    return jobs, ddpm_run


def smoke_ddpm(args, train_ds, out):
    a = argparse.Namespace(**dict(vars(args), out=str(out), run=None, steps=3))
    train_model("ddpm", a, train_ds, dict(TINY, T=30), 0.9)


def run_part(args, train_ds, test_ds):
    tag = args.tag or f"score_mnist_{args.part}" + (f"_{args.config}" if args.part == "ncsn" else "") + \
        (f"_T{args.langevin_T}" if args.part == "ncsn" and args.langevin_T and not SMOKE else "") + \
        ("_14" if args.data == "mnist-14" else "")
    res = {"command": command(), "part": args.part, "tag": tag, "data": args.data, "seed": SEED}
    res.update({"n": args.n} if args.part in ("ncsn", "nfe") else {"bpd_n": args.bpd_n})
    if args.part == "ncsn":
        res["config"] = args.config
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in PARTS[args.part](args, res, train_ds, test_ds):  # a result file after every sub-part
        res.update(wall_s=round(time.perf_counter() - t0, 1),
                   process_cpu_s=round(time.process_time() - c0, 1), machine=machine())
        write_result(tag, res)
    return res


def main(argv=None):
    args = parse(argv)
    train_ds, test_ds = load(args.data, "train"), load(args.data, "test")
    if SMOKE and args.part is None:
        jobs, ddpm_run = smoke_jobs(args)
        smoke_ddpm(args, train_ds, ddpm_run)
    else:
        jobs = [args]
    for a in jobs:
        t = time.perf_counter()
        run_part(a, train_ds, test_ds)
        say(f"part {a.part}{' ' + a.config if a.part == 'ncsn' else ''}: "
            f"{time.perf_counter() - t:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
