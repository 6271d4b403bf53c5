"""VQ-VAE on binarized MNIST: reconstruction error, codebook perplexity, the PixelCNN prior's
NLL of the test codes, prior samples and their FID.

    python benchmarks/vqvae_mnist.py --steps 3000 --prior-steps 2000
    python benchmarks/vqvae_mnist.py --steps 3000 --prior-steps 2000 --ema --tag vqvae_mnist_ema

Stage 1 trains the autoencoder, the codebook and (on the moving codes) the prior together,
one loss (refgen/models/vae/vqvae.py); stage 2 freezes the autoencoder and trains the prior
alone on the final codes (--prior-steps, 0 to skip). Test metrics, on the fixed binarization
of the 10,000 test images: rec_nats (-log p(x | z_q), Bernoulli, nats per image),
rec_mse (mean squared error of the decoder's mean per pixel), perplexity of the code
frequencies, prior_nll_nats (-log p(k) of the test code grids), and fid_mnist of
--fid-samples prior samples when the project's MNIST classifier is present. Writes
benchmarks/results/<tag>.json, <tag>_samples.png and <tag>_recon.png. ``--smoke``: 2 steps of
each stage for a small model on 64 images, FID of 20 samples.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, SMOKE, add_smoke, command, load, machine, rel,  # noqa: E402
                    run_dir, smoke, write_result)
from vae_mnist import classifier_available, recon_panel  # noqa: E402

import numpy as np  # noqa: E402

from refgen import backend, io, models  # noqa: E402
from refgen.autograd import Tensor, no_grad  # noqa: E402
from refgen.models.vae import perplexity  # noqa: E402


def test_metrics(model, x, batch=500):
    rec, mse, nll, codes = [], [], [], []
    with no_grad():
        for i in range(0, len(x), batch):
            xb = Tensor(backend.asarray(x[i:i + batch]))
            k = model.codes(xb)
            out = model.decode(model.lookup(k))
            rec.append(backend.to_numpy(-model.likelihood.log_prob(xb, out).data))
            mean = backend.to_numpy(model.likelihood.mean(out).data)
            mse.append(((mean - x[i:i + batch]) ** 2).mean(axis=(1, 2, 3)))
            nll.append(backend.to_numpy(-model.prior_log_prob(k).data))
            codes.append(backend.to_numpy(k))
    codes = np.concatenate(codes)
    return {"rec_nats": float(np.concatenate(rec).mean()), "rec_mse": float(np.concatenate(mse).mean()),
            "prior_nll_nats": float(np.concatenate(nll).mean()),
            "perplexity": perplexity(codes, model.num_codes),
            "codes_used": int(len(np.unique(codes)))}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--prior-steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--num-codes", type=int, default=32)
    ap.add_argument("--code-dim", type=int, default=16)
    ap.add_argument("--channels", default="32,64")
    ap.add_argument("--ema", action="store_true")
    ap.add_argument("--prior-ordinal", action="store_true",
                    help="the prior reads code j as the number 2j/(K-1)-1, not as a one-hot vector")
    ap.add_argument("--prior-channels", type=int, default=64)
    ap.add_argument("--prior-blocks", type=int, default=4)
    ap.add_argument("--fid-samples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="vqvae_mnist")
    ap.add_argument("--out", default=None, help="run directory (default /tmp/refgen_<tag>)")
    args = add_smoke(ap).parse_args(argv)
    if SMOKE:
        args.steps, args.prior_steps, args.batch_size, args.channels = 2, 2, 8, "8,8"
        args.num_codes, args.code_dim, args.prior_channels, args.prior_blocks = 8, 4, 8, 1
        args.fid_samples = 20
    return args


def main(argv=None):
    args = parse(argv)
    out = run_dir(args.tag, args.out)
    t0 = time.perf_counter()
    train_ds, test_ds = load("mnist-binary", "train"), load("mnist-binary", "test")
    cfg = dict(num_codes=args.num_codes, code_dim=args.code_dim, channels=args.channels,
               ema=args.ema, prior_channels=args.prior_channels, prior_blocks=args.prior_blocks,
               prior_one_hot=not args.prior_ordinal)
    model = models.create("vqvae", data_shape=train_ds.shape, seed=args.seed, **cfg)
    wall = fit(args, model, train_ds, test_ds, out)
    model.eval()
    result = {"model": "vqvae", "data": "mnist-binary", "command": command(), "machine": machine(),
              "config": dict(cfg, steps=args.steps, prior_steps=args.prior_steps,
                             batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                             params=model.num_parameters()),
              "train_wall_s": wall}
    result.update({f"test_{k}": v for k, v in test_metrics(model, test_ds.x).items()})
    result.update(samples_and_fid(args, model, test_ds))
    result["total_wall_s"] = round(time.perf_counter() - t0, 1)
    write_result(args.tag, result)
    print(json.dumps({k: result.get(k) for k in ("test_rec_nats", "test_perplexity",
                                                 "test_prior_nll_nats", "fid_mnist",
                                                 "total_wall_s")}))


def fit(args, model, train_ds, test_ds, out, metrics=None):
    """Stage 1 (everything together), then stage 2 (the prior alone on frozen codes);
    returns the wall seconds of each. metrics(model, x): the evaluation (test_metrics)."""
    from refgen.train import train
    metrics = metrics or test_metrics
    common = dict(batch_size=args.batch_size, lr=args.lr, seed=args.seed, schedule="cosine",
                  test_dataset=test_ds, samples=False,
                  eval_fn=lambda m, ds: metrics(m, ds.x[:2000]))
    m1 = train(model, train_ds, steps=args.steps, out_dir=out / "stage1",
               eval_every=max(args.steps // 5, 1), log_every=max(args.steps // 50, 1),
               ckpt_every=max(args.steps // 10, 1), **common)
    wall = {"stage1_s": m1["wall_s"]}
    if args.prior_steps > 0:  # stage 2: the prior alone on the frozen autoencoder's codes
        model.train_autoencoder = False
        if hasattr(model, "train_prior"):  # vqvae2 may have left its priors out of stage 1
            model.train_prior = True
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("prior.")
        m2 = train(model, train_ds, steps=args.prior_steps, out_dir=out / "stage2",
                   eval_every=max(args.prior_steps // 5, 1), log_every=max(args.prior_steps // 50, 1),
                   ckpt_every=max(args.prior_steps // 10, 1), **common)
        wall["stage2_s"] = m2["wall_s"]
    return wall


def samples_and_fid(args, model, test_ds):
    result = {}
    t = time.perf_counter()
    chunk = smoke(500, 10)
    s = np.concatenate([backend.to_numpy(model.sample(chunk, rng=backend.default_rng(i)))
                        for i in range(0, args.fid_samples, chunk)])[:args.fid_samples]
    result["sample_wall_s"] = round(time.perf_counter() - t, 1)
    io.write_png(RESULTS / f"{args.tag}_samples.png", io.image_grid(s[:64]))
    recon_panel(model, test_ds.x, RESULTS / f"{args.tag}_recon.png")
    result["pngs"] = [rel(RESULTS / f"{args.tag}_samples.png"),
                      rel(RESULTS / f"{args.tag}_recon.png")]
    if classifier_available():
        from refgen.metrics import fid_mnist, kid, mnist_features
        result["fid_mnist"] = fid_mnist(2.0 * s - 1.0, reference=2.0 * test_ds.x - 1.0)
        result["fid_n_samples"] = int(len(s))
        result["kid_mnist"], result["kid_mnist_se"] = kid(mnist_features(2.0 * s - 1.0),
                                                          mnist_features(2.0 * test_ds.x - 1.0))
    else:
        result["fid_mnist"] = None
        result["fid_note"] = "MNIST classifier weights not available in this checkout"
    return result


if __name__ == "__main__":
    main()
