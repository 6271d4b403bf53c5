"""ControlNet on mnist-14: a base DDPM trained on the digits, then a ControlNet over it trained
on (edge map, digit) pairs (mnist-14-edges; --task fill: outline -> filled silhouette).

    OPENBLAS_NUM_THREADS=1 nice python benchmarks/controlnet_mnist.py \\
        --base-min 13 --cn-min 11 --base-dir /tmp/refgen_controlnet_base

Both runs are budgeted, chunked and resumable (a base run directory that already holds a
checkpoint at the asked step count is reused). Then, with DDIM over ``--sample-steps`` steps:

  - edge_iou: mean IoU between each test control and the edge map (refgen.data.controls.edges)
    of the image generated for it, over ``--n`` test controls (target >= 0.8); beside it the
    same IoU for the base's unconditional samples against the same controls (no control) and
    for the test images themselves (what the target reaches on real digits; 1 for edges);
  - the base is unchanged: its unconditional samples (``sample(n)`` with no control) drawn
    with one seed before and after ControlNet's training are equal bit for bit, and so is
    their FID (N = ``--n``); the controlled samples' FID at the same N is given beside it;
  - a picture: controls, the controlled samples, the test images they came from (rows).

Results: benchmarks/results/controlnet_mnist14[_fill].json and .png.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SMOKE, add_smoke, command, load, machine, run_dir, smoke, write_result  # noqa: E402
from diffusion_mnist import train_in_chunks  # noqa: E402

import numpy as np  # noqa: E402

from refgen import backend, io  # noqa: E402
from refgen.autograd import no_grad  # noqa: E402
from refgen.data.controls import edge_iou, edges, outline  # noqa: E402
from refgen.models.diffusion import DDPM, ControlNet  # noqa: E402
from refgen.train import CHECKPOINT, load_weights  # noqa: E402

BASE_KW = dict(channels=16, num_res_blocks=1, schedule="cosine", class_cond=False)


def _config(name, data, ds, kwargs):
    from refgen.runs import run_config
    return run_config(name, data, ds, model_kwargs=kwargs, train={"seed": 0}, data_dir=None,
                      command=command())


def train_base(args, ds):
    """The base DDPM, in args.base_dir (config.json as refgen train writes it, so ControlNet
    loads it with --set base=DIR)."""
    out = run_dir("controlnet_base", args.base_dir)
    model = DDPM(ds.shape, **BASE_KW)
    t0 = time.perf_counter()
    done = train_in_chunks(model, ds, out, steps=args.base_steps, budget_min=args.base_min,
                           chunk=args.chunk, batch_size=args.batch_size, lr=1e-3,
                           ema_decay=0.99, warmup=smoke(100, 0), grad_clip=1.0,
                           config=_config("ddpm", "mnist-14", ds, BASE_KW),
                           log_every=max(1, args.chunk // 4))
    wall = json.loads((out / "metrics.json").read_text())["wall_s"]          # over every call
    return out, done, time.perf_counter() - t0, wall


def _draw(model, n, chunk, rng, cond=None, steps=25):
    parts = []
    with no_grad():
        for i in range(0, n, chunk):
            c = None if cond is None else backend.asarray(cond[i:i + chunk])
            parts.append(backend.to_numpy(model.sample(min(chunk, n - i), cond=c, rng=rng,
                                                       steps=steps, sampler="ddim", eta=0.0)))
    return np.concatenate(parts)


def _fid(samples):
    from refgen.metrics import fid_mnist
    ref = load("mnist-14", "test").x if SMOKE else "test"
    return float(fid_mnist(np.clip(samples, -1, 1), reference=ref))


def _control_of(task, images):
    """The control the task would make of these images (edges, or the outline of the fill)."""
    x = backend.asarray(images)
    return backend.to_numpy(edges(x) if task == "edges" else outline((x > 0).astype(x.dtype)))


def main():
    p = add_smoke(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    p.add_argument("--task", choices=("edges", "fill"), default="edges")
    p.add_argument("--base-dir", help="the base DDPM's run directory (trained there when needed)")
    p.add_argument("--base-run", help="an existing mnist-14 ddpm run directory (refgen train's layout) "
                   "to use as the base as it is, instead of training one in --base-dir")
    p.add_argument("--out", help="ControlNet's run directory (default /tmp/refgen_controlnet_<task>)")
    p.add_argument("--base-steps", type=int, default=smoke(20000, 4))
    p.add_argument("--base-min", type=float, default=smoke(13, 0))
    p.add_argument("--steps", type=int, default=smoke(20000, 4))
    p.add_argument("--cn-min", type=float, default=smoke(11, 0))
    p.add_argument("--chunk", type=int, default=smoke(200, 2))
    p.add_argument("--batch-size", type=int, default=smoke(64, 8), help="the base's")
    p.add_argument("--cn-batch-size", type=int, default=smoke(32, 8), help="ControlNet's")
    p.add_argument("--lr", type=float, default=1e-3, help="ControlNet's (the base's is 1e-3)")
    p.add_argument("--n", type=int, default=smoke(256, 8), help="test controls scored (and FID N)")
    p.add_argument("--sample-steps", type=int, default=smoke(25, 2))
    p.add_argument("--tag", help="result name (default controlnet_mnist14[_fill])")
    args = p.parse_args()
    t_start = time.perf_counter()
    data = f"mnist-14-{args.task}"
    digits = load("mnist-14", "train")
    if args.base_run:
        base_dir, base_wall = Path(args.base_run), 0.0
        base_cfg = json.loads((base_dir / "config.json").read_text())
        base_done = int(io.load_checkpoint(base_dir / CHECKPOINT)[1]["step"])
        base_total = json.loads((base_dir / "metrics.json").read_text()).get("wall_s")
        base_kw, base_train = base_cfg["model_kwargs"], base_cfg["train"]
    else:
        base_dir, base_done, base_wall, base_total = train_base(args, digits)
        base_kw = BASE_KW
        base_train = {"batch_size": args.batch_size, "lr": 1e-3, "ema": 0.99, "warmup": 100, "grad_clip": 1.0}

    cn = ControlNet((1, 14, 14), base=str(base_dir))
    rng_seed = 2024
    before = _draw(cn, args.n, 128, backend.default_rng(rng_seed), steps=args.sample_steps)

    pairs, test = load(data, "train"), load(data, "test")
    out = run_dir(f"controlnet_{args.task}", args.out)
    cn_kwargs = {"base": str(base_dir)}
    t0 = time.perf_counter()
    cn_done = train_in_chunks(cn, pairs, out, steps=args.steps, budget_min=args.cn_min,
                              chunk=args.chunk, batch_size=args.cn_batch_size, lr=args.lr,
                              ema_decay=0.99, warmup=0, grad_clip=1.0,
                              config=_config("controlnet", data, pairs, cn_kwargs),
                              log_every=max(1, args.chunk // 4))
    cn_wall = time.perf_counter() - t0
    load_weights(cn, io.load_checkpoint(out / CHECKPOINT)[0])            # the EMA weights
    cn.eval()

    t0 = time.perf_counter()
    after = _draw(cn, args.n, 128, backend.default_rng(rng_seed), steps=args.sample_steps)
    controls, targets = test.y[:args.n], test.x[:args.n]
    controlled = _draw(cn, args.n, 128, backend.default_rng(rng_seed + 1), cond=controls,
                       steps=args.sample_steps)
    iou = edge_iou(controls, _control_of(args.task, controlled))
    iou_base = edge_iou(controls, _control_of(args.task, after))
    iou_real = edge_iou(controls, _control_of(args.task, targets))
    fid_before, fid_after, fid_controlled = _fid(before), _fid(after), _fid(controlled)
    eval_wall = time.perf_counter() - t0

    k = min(16, args.n)
    rows = np.concatenate([2 * controls[:k] - 1, np.clip(controlled[:k], -1, 1), targets[:k]])
    png = RESULTS / f"{args.tag or 'controlnet_mnist14' + ('' if args.task == 'edges' else '_fill')}.png"
    io.write_png(png, io.image_grid((rows + 1) / 2, nrow=k))
    res = {
        "command": command(), "machine": machine(), "task": args.task, "data": data,
        "base": {"run": str(base_dir), "model_kwargs": base_kw, "steps": base_done, "train": base_train,
                 "train_wall_s_this_call": round(base_wall, 1),
                 "train_wall_s": None if base_total is None else round(base_total, 1),
                 "parameters": cn.base.num_parameters()},
        "controlnet": {"steps": cn_done, "train_wall_s": round(cn_wall, 1), "lr": args.lr,
                       "batch_size": args.cn_batch_size, "ema": 0.99, "grad_clip": 1.0,
                       "trainable_parameters": cn.num_parameters(trainable_only=True)},
        "sampler": f"ddim{args.sample_steps} (eta 0)", "n": args.n,
        "edge_iou": float(iou.mean()), "edge_iou_target": 0.8,
        "edge_iou_met": bool(iou.mean() >= 0.8),
        "edge_iou_quartiles": [float(q) for q in np.quantile(iou, [0.25, 0.5, 0.75])],
        "edge_iou_base_unconditional": float(iou_base.mean()),
        "edge_iou_test_images": float(iou_real.mean()),
        "base_samples_unchanged_bit_for_bit": bool(np.array_equal(before, after)),
        "fid_mnist_base_before": fid_before, "fid_mnist_base_after": fid_after,
        "fid_mnist_controlled": fid_controlled, "fid_n": args.n,
        "eval_wall_s": round(eval_wall, 1), "total_wall_s": round(time.perf_counter() - t_start, 1),
        "picture": str(png.name) + ": rows of controls, controlled samples, the test images",
    }
    write_result(args.tag or f"controlnet_mnist14{'' if args.task == 'edges' else '_fill'}", res)
    print(f"edge IoU {res['edge_iou']:.3f} (base unconditional {res['edge_iou_base_unconditional']:.3f}); "
          f"base unchanged: {res['base_samples_unchanged_bit_for_bit']}; FID {fid_before:.1f} -> "
          f"{fid_after:.1f}, controlled {fid_controlled:.1f}")


if __name__ == "__main__":
    main()
