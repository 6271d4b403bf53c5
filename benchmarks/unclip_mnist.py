"""unCLIP on mnist-captions-14: the prior's embeddings, image variations and eq. (34)'s samples.

    OPENBLAS_NUM_THREADS=1 nice python benchmarks/unclip_mnist.py --budget-min 45 \\
        --out /tmp/refgen_unclip_mnist14 --n 2000

Builds on a trained CLIP: the one dalle_mnist.py trains in /tmp/refgen_<--clip-run>
(1,100 steps at batch 256 in its headline run; trained here to --clip-steps when that
directory holds none). Trains ``unclip`` on the 14x14 images (the diffusion prior over
z = sqrt(D) c^i(x) given the caption's text embedding, and the decoder U-Net given z, both at
once) with refgen's loop in resumable chunks until --steps or --budget-min, then on the first
N test images reports

  prior_cosine     cos(z_hat, c^i(x)) of the prior's embedding z_hat for x's caption (the
                   caption of glide_mnist.py's prompts: template i mod 8 for image i) with x's
                   own CLIP image embedding, per prior guidance weight; beside it the cosine
                   of a random other test image's embedding (what no caption information
                   gives), of the mean embedding of the test images of the caption's digit
                   (what the digit alone gives), and of the caption's text embedding (CLIP's
                   own alignment, a different space's scale); per number of candidates k
                   (--prior-candidates: k draws, the one with the highest z . v kept), and
                   beside them the cosine of another test image of the same digit (what a
                   draw from the digit's own embeddings gives)
  prior_cosine_ar  (--ar-prior-steps) the same for the autoregressive prior, trained alone on
                   the same frozen CLIP for that many steps
  variations       cond_accuracy of one decoder sample from each image's own embedding (the
                   class kept?) per decoder guidance weight, and the variations' FID / KID
  text_to_image    eq. (34): z ~ prior(caption), x ~ decoder(z); cond_accuracy, attribute
                   agreement (glide_mnist.py's measure), FID / KID against the mnist-14 test
                   set, per decoder guidance weight, all at the same N

and writes benchmarks/results/<tag>.json with <tag>_variations.png (a source image, then 7
variations, per row), <tag>_interpolations.png (rows: slerp between two test images'
embeddings from one noise, the sources at the ends) and <tag>_w<w>.png (eq. (34) grids).
``--eval-only`` evaluates the checkpoint in --out. ``--smoke``: a tiny model, a few steps.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, add_smoke, command, load, machine, read_log, run_dir, smoke, write_result  # noqa: E402
from t2i_common import (DATA, add_clip_args, add_run_args, agreement, chunks, eval_context,  # noqa: E402
                        frozen_clip, image_scores, settings_from, train_command, train_or_load)

import numpy as np  # noqa: E402

from refgen import backend, io  # noqa: E402
from refgen.autograd import no_grad  # noqa: E402
from refgen.models import create  # noqa: E402


def cosine(a, b):
    """Row-wise cosine similarity of (N, D) arrays."""
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def prior_cosines(model, args, ids, z_true):
    """{"w=<w>" (k = 1) or "w=<w> k=<k>": mean cos(z_hat, c^i(x))} over --prior-guidance and
    --prior-candidates, each from the same generator seed."""
    out = {}
    for k in [int(c) for c in args.prior_candidates.split(",")]:
        for w in [float(g) for g in args.prior_guidance.split(",")]:
            rng = backend.default_rng(args.seed + 11)
            z_hat = chunks(lambda s: model.sample_embeddings(s.stop - s.start, backend.asarray(ids[s]), rng=rng,
                                                              guidance=w, candidates=k), len(z_true))
            key = f"w={w:g}" + (f" k={k}" if k > 1 else "")
            out[key] = float(cosine(z_true, z_hat).mean())
            print("prior", model.prior_kind, key, out[key], flush=True)
    return out


def cosine_by_steps(model, args, ids, z_true):
    """Per number of the prior's DDIM steps (--prior-steps-sweep), at prior guidance w = 1:
    the mean cos(z_hat, c^i(x)) and the mean cosine between two independent draws for the
    same caption (1: every draw the same point; what a sampler that returns the conditional
    mean would show). One step returns f_theta(z_T, T, v), the network's estimate of the
    clean embedding from pure noise: nearly E[z | caption]."""
    out = {}
    for k in [int(c) for c in args.prior_steps_sweep.split(",")]:
        draws = []
        for seed in (args.seed + 11, args.seed + 21):
            rng = backend.default_rng(seed)
            draws.append(chunks(lambda s: model.sample_embeddings(s.stop - s.start, backend.asarray(ids[s]), rng=rng,
                                                                   guidance=1.0, steps=k, candidates=1), len(z_true)))
        out[f"steps={k}"] = {"cosine_to_true": float(cosine(z_true, draws[0]).mean()),
                             "cosine_between_two_draws": float(cosine(draws[0], draws[1]).mean())}
        print("prior steps", k, out[f"steps={k}"], flush=True)
    return out


def part_losses(out, windows=12):
    """Each part's training loss (l_prior, l_decoder) averaged over ``windows`` equal spans of
    the run's log: [(last step of the span, mean)], single batches being noisy."""
    log = read_log(out, "l_prior")
    spans = np.array_split(np.arange(len(log)), min(windows, len(log)))
    return {key: [(log[ix[-1]]["step"], round(float(np.mean([log[i][key] for i in ix])), 4)) for ix in spans]
            for key in ("l_prior", "l_decoder")}


