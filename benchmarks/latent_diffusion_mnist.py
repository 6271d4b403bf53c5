"""Latent diffusion against pixel diffusion on MNIST 28x28, at equal training CPU time.

    nice python benchmarks/latent_diffusion_mnist.py [--ae-min 1] [--ldm-min 2.5] [--fid-n 500]

1. ``kl-autoencoder`` (28x28 -> a 4 x 7 x 7 latent, f = 4) for --ae-min CPU minutes;
2. ``ldm`` (class tokens by cross-attention) on its frozen latent for --ldm-min CPU minutes;
3. ``ddpm`` on the pixels for the CPU time 1 and 2 took together (the pixel baseline);
4. for each: FID of --fid-n class-balanced samples (label i mod 10, no guidance, DDIM
   --ddim steps) against the test set, and the CPU and wall seconds per sampled image;
   also the FID of the autoencoder's reconstructions of test images (the floor that the
   decoder sets for the latent model) and of real training images (the FID floor at N).

Budgets are process CPU seconds, checked between chunks of --chunk steps, so that a shared
machine's load slows the run but does not change what each model is given. Runs live in
/tmp/refgen_<tag>/{ae,ldm,pixel} (refgen sample works on each).
Result: benchmarks/results/<tag>.json (+ a PNG grid per model); --tag defaults to
latent_diffusion_mnist.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, SMOKE, add_smoke, command, load, machine, rel, run_dir,  # noqa: E402
                    smoke, write_result)

import numpy as np  # noqa: E402

from refgen import backend, io, models  # noqa: E402
from refgen.autograd import no_grad  # noqa: E402
from refgen.models.base import constructor_kwargs  # noqa: E402
from refgen.runs import load_run, run_config  # noqa: E402
from refgen.train import train  # noqa: E402

DATA = "mnist"
AE = dict(latent_channels=4, channels=32, kl_weight=1e-3)
LDM = dict(channels=32, num_res_blocks=1, context_tokens=4, context_dim=32)
PIXEL = dict(channels=16, num_res_blocks=1)  # the pixel DDPM of diffusion_mnist28_small
TRAIN = dict(batch_size=64, lr=1e-3)


def train_budget(name, kwargs, ds, out, *, cpu_s, chunk, ema, warmup):
    """Train ``name`` in chunks of ``chunk`` steps (each resuming the last checkpoint) until
    ``cpu_s`` process CPU seconds are spent; returns the steps done and the CPU and wall s."""
    if out.exists():
        shutil.rmtree(out)
    cfg = run_config(name, DATA, ds, model_kwargs=kwargs, command=command(),
                     train=dict(TRAIN, seed=0, ema=ema, warmup=warmup))
    cls = models.get(name)
    model = cls(**constructor_kwargs(cls, data_shape=ds.shape, num_classes=ds.num_classes,
                                     overrides=kwargs))
    c0, w0, done = time.process_time(), time.perf_counter(), 0
    while time.process_time() - c0 < cpu_s:
        m = train(model, ds, steps=done + chunk, out_dir=out, resume=done > 0, config=cfg,
                  ckpt_every=chunk, log_every=max(1, chunk // 2), ema_decay=ema, warmup=warmup,
                  progress=False, samples=False, evaluate_at_end=False, **TRAIN)
        done = m["steps"]
        print(f"{name}: step {done}  loss {m['loss']:.4f}  cpu {time.process_time() - c0:.0f}s",
              flush=True)
    return {"steps": done, "train_cpu_s": round(time.process_time() - c0, 1),
            "train_wall_s": round(time.perf_counter() - w0, 1), "final_loss": m["loss"]}


def fid(samples, n):
    from refgen.metrics import fid_mnist
    ref = load(DATA, "test").x if SMOKE else "test"
    return float(fid_mnist(np.clip(samples, -1, 1), reference=ref))


def draw(model, n, steps, chunk=250):
    """n class-balanced samples (label i mod 10), DDIM ``steps``; CPU and wall s per image."""
    rng, parts = backend.default_rng(1234), []
    c0, w0 = time.process_time(), time.perf_counter()
    with no_grad():
        for i in range(0, n, chunk):
            k = min(chunk, n - i)
            cond = np.arange(i, i + k) % 10
            parts.append(backend.to_numpy(model.sample(k, cond=cond, rng=rng, steps=steps,
                                                       sampler="ddim", guidance=0.0)))
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    return np.concatenate(parts), {"sample_cpu_s_per_image": cpu / n,
                                   "sample_wall_s_per_image": wall / n}


def grid(x, tag):
    path = RESULTS / f"{tag}.png"
    io.write_png(path, io.image_grid((np.clip(x[:64], -1, 1) + 1) / 2))
    return rel(path)


def main():
    p = add_smoke(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    p.add_argument("--ae-min", type=float, default=1.0, help="autoencoder CPU minutes")
    p.add_argument("--ldm-min", type=float, default=2.5, help="latent diffusion CPU minutes")
    p.add_argument("--fid-n", type=int, default=500)
    p.add_argument("--ddim", type=int, default=25, help="DDIM steps of every sampler")
    p.add_argument("--chunk", type=int, default=100)
    p.add_argument("--tag", default="latent_diffusion_mnist",
                   help="result file, PNG prefix and run directory /tmp/refgen_<tag>")
    a = p.parse_args()
    root = run_dir(a.tag)
    ds = load(DATA, "train")
    n, steps = smoke(a.fid_n, 20), smoke(a.ddim, 3)
    chunk = smoke(a.chunk, 2)
    budget = {k: smoke(60 * v, 0.01) for k, v in (("ae", a.ae_min), ("ldm", a.ldm_min))}
    t_start = time.perf_counter()
    res = {"command": command(), "data": DATA, "fid_n": n, "sampler": f"ddim{steps}",
           "samples": "class-balanced (label i mod 10), guidance 0", "train": TRAIN,
           "load_avg_at_start": [round(v, 2) for v in os.getloadavg()]}

    ae_run = root / "ae"
    res["autoencoder"] = dict(model="kl-autoencoder", kwargs=AE, **train_budget(
        "kl-autoencoder", AE, ds, ae_run, cpu_s=budget["ae"], chunk=chunk, ema=None, warmup=0))
    ae, _ = load_run(ae_run)
    test = load(DATA, "test").x[:n]
    with no_grad():
        rec = np.concatenate([backend.to_numpy(ae.reconstruct(backend.asarray(test[i:i + 250])))
                              for i in range(0, len(test), 250)])
    res["autoencoder"].update(test_mse_per_pixel=float(((rec - test) ** 2).mean()),
                              fid_reconstructions=fid(rec, n), latent_shape=list(ae.latent_shape))
    print("autoencoder", res["autoencoder"], flush=True)

    ldm_kwargs = dict(LDM, autoencoder=str(ae_run))
    res["ldm"] = dict(model="ldm", kwargs=ldm_kwargs, **train_budget(
        "ldm", ldm_kwargs, ds, root / "ldm", cpu_s=budget["ldm"], chunk=chunk, ema=0.995,
        warmup=100))
    res["pixel"] = dict(model="ddpm", kwargs=PIXEL, **train_budget(
        "ddpm", PIXEL, ds, root / "pixel", chunk=chunk, ema=0.995, warmup=100,
        cpu_s=res["autoencoder"]["train_cpu_s"] + res["ldm"]["train_cpu_s"]))
    for key in ("ldm", "pixel"):
        model, _ = load_run(root / key)  # EMA weights
        if key == "ldm":
            res[key]["scale_factor"] = float(model.scale_factor)
        trained = [q for q in model.parameters() if q.requires_grad]
        res[key]["parameters"] = int(sum(q.data.size for q in trained))
        x, timing = draw(model, n, steps)
        res[key].update(timing, fid_mnist=fid(x, n), grid=grid(x, f"{a.tag}_{key}"))
        print(key, {k: v for k, v in res[key].items() if k != "kwargs"}, flush=True)
    rng = np.random.default_rng(0)
    res["fid_real_floor"] = fid(ds.x[rng.choice(len(ds.x), n, replace=False)], n)
    lat, pix = res["ldm"], res["pixel"]
    res["speedup_sampling_cpu"] = pix["sample_cpu_s_per_image"] / lat["sample_cpu_s_per_image"]
    res["fid_ratio_ldm_over_pixel"] = lat["fid_mnist"] / pix["fid_mnist"]
    res["targets"] = {"speedup >= 4": bool(res["speedup_sampling_cpu"] >= 4),
                      "fid within 20% of pixel": bool(res["fid_ratio_ldm_over_pixel"] <= 1.2)}
    res["wall_s"] = round(time.perf_counter() - t_start, 1)
    res["machine"] = machine()
    write_result(a.tag, res)


if __name__ == "__main__":
    main()
