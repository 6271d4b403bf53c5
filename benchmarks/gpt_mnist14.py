"""The GPT-style transformer on 14x14 binarized MNIST: bits/dim, samples, and sampling speed
with and without the key/value cache.

    python benchmarks/gpt_mnist14.py --steps 1500 --batch-size 32

Each image is a sequence of 196 binary tokens in raster order after a BOS token. Trains with
refgen.train.train on 'mnist-14-binary' (dynamic binarization), scores the fixed binarization
of the 10,000 test images (nats per image and bits/dim = nats / (196 ln 2)), draws an 8x8
grid with the cache, and times the same draw of 16 images with and without it.
Writes benchmarks/results/gpt_mnist14.json and gpt_mnist14_samples.png. ``--smoke``: 2 steps
of a one-layer, 16-wide model on 64 images.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, SMOKE, add_smoke, command, load, machine, read_log, rel,  # noqa: E402
                    run_dir, sample_grid, smoke, test_nll, write_result)

import numpy as np  # noqa: E402


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=64)
    ap.add_argument("--test-limit", type=int, default=None, help="score only the first N test images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="gpt_mnist14")
    ap.add_argument("--out", default=None)
    args = add_smoke(ap).parse_args(argv)
    if SMOKE:
        args.steps, args.batch_size, args.n_layer, args.n_head, args.n_embd = 2, 8, 1, 2, 16
    return args


def main(argv=None):
    args = parse(argv)
    out = run_dir(args.tag, args.out)
    t0 = time.perf_counter()
    train_ds, test_ds = load("mnist-14-binary", "train"), load("mnist-14-binary", "test")
    dims = int(np.prod(train_ds.shape))
    model, metrics = fit(args, train_ds, test_ds, out)
    model.eval()
    t = time.perf_counter()
    x_test = test_ds.x[:args.test_limit]
    nll = test_nll(model.log_prob, x_test, chunk=100)
    eval_s = time.perf_counter() - t
    png = RESULTS / f"{args.tag}_samples.png"
    grid_s = sample_grid(model, png, n=smoke(64, 4))
    speed, same = sampling_speed(model, dims, n=smoke(16, 2))
    from refgen.metrics import bits_per_dim
    result = {
        "model": "gpt", "data": "mnist-14-binary", "command": command(), "machine": machine(),
        "config": {"n_layer": args.n_layer, "n_head": args.n_head, "n_embd": args.n_embd,
                   "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                   "schedule": "cosine", "grad_clip": 1.0, "seed": args.seed,
                   "params": model.num_parameters(),
                   "epochs": round(args.steps * args.batch_size / len(train_ds), 3)},
        "test_nll_nats": nll, "test_bpd": bits_per_dim(nll, dims), "test_images": len(x_test),
        "train_wall_s": metrics["wall_s"], "eval_wall_s": round(eval_s, 1),
        "sample_64_cached_s": round(grid_s, 1), "sampling_speed": speed,
        "cached_equals_uncached_samples": same,
        "total_wall_s": round(time.perf_counter() - t0, 1),
        "samples_png": rel(png),
        "log": read_log(out, "test_nll"),
    }
    write_result(args.tag, result)
    print(json.dumps({k: result[k] for k in ("test_nll_nats", "test_bpd", "train_wall_s")}))


def fit(args, train_ds, test_ds, out):
    from refgen import models
    from refgen.train import train
    model = models.create("gpt", data_shape=train_ds.shape, seed=args.seed, n_layer=args.n_layer,
                          n_head=args.n_head, n_embd=args.n_embd)

    def evaluate(m, ds):
        return {"test_nll_nats_first1000": test_nll(m.log_prob, ds.x[:1000], chunk=100)}

    metrics = train(model, train_ds, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                    seed=args.seed, out_dir=out, schedule="cosine", warmup=min(100, args.steps // 10),
                    eval_fn=evaluate, test_dataset=test_ds, eval_every=max(args.steps // 4, 1),
                    log_every=max(args.steps // 100, 1), ckpt_every=max(args.steps // 10, 1),
                    grad_clip=1.0, samples=False)
    return model, metrics


def sampling_speed(model, dims, n=16):
    """Seconds and tokens/s for one draw of n images with and without the key/value cache,
    and whether the two draws (one seed) are identical."""
    from refgen import backend
    from refgen.autograd import no_grad
    speed, drawn = {}, []
    with no_grad():
        for cached in (True, False):
            t = time.perf_counter()
            s = model.sample(n, rng=backend.default_rng(7), use_cache=cached)
            took = time.perf_counter() - t
            speed["cached" if cached else "uncached"] = {
                f"seconds_for_{n}_images": round(took, 2),
                "tokens_per_s": round(n * dims / took, 1)}
            drawn.append(backend.to_numpy(s))
    return speed, bool(np.array_equal(*drawn))


if __name__ == "__main__":
    main()
