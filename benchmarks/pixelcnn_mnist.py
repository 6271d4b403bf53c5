"""Gated PixelCNN, PixelCNN or PixelRNN on binarized MNIST: test NLL in nats, samples, wall time.

    python benchmarks/pixelcnn_mnist.py --model gated-pixelcnn --tag gated_pixelcnn_mnist_1h_reach27
    python benchmarks/pixelcnn_mnist.py --model pixelrnn --variant diagonal --channels 16 --depth 3

Flags not given take the model's defaults and its ``default_train``: for the gated model the
CPU-hour recipe (12 layers of 24 channels, a 27x27 first layer, 7,800 steps of 16 images,
peak lr 6e-3 after 200 warmup steps, cosine decay). Trains with refgen.train.train on
'mnist-binary' (dynamic binarization), scores the fixed binarization of all 10,000 test
images at the end (and the first 1,000 along the way), and draws a 6x6 grid of samples
(the cached sampler of the PixelCNNs: about one network pass each; PixelRNN runs the
full network once per pixel). Writes benchmarks/results/<tag>.json and <tag>_samples.png
(tag: pixelcnn_mnist, gated_pixelcnn_mnist or pixelrnn_<variant>_mnist; for pixelrnn
--channels is the LSTM state size h and --depth the number of residual LSTM layers).
``--resume`` picks a run up from the last checkpoint in --out; one that finished training
but was stopped before scoring goes straight to scoring. ``--smoke``: 2 steps of a 2-layer,
8-channel model on 64 images.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, SMOKE, add_smoke, command, load, machine, read_log, rel,  # noqa: E402
                    run_dir, sample_grid, test_nll, write_result)
from made_mnist import PAPERS  # noqa: E402


def architecture(model) -> dict:
    """channels, depth and first-layer kernel of a built (gated) PixelCNN, read off its weights."""
    if hasattr(model, "variant"):                        # PixelRNN: input_conv (2h, 1, k, k)
        o, _, k, _ = model.input_conv.weight.shape
        return {"variant": model.variant, "hidden": o // 2, "depth": len(model.layers),
                "first_kernel": k}
    if hasattr(model, "layers"):                         # gated: v_conv (2h, 1, r + 1, k)
        o, _, _, k = model.layers[0].v_conv.weight.shape
        return {"channels": o // 2, "depth": len(model.layers), "first_kernel": k}
    o, _, k, _ = model.input_conv.weight.shape           # plain: (h, c, k, k)
    return {"channels": o, "depth": len(model.blocks), "first_kernel": k}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gated-pixelcnn", choices=["gated-pixelcnn", "pixelcnn", "pixelrnn"])
    ap.add_argument("--variant", default="diagonal", choices=["diagonal", "row"],
                    help="pixelrnn only: Diagonal BiLSTM or Row LSTM")
    ap.add_argument("--steps", type=int, default=None, help="default: the model's default_train")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--warmup", type=int, default=None, help="linear warmup steps before the cosine decay")
    ap.add_argument("--grad-clip", type=float, default=None, help="clip the gradient's global norm")
    ap.add_argument("--channels", type=int, default=None, help="default: the model's (pixelrnn: the LSTM state size h)")
    ap.add_argument("--depth", type=int, default=None, help="gated layers / residual blocks")
    ap.add_argument("--first-kernel", type=int, default=None,
                    help="the type A first layer's k x k reach (7 in the papers)")
    ap.add_argument("--samples", type=int, default=36, help="grid size; 0 draws none")
    ap.add_argument("--test-limit", type=int, default=None, help="score only the first N test images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--resume", action="store_true",
                    help="continue from --out's checkpoint (a finished one goes straight to scoring)")
    args = add_smoke(ap).parse_args(argv)
    if SMOKE:
        args.steps, args.batch_size, args.channels, args.depth, args.samples = 2, 8, 8, 2, 1
    return args


def main(argv=None, write=True):
    """Train, score and sample as the flags say; returns the result dict, and (``write``)
    writes it to benchmarks/results/<tag>.json."""
    args = parse(argv)
    name = f"pixelrnn_{args.variant}" if args.model == "pixelrnn" else args.model.replace("-", "_")
    tag = args.tag or name + "_mnist"
    out = run_dir(tag, args.out)
    t0 = time.perf_counter()
    train_ds, test_ds = load("mnist-binary", "train"), load("mnist-binary", "test")
    model, arch = build(args, train_ds)
    state = {"final": False}

    def evaluate(m, ds):
        x = ds.x[:args.test_limit] if state["final"] else ds.x[:1000]
        key = "test_nll_nats" if state["final"] else "test_nll_nats_first1000"
        return {key: test_nll(m.log_prob, x, chunk=100)}

    t_train = time.perf_counter()
    metrics = fit(args, model, train_ds, test_ds, out, evaluate)
    train_wall = metrics["wall_s"]                       # all of training, resumed or not
    this_train = time.perf_counter() - t_train           # the part of it this process ran
    t_eval = time.perf_counter()
    state["final"] = True
    model.eval()
    final = evaluate(model, test_ds)["test_nll_nats"]
    eval_s = time.perf_counter() - t_eval
    png = RESULTS / f"{tag}_samples.png"
    sample_s = sample_grid(model, png, n=args.samples) if args.samples and write else None
    result = {
        "model": args.model, "data": "mnist-binary", "command": command(), "machine": machine(),
        "config": {**arch, "steps": args.steps,
                   "batch_size": args.batch_size, "lr": args.lr, "schedule": "cosine",
                   "warmup": args.warmup, "grad_clip": args.grad_clip,
                   "seed": args.seed, "params": model.num_parameters(),
                   "epochs": round(args.steps * args.batch_size / len(train_ds), 3)},
        "test_nll_nats": final, "test_images": len(test_ds.x[:args.test_limit]),
        "train_wall_s": train_wall, "eval_wall_s": round(eval_s, 1),
        "total_wall_s": round(time.perf_counter() - t0 - this_train + train_wall, 1),
        "resumed": args.resume,
        f"sample_{args.samples}_s": None if sample_s is None else round(sample_s, 1),
        "samples_png": None if sample_s is None else rel(png),
        "log": read_log(out, "test_nll"),
        "papers_nats": PAPERS,
    }
    if write:
        write_result(tag, result)
    print(json.dumps({k: result[k] for k in ("test_nll_nats", "train_wall_s")}))
    return result


def build(args, train_ds):
    """The model from the flags given; flags not given take its default_train (the recipe)."""
    from refgen import models
    depth_key = "blocks" if args.model == "pixelcnn" else "layers"
    width_key = "hidden" if args.model == "pixelrnn" else "channels"
    given = {width_key: args.channels, depth_key: args.depth, "first_kernel": args.first_kernel}
    if args.model == "pixelrnn":
        given["variant"] = args.variant
    model = models.create(args.model, data_shape=train_ds.shape, seed=args.seed,
                          **{k: v for k, v in given.items() if v is not None})
    for key, default in models.get(args.model).default_train.items():
        if getattr(args, key, None) is None:
            setattr(args, key, default)
    args.warmup = args.warmup or 0
    return model, architecture(model)


def fit(args, model, train_ds, test_ds, out, evaluate):
    from refgen.train import train
    return train(model, train_ds, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                 seed=args.seed, out_dir=out, schedule="cosine", warmup=args.warmup,
                 grad_clip=args.grad_clip, eval_fn=evaluate,
                 test_dataset=test_ds, eval_every=max(args.steps // 4, 1),
                 log_every=max(args.steps // 100, 1), ckpt_every=max(args.steps // 10, 1),
                 samples=False, resume=args.resume)


if __name__ == "__main__":
    main()
