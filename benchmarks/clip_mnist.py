"""CLIP on mnist-captions: zero-shot accuracy on the MNIST test set, text -> image retrieval
on held-out captions, and attribute accuracy per attribute.

    OPENBLAS_NUM_THREADS=1 nice python benchmarks/clip_mnist.py --steps 1100

Trains ``clip`` with refgen's loop (symmetric InfoNCE, Adam, cosine decay), then on the
10,000 test images:

  zero_shot_accuracy   argmax_c u . w_c with w_c the prompt ensemble of CLASS_PROMPTS
                       (and each prompt alone, to show what the ensemble adds)
  text -> image R@1    each distinct caption (its digit and the attribute levels it names)
                       retrieves the most similar test image; a hit when that image has the
                       caption's digit and every level the caption names (captions describe
                       many images, so "its own image" is any image the caption is true of).
                       For the held-out templates, the held-out (digit, thickness, slant)
                       combinations, and one training template for comparison
  attribute_accuracy   per attribute: the image's own caption with that attribute's level
                       set to each of its 3 values; the most similar must be the measured
                       level (chance 1/3)
  clip_score           mean CLIP score of matched (image, caption) pairs and of shuffled ones

Writes benchmarks/results/clip_mnist.json. ``--smoke``: a few steps on 64 images.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SMOKE, add_smoke, command, load, machine, read_log, run_dir, smoke, write_result  # noqa: E402

import numpy as np  # noqa: E402

from refgen import backend  # noqa: E402
from refgen.autograd import no_grad  # noqa: E402
from refgen.data import captions as cap  # noqa: E402
from refgen.models import create  # noqa: E402
from refgen.train import train  # noqa: E402


def embed(fn, arrays, chunk=1000):
    """Unit embeddings (N, D) as NumPy of host ``arrays``, ``chunk`` rows at a time."""
    with no_grad():
        return np.concatenate([backend.to_numpy(fn(backend.asarray(arrays[i:i + chunk])).data)
                               for i in range(0, len(arrays), chunk)])


def zero_shot(model, u, tok):
    """Accuracy of the prompt ensemble and of each prompt alone, as (ensemble, {prompt: acc}),
    plus the predictions of the ensemble."""
    ids = np.stack([tok.encode_batch([cap.caption_text(p, d, [0, 0, 0, 0]) for p in cap.CLASS_PROMPTS])
                    for d in range(10)])  # (10, P, T)
    v = embed(model.encode_text, ids.reshape(-1, ids.shape[-1])).reshape(10, len(cap.CLASS_PROMPTS), -1)
    w = v.mean(axis=1)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    single = {p: (u @ v[:, k].T).argmax(axis=1) for k, p in enumerate(cap.CLASS_PROMPTS)}
    return (u @ w.T).argmax(axis=1), single


def named(template):
    """Indices (into ATTRIBUTES) of the attributes a template names."""
    return [k for k, a in enumerate(cap.ATTRIBUTES) if "{" + a + "}" in template]


def r_at_1(model, u, labels, lev, template, tok, rows=None):
    """Text -> image R@1 of the distinct captions ``template`` gives the images ``rows``."""
    rows = np.arange(len(labels)) if rows is None else rows
    keys = np.concatenate([labels[rows, None], lev[rows][:, named(template)]], axis=1)
    keys = np.unique(keys, axis=0)  # one query per distinct caption
    full = np.zeros((len(keys), 4), dtype=np.int64)
    full[:, named(template)] = keys[:, 1:]
    q = embed(model.encode_text, cap.caption_ids(template, keys[:, 0], full, tok))
    top = (q @ u.T).argmax(axis=1)  # (Q,)
    hit = (labels[top] == keys[:, 0]) & (lev[top][:, named(template)] == keys[:, 1:]).all(axis=1)
    return float(hit.mean()), int(len(keys))


ATTR_TEMPLATE = {"thickness": cap.TEMPLATES[0], "slant": cap.TEMPLATES[0],
                 "size": cap.TEMPLATES[1], "position": cap.TEMPLATES[2]}


def attribute_accuracy(model, u, labels, lev, tok):
    out = {}
    for k, a in enumerate(cap.ATTRIBUTES):
        sims = []
        for level in range(3):
            alt = lev.copy()
            alt[:, k] = level
            v = embed(model.encode_text, cap.caption_ids(ATTR_TEMPLATE[a], labels, alt, tok))
            sims.append((u * v).sum(axis=1))
        out[a] = float(np.mean(np.argmax(np.stack(sims, axis=1), axis=1) == lev[:, k]))
    return out


def main():
    p = add_smoke(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--steps", type=int, default=1100)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="run directory (default /tmp/refgen_clip_mnist)")
    p.add_argument("--tag", default="clip_mnist")
    args = p.parse_args()
    steps = smoke(args.steps, 3)
    batch = smoke(args.batch_size, 16)
    train_ds, test_ds = load("mnist-captions", "train"), load("mnist-captions", "test")
    model = create("clip", data_shape=train_ds.shape, vocab_size=len(train_ds.vocab), seed=args.seed)
    out = run_dir(args.tag, args.out)
    t0, c0 = time.perf_counter(), time.process_time()
    train(model, train_ds, steps=steps, batch_size=batch, lr=args.lr, seed=args.seed, out_dir=out,
          schedule="cosine", warmup=smoke(100, 1), grad_clip=1.0, log_every=smoke(50, 1), samples=False,
          progress=not SMOKE)
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    model.eval()
    tok = cap.Tokenizer()
    x, labels = test_ds.x, test_ds.y
    lev = test_ds.captions.lev[:len(x)]
    u = embed(model.encode_image, x)
    pred, single = zero_shot(model, u, tok)
    held = {f"heldout_template: {t}": r_at_1(model, u, labels, lev, t, tok) for t in cap.HELDOUT_TEMPLATES}
    combo_rows = np.flatnonzero(cap._in_heldout_combo(labels, lev))
    held["heldout_combos: " + cap.TEMPLATES[0]] = r_at_1(model, u, labels, lev, cap.TEMPLATES[0], tok,
                                                         rows=combo_rows)
    seen = {f"training_template: {t}": r_at_1(model, u, labels, lev, t, tok) for t in cap.TEMPLATES[:3]}
    matched = embed(model.encode_text, test_ds.batch(np.arange(len(x)), 0)[1])
    cos = (u * matched).sum(axis=1)
    shuffled = (u * np.roll(matched, 1, axis=0)).sum(axis=1)
    held_r1 = float(np.mean([r for r, _ in held.values()]))
    result = {
        "command": command(), "machine": machine(), "steps": steps, "batch_size": batch,
        "lr": args.lr, "train_wall_s": round(train_s, 1), "train_cpu_s": round(train_cpu, 1),
        "logit_scale": float(backend.to_numpy(model.logit_scale().data)),
        "loss_curve": [(r["step"], round(r["loss"], 4)) for r in read_log(out, "loss")],
        "n_test": int(len(x)),
        "zero_shot_accuracy": float(np.mean(pred == labels)),
        "zero_shot_accuracy_single_prompt": {k: float(np.mean(v == labels)) for k, v in single.items()},
        "text_to_image_r1_heldout": {k: {"r1": r, "queries": n} for k, (r, n) in held.items()},
        "text_to_image_r1_heldout_mean": held_r1,
        "text_to_image_r1_training_templates": {k: {"r1": r, "queries": n} for k, (r, n) in seen.items()},
        "attribute_accuracy": attribute_accuracy(model, u, labels, lev, tok),
        "clip_score_matched": float(np.mean(2.5 * np.maximum(cos, 0))),
        "clip_score_shuffled": float(np.mean(2.5 * np.maximum(shuffled, 0))),
        "targets": {"zero_shot_accuracy": 0.97, "text_to_image_r1_heldout": 0.9},
    }
    result["met"] = {"zero_shot_accuracy": result["zero_shot_accuracy"] >= 0.97,
                     "text_to_image_r1_heldout": held_r1 >= 0.9}
    write_result(args.tag, result)
    print({k: result[k] for k in ("zero_shot_accuracy", "text_to_image_r1_heldout_mean",
                                  "attribute_accuracy", "train_wall_s")})


if __name__ == "__main__":
    main()
