"""Flows on dequantized MNIST: test bits/dim beside the papers, a sample grid, the wall time.

    REFGEN_DATA_DIR=DIR python benchmarks/flows_mnist.py --model glow --steps 3000
    REFGEN_DATA_DIR=DIR python benchmarks/flows_mnist.py --model maf --measure 20   # speed only

Trains with refgen.train.train on 'mnist-dequantized' (x = (k + u) / 256, fresh u every
batch) and scores the fixed dequantization of the 10,000 test images:

    test_bpd = (nll + D log 256) / (D ln 2),  D = 784     (refgen.metrics.nll_to_bpd, '[0,1]')

The flows see [0, 1] data through their own logit (or shift) layer, whose log-determinant
is part of log p(x), so the number is a bound on the bits/dim of the 8-bit pixels, the
same quantity the papers report. Writes benchmarks/results/flows_mnist_<model>.json and
flows_mnist_<model>_samples.png (64 samples at temperature 1) and ..._samples_t07.png (at
temperature 0.7, as Glow's paper shows them).

--measure N trains N steps only and reports steps/s and the projected time of --steps,
without evaluating (benchmarks/results/flows_mnist_speed.json collects these). ``--smoke``:
2 steps of a small version of the model on 64 images, 16 of them scored.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, SMOKE, add_smoke, command, load, log_probs, machine, rel,  # noqa: E402
                    run_dir, sample_grid, smoke, write_result)

from refgen.runs import parse_sets  # noqa: E402
from refgen import io  # noqa: E402
from refgen.metrics import nll_to_bpd  # noqa: E402
from refgen.models.flows import MAF, NICE, GaussianizationFlow, Glow, RealNVP  # noqa: E402
from refgen.train import CHECKPOINT, load_run_state, train  # noqa: E402

MODELS = {"nice": NICE, "realnvp": RealNVP, "glow": Glow, "maf": MAF, "gflow": GaussianizationFlow}
# CPU-sized versions of the papers' models (the papers' are 10-100x larger).
CONFIGS = {
    "nice": dict(kwargs=dict(couplings=4, hidden=32), batch_size=64, lr=1e-3),
    # 3 scales: the last coupling nets see 7x7, so they reach across the whole digit; 800-step
    # probes (ActNorm on): 1.931 bits/dim with 2 scales, 1.899 with 3, and strokes for specks.
    "realnvp": dict(kwargs=dict(scales=3, hidden=32), batch_size=64, lr=1e-3),
    "glow": dict(kwargs=dict(depth=8, levels=2, hidden=32), batch_size=64, lr=1e-3),
    "maf": dict(kwargs=dict(layers=5, hidden=[1024]), batch_size=100, lr=1e-4),
    # 6 marginal layers of 8 logistics per pixel, 64 Householder reflections per rotation
    # (784 would reach every rotation; each reflection is a sequential step).
    "gflow": dict(kwargs=dict(layers=6, components=8, reflections=64), batch_size=64, lr=1e-3),
}
PAPERS = {"nice": 4.36, "maf": 1.89, "realnvp": 1.06, "glow": 1.05}   # test bits/dim
TARGETS = {"nice": 4.5, "maf": 2.1, "realnvp": 1.6, "glow": 1.5}   # gflow: reported, no target
D = 784
SMOKE_KWARGS = {"nice": dict(couplings=2, hidden=8), "realnvp": dict(hidden=8),
                "glow": dict(depth=2, hidden=8), "maf": dict(layers=1, hidden=[32]),
                "gflow": dict(layers=2, components=2, reflections=4)}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), required=True)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="model hyperparameter")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--measure", type=int, default=0, metavar="N",
                    help="train N steps only and report the speed")
    ap.add_argument("--max-test", type=int, default=None, help="score only this many test images")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=None, help="run directory (default /tmp/refgen_flows_mnist_<model>)")
    ap.add_argument("--from-checkpoint", action="store_true",
                    help="skip training: evaluate and sample the run directory's checkpoint "
                         "(the training figures are kept from the existing results JSON)")
    args = add_smoke(ap).parse_args(argv)
    if SMOKE:
        args.steps, args.batch_size, args.max_test = 2, 8, 16
        args.measure = min(args.measure, 2)
    return args


def main(argv=None):
    args = parse(argv)
    cfg = CONFIGS[args.model]
    kwargs = dict(cfg["kwargs"], **smoke({}, SMOKE_KWARGS[args.model]), **parse_sets(args.set))
    batch_size = args.batch_size or cfg["batch_size"]
    lr = args.lr or cfg["lr"]
    out = run_dir(f"flows_mnist_{args.model}", args.out)
    train_ds = load("mnist-dequantized", "train", data_dir=args.data_dir)
    test_ds = load("mnist-dequantized", "test", data_dir=args.data_dir)
    model = MODELS[args.model](train_ds.shape, seed=args.seed, **kwargs)
    steps = args.measure or args.steps
    base = {"model": args.model, "model_kwargs": kwargs, "num_parameters": model.num_parameters(),
            "batch_size": batch_size, "lr": lr, "command": command(), "machine": machine()}
    if args.from_checkpoint:
        steps, wall, cpu, metrics = restore(args, model, out, base)
    else:
        t0, cpu0 = time.perf_counter(), time.process_time()
        metrics = fit(args, model, train_ds, out, steps, batch_size, lr)
        wall, cpu = time.perf_counter() - t0, round(time.process_time() - cpu0, 1)
    if args.measure:
        return record_speed(args, base, steps, wall, batch_size)

    t1 = time.perf_counter()
    x = test_ds.x if args.max_test is None else test_ds.x[:args.max_test]
    nll = float(-log_probs(model, x, chunk=250).mean())
    bpd = float(nll_to_bpd(nll, D, "[0,1]"))
    eval_s = time.perf_counter() - t1
    png = RESULTS / f"flows_mnist_{args.model}_samples.png"
    sample_s = sample_grid(model, png, n=smoke(64, 4))
    png_cold = RESULTS / f"flows_mnist_{args.model}_samples_t07.png"
    sample_grid(model, png_cold, n=smoke(64, 4), temperature=0.7)
    result = dict(base, steps=steps, train_wall_s=round(wall, 1), train_cpu_s=cpu,
                  steps_per_s=round(steps / wall, 3), epochs=round(steps * batch_size / len(train_ds), 2),
                  final_train_loss_nats=metrics.get("loss"), test_examples=len(x),
                  test_nll_nats=nll, test_bpd=bpd, paper_bpd=PAPERS.get(args.model),
                  target_bpd=TARGETS.get(args.model), eval_wall_s=round(eval_s, 1),
                  sample_wall_s=round(sample_s, 1), samples_png=rel(png),
                  samples_t07_png=rel(png_cold))
    if not args.from_checkpoint:
        result["machine"] = machine()   # now, at the end: the load average the run saw
    log = out / "log.jsonl"
    if log.exists():  # the learning curve: training loss (nats) and its bits/dim reading
        result["log"] = [dict(step=r["step"], loss_nats=r["loss"], wall_s=r["wall_s"],
                              train_bpd=float(nll_to_bpd(r["loss"], D, "[0,1]")))
                         for r in map(json.loads, log.read_text().splitlines()) if "loss" in r]
    print(f"{args.model}: test {bpd:.3f} bits/dim (paper {PAPERS.get(args.model)}, target "
          f"{TARGETS.get(args.model)}) after {steps} steps, {wall / 60:.1f} min")
    write_result(f"flows_mnist_{args.model}", result)


def fit(args, model, train_ds, out, steps, batch_size, lr):
    return train(model, train_ds, steps=steps, batch_size=batch_size, lr=lr, seed=args.seed,
                 out_dir=out, schedule="cosine" if not args.measure else "constant",
                 warmup=0 if args.measure else min(200, steps // 10), grad_clip=100.0,
                 log_every=max(1, min(100, steps // 20)), ckpt_every=max(1, min(500, steps)),
                 progress=True, samples=False)


def restore(args, model, out, base):
    """--from-checkpoint: the run directory's weights, and the training figures of the
    existing results JSON (``base`` takes its command and machine)."""
    arrays, meta = io.load_checkpoint(out / CHECKPOINT)
    load_run_state(model, arrays)
    old = json.loads((RESULTS / f"flows_mnist_{args.model}.json").read_text())
    base.update(command=old["command"], machine=old["machine"], batch_size=old["batch_size"],
                lr=old["lr"], eval_command=command())
    return int(meta["step"]), old["train_wall_s"], old.get("train_cpu_s"), \
        {"loss": old.get("final_train_loss_nats")}


def record_speed(args, base, steps, wall, batch_size):
    """--measure: steps/s and the projected hours, merged into flows_mnist_speed.json."""
    rate = steps / wall
    entry = dict(base, steps=steps, wall_s=round(wall, 1), steps_per_s=round(rate, 3),
                 projected_s_for=[{"steps": s, "hours": round(s / rate / 3600, 2)}
                                  for s in (1000, 3000, 10000, 30000)])
    path = RESULTS / "flows_mnist_speed.json"
    table = json.loads(path.read_text()) if path.exists() else {}
    table[args.model] = entry
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    print(f"{args.model}: {rate:.3f} steps/s at batch {batch_size}; wrote {path}")


if __name__ == "__main__":
    main()
