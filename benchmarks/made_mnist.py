"""MADE on binarized MNIST: test NLL in nats beside the papers, a sample grid, the wall time.

    python benchmarks/made_mnist.py --steps 28000 --hidden 2000 --tag made_mnist_h2000
    python benchmarks/made_mnist.py --steps 28000 --hidden 2000 --num-masks 8 --tag made_mnist_h2000_masks8
    python benchmarks/made_mnist.py --steps 28000 --hidden 2000 --order reverse --tag made_mnist_h2000_reverse
    python benchmarks/made_mnist.py --ensemble made_mnist_h2000,made_mnist_h2000_reverse \
        --tag made_mnist_h2000_ensemble2

Trains with refgen.train.train on 'mnist-binary' (dynamic binarization) and scores the
one fixed binarization of the 10,000 test images. With --num-masks > 1 the model is trained
order-agnostically and both numbers are reported: mask 0 alone and the ensemble
(log-mean-exp over the masks). --ensemble trains nothing: it loads the finished runs of
the tags it names (their results JSON for the settings, /tmp/refgen_<tag> or --member-dirs
for the weights) and scores their mixture, log p(x) = logsumexp_j log p_j(x) - log J.
Writes benchmarks/results/<tag>.json and <tag>_samples.png.

``--smoke`` trains 3 steps of a small MADE on 64 images and scores the mixture of that one run.
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

from refgen import backend  # noqa: E402


# ----------------------------------------------------------------------------- MADE
PAPERS = {
    "MADE 1 hidden layer, 1 mask (Germain et al. 2015, fixed binarization)": 88.04,
    "MADE, dynamic binarization (pytorch-generative)": 84.87,
    "PixelCNN (van den Oord et al. 2016)": 81.30,
}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=28000)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--hidden", default="2000", help="hidden sizes, e.g. 2000 or 1000,1000")
    ap.add_argument("--num-masks", type=int, default=1)
    ap.add_argument("--natural-order", action="store_true",
                    help="every mask in the natural (raster) order, only the hidden degrees differ")
    ap.add_argument("--order", default="natural", choices=["natural", "reverse", "random"],
                    help="ordering of mask set 0 (the only one when --num-masks 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default=None, help="results name (default made_mnist[_masksM])")
    ap.add_argument("--out", default=None, help="run directory (default /tmp/refgen_<tag>)")
    ap.add_argument("--ensemble", default=None,
                    help="comma list of finished runs' tags: score their mixture, train nothing")
    ap.add_argument("--member-dirs", default=None,
                    help="comma list of their run directories (default /tmp/refgen_<tag> each)")
    args = add_smoke(ap).parse_args(argv)
    if SMOKE:
        args.steps, args.hidden, args.batch_size = 3, "32", 16
    return args


def main(argv=None):
    args = parse(argv)
    if args.ensemble:
        return ensemble(args)
    tag = args.tag or ("made_mnist" if args.num_masks == 1 else f"made_mnist_masks{args.num_masks}")
    out = run_dir(tag, args.out)
    t0 = time.perf_counter()
    train_ds, test_ds = load("mnist-binary", "train"), load("mnist-binary", "test")
    model, metrics = fit(args, train_ds, test_ds, out)
    png = RESULTS / f"{tag}_samples.png"
    sample_s = sample_grid(model, png, n=smoke(64, 4))
    result = {
        "model": "made", "data": "mnist-binary", "command": command(), "machine": machine(),
        "config": {"hidden": args.hidden, "num_masks": args.num_masks,
                   "random_order": not args.natural_order, "order": args.order,
                   "steps": args.steps,
                   "batch_size": args.batch_size, "lr": args.lr, "schedule": "cosine",
                   "seed": args.seed, "params": model.num_parameters()},
        "test_nll_nats": metrics["test_nll_nats"],
        "test_nll_nats_mask0": metrics.get("test_nll_nats_mask0"),
        "train_wall_s": metrics["wall_s"], "total_wall_s": round(time.perf_counter() - t0, 1),
        "sample_64_s": round(sample_s, 2), "samples_png": rel(png),
        "log": read_log(out, "test_nll_nats"),
        "papers_nats": PAPERS,
    }
    write_result(tag, result)
    print(json.dumps({k: result[k] for k in ("test_nll_nats", "test_nll_nats_mask0",
                                             "train_wall_s")}))
    if SMOKE and args.num_masks == 1:  # the mixture path too, of this one run
        args.ensemble, args.member_dirs, args.tag = tag, str(out), None
        ensemble(args)


def fit(args, train_ds, test_ds, out):
    """Build MADE and train it, scoring the test set ten times along the way."""
    from refgen import models
    from refgen.train import train
    model = models.create("made", data_shape=train_ds.shape, seed=args.seed, hidden=args.hidden,
                          num_masks=args.num_masks, random_order=not args.natural_order,
                          order=args.order)

    def evaluate(m, ds):
        if m.net.num_masks == 1:
            return {"test_nll_nats": test_nll(m.log_prob, ds.x)}
        return {"test_nll_nats": test_nll(m.log_prob, ds.x),
                "test_nll_nats_mask0": test_nll(lambda x: m.log_prob_mask(x, 0), ds.x)}

    metrics = train(model, train_ds, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                    seed=args.seed, out_dir=out, schedule="cosine", eval_fn=evaluate,
                    test_dataset=test_ds, eval_every=max(args.steps // 10, 1),
                    log_every=max(args.steps // 100, 1), ckpt_every=max(args.steps // 10, 1),
                    samples=False)
    return model, metrics


def ensemble(args):
    """Score the uniform mixture of finished single-mask runs on the binarized test set."""
    from refgen.models.autoregressive import ensemble_log_prob, ensemble_sample

    tags = args.ensemble.split(",")
    dirs = args.member_dirs.split(",") if args.member_dirs else [str(run_dir(t)) for t in tags]
    if len(dirs) != len(tags):
        raise SystemExit(f"--member-dirs names {len(dirs)} directories for {len(tags)} tags")
    t0 = time.perf_counter()
    test_ds = load("mnist-binary", "test")
    members, member_info = load_members(tags, dirs, test_ds)
    nll = test_nll(lambda x: ensemble_log_prob(members, x), test_ds.x)

    class _Mixture:  # what sample_grid needs: eval/train switches and sample(n, rng)
        def eval(self):
            pass

        def train(self):
            pass

        def sample(self, n, rng):
            return ensemble_sample(members, n, rng=rng)

    tag = args.tag or "made_mnist_ensemble"
    png = RESULTS / f"{tag}_samples.png"
    sample_s = sample_grid(_Mixture(), png, n=smoke(64, 4))
    result = {
        "model": "made (ensemble of separately trained orderings)", "data": "mnist-binary",
        "command": command(), "machine": machine(), "members": member_info,
        "test_nll_nats": nll,
        "best_member_nll_nats": min(i["test_nll_nats"] for i in member_info),
        "train_wall_s_total": sum(i["train_wall_s"] for i in member_info),
        "eval_wall_s": round(time.perf_counter() - t0, 1),
        "sample_64_s": round(sample_s, 2), "samples_png": rel(png),
        "papers_nats": PAPERS,
    }
    write_result(tag, result)
    print(json.dumps({k: result[k] for k in ("test_nll_nats", "best_member_nll_nats")}))


def load_members(tags, dirs, test_ds):
    """The finished single-mask runs (weights from their directories, settings from their
    result JSONs), each scored alone."""
    from refgen import io as rio, models
    from refgen.train import load_run_state
    members, member_info = [], []
    for tag, d in zip(tags, dirs):
        res = RESULTS / f"{tag}.json"
        ckpt = Path(d) / "checkpoint.npz"
        if not res.is_file() or not ckpt.is_file():
            raise SystemExit(f"ensemble member {tag!r}: need {res} and {ckpt}")
        cfg = json.loads(res.read_text())["config"]
        if cfg["num_masks"] != 1:
            raise SystemExit(f"ensemble member {tag!r} has {cfg['num_masks']} masks; "
                             f"give single-mask runs")
        m = models.create("made", data_shape=test_ds.shape, seed=cfg["seed"],
                          hidden=cfg["hidden"], order=cfg.get("order", "natural"))
        load_run_state(m, rio.load_checkpoint(ckpt)[0])
        m.eval()
        members.append(m)
        member_info.append({"tag": tag, "order": cfg.get("order", "natural"),
                            "seed": cfg["seed"], "train_wall_s": json.loads(
                                res.read_text())["train_wall_s"],
                            "test_nll_nats": test_nll(m.log_prob, test_ds.x),
                            "order_head": backend.to_numpy(m.net.orders[0][:5]).tolist()})
        print(f"{tag}: {member_info[-1]['test_nll_nats']:.3f} nats", flush=True)
    return members, member_info


if __name__ == "__main__":
    main()
