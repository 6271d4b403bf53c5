"""VAE / IWAE / beta-VAE / conditional VAE on binarized MNIST: test ELBO and IWAE NLL in nats
beside Burda et al. (2016), with samples, reconstructions and, for a 2-d latent, the grid.

The runs behind docs/vae.md (each result JSON keeps its command; these are some of them):

    python benchmarks/vae_mnist.py --steps 152000 --batch-size 200 --lr 2e-3 --hidden 200,200 \
        --activation tanh --latent-dim 50 --eval-k 5000 --tag vae_mnist_b200_tanh_152k
    python benchmarks/vae_mnist.py --model iwae --k 5 --steps 75000 --lr 2e-3 --tag vae_mnist_iwae5
    python benchmarks/vae_mnist.py --latent-dim 2 --steps 6000 --eval-k 100 --tag vae_mnist_z2
    python benchmarks/vae_mnist.py --model cvae --steps 12000 --eval-k 100 --tag vae_mnist_cvae

The first is the VAE that meets the 88-nat target; the defaults (two hidden layers of 512
ReLU units, latent 32, batch 100) are the model of vae_mnist.json, which the IWAE, 2-d and
conditional runs use. --resume with the same --steps only evaluates a finished run, so
training and the (slow) IWAE evaluation can be two runs. Trains with refgen.train.train on
'mnist-binary' (dynamic binarization) and scores the one fixed binarization of the 10,000
test images: the ELBO (one sample of z per image) and the IWAE bound L_k (k = --eval-k, 1000
by default), the estimate of log p(x) the papers report. Writes benchmarks/results/<tag>.json,
<tag>_samples.png and <tag>_recon.png (test images above their reconstructions); with
--latent-dim 2 also <tag>_grid.png (the decoder's mean over a grid of z at the Gaussian
quantiles 0.05..0.95); for cvae <tag>_cond.png (one row per class) and cond_accuracy when
the project's MNIST classifier is present. ``--smoke``: 3 steps of a small model on 64
images, the IWAE bound with k = 2 on 16 of them.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, SMOKE, add_smoke, command, load, machine, read_log, rel,  # noqa: E402
                    run_dir, smoke, write_result)

import numpy as np  # noqa: E402

from refgen import backend, io, models  # noqa: E402
from refgen.autograd import Tensor, no_grad  # noqa: E402
from refgen.train import train  # noqa: E402

PAPERS = {  # test NLL, nats (IWAE bound with k = 5000), Burda et al. 2016, one stochastic layer
    "VAE, 1 stochastic layer, k=1 (Burda et al. 2016)": 86.76,
    "IWAE, 1 stochastic layer, k=5 (Burda et al. 2016)": 85.54,
    "IWAE, 1 stochastic layer, k=50 (Burda et al. 2016)": 84.78,
}


def iwae_test(model, x, k, y=None, batch=100, seed=0):
    """The IWAE bound L_k of each row of x (float64 NumPy), ``batch`` images at a time."""
    out, rng = [], backend.default_rng(seed)
    with no_grad():
        for i in range(0, len(x), batch):
            yb = None if y is None else backend.asarray(y[i:i + batch])
            out.append(backend.to_numpy(model.iwae(Tensor(backend.asarray(x[i:i + batch])), k, yb, rng=rng).data))
            if (i // batch) % 10 == 9:
                print(f"IWAE k={k}: {i + batch}/{len(x)} test images", file=sys.stderr, flush=True)
    return np.concatenate(out).astype(np.float64)


def test_elbo_terms(model, x, y=None, batch=500, seed=0):
    """Mean ELBO, reconstruction term and KL (rate) over the test set, nats."""
    rec, kl, rng = [], [], backend.default_rng(seed)
    with no_grad():
        for i in range(0, len(x), batch):
            yb = None if y is None else backend.asarray(y[i:i + batch])
            r, k = model.elbo_terms(Tensor(backend.asarray(x[i:i + batch])), yb, rng=rng)
            rec.append(backend.to_numpy(r.data))
            kl.append(backend.to_numpy(k.data))
    rec, kl = np.concatenate(rec).astype(np.float64), np.concatenate(kl).astype(np.float64)
    return {"elbo_nats": float((rec - kl).mean()), "rec_nats": float(rec.mean()),
            "kl_nats": float(kl.mean())}


def latent_grid(model, path, n=15):
    """Decoder means over an n x n grid of z in the 2-d latent (Gaussian quantiles)."""
    from statistics import NormalDist
    q = np.array([NormalDist().inv_cdf(p) for p in np.linspace(0.05, 0.95, n)])
    zz = np.stack(np.meshgrid(q, q[::-1]), -1).reshape(-1, 2).astype(np.float32)  # row-major, z2 up
    imgs = backend.to_numpy(model.decode_latents(backend.asarray(zz)))
    io.write_png(path, io.image_grid(imgs, nrow=n))


def recon_panel(model, x, path, y=None, n=16):
    xb = backend.asarray(x[:n])
    r = (model.reconstruct(Tensor(xb)) if y is None
         else model.reconstruct(Tensor(xb), backend.asarray(y[:n])))
    r = backend.to_numpy(r)
    io.write_png(path, io.image_grid(np.concatenate([x[:n], r]), nrow=n))


def classifier_available() -> bool:
    try:
        from refgen.metrics import load_classifier
        load_classifier()
        return True
    except Exception as e:  # missing or unverified weights: say so in the result
        print(f"MNIST classifier unavailable: {e}".splitlines()[0], file=sys.stderr)
        return False


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vae", choices=["vae", "iwae", "beta-vae", "cvae"])
    ap.add_argument("--steps", type=int, default=24000)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--schedule", default="cosine", choices=["constant", "cosine"])
    ap.add_argument("--latent-dim", type=int, default=32)
    ap.add_argument("--hidden", default="512,512")
    ap.add_argument("--arch", default="mlp", choices=["mlp", "conv"])
    ap.add_argument("--activation", default="relu")
    ap.add_argument("--k", type=int, default=5, help="samples per example for --model iwae")
    ap.add_argument("--beta", type=float, default=4.0, help="KL weight for --model beta-vae")
    ap.add_argument("--eval-k", type=int, default=1000, help="k of the test IWAE bound (0: skip)")
    ap.add_argument("--eval-n", type=int, default=10000, help="test images for the IWAE bound")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default=None, help="results name (default vae_mnist[_MODEL])")
    ap.add_argument("--out", default=None, help="run directory (default /tmp/refgen_<tag>)")
    ap.add_argument("--resume", action="store_true",
                    help="continue the run in --out up to --steps (with the same --steps: "
                         "evaluate the finished run without training)")
    args = add_smoke(ap).parse_args(argv)
    if SMOKE:
        args.steps, args.batch_size, args.hidden, args.eval_k, args.eval_n = 3, 16, "32", 2, 16
    return args


def main(argv=None):
    args = parse(argv)
    tag = args.tag or ("vae_mnist" if args.model == "vae" else f"vae_mnist_{args.model}")
    out = run_dir(tag, args.out)
    t0 = time.perf_counter()
    train_ds, test_ds = load("mnist-binary", "train"), load("mnist-binary", "test")
    model, cfg = build(args, train_ds)
    y_test = test_ds.y if args.model == "cvae" else None
    cpu0 = time.process_time()
    metrics = fit(args, model, train_ds, test_ds, y_test, out)
    train_wall, train_cpu = metrics["wall_s"], time.process_time() - cpu0
    model.eval()
    result = {
        "model": args.model, "data": "mnist-binary", "command": command(),
        "train_command": train_command(tag, args.resume), "machine": machine(),
        "config": dict(cfg, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                       schedule=args.schedule, seed=args.seed, params=model.num_parameters()),
        "train_wall_s": train_wall, "train_cpu_s": round(train_cpu, 1),
        "test_elbo_nats": metrics["elbo_nats"], "test_rec_nats": metrics["rec_nats"],
        "test_kl_nats": metrics["kl_nats"],
        "log": read_log(out, "elbo_nats"),
        "papers_test_nll_nats": PAPERS,
    }
    if args.eval_k > 0:
        result.update(iwae_nll(args, model, test_ds, y_test))
    result.update(pictures(args, model, test_ds, y_test, tag))
    result["total_wall_s"] = round(time.perf_counter() - t0, 1)
    write_result(tag, result)
    print(json.dumps({k: result.get(k) for k in ("test_elbo_nats", "test_nll_nats",
                                                 "train_wall_s", "total_wall_s")}))


def build(args, train_ds):
    cfg = dict(latent_dim=args.latent_dim, hidden=args.hidden, arch=args.arch,
               activation=args.activation)
    if args.model == "iwae":
        cfg["k"] = args.k
    if args.model == "beta-vae":
        cfg["beta"] = args.beta
    if args.model == "cvae":
        cfg["num_classes"] = 10
    return models.create(args.model, data_shape=train_ds.shape, seed=args.seed, **cfg), cfg


def fit(args, model, train_ds, test_ds, y_test, out):
    def evaluate(m, ds):
        return test_elbo_terms(m, ds.x, y_test)

    return train(model, train_ds, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                 seed=args.seed, out_dir=out, schedule=args.schedule, eval_fn=evaluate,
                 test_dataset=test_ds, eval_every=max(args.steps // 10, 1),
                 log_every=max(args.steps // 100, 1), ckpt_every=max(args.steps // 20, 1),
                 samples=False, resume=args.resume)


def train_command(tag, resume):
    """This command, or when it resumes a finished run, the command that did the training."""
    previous = RESULTS / f"{tag}.json"
    if resume and previous.is_file():
        old = json.loads(previous.read_text())
        return old.get("train_command", old.get("command", command()))
    return command()


def iwae_nll(args, model, test_ds, y_test):
    """The test NLL as the IWAE bound with k = --eval-k on the first --eval-n test images."""
    n = min(args.eval_n, len(test_ds.x))
    t = time.perf_counter()
    # cvae: log p(x | y), the labels are known at test time
    lk = iwae_test(model, test_ds.x[:n], args.eval_k, None if y_test is None else y_test[:n])
    out = {"test_nll_nats": float(-lk.mean()),
           "test_nll_stderr": float(lk.std(ddof=1) / math.sqrt(len(lk))),
           "iwae_k": args.eval_k, "iwae_n_test": int(n),
           "iwae_wall_s": round(time.perf_counter() - t, 1)}
    if args.model == "cvae":
        out["test_nll_is_conditional"] = "-log p(x | y), labels given"
    return out


def pictures(args, model, test_ds, y_test, tag):
    """Samples, reconstructions, the 2-d latent grid, and for cvae one row per class and the
    classifier's agreement with the labels asked for."""
    out = {}
    x = backend.to_numpy(model.sample(64, rng=backend.default_rng(1234), cond=(
        backend.asarray(np.arange(64) % 10) if args.model == "cvae" else None)))
    io.write_png(RESULTS / f"{tag}_samples.png", io.image_grid(x))
    recon_panel(model, test_ds.x, RESULTS / f"{tag}_recon.png", y_test)
    out["pngs"] = [rel(RESULTS / f"{tag}_samples.png"), rel(RESULTS / f"{tag}_recon.png")]
    if args.latent_dim == 2:
        latent_grid(model, RESULTS / f"{tag}_grid.png")
        out["pngs"].append(rel(RESULTS / f"{tag}_grid.png"))
    if args.model != "cvae":
        return out
    labels = np.repeat(np.arange(10), 10)
    xs = backend.to_numpy(model.sample(100, cond=backend.asarray(labels),
                                       rng=backend.default_rng(7)))
    io.write_png(RESULTS / f"{tag}_cond.png", io.image_grid(xs, nrow=10))
    out["pngs"].append(rel(RESULTS / f"{tag}_cond.png"))
    if classifier_available():
        from refgen.metrics import cond_accuracy
        n, chunk = smoke(10000, 20), smoke(1000, 10)
        lab = np.arange(n) % 10
        s = np.concatenate([backend.to_numpy(model.sample(
            chunk, cond=backend.asarray(lab[i:i + chunk]), rng=backend.default_rng(100 + i)))
            for i in range(0, n, chunk)])
        out["cond_accuracy"] = cond_accuracy(2.0 * s - 1.0, lab)
    else:
        out["cond_accuracy"] = None
        out["cond_accuracy_note"] = "MNIST classifier weights not available in this checkout"
    return out


if __name__ == "__main__":
    main()
