"""Diffusion with fewer steps on 8gaussians: a v-parameterised DDPM teacher, the
probability-flow ODE (Euler, Heun), progressive distillation down to 1 step, consistency
distillation and consistency training, each sampled at 1, 2 and 4 steps: MMD^2 against the
test set (with the MMD^2 of a second test sample as the floor), modes covered and the
high-quality fraction, network evaluations (NFE) and wall time per sample.

    OPENBLAS_NUM_THREADS=1 nice python benchmarks/diffusion_fewsteps_2d.py
    OPENBLAS_NUM_THREADS=1 python benchmarks/diffusion_fewsteps_2d.py --smoke   # seconds, to a temp dir

1. Teacher: ``ddpm`` (MLP, T = 1000, linear schedule, parameterization v), trained by
   refgen.train.train with its default_train settings; sampled with deterministic DDIM on
   the nested grids of progressive distillation (64, 8, 4, 2, 1 steps) and with the ODE
   (Euler and Heun, 18 sigmas; Heun = 35 NFE).
2. Progressive distillation: student initialised from the teacher, 64 -> 32 -> ... -> 1
   steps, ``--round-steps`` Adam steps per round; each round's student is sampled at its N.
3. Consistency distillation (Heun, N = 18, mu = 0.95, l2) and consistency training (the
   paper's N and mu schedules, K = --cm-steps), both sigma_data = the data's std.

Writes benchmarks/results/diffusion_fewsteps_2d.json and diffusion_fewsteps_2d.png.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import RESULTS, command, fit, machine, write_json  # noqa: E402
from refgen import backend, data, io, metrics, models  # noqa: E402
from refgen.autograd import Tensor, no_grad  # noqa: E402
from refgen.models.diffusion.distill import _x0, ddim_sample  # noqa: E402
from refgen.train import CHECKPOINT, load_weights, train  # noqa: E402

NAME = "8gaussians"


def score(s, ref, wall, n, nfe):
    out = {"mmd": metrics.mmd(s[:2000], ref[:2000]), "nfe": nfe,
           "wall_ms_per_sample": round(1000 * wall / n, 4)}
    out.update(metrics.mode_stats(s, *data.toy2d.modes(NAME)))
    return out


def timed(fn):
    t = time.perf_counter()
    with no_grad():
        s = backend.to_numpy(fn())
    return s, time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher-steps", type=int, default=3000)
    p.add_argument("--round-steps", type=int, default=400)
    p.add_argument("--cm-steps", type=int, default=2000)
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny run: checks the script, not the math")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    if args.smoke:
        args.teacher_steps, args.round_steps, args.cm_steps, args.samples = 20, 3, 5, 300
    tag = "diffusion_fewsteps_2d"
    out_dir = RESULTS if not args.smoke else tempfile.mkdtemp(prefix="refgen_smoke_")
    t0 = time.perf_counter()
    train_ds, test_ds = data.load(NAME, "train"), data.load(NAME, "test")
    ref = test_ds.x[:args.samples]
    n = args.samples
    res = {"command": command(), "data": NAME, "samples": n,
           "mmd_floor": metrics.mmd(data.load(NAME, "test", seed=args.seed + 1).x[:2000], ref[:2000])}
    pictures = []

    # 1. the teacher
    cls = models.get("ddpm")
    st = dict(cls.default_train)
    teacher = models.create("ddpm", data_shape=(2,), seed=args.seed, parameterization="v")
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        train(teacher, train_ds, steps=args.teacher_steps, batch_size=st["batch_size"], lr=st["lr"],
              seed=args.seed, out_dir=tmp, ema_decay=st["ema"], warmup=st.get("warmup", 0),
              progress=not args.quiet, samples=False, log_every=max(1, args.teacher_steps // 10))
        load_weights(teacher, io.load_checkpoint(os.path.join(tmp, CHECKPOINT))[0])
    teacher.eval()
    res["teacher"] = {"settings": dict(parameterization="v", T=teacher.T),
                      "train_steps": args.teacher_steps, "train_wall_s": round(time.perf_counter() - t, 1)}
    rng = lambda: backend.default_rng(args.seed)  # noqa: E731  one noise draw for every sampler
    for K in (64, 8, 4, 2, 1):
        s, w = timed(lambda: ddim_sample(lambda z, tt: _x0(teacher, Tensor(z), tt).data,
                                         teacher.schedule, K,
                                         rng().standard_normal((n, 2), dtype=np.float32)))
        res["teacher"][f"ddim{K}"] = score(s, ref, w, n, K)
        if K == 64:
            pictures.append(s)
    for method, nfe in (("euler", 18), ("heun", 35)):
        s, w = timed(lambda: teacher.sample(n, rng=rng(), sampler=method, steps=18))
        res["teacher"][f"ode_{method}18"] = score(s, ref, w, n, nfe)
    print(json.dumps(res["teacher"], default=float), flush=True)

    # 2. progressive distillation, 64 -> 1
    pd = models.create("progressive-distillation", data_shape=(2,), seed=args.seed, teacher=teacher,
                       teacher_steps=64, round_steps=args.round_steps, min_steps=1)
    res["progressive"] = {"round_steps": args.round_steps, "lr": 3e-4, "rounds": {}}
    wall = 0.0
    for r in range(6):
        N = int(pd.N)
        log = []
        # a round ends after round_steps steps; the halving happens inside train_step, so the
        # round's student is sampled from a copy of its weights taken just before the last step
        wall += fit(pd, train_ds, args.round_steps - 1, 3e-4, args.seed + r, 256, log, points=5)
        s, w = timed(lambda: pd.sample(n, rng=rng(), steps=N))
        res["progressive"]["rounds"][str(N)] = dict(score(s, ref, w, n, N), loss=log)
        wall += fit(pd, train_ds, 1, 3e-4, args.seed + 100 + r, 256)
        if N in (4, 2, 1):
            pictures.append(s)
        print(N, json.dumps(res["progressive"]["rounds"][str(N)], default=float), flush=True)
    res["progressive"]["train_wall_s"] = round(wall, 1)

    # 3. consistency distillation and training
    sd = float(train_ds.x.std())
    cd = models.create("consistency-distillation", data_shape=(2,), seed=args.seed, teacher=teacher,
                       N=18, mu=0.95, solver="heun", sigma_data=sd)
    ct = models.create("consistency-training", data_shape=(2,), seed=args.seed, K=args.cm_steps,
                       sigma_data=sd)
    for label, cm in (("consistency_distillation", cd), ("consistency_training", ct)):
        log = []
        w_train = fit(cm, train_ds, args.cm_steps, 4e-4, args.seed, 256, log, points=5)
        res[label] = {"train_steps": args.cm_steps, "lr": 4e-4, "sigma_data": sd, "loss": log,
                      "train_wall_s": round(w_train, 1), "epsilon": cm.epsilon, "T": cm.T}
        for K in (1, 2, 4):
            s, w = timed(lambda: cm.sample(n, rng=rng(), steps=K))
            res[label][f"steps{K}"] = score(s, ref, w, n, K)
            if K == 1:
                pictures.append(s)
        print(label, json.dumps({k: v for k, v in res[label].items() if k != "loss"}, default=float),
              flush=True)

    res["panels"] = "data | teacher DDIM-64 | PD 4 | PD 2 | PD 1 | CD 1-step | CT 1-step"
    imgs = [io.scatter_image(np.zeros((0, 2)), reference=ref[:3000], size=256)]
    imgs += [io.scatter_image(s[:3000], size=256) for s in pictures]
    io.write_png(os.path.join(out_dir, f"{tag}.png"), io.concat_images_horizontal(imgs))
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    res["machine"] = machine()
    write_json(os.path.join(out_dir, f"{tag}.json"), res)


if __name__ == "__main__":
    main()
