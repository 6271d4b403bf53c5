"""Gated PixelCNN (or plain PixelCNN) on binarized MNIST: test NLL in nats, samples, wall time.

    python benchmarks/pixelcnn_mnist.py --model gated-pixelcnn --steps 4000 --batch-size 16

Trains with refgen.train.train on 'mnist-binary' (dynamic binarization), scores the fixed
binarization of all 10,000 test images at the end (and the first 1,000 along the way), and
draws a 6x6 grid of samples (784 forward passes each). Writes
benchmarks/results/<tag>.json and <tag>_samples.png (tag: pixelcnn_mnist or
gated_pixelcnn_mnist).
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see made_mnist.py
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from common import RESULTS, command, machine, write_result  # noqa: E402
from made_mnist import PAPERS, sample_grid, test_nll  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gated-pixelcnn", choices=["gated-pixelcnn", "pixelcnn"])
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--depth", type=int, default=6, help="gated layers / residual blocks")
    ap.add_argument("--samples", type=int, default=36)
    ap.add_argument("--test-limit", type=int, default=None, help="score only the first N test images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    tag = args.tag or args.model.replace("-", "_") + "_mnist"
    out = Path(args.out or f"/tmp/refgen_{tag}")

    from refgen import data, models
    from refgen.train import train

    t0 = time.perf_counter()
    train_ds, test_ds = data.load("mnist-binary", "train"), data.load("mnist-binary", "test")
    depth = {"layers": args.depth} if args.model == "gated-pixelcnn" else {"blocks": args.depth}
    model = models.create(args.model, data_shape=train_ds.shape, seed=args.seed,
                          channels=args.channels, **depth)
    state = {"final": False}

    def evaluate(m, ds):
        x = ds.x[:args.test_limit] if state["final"] else ds.x[:1000]
        key = "test_nll_nats" if state["final"] else "test_nll_nats_first1000"
        return {key: test_nll(m.log_prob, x, chunk=100)}

    metrics = train(model, train_ds, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                    seed=args.seed, out_dir=out, schedule="cosine", eval_fn=evaluate,
                    test_dataset=test_ds, eval_every=max(args.steps // 4, 1),
                    log_every=max(args.steps // 100, 1), ckpt_every=max(args.steps // 10, 1),
                    samples=False)
    train_wall = metrics["wall_s"]
    t_eval = time.perf_counter()
    state["final"] = True
    model.eval()
    final = evaluate(model, test_ds)["test_nll_nats"]
    eval_s = time.perf_counter() - t_eval
    sample_s = sample_grid(model, RESULTS / f"{tag}_samples.png", n=args.samples)
    result = {
        "model": args.model, "data": "mnist-binary", "command": command(), "machine": machine(),
        "config": {"channels": args.channels, "depth": args.depth, "steps": args.steps,
                   "batch_size": args.batch_size, "lr": args.lr, "schedule": "cosine",
                   "seed": args.seed, "params": model.num_parameters(),
                   "epochs": round(args.steps * args.batch_size / len(train_ds), 3)},
        "test_nll_nats": final, "test_images": len(test_ds.x[:args.test_limit]),
        "train_wall_s": train_wall, "eval_wall_s": round(eval_s, 1),
        "total_wall_s": round(time.perf_counter() - t0, 1),
        f"sample_{args.samples}_s": round(sample_s, 1),
        "samples_png": f"benchmarks/results/{tag}_samples.png",
        "log": [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()
                if ln.strip() and "test_nll" in ln],
        "papers_nats": PAPERS,
    }
    write_result(tag, result)
    print(json.dumps({k: result[k] for k in ("test_nll_nats", "train_wall_s")}))


if __name__ == "__main__":
    main()
