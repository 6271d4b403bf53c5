"""VQ-VAE-2 on binarized MNIST, against the one-level VQ-VAE at (almost) equal code bits:
reconstruction, codebook perplexity per level, the two priors' NLL of the test codes, prior
samples with their FID and KID.

    python benchmarks/vqvae2_mnist.py --steps 6000 --prior-steps 6000

Code bits: a 4 x 4 top grid of --top-codes codes and a 7 x 7 bottom grid of --num-codes codes,
16 log2(8) + 49 log2(16) = 244 bits by default, against 49 log2(32) = 245 bits for the 7 x 7
grid of 32 codes of benchmarks/results/vqvae_mnist.json. Stage 1 trains the autoencoder and
both codebooks alone (train_prior=False, the paper's first stage); stage 2 freezes it and
trains the priors p(k_t) p(k_b | k_t) on its codes (refgen/models/vae/vqvae2.py). Training,
sampling, FID/KID and the PNGs are those of benchmarks/vqvae_mnist.py. ``--smoke``: 2 steps of
each stage for a small model on 64 images, FID of 20 samples.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SMOKE, add_smoke, command, load, machine, run_dir, write_result  # noqa: E402
from vqvae_mnist import fit, samples_and_fid  # noqa: E402

import numpy as np  # noqa: E402

from refgen import backend, models  # noqa: E402
from refgen.autograd import Tensor, no_grad  # noqa: E402
from refgen.models.vae import perplexity  # noqa: E402


def test_metrics(model, x, batch=500):
    """rec_nats, rec_mse, prior_nll_nats (-log p(k_t) - log p(k_b | k_t)), perplexities."""
    rec, mse, nll, top, bottom = [], [], [], [], []
    with no_grad():
        for i in range(0, len(x), batch):
            xb = Tensor(backend.asarray(x[i:i + batch]))
            k_t, k_b = model.codes(xb)
            out = model.decode_codes(k_t, k_b)
            rec.append(backend.to_numpy(-model.likelihood.log_prob(xb, out).data))
            mean = backend.to_numpy(model.likelihood.mean(out).data)
            mse.append(((mean - x[i:i + batch]) ** 2).mean(axis=(1, 2, 3)))
            nll.append(backend.to_numpy(-model.prior_log_prob(k_t, k_b).data))
            top.append(backend.to_numpy(k_t))
            bottom.append(backend.to_numpy(k_b))
    top, bottom = np.concatenate(top), np.concatenate(bottom)
    return {"rec_nats": float(np.concatenate(rec).mean()), "rec_mse": float(np.concatenate(mse).mean()),
            "prior_nll_nats": float(np.concatenate(nll).mean()),
            "perplexity_top": perplexity(top, model.top_codes),
            "perplexity": perplexity(bottom, model.num_codes),
            "codes_used_top": int(len(np.unique(top))), "codes_used": int(len(np.unique(bottom)))}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--prior-steps", type=int, default=6000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--num-codes", type=int, default=16, help="bottom codebook size")
    ap.add_argument("--top-codes", type=int, default=8)
    ap.add_argument("--code-dim", type=int, default=16)
    ap.add_argument("--channels", default="32,64")
    ap.add_argument("--no-ema", action="store_true", help="codebook loss instead of (Q3)")
    ap.add_argument("--prior-channels", type=int, default=32)
    ap.add_argument("--prior-layers", type=int, default=5)
    ap.add_argument("--fid-samples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="vqvae2_mnist")
    ap.add_argument("--out", default=None, help="run directory (default /tmp/refgen_<tag>)")
    args = add_smoke(ap).parse_args(argv)
    if SMOKE:
        args.steps, args.prior_steps, args.batch_size, args.channels = 2, 2, 8, "8,8"
        args.num_codes, args.top_codes, args.code_dim = 4, 2, 4
        args.prior_channels, args.prior_layers, args.fid_samples = 8, 1, 20
    return args


def main(argv=None):
    args = parse(argv)
    out = run_dir(args.tag, args.out)
    t0 = time.perf_counter()
    train_ds, test_ds = load("mnist-binary", "train"), load("mnist-binary", "test")
    cfg = dict(num_codes=args.num_codes, top_codes=args.top_codes, code_dim=args.code_dim,
               top_code_dim=args.code_dim, channels=args.channels, ema=not args.no_ema,
               prior_channels=args.prior_channels, prior_layers=args.prior_layers)
    model = models.create("vqvae2", data_shape=train_ds.shape, seed=args.seed,
                          train_prior=args.prior_steps <= 0, **cfg)
    wall = fit(args, model, train_ds, test_ds, out, metrics=test_metrics)
    model.eval()
    cells_t, cells_b = math.prod(model.top_grid), math.prod(model.grid)
    bits = cells_t * math.log2(model.top_codes) + cells_b * math.log2(model.num_codes)
    result = {"model": "vqvae2", "data": "mnist-binary", "command": command(), "machine": machine(),
              "config": dict(cfg, steps=args.steps, prior_steps=args.prior_steps,
                             batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                             params=model.num_parameters(),
                             grids=f"top {model.top_grid} x {model.top_codes} codes, bottom "
                                   f"{model.grid} x {model.num_codes} codes"),
              "code_bits": round(bits, 2), "code_bits_one_level_vqvae": 49 * 5,
              "train_wall_s": wall}
    result.update({f"test_{k}": v for k, v in test_metrics(model, test_ds.x).items()})
    result.update(samples_and_fid(args, model, test_ds))
    result["total_wall_s"] = round(time.perf_counter() - t0, 1)
    write_result(args.tag, result)
    print(json.dumps({k: result.get(k) for k in ("code_bits", "test_rec_nats", "test_rec_mse",
                                                 "test_prior_nll_nats", "fid_mnist", "kid_mnist",
                                                 "total_wall_s")}))


if __name__ == "__main__":
    main()
