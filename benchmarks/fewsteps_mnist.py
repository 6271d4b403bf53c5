"""Diffusion with fewer steps on MNIST: a v-parameterised DDPM teacher, progressive
distillation down to one step, consistency distillation and consistency training, every
sampler scored by FID and KID at the same N, with the wall time per sample.

    # the teacher (v-parameterised, the mnist-14 recipe of diffusion_mnist14_cosine_fixed)
    OPENBLAS_NUM_THREADS=1 python benchmarks/diffusion_mnist.py train --out /tmp/refgen_dm14_v \\
        --data mnist-14 --steps 7000 --chunk 500 --lr 1e-3 --ema 0.999 --warmup 500 \\
        --set channels=16 --set num_res_blocks=1 --set schedule=cosine --set parameterization=v
    # the stages (each writes its own result file; run them one per core)
    OPENBLAS_NUM_THREADS=1 python benchmarks/fewsteps_mnist.py --teacher /tmp/refgen_dm14_v --stage teacher
    OPENBLAS_NUM_THREADS=1 python benchmarks/fewsteps_mnist.py --teacher /tmp/refgen_dm14_v --stage pd
    OPENBLAS_NUM_THREADS=1 python benchmarks/fewsteps_mnist.py --teacher /tmp/refgen_dm14_v --stage cd
    OPENBLAS_NUM_THREADS=1 python benchmarks/fewsteps_mnist.py --teacher /tmp/refgen_dm14_v --stage ct

Stages (benchmarks/results/fewsteps_<data>_<stage>.json each, or ``--tag``):
  teacher  deterministic DDIM on progressive distillation's nested grids (64, 16, 8, 4, 2, 1
           steps), the probability-flow ODE in sigma-time (Euler 18 = 18 NFE, Heun 18 = 35
           NFE) and ancestral DDPM over ``--ddpm-steps`` strided steps;
  pd       progressive distillation 64 -> 32 -> ... -> 1 (Algorithm 2, ``--round-steps``
           Adam steps per round); each round's student scored at its N just before it halves;
  cd       consistency distillation (31) from the teacher (Heun, N = 18, mu = 0.95, l2),
           ``--cm-steps`` steps, sampled at 1 and 2 steps; ``--cd-init teacher`` starts F
           as the teacher's network (sigma_data = 1), ``random`` (default) as a fresh one;
           ``--cm-ema`` samples an average of the weights, ``--curve-n N`` scores one step
           at each loss point (and ``--cm-save`` keeps the sampled weights there), and
           ``--cm-mids`` tries intermediate times for two steps, the best by FID on a
           separate draw scored again as steps2_best; ``--cm-init-from`` restarts from a
           saved model (a warm restart: the saved average as the online weights, a fresh
           Adam), its curve counting on from the saved step;
  ct       consistency training (32) from scratch (the paper's N(k), mu(k), K = --cm-steps).
  verdict  the targets against the result files: measured, bound, gap, met
           (fewsteps_<data>_verdict.json; no teacher needed).
  student  a progressive-distillation student saved by ``pd --save DIR`` (``--students DIR
           --k K``) scored again, e.g. at a larger N beside the teacher's DDIM
           (``--stage teacher --ddim 16 --no-ode --ddpm-steps 0 --n 10000 --tag ...``).
The null label throughout (the teacher's unconditional mode). Metrics: fid_mnist, kid_mnist
(with its standard error), precision / recall and class_kl of ``--n`` samples from one
generator seed, and ms per sample of a timed draw of ``--time-n`` samples.
``--smoke``: a tiny teacher trained here for 4 steps, 2 steps per stage, 20 samples.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, SMOKE, Draw, add_smoke, command, fit, load, machine, rel,  # noqa: E402
                    write_result)

import numpy as np  # noqa: E402

from refgen import backend, io, models  # noqa: E402
from refgen.autograd import Tensor, no_grad  # noqa: E402
from refgen.metrics.evaluation import evaluate  # noqa: E402
from refgen.models.diffusion.distill import _x0, ddim_sample  # noqa: E402
from refgen.models.diffusion.teacher import load_teacher  # noqa: E402

SEED = 0
SELECT_SEED = 12345  # the draw that chooses two-step sampling's intermediate time
TARGETS = {"pd": "the 8-step student's FID at or below the teacher's DDIM-16",
           "cd": "1-step FID <= 1.5x the teacher's Heun-18 (35 NFE) FID; 2 steps better than 1"}


def score(fn, test_ds, n, time_n, nfe, rng=None):
    """The sample metrics of ``n`` draws of fn(n, rng) (the evaluation's generator seed, or
    ``rng``), and the ms per sample of ``time_n`` (none timed when 0)."""
    ms = None
    if time_n:
        t = time.perf_counter()
        Draw(fn).sample(time_n, rng=backend.default_rng(SEED + 1))
        ms = round(1000 * (time.perf_counter() - t) / time_n, 3)
    m = evaluate(Draw(fn), test_ds, n_samples=n, sample_batch=250, rng=rng)
    keep = ("fid_mnist", "kid_mnist", "kid_mnist_se", "precision", "recall", "class_kl", "fid_n_samples")
    return dict({k: m[k] for k in keep if k in m}, nfe=nfe, ms_per_sample=ms)


def teacher_ddim(teacher, K):
    return lambda n, rng: ddim_sample(lambda z, tt: _x0(teacher, Tensor(z), tt).data, teacher.schedule,
                                      K, rng.standard_normal((n,) + teacher.data_shape, dtype=np.float32)
                                      ) * teacher.data_scale


def stage_teacher(teacher, args, test_ds, res):
    for K in map(int, args.ddim.split(",")):
        res[f"ddim{K}"] = score(teacher_ddim(teacher, K), test_ds, args.n, args.time_n, K)
        print(f"teacher DDIM-{K}: {json.dumps(res[f'ddim{K}'])}", flush=True)
        yield
    for method, nfe in (() if args.no_ode else (("euler", 18), ("heun", 35))):
        res[f"ode_{method}18"] = score(lambda n, rng: teacher.sample(n, rng=rng, sampler=method, steps=18),
                                       test_ds, args.n, args.time_n, nfe)
        print(f"teacher {method}-18: {json.dumps(res[f'ode_{method}18'])}", flush=True)
        yield
    K = args.ddpm_steps
    if not K:
        return
    res[f"ddpm{K}"] = score(lambda n, rng: teacher.sample(n, rng=rng, steps=K), test_ds, args.n,
                            args.time_n, K)
    print(f"teacher DDPM-{K}: {json.dumps(res[f'ddpm{K}'])}", flush=True)
    yield


def stage_pd(teacher, args, train_ds, test_ds, res):
    pd = models.create("progressive-distillation", data_shape=train_ds.shape, seed=SEED,
                       teacher=teacher, teacher_steps=64, round_steps=args.round_steps, min_steps=1)
    res.update(round_steps=args.round_steps, lr=args.lr, batch_size=args.batch_size, student_ema=args.pd_ema,
               rounds={})
    wall = 0.0
    for r in range(args.rounds):
        N, log = int(pd.N), []
        print(f"progressive distillation: round {r + 1}, {2 * N} -> {N} steps", flush=True)
        # the halving happens inside the round's last train_step: score the student just before
        wall += fit(pd, train_ds, args.round_steps - 1, args.lr, SEED + r, args.batch_size, log, quiet=False,
                    ema=args.pd_ema)  # with --pd-ema the round's student is the average
        res["rounds"][str(N)] = dict(score(lambda n, rng: pd.sample(n, rng=rng, steps=N), test_ds,
                                           args.n, args.time_n, N), loss=log)
        print(f"  student {N} steps: FID {res['rounds'][str(N)]['fid_mnist']:.2f}", flush=True)
        if args.save:
            path = Path(args.save) / f"pd_student{N}.npz"
            path.parent.mkdir(parents=True, exist_ok=True)
            io.save_checkpoint(path, {k: backend.to_numpy(v) for k, v in pd.state_dict().items()},
                               {"N": N, "round_steps": args.round_steps, "teacher": str(args.teacher)})
            res["rounds"][str(N)]["checkpoint"] = str(path)
        wall += fit(pd, train_ds, 1, args.lr, SEED + 100 + r, args.batch_size)
        res["train_wall_s"] = round(wall, 1)
        yield


def stage_student(teacher, args, train_ds, test_ds, res):
    """A saved progressive-distillation student (--students DIR, --k steps) scored again."""
    path = Path(args.students) / f"pd_student{args.k}.npz"
    if not path.is_file():
        raise SystemExit(f"{path}: no such student; run --stage pd --save {args.students} first")
    pd = models.create("progressive-distillation", data_shape=train_ds.shape, seed=SEED,
                       teacher=teacher, teacher_steps=2 * args.k, min_steps=1)
    arrays, meta = io.load_checkpoint(path)
    pd.load_state_dict({k: backend.asarray(v) for k, v in arrays.items()})
    res.update(checkpoint=str(path), round_steps=meta.get("round_steps"))
    res[f"student{args.k}"] = score(lambda n, rng: pd.sample(n, rng=rng, steps=args.k), test_ds,
                                    args.n, args.time_n, args.k)
    print(f"student {args.k} steps: {json.dumps(res[f'student{args.k}'])}", flush=True)
    yield


def stage_cm(kind, teacher, args, train_ds, test_ds, res):
    net = {k: getattr(teacher.network, k) for k in ("channels", "num_res_blocks", "groups")
           if getattr(teacher.network, k) is not None}                 # the teacher's U-Net size
    if kind == "cd":
        cm = models.create("consistency-distillation", data_shape=train_ds.shape, seed=SEED,
                           teacher=teacher, N=18, mu=0.95, solver="heun", init=args.cd_init,
                           **(net if args.cd_init == "random" else {}))
    else:
        cm = models.create("consistency-training", data_shape=train_ds.shape, seed=SEED,
                           K=args.cm_steps, **net)
    log, before = [], 0
    if args.cm_init_from:  # a warm restart: every weight of a saved model (online = its sampled
        arrays, meta = io.load_checkpoint(args.cm_init_from)   # average, theta^-), a fresh Adam
        cm.load_state_dict({k: backend.asarray(v) for k, v in arrays.items()})
        before = int(meta["train_steps"])
        res.update(init_from=str(args.cm_init_from), steps_before=before)
    res.update(init=getattr(cm, "init", "random"), train_steps=args.cm_steps, lr=args.cm_lr,
               sample_ema=args.cm_ema,
               batch_size=args.batch_size, epsilon=cm.epsilon, T=cm.T, sigma_data=cm.sigma_data,
               network=net, params=cm.num_parameters(), loss=log, curve=[])

    def save(step):
        if args.cm_save:
            path = Path(args.cm_save)
            path.parent.mkdir(parents=True, exist_ok=True)
            io.save_checkpoint(path, {k: backend.to_numpy(v) for k, v in cm.state_dict().items()},
                               {"stage": kind, "train_steps": step, "sample_ema": args.cm_ema})
            res["checkpoint"] = str(path)

    def point(step):  # the 1-step FID along training (the sampled weights), kept as it comes
        m = score(lambda n, rng: cm.sample(n, rng=rng, steps=1), test_ds, args.curve_n, 0, 1)
        res["curve"].append([before + step, round(m["fid_mnist"], 2), round(m["kid_mnist"], 1)])
        print(f"  step {before + step}: 1-step FID {m['fid_mnist']:.2f} (N = {args.curve_n})", flush=True)
        save(before + step)
        write_result(res["tag"], res)
    res["curve_n"] = args.curve_n
    res["train_wall_s"] = round(fit(cm, train_ds, args.cm_steps, args.cm_lr, SEED, args.batch_size, log,
                                    quiet=False, ema=args.cm_ema, at_point=point if args.curve_n else None), 1)
    save(before + args.cm_steps)
    for K in (1, 2):
        res[f"steps{K}"] = score(lambda n, rng: cm.sample(n, rng=rng, steps=K), test_ds, args.n,
                                 args.time_n, K)
        print(f"{kind} {K} step(s): {json.dumps(res[f'steps{K}'])}", flush=True)
    if args.cm_mids:
        # two steps through an intermediate time chosen by FID, as the paper chooses it (there by
        # a ternary search): each candidate scored on a selection draw (generator seed
        # SELECT_SEED), the best scored again on the evaluation draw every other row uses
        search = {}
        for mid in map(float, args.cm_mids.split(",")):
            m = score(lambda n, rng: cm.sample(n, rng=rng, times=[cm.T, mid]), test_ds, args.n, 0, 2,
                      rng=SELECT_SEED)
            search[str(mid)] = round(m["fid_mnist"], 3)
            print(f"  2 steps through sigma {mid}: FID {m['fid_mnist']:.2f} (selection draw)", flush=True)
        best = min(search, key=search.get)
        res["steps2_search"] = dict(select_seed=SELECT_SEED, fid_by_mid=search, mid=float(best))
        res["steps2_best"] = dict(score(lambda n, rng: cm.sample(n, rng=rng, times=[cm.T, float(best)]),
                                        test_ds, args.n, args.time_n, 2), mid=float(best))
        print(f"{kind} 2 steps through sigma {best}: {json.dumps(res['steps2_best'])}", flush=True)
    grid = RESULTS / f"{res['tag']}_1step.png"
    with no_grad():
        x = backend.to_numpy(cm.sample(64, rng=backend.default_rng(SEED + 2), steps=1))
    io.write_png(grid, io.image_grid(np.clip((x + 1) / 2, 0, 1)))
    res["png"] = rel(grid)
    yield


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", help="the v-parameterised ddpm run directory")
    ap.add_argument("--stage", required=not SMOKE, choices=["teacher", "pd", "cd", "ct", "student", "verdict"])
    ap.add_argument("--tag", help="the result file's name (default fewsteps_<data>_<stage>)")
    ap.add_argument("--save", help="pd: a directory for each round's student (pd_student<N>.npz)")
    ap.add_argument("--students", help="student: the --save directory of a pd run")
    ap.add_argument("--k", type=int, default=8, help="student: the saved student's steps")
    ap.add_argument("--no-ode", action="store_true", help="teacher: skip the sigma-time ODE samplers")
    ap.add_argument("--data", default="mnist-14", choices=["mnist-14", "mnist"])
    ap.add_argument("--n", type=int, default=2000, help="samples per FID / KID")
    ap.add_argument("--time-n", type=int, default=250, help="samples of the timed draw")
    ap.add_argument("--ddim", default="64,16,8,4,2,1")
    ap.add_argument("--ddpm-steps", type=int, default=100, help="teacher: ancestral steps (0: skip)")
    ap.add_argument("--round-steps", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=6, help="pd: halvings from the teacher's 64 steps")
    ap.add_argument("--lr", type=float, default=2e-4, help="progressive distillation's Adam lr")
    ap.add_argument("--pd-ema", type=float, default=None,
                    help="pd: each round's student is an EMA of its weights at this decay (it is "
                         "scored, then takes the round's last step and becomes the next teacher)")
    ap.add_argument("--cm-steps", type=int, default=3000)
    ap.add_argument("--cm-lr", type=float, default=4e-4)
    ap.add_argument("--cm-ema", type=float, default=None,
                    help="cd / ct: sample an EMA of the online weights at this decay (default: the "
                         "online weights)")
    ap.add_argument("--curve-n", type=int, default=0,
                    help="cd / ct: the 1-step FID at each loss point on this many samples (0: none)")
    ap.add_argument("--cm-mids", default="",
                    help="cd / ct: intermediate times (sigmas) for two-step sampling, e.g. "
                         "0.5,1,2; the best by FID on a selection draw is scored as steps2_best")
    ap.add_argument("--cm-save", help="cd / ct: save the sampled weights to this .npz")
    ap.add_argument("--cm-init-from", help="cd / ct: start from a --cm-save checkpoint (its "
                    "online weights are the average it sampled; Adam starts afresh)")
    ap.add_argument("--cd-init", choices=["random", "teacher"], default="random",
                    help="cd: a fresh network, or the teacher's (F = -v, sigma_data = 1)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--verdict-teacher", default="teacher",
                    help="verdict: the teacher stage's result (fewsteps_<data>_<this>.json)")
    ap.add_argument("--verdict-pd", default="pd", help="verdict: the pd stage's result")
    ap.add_argument("--verdict-cd", default="cd,cd_init_teacher", help="verdict: the cd results")
    args = add_smoke(ap).parse_args(argv)
    if SMOKE:
        args.n, args.time_n, args.round_steps, args.cm_steps, args.ddpm_steps = 20, 4, 2, 2, 4
        args.curve_n, args.cm_mids, args.cm_save = 20, "0.5,2", str(RESULTS / "students" / "cm.npz")
        args.save = args.students = str(RESULTS / "students")
    return args


def smoke_teacher(train_ds, out):
    from refgen.train import train
    m = models.create("ddpm", data_shape=train_ds.shape, num_classes=10, seed=0, channels=4,
                      num_res_blocks=1, groups=2, T=64, parameterization="v", schedule="cosine")
    cfg = {"model": "ddpm", "model_kwargs": dict(channels=4, num_res_blocks=1, groups=2, T=64,
                                                 parameterization="v", schedule="cosine"),
           "data_facts": {"shape": list(train_ds.shape)}, "num_classes": 10, "train": {"seed": 0}}
    train(m, train_ds, steps=4, batch_size=8, lr=1e-3, out_dir=out, progress=False, samples=False,
          evaluate_at_end=False, config=cfg, ema_decay=0.9)
    return out


def verdict(data: str, teacher_tag="teacher", pd_tag="pd", cd_tags=("cd", "cd_init_teacher"),
            out_tag="verdict"):
    """The targets against the stages' result files (RESULTS/fewsteps_<data>_<tag>.json):
    measured, bound, gap and met, written to fewsteps_<data>_<out_tag>.json."""
    d = data.replace("-", "")

    def read(stage):
        path = RESULTS / f"fewsteps_{d}_{stage}.json"
        return json.loads(path.read_text()) if path.is_file() else None
    teacher, pd = read(teacher_tag), read(pd_tag)
    out = {"command": command(), "data": data, "teacher_file": teacher_tag, "pd_file": pd_tag}
    if teacher and pd and "8" in pd.get("rounds", {}) and "ddim16" in teacher:
        got, bound = pd["rounds"]["8"]["fid_mnist"], teacher["ddim16"]["fid_mnist"]
        out["pd"] = dict(target=TARGETS["pd"], fid=got, bound=bound, gap=got - bound, met=got <= bound,
                         kid=pd["rounds"]["8"]["kid_mnist"], kid_bound=teacher["ddim16"]["kid_mnist"])
    for tag in cd_tags:
        cd = read(tag)
        if teacher and cd and "ode_heun18" in teacher and "steps1" in cd:
            two_steps = cd.get("steps2_best", cd["steps2"])   # through the chosen time, if searched
            one, two, bound = cd["steps1"]["fid_mnist"], two_steps["fid_mnist"], \
                1.5 * teacher["ode_heun18"]["fid_mnist"]
            out[tag] = dict(target=TARGETS["cd"], init=cd.get("init", "random"), fid_1step=one,
                            bound=bound, gap=one - bound, met_1step=one <= bound, fid_2steps=two,
                            mid=two_steps.get("mid"), fid_2steps_grid=cd["steps2"]["fid_mnist"],
                            met_2_better_than_1=two < one, met=one <= bound and two < one)
    write_result(f"fewsteps_{d}_{out_tag}", out)
    for k, v in out.items():
        if isinstance(v, dict):
            print(f"{k}: {json.dumps(v)}", flush=True)
    return 0


def main(argv=None):
    args = parse(argv)
    if args.stage == "verdict":
        return verdict(args.data, args.verdict_teacher, args.verdict_pd, tuple(args.verdict_cd.split(",")),
                       args.tag or "verdict")
    train_ds, test_ds = load(args.data, "train"), load(args.data, "test")
    # smoke: every stage, and cd twice, the second a warm restart from the first's weights
    stages = ["teacher", "pd", "student", "cd", "cd", "ct"] if SMOKE else [args.stage]
    teacher_dir = smoke_teacher(train_ds, RESULTS / "teacher") if SMOKE else args.teacher
    teacher = load_teacher(teacher_dir, train_ds.shape, "fewsteps_mnist")
    if teacher.parameterization != "v":
        raise SystemExit(f"the teacher predicts {teacher.parameterization!r}; train it with "
                         "--set parameterization=v")
    for i, stage in enumerate(stages):
        if SMOKE:
            args.cm_init_from = args.cm_save if stage == "cd" and "cd" in stages[:i] else None
        tag = (not SMOKE and args.tag) or f"fewsteps_{args.data.replace('-', '')}_{stage}"
        res = {"command": command(), "tag": tag, "stage": stage, "data": args.data, "teacher": str(teacher_dir),
               "n": args.n, "time_n": args.time_n, "target": TARGETS.get(stage)}
        t0, c0 = time.perf_counter(), time.process_time()
        if stage == "teacher":
            steps = stage_teacher(teacher, args, test_ds, res)
        elif stage == "pd":
            steps = stage_pd(teacher, args, train_ds, test_ds, res)
        elif stage == "student":
            steps = stage_student(teacher, args, train_ds, test_ds, res)
        else:
            steps = stage_cm(stage, teacher, args, train_ds, test_ds, res)
        for _ in steps:  # a result file after every part: a stopped run keeps what it finished
            res.update(wall_s=round(time.perf_counter() - t0, 1),
                       process_cpu_s=round(time.process_time() - c0, 1), machine=machine())
            write_result(tag, res)
    if SMOKE:
        verdict(args.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