def same_digit_other(labels, seed):
    """For each i, another index j != i with labels[j] == labels[i] (a random cycle per digit)."""
    other, rng = np.arange(len(labels)), np.random.default_rng(seed)
    for d in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == d))
        other[idx] = np.roll(idx, 1)
    return other


def train_prior_alone(model, train_ds, z_all, *, steps, lr, batch_size, seed, cosine=True, ema=0.999,
                      label="prior"):
    """The prior of ``model`` trained alone (the decoder is not needed for its cosine):
    ``steps`` Adam steps on (image embedding, caption) pairs at ``lr`` (decayed to zero by a
    cosine after 200 warm-up steps when ``cosine``, else constant), batches of ``batch_size``
    training images with a fresh caption each, the image embeddings ``z_all`` (N_train, D)
    computed once; the EMA of the prior's weights at the end when ``ema``. Returns the loss at
    each tenth of the run (the mean over that tenth with the cosine run, the last batch's
    without, as the autoregressive prior's committed curve reads) and the time taken."""
    from refgen import optim
    model.train()
    opt = optim.Adam(list(model.prior.parameters()), lr=lr)
    sched = optim.LRScheduler(opt, lambda k: optim.cosine_schedule(k, steps, warmup=min(200, steps // 10))) \
        if cosine else None
    avg = optim.EMA(model.prior, decay=ema) if ema else None
    rng, noise = np.random.default_rng(seed), backend.default_rng(seed)
    t0, curve, window = time.perf_counter(), [], []
    for k in range(steps):
        idx = rng.integers(0, len(train_ds), batch_size)
        _, caps = train_ds.batch(idx, rng)
        loss = model.prior_loss(backend.asarray(z_all[idx]), model.embed_text(backend.asarray(caps)), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        if avg is not None:
            avg.update()
        window.append(float(loss.item()))
        if (k + 1) % max(1, steps // 10) == 0:
            curve.append((k + 1, round(float(np.mean(window)), 4) if cosine else round(window[-1], 3)))
            window = []
            print(label, curve[-1], f"{time.perf_counter() - t0:.0f}s", flush=True)
    if avg is not None:
        avg.copy_to(model.prior)
    model.eval()
    out = {"steps": steps, "lr": lr, "train_wall_s": round(time.perf_counter() - t0, 1), "loss_curve": curve}
    if cosine:
        out.update(schedule="cosine to 0", batch_size=batch_size, ema=ema,
                   loss_curve_is="the mean training loss over each tenth")
    return out


def train_embeddings(model, train_ds):
    """z = sqrt(D) c^i(x) (N_train, D) of every training image, in batches."""
    ts = time.perf_counter()
    z = chunks(lambda s: model.embed_images(backend.asarray(train_ds.x[s])), smoke(len(train_ds), 64), size=500)
    print(f"train embeddings {z.shape} in {time.perf_counter() - ts:.0f}s", flush=True)
    return z


def ar_prior(args, clip, settings, train_ds, z_all, ids, z_true):
    """unCLIP's autoregressive prior trained alone for --ar-prior-steps Adam steps, then its
    prior cosine per prior guidance weight, as for the diffusion prior."""
    model = create("unclip", data_shape=train_ds.shape, seed=args.seed, clip=clip, prior_kind="ar",
                   **settings)
    out = train_prior_alone(model, train_ds, z_all, steps=smoke(args.ar_prior_steps, 3), lr=args.ar_prior_lr,
                            batch_size=smoke(args.batch_size, 8), seed=args.seed, cosine=False, ema=None,
                            label="ar prior")
    out.update({"bins": model.bins, "range": model.range, "loss": "nats per embedding (64 codes)"})
    out.update(prior_cosines(model, args, ids, z_true))
    return out


def diffusion_prior_alone(args, model, train_ds, z_all, ids, z_true, out_dir):
    """The trained model's diffusion prior, trained on alone for --prior-alone-steps at
    --prior-alone-batch from the checkpoint's (EMA) weights; its cosines, and its weights
    saved as <out>/prior_alone.npz (loaded by --use-prior-alone)."""
    res = train_prior_alone(model, train_ds, z_all, steps=smoke(args.prior_alone_steps, 3),
                            lr=args.prior_alone_lr, batch_size=smoke(args.prior_alone_batch, 8), seed=args.seed + 1,
                            label="diffusion prior alone")
    io.save_checkpoint(out_dir / "prior_alone.npz", model.prior.state_dict(), {"prior_alone": res})
    res["from"] = "the checkpoint's EMA prior"
    res.update(prior_cosines(model, args, ids, z_true))
    return res


def main():
    p = add_smoke(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    add_run_args(p, "unclip_mnist14")
    add_clip_args(p)
    p.add_argument("--n", type=int, default=2000, help="test images / captions per evaluation")
    p.add_argument("--guidance", default="0,1,3", help="decoder guidance weights")
    p.add_argument("--prior-guidance", default="0,1,3", help="prior guidance weights (cosine)")
    p.add_argument("--sample-prior-guidance", type=float, default=1.0,
                   help="the prior's guidance weight in the eq. (34) samples")
    p.add_argument("--sample-steps", type=int, default=25)
    p.add_argument("--ar-prior-steps", type=int, default=0,
                   help="also train the autoregressive prior alone for this many steps and report its cosine")
    p.add_argument("--ar-prior-lr", type=float, default=1e-3)
    p.add_argument("--prior-candidates", default="1,2",
                   help="draws per caption, keeping the highest z . v (the paper samples 2)")
    p.add_argument("--prior-alone-steps", type=int, default=0,
                   help="train the checkpoint's diffusion prior on alone for this many steps, then its cosine")
    p.add_argument("--prior-alone-lr", type=float, default=3e-4)
    p.add_argument("--prior-alone-batch", type=int, default=256)
    p.add_argument("--use-prior-alone", action="store_true",
                   help="sample with the prior weights <out>/prior_alone.npz (from --prior-alone-steps)")
    p.add_argument("--prior-steps-sweep", default="",
                   help="also the cosine (and two draws' agreement) at these numbers of prior DDIM steps, w = 1")
    p.add_argument("--prior-only", action="store_true",
                   help="only the prior cosines, into <tag>_prior.json")
    args = p.parse_args()
    settings = settings_from(dict(channels=16, heads=2, prior_width=64, prior_layers=2, prior_heads=4), args.set,
                             dict(channels=8, prior_width=16, T=50, prior_T=50))
    train_ds, test_ds = load(DATA, "train"), load(DATA, "test")
    clip, clip_train = frozen_clip(args, len(train_ds.vocab))
    model = create("unclip", data_shape=train_ds.shape, seed=args.seed, clip=clip, **settings)
    out = run_dir(args.tag, args.out)
    meta, used_ema = train_or_load(model, train_ds, out, args)
    if args.use_prior_alone:
        model.prior.load_state_dict(io.load_checkpoint(out / "prior_alone.npz")[0])
    n, steps = smoke(args.n, 16), smoke(args.sample_steps, 3)
    ev = eval_context(train_ds, test_ds, n)
    ids, labels, lev, templates, cuts = ev["ids"], ev["labels"], ev["lev"], ev["templates"], ev["cuts"]
    ref_stats, f_ref, x_real = ev["ref_stats"], ev["f_ref"], test_ds.x[:n]

    # ---- the prior: cos(z_hat, c^i(x))
    z_true = chunks(lambda s: model.embed_images(backend.asarray(x_real[s])), n)          # (N, D)
    v = chunks(lambda s: model.embed_text(backend.asarray(ids[s])), n)
    means = {d: z_true[labels == d].mean(0) for d in np.unique(labels)}
    other = np.random.default_rng(args.seed).permutation(n)
    prior = {"random_other_image": float(cosine(z_true, z_true[other]).mean()),
             "other_image_of_the_digit": float(cosine(z_true, z_true[same_digit_other(labels, args.seed)]).mean()),
             "mean_embedding_of_the_digit": float(cosine(z_true, np.stack([means[d] for d in labels])).mean()),
             "text_embedding": float(cosine(z_true, v).mean())}
    prior.update(prior_cosines(model, args, ids, z_true))
    z_all = train_embeddings(model, train_ds) if args.ar_prior_steps or args.prior_alone_steps else None
    prior_ar = ar_prior(args, clip, settings, train_ds, z_all, ids, z_true) if args.ar_prior_steps else None
    prior_alone = (diffusion_prior_alone(args, model, train_ds, z_all, ids, z_true, out)
                   if args.prior_alone_steps else None)
    by_steps = cosine_by_steps(model, args, ids, z_true) if args.prior_steps_sweep else None
    best_cos = max([v for k, v in prior.items() if k.startswith("w=")]
                   + [v for k, v in (prior_alone or {}).items() if k.startswith("w=")])
    if args.prior_only:
        write_result(f"{args.tag}_prior", {
            "command": command(), "train_command": train_command(out), "machine": machine(),
            "steps": int(meta["step"]), "n": n, "prior_sampler": f"ddim{model.prior_steps}",
            "prior_cosine": prior, "prior_cosine_ar": prior_ar, "prior_cosine_trained_alone": prior_alone,
            "prior_cosine_by_steps": by_steps, "part_losses": part_losses(out), "prior_weights": "prior_alone.npz" if args.use_prior_alone or args.prior_alone_steps else
            "the checkpoint's", "eval_wall_s": round(time.perf_counter() - ev["t0"], 1),
            "targets": {"prior_cosine": 0.8}, "met": {"prior_cosine": best_cos >= 0.8}})
        return

    # ---- variations and eq. (34), per decoder guidance weight
    variations, t2i = {}, {}
    for w in [float(g) for g in args.guidance.split(",")]:
        rng = backend.default_rng(args.seed + 12)
        ts = time.perf_counter()
        xv = np.clip(chunks(lambda s: model.variations(backend.asarray(x_real[s]), rng=rng, guidance=w,
                                                       steps=steps), n), -1, 1)
        variations[f"w={w:g}"] = dict(image_scores(xv, labels, ref_stats, f_ref),
                                      sample_wall_s=round(time.perf_counter() - ts, 1))
        print("variations", w, json.dumps(variations[f"w={w:g}"]), flush=True)
        rng, ts = backend.default_rng(args.seed + 13), time.perf_counter()
        xs = np.clip(chunks(lambda s: model.sample(s.stop - s.start, backend.asarray(ids[s]), rng=rng, guidance=w,
                                                   prior_guidance=args.sample_prior_guidance, steps=steps), n),
                     -1, 1)
        t2i[f"w={w:g}"] = dict(image_scores(xs, labels, ref_stats, f_ref),
                               attribute_agreement=agreement(xs, lev, templates, cuts),
                               sample_wall_s=round(time.perf_counter() - ts, 1))
        io.write_png(RESULTS / f"{args.tag}_w{w:g}.png", io.image_grid((xs[:64] + 1) / 2))
        print("eq34", w, json.dumps(t2i[f"w={w:g}"]), flush=True)

    # ---- grids: variations (source, then 7) and interpolations (8 points between two images)
    w_grid = 1.0 if 1.0 in [float(g) for g in args.guidance.split(",")] else float(args.guidance.split(",")[0])
    rng = backend.default_rng(args.seed + 14)
    src = x_real[:8]
    with no_grad():
        var = backend.to_numpy(model.variations(backend.asarray(np.repeat(src, 7, axis=0)), rng=rng,
                                                guidance=w_grid, steps=steps)).reshape(8, 7, *src.shape[1:])
        rows = np.concatenate([src[:, None], np.clip(var, -1, 1)], axis=1)                  # (8, 8, 1, 14, 14)
        io.write_png(RESULTS / f"{args.tag}_variations.png",
                     io.image_grid((rows.reshape(64, *src.shape[1:]) + 1) / 2, nrow=8))
        pairs = [(2 * i, 2 * i + 1) for i in range(8)]
        lerp = [np.concatenate([x_real[a][None], np.clip(backend.to_numpy(model.interpolations(
            backend.asarray(x_real[a]), backend.asarray(x_real[b]), 6, rng=rng, guidance=w_grid, steps=steps)),
            -1, 1), x_real[b][None]]) for a, b in pairs]                                   # 8 x (8, 1, 14, 14)
        io.write_png(RESULTS / f"{args.tag}_interpolations.png",
                     io.image_grid((np.concatenate(lerp) + 1) / 2, nrow=8))

    log = read_log(out, "loss")
    best_var = max(v["cond_accuracy"] for v in variations.values())
    result = {
        "command": command(), "train_command": train_command(out), "machine": machine(), "data": DATA,
        "settings": settings,
        "clip": {"run": f"/tmp/refgen_{args.clip_run}", "train": clip_train},
        "parameters": model.num_parameters(), "steps": int(meta["step"]),
        "batch_size": smoke(args.batch_size, 8), "lr": args.lr, "ema": args.ema,
        "sampled_with": "EMA weights" if used_ema else "trained weights",
        "train_wall_s": round(log[-1]["wall_s"], 1) if log else None,
        "loss_curve": [(r["step"], round(r["loss"], 4)) for r in log[::max(1, len(log) // 12)]],
        "part_losses": part_losses(out),
        "sampler": f"ddim{steps} (decoder), ddim{model.prior_steps} (prior)", "n": n,
        "prompts": "the test images' captions, training template i mod 8 for image i",
        "prior_cosine": prior, "prior_cosine_ar": prior_ar, "prior_cosine_trained_alone": prior_alone,
        "prior_cosine_by_steps": by_steps, "prior_weights": "prior_alone.npz" if args.use_prior_alone or args.prior_alone_steps else "the checkpoint's",
        "variations": variations,
        "text_to_image": {"prior_guidance": args.sample_prior_guidance, "per_decoder_guidance": t2i},
        "attribute_agreement_real": agreement(x_real, lev, templates, cuts),
        "eval_wall_s": round(time.perf_counter() - ev["t0"], 1),
        "targets": {"prior_cosine": 0.8, "variations_keep_class": 0.95,
                    "text_to_image_cond_accuracy_at_w_ge_1": 0.98},
        "grids": [f"{args.tag}_variations.png", f"{args.tag}_interpolations.png"]
                 + [f"{args.tag}_w{w}.png" for w in args.guidance.split(",")],
    }
    result["met"] = {"prior_cosine": best_cos >= 0.8, "variations_keep_class": best_var >= 0.95,
                     "text_to_image_cond_accuracy_at_w_ge_1": all(
                         v["cond_accuracy"] >= 0.98 for k, v in t2i.items() if float(k[2:]) >= 1)}
    write_result(args.tag, result)
    print(json.dumps({"prior_cosine": prior, "variations": {k: v["cond_accuracy"] for k, v in variations.items()},
                      "t2i": {k: v["cond_accuracy"] for k, v in t2i.items()}}))


if __name__ == "__main__":
    main()
