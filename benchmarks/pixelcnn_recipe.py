"""Which settings buy the gated PixelCNN its likelihood: a short sweep at equal steps.

    python benchmarks/pixelcnn_recipe.py --jobs 2     # writes results/gated_pixelcnn_recipe.json

Every recipe trains 1,050 steps at batch 16 (0.28 epochs, about 6 CPU-minutes; 200 linear
warmup steps, then cosine decay) with benchmarks/pixelcnn_mnist.py and is scored on the
first 1,000 test images. The first recipe is the 6-layer, 32-channel, 7x7, lr 1e-3 model of
the first CPU hours; the second is 12 layers of 24 channels with a 15x15 first layer; after
it one thing changes at a time: the first layer's reach (its k x k type A kernel; k = 27 lets
every pixel's first layer see 14 rows above and 13 columns either side), the peak learning
rate and the width. The recipes run ``--jobs`` at a time, each on one BLAS thread.
``--smoke`` runs the first two recipes, one at a time, at pixelcnn_mnist.py's smoke size.
"""
from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, SMOKE, add_smoke, command, machine, run_dir,  # noqa: E402
                    write_json)

# name -> (channels, depth, first_kernel, lr)
RECIPES = {
    "papers' 7x7 reach, 6 layers, 32 wide, lr 1e-3": (32, 6, 7, 1e-3),
    "12 layers, 24 wide, 15x15 reach, lr 1e-3": (24, 12, 15, 1e-3),
    "12 layers, 24 wide, 27x27 reach, lr 1e-3": (24, 12, 27, 1e-3),
    "12 layers, 24 wide, 15x15 reach, lr 3e-3": (24, 12, 15, 3e-3),
    "12 layers, 24 wide, 27x27 reach, lr 3e-3": (24, 12, 27, 3e-3),
    "12 layers, 24 wide, 27x27 reach, lr 6e-3": (24, 12, 27, 6e-3),
    "12 layers, 24 wide, 27x27 reach, lr 1e-2": (24, 12, 27, 1e-2),
    "12 layers, 32 wide, 27x27 reach, lr 6e-3": (32, 12, 27, 6e-3),
}


def run_recipe(item):
    name, (channels, depth, first_kernel, lr), steps = item
    import pixelcnn_mnist
    argv = ["--model", "gated-pixelcnn", "--steps", str(steps), "--batch-size", "16",
            "--channels", str(channels), "--depth", str(depth), "--first-kernel", str(first_kernel),
            "--lr", str(lr), "--warmup", "200", "--test-limit", "1000", "--samples", "0",
            "--out", str(run_dir(f"pixelcnn_recipe_{channels}_{depth}_{first_kernel}_{lr}"))]
    r = pixelcnn_mnist.main(argv, write=False)
    return {"recipe": name, "config": r["config"], "train_wall_s": r["train_wall_s"],
            "test_nll_nats_first1000": r["test_nll_nats"],
            "curve_first1000": [(e["step"], e["test_nll_nats_first1000"]) for e in r["log"]]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1050)
    ap.add_argument("--jobs", type=int, default=2, help="recipes trained at once")
    args = add_smoke(ap).parse_args()
    items = [(name, spec, args.steps) for name, spec in RECIPES.items()]
    if SMOKE:
        items, args.jobs = items[:2], 1
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(run_recipe, items))
    for r in rows:
        print(f"{r['test_nll_nats_first1000']:7.2f} nats  {r['train_wall_s']:6.0f} s  {r['recipe']}")
    write_json(RESULTS / "gated_pixelcnn_recipe.json",
               {"recipes": rows, "steps": args.steps, "batch_size": 16, "jobs": args.jobs,
                "test_images": 1000, "command": command(), "machine": machine()})


if __name__ == "__main__":
    main()
