"""What the text-to-image benchmarks on mnist-captions-14 share (glide_mnist.py, imagen_mnist.py,
unclip_mnist.py, t2i_table_mnist.py): the prompts, the attribute measure, the image scores,
the frozen CLIP, training in resumable chunks, and the evaluation's fixed ingredients.

The prompts are the captions of the first N test images, training template i mod 8 for image
i. Attribute agreement, per attribute, over the captions that name it: the level measured on
the generated image (refgen.data.captions measurements on the image upsampled 2x, nearest)
equals the level the caption names, with the cut points the tertiles of the same
measurement of the training images at 14x14 (chance is about 1/3).
"""
from __future__ import annotations

import json
import time

import numpy as np

from common import SMOKE, command, load, smoke, train_in_chunks

from refgen import backend, io
from refgen.autograd import no_grad
from refgen.data import captions as cap
from refgen.metrics import cond_accuracy, kid, mnist_features
from refgen.metrics.fid import reference_stats
from refgen.metrics.frechet import frechet_distance, gaussian_stats
from refgen.models import create
from refgen.train import CHECKPOINT, load_weights

DATA = "mnist-captions-14"


def up2(x):
    """(N, 1, 14, 14) -> (N, 1, 28, 28), nearest: the measurements' own resolution."""
    return np.repeat(np.repeat(x, 2, axis=-2), 2, axis=-1)


def named(template):
    """Indices (into ATTRIBUTES) of the attributes a template names."""
    return [k for k, a in enumerate(cap.ATTRIBUTES) if "{" + a + "}" in template]


def prompts(ds, n):
    """Caption ids (n, L) of the first n images, template i mod 8 for image i (the first
    allowed one after it where the combination is held out), and the template of each."""
    k = np.arange(n) % len(cap.TEMPLATES)
    allowed = ds.captions.allowed[:n]
    k = np.where(allowed[np.arange(n), k], k, allowed.argmax(axis=1))
    return ds.captions.ids[np.arange(n), k], k


def agreement(images, lev_named, templates, cuts, upscale=True):
    """{attribute: fraction of the captions naming it whose level the images show}; 14x14
    images are measured upsampled 2x (``upscale``), 28x28 ones as they are."""
    got = cap.levels(cap.measure(up2(images) if upscale else images), cuts)   # (n, 4)
    out = {}
    for a_k, a in enumerate(cap.ATTRIBUTES):
        rows = np.array([a_k in named(cap.TEMPLATES[t]) for t in templates])
        if rows.any():
            out[a] = float(np.mean(got[rows, a_k] == lev_named[rows, a_k]))
    return out


def chunks(f, n, size=100):
    """f(slice) for consecutive slices of range(n), concatenated (as NumPy)."""
    with no_grad():
        return np.concatenate([backend.to_numpy(f(slice(i, min(n, i + size)))) for i in range(0, n, size)])


def image_scores(x, labels, ref_stats, f_ref):
    """cond_accuracy, FID and KID of images x (N, 1, 14, 14) in [-1, 1]."""
    feats = mnist_features(x)
    k, k_se = kid(feats, f_ref, rng=0)
    return {"cond_accuracy": cond_accuracy(x, labels),
            "fid_mnist": frechet_distance(*gaussian_stats(feats), *ref_stats),
            "kid_mnist": k, "kid_mnist_se": k_se, "n": int(len(x))}


def settings_from(defaults: dict, sets, smoke_settings: dict) -> dict:
    """The model options: defaults, then each --set key=value (numbers and lists as JSON), then
    the smoke mode's tiny sizes."""
    out = dict(defaults)
    out.update({k: json.loads(v) if v[:1].isdigit() or v[:1] in "[-" else v
                for k, v in (s.split("=", 1) for s in sets)})
    if SMOKE:
        out.update(smoke_settings)
    return out


def frozen_clip(args, vocab: int):
    """The CLIP of dalle_mnist.py's run /tmp/refgen_<args.clip_run> (trained there to
    args.clip_steps at batch args.clip_batch when it holds none), and its training record."""
    from dalle_mnist import fit
    clip = create("clip", data_shape=(1, 28, 28), vocab_size=vocab, seed=args.seed)
    record = fit(clip, load("mnist-captions", "train"), args.clip_run, smoke(args.clip_steps, 2),
                 smoke(args.clip_batch, 8), 2e-3, args.seed, schedule="cosine",
                 warmup=smoke(50, 1), grad_clip=1.0)
    return clip, record


def add_run_args(p, tag: str):
    """The options every one of these benchmarks takes: training (--steps, --budget-min,
    --chunk, --batch-size, --lr, --seed, --ema), --set, --out, --tag and --eval-only."""
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--budget-min", type=float, default=30.0)
    p.add_argument("--chunk", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the weights")
    p.add_argument("--set", action="append", default=[], help="model option key=value")
    p.add_argument("--out", help="run directory (default /tmp/refgen_<tag>)")
    p.add_argument("--tag", default=tag)
    p.add_argument("--eval-only", action="store_true", help="evaluate the checkpoint in --out (no training)")


def add_clip_args(p):
    p.add_argument("--clip-run", default="dalle_mnist_w128_clip",
                   help="the CLIP's run directory /tmp/refgen_<clip-run> (dalle_mnist.py's)")
    p.add_argument("--clip-steps", type=int, default=1100)
    p.add_argument("--clip-batch", type=int, default=256)


def train_or_load(model, train_ds, out, args, use_ema=True):
    """Unless args.eval_only: refgen's loop in resumable chunks of args.chunk steps until
    args.steps or args.budget_min (batch, lr, seed, EMA from args; 200 warm-up steps,
    gradients clipped at 1). Then the checkpoint's weights (its EMA under use_ema) in eval
    mode (the training command is kept in out/command.txt, see train_command). Returns
    (checkpoint metadata, whether the EMA was loaded)."""
    if not args.eval_only:
        (out / "command.txt").parent.mkdir(parents=True, exist_ok=True)
        (out / "command.txt").write_text(command() + "\n")
        train_in_chunks(model, train_ds, out, steps=smoke(args.steps, 4), budget_min=args.budget_min,
                        chunk=smoke(args.chunk, 2), batch_size=smoke(args.batch_size, 8), lr=args.lr,
                        seed=args.seed, ema_decay=args.ema, warmup=smoke(200, 1), grad_clip=1.0,
                        log_every=smoke(25, 1), evaluate_at_end=False)
    arrays, meta = io.load_checkpoint(out / CHECKPOINT)
    used_ema = load_weights(model, arrays, use_ema=use_ema)
    model.eval()
    return meta, used_ema


def train_command(out):
    """The command that trained the run in ``out`` (its command.txt), or None."""
    path = out / "command.txt"
    return path.read_text().strip() if path.exists() else None


def eval_context(train_ds, test_ds, n: int) -> dict:
    """The first n test captions (ids, templates), their labels and attribute levels, the
    14x14 cut points, and the mnist-14 test features and statistics FID and KID compare with."""
    ids, templates = prompts(test_ds, n)
    f_ref = mnist_features(load("mnist-14", "test").x)
    return {"ids": ids, "templates": templates, "labels": test_ds.y[:n], "lev": test_ds.captions.lev[:n],
            "cuts": cap.thresholds(cap.measure(up2(train_ds.x[:smoke(10_000, 64)]))),
            "f_ref": f_ref, "ref_stats": gaussian_stats(f_ref) if SMOKE else reference_stats("test", 14),
            "t0": time.perf_counter()}
