"""One table of the text-to-image systems on mnist-captions: the same captions, the same N, the
same measures.

    OPENBLAS_NUM_THREADS=1 nice python benchmarks/t2i_table_mnist.py --n 1000

Loads each trained system from the run directories its benchmark left (a system whose run is
missing is skipped and listed under ``missing``), with the settings its result file records:

  dalle     dalle_mnist.py's three stages /tmp/refgen_<--dalle-runs>_{dvae,clip,dalle}
            (28x28; top-k --top-k sampling, no guidance)
  glide     glide_mnist.py's run --glide-run (14x14)
  unclip    unclip_mnist.py's run --unclip-run (14x14; prior guidance --prior-guidance)
  imagen    imagen_mnist.py's run --imagen-run (14x14; dynamic thresholding)
  cfg       a class-conditional ddpm on mnist-14, a refgen run directory --cfg-run (its
            condition is the digit the caption names, not the caption)

and for the captions of the first N test images (glide_mnist.py's prompts, template i mod 8
for image i) reports per system and guidance weight w of --guidance: cond_accuracy,
attribute agreement per attribute (glide_mnist.py's measure), FID and KID against the
mnist-14 test set, the CLIP score (2.5 max(cos, 0), Hessel et al. 2021) under dalle_mnist.py's
CLIP, and cond_accuracy on the held-out (digit, thickness, slant) combinations. Every
system is scored at 14x14: DALL-E's 28x28 images are 2x2 average pooled first, as mnist-14
is made; the CLIP reads 14x14 images upsampled 2x (nearest). Writes
benchmarks/results/<tag>.json and <tag>.md (the table).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SMOKE, add_smoke, command, load, machine, smoke, write_result  # noqa: E402
from t2i_common import agreement, prompts, up2  # noqa: E402

import numpy as np  # noqa: E402

from refgen import backend, io  # noqa: E402
from refgen.autograd import no_grad  # noqa: E402
from refgen.data import captions as cap  # noqa: E402
from refgen.metrics import cond_accuracy, kid, mnist_features  # noqa: E402
from refgen.metrics.fid import reference_stats  # noqa: E402
from refgen.metrics.frechet import frechet_distance, gaussian_stats  # noqa: E402
from refgen.models import create  # noqa: E402
from refgen.runs import load_run  # noqa: E402
from refgen.train import CHECKPOINT, load_weights  # noqa: E402

SOURCES = Path(__file__).resolve().parent / "results"   # the settings each benchmark recorded


def recorded(tag, key="settings"):
    path = SOURCES / f"{tag}.json"
    return json.loads(path.read_text()).get(key, {}) if path.exists() else {}


def loaded(model, run):
    """(model with the EMA weights of run/checkpoint.npz, in eval mode, steps trained); in
    smoke mode the untrained model itself."""
    if SMOKE:
        return model.eval(), 0
    arrays, meta = io.load_checkpoint(Path(run) / CHECKPOINT)
    load_weights(model, arrays)
    return model.eval(), int(meta["step"])


def found(run, marker=CHECKPOINT):
    return SMOKE or bool(run) and (Path(run) / marker).exists()


def pool14(x):
    return x if x.shape[-1] == 14 else x.reshape(len(x), 1, 14, 2, 14, 2).mean(axis=(3, 5))


def build(args, vocab):
    """(the CLIP, {name: (draw(ids, labels, w, rng) -> images, steps trained, how)}, missing)."""
    systems, missing = {}, []
    tiny = dict(channels=8, T=50) if SMOKE else {}
    steps = smoke(args.sample_steps, 3)
    clip_dir = f"/tmp/refgen_{args.dalle_runs}_clip"
    if not found(clip_dir):
        raise SystemExit(f"no CLIP in {clip_dir}: run benchmarks/dalle_mnist.py first")
    clip_kw = dict(width=16, layers=1, heads=2, embed_dim=8, channels=4) if SMOKE else {}
    clip, _ = loaded(create("clip", data_shape=(1, 28, 28), vocab_size=vocab, seed=0, **clip_kw), clip_dir)
    if found(f"/tmp/refgen_{args.dalle_runs}_dalle"):
        hp = recorded(args.dalle_tag, "dalle").get("hyperparameters", {})
        dvae, _ = loaded(create("dvae", data_shape=(1, 28, 28), seed=0, num_codes=smoke(64, 8)),
                         f"/tmp/refgen_{args.dalle_runs}_dvae")
        m, k = loaded(create("dalle", data_shape=(1, 28, 28), vocab_size=vocab, seed=0, dvae=dvae, clip=clip,
                             width=smoke(hp.get("width", 128), 16), layers=smoke(hp.get("layers", 4), 1),
                             heads=smoke(hp.get("heads", 4), 2)),
                      f"/tmp/refgen_{args.dalle_runs}_dalle")
        systems["dalle"] = (lambda ids, y, w, rng, m=m: pool14(backend.to_numpy(
            m.sample(len(ids), cond=backend.asarray(ids), rng=rng, top_k=args.top_k))), k,
            f"top-k {args.top_k} sampling")
    else:
        missing.append("dalle")
    for name, run, tag in (("glide", args.glide_run, "glide_mnist14"), ("unclip", args.unclip_run, "unclip_mnist14"),
                           ("imagen", args.imagen_run, "imagen_mnist14")):
        if not found(run):
            missing.append(name)
            continue
        kw = dict(recorded(tag), **tiny)
        kw.update(vocab_size=vocab) if name == "glide" else kw.update(clip=clip)
        if name == "unclip" and SMOKE:
            kw.update(prior_width=16, prior_T=50)
        m, k = loaded(create(name, data_shape=(1, 14, 14), seed=0, **kw), run)
        extra = {"prior_guidance": args.prior_guidance} if name == "unclip" else {}
        systems[name] = (lambda ids, y, w, rng, m=m, extra=extra: backend.to_numpy(
            m.sample(len(ids), cond=backend.asarray(ids), rng=rng, guidance=w, steps=steps, **extra)), k,
            "classifier-free guidance w" + (f", prior guidance {args.prior_guidance:g}" if extra else ""))
    if found(args.cfg_run, "config.json"):
        if SMOKE:
            m, k = create("ddpm", data_shape=(1, 14, 14), seed=0, num_classes=10, **tiny).eval(), 0
        else:
            m, cfg = load_run(args.cfg_run)
            k = int(cfg["train"]["steps"])
        systems["cfg"] = (lambda ids, y, w, rng, m=m: backend.to_numpy(
            m.sample(len(y), backend.asarray(y), rng=rng, guidance=w, steps=steps)), k,
            "classifier-free guidance w on the label the caption names")
    else:
        missing.append("cfg")
    return clip, systems, missing


def main():
    p = add_smoke(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--guidance", default="1,3")
    p.add_argument("--sample-steps", type=int, default=25)
    p.add_argument("--top-k", type=int, default=32)
    p.add_argument("--prior-guidance", type=float, default=1.0)
    p.add_argument("--dalle-runs", default="dalle_mnist_w128")
    p.add_argument("--dalle-tag", default="dalle_mnist_w128")
    p.add_argument("--glide-run", default="/tmp/refgen_glide_mnist14")
    p.add_argument("--unclip-run", default="/tmp/refgen_unclip_mnist14")
    p.add_argument("--imagen-run", default="/tmp/refgen_imagen_mnist14")
    p.add_argument("--cfg-run", default="/tmp/refgen_cfg_mnist14")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="t2i_table_mnist")
    args = p.parse_args()
    train_ds, test_ds = load("mnist-captions-14", "train"), load("mnist-captions-14", "test")
    clip, systems, missing = build(args, len(train_ds.vocab))
    n = smoke(args.n, 16)
    ids, templates = prompts(test_ds, n)
    labels, lev = test_ds.y[:n], test_ds.captions.lev[:n]
    cuts = cap.thresholds(cap.measure(up2(train_ds.x[:smoke(10_000, 64)])))
    held_ids, held_rows = cap.heldout_captions(test_ds.y, test_ds.captions.lev[:len(test_ds.y)])["heldout_combos"]
    held_ids, held_rows = held_ids[:n], held_rows[:n]
    f_ref = mnist_features(load("mnist-14", "test").x)
    ref = gaussian_stats(f_ref) if SMOKE else reference_stats("test", 14)
    rows = {}
    for name, (draw, trained_steps, how) in systems.items():
        for w in ([None] if name == "dalle" else [float(v) for v in args.guidance.split(",")]):
            key = name if w is None else f"{name} w={w:g}"
            ts = time.perf_counter()
            x = np.clip(np.concatenate([draw(ids[i:i + 100], labels[i:i + 100], w, backend.default_rng(args.seed + i))
                                        for i in range(0, n, 100)]), -1, 1)
            xh = np.clip(np.concatenate([draw(held_ids[i:i + 100], test_ds.y[held_rows[i:i + 100]], w,
                                              backend.default_rng(args.seed + 7 + i))
                                         for i in range(0, len(held_ids), 100)]), -1, 1)
            feats = mnist_features(x)
            k, k_se = kid(feats, f_ref, rng=0)
            with no_grad():
                cs = float(np.mean(np.concatenate([backend.to_numpy(clip.clip_score(
                    backend.asarray(up2(x[i:i + 500])), backend.asarray(ids[i:i + 500]))) for i in range(0, n, 500)])))
            rows[key] = {"system": name, "w": w, "conditioning": how, "steps_trained": trained_steps,
                         "cond_accuracy": cond_accuracy(x, labels),
                         "attribute_agreement": agreement(x, lev, templates, cuts),
                         "fid_mnist14": frechet_distance(*gaussian_stats(feats), *ref),
                         "kid_mnist14": k, "kid_mnist14_se": k_se, "clip_score": cs,
                         "heldout_combos_cond_accuracy": cond_accuracy(xh, test_ds.y[held_rows]),
                         "heldout_combos_attribute_agreement": agreement(
                             xh, test_ds.captions.lev[held_rows], np.zeros(len(xh), dtype=np.int64), cuts),
                         "heldout_n": int(len(held_ids)), "n": n,
                         "sample_wall_s": round(time.perf_counter() - ts, 1)}
            io.write_png(RESULTS / f"{args.tag}_{key.replace(' ', '_').replace('=', '')}.png",
                         io.image_grid((x[:64] + 1) / 2))
            print(key, json.dumps(rows[key]), flush=True)
    real = agreement(test_ds.x[:n], lev, templates, cuts)
    with no_grad():
        cs_real = float(np.mean(backend.to_numpy(clip.clip_score(backend.asarray(up2(test_ds.x[:min(n, 500)])),
                                                                 backend.asarray(ids[:min(n, 500)])))))
    table = ["| system | w | steps | cond_accuracy | thickness | slant | size | position | FID (14x14) | "
             "KID x 1e3 | CLIP score | held-out combos |", "| " + " | ".join(["---"] * 12) + " |"]
    for key, r in rows.items():
        a, w = r["attribute_agreement"], "" if r["w"] is None else f"{r['w']:g}"
        table.append(f"| {r['system']} | {w} | {r['steps_trained']} | "
                     f"{r['cond_accuracy']:.3f} | "
                     + " | ".join(f"{a.get(t, float('nan')):.2f}" for t in cap.ATTRIBUTES)
                     + f" | {r['fid_mnist14']:.1f} | {r['kid_mnist14']:.1f} +- {r['kid_mnist14_se']:.1f} | "
                       f"{r['clip_score']:.3f} | {r['heldout_combos_cond_accuracy']:.3f} |")
    table.append("| test images | | | | " + " | ".join(f"{real[t]:.2f}" for t in cap.ATTRIBUTES)
                 + f" | | | {cs_real:.3f} | |")
    (RESULTS / f"{args.tag}.md").write_text("\n".join(table) + "\n")
    write_result(args.tag, {"command": command(), "machine": machine(), "n": n,
                            "sampler": f"ddim{smoke(args.sample_steps, 3)} (diffusion systems)",
                            "prompts": "the test images' captions, template i mod 8 for image i",
                            "scored_at": "14x14 (DALL-E's 28x28 images 2x2 average pooled)",
                            "rows": rows, "missing": missing, "attribute_agreement_real": real,
                            "clip_score_real": cs_real, "table": f"{args.tag}.md"})
    print("\n".join(table))


if __name__ == "__main__":
    main()
