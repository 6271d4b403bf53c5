"""``refgen demo``: every model marked ``demo = True`` trained on toy 2D data, on the CPU.

Each (model, data) pair is an ordinary run directory, DIR/MODEL-DATA (so ``refgen sample``
and ``refgen eval`` work on it), trained with the model's default settings and evaluated as
``refgen train`` evaluates; DIR/demo.png puts the data and every model's samples side by
side, one row per data set, each panel labelled with its model and data.
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from refgen import backend, data, io, models
from refgen.runs import UsageError, build_model, load_run, run_config, run_training, train_settings

__all__ = ["run_demo", "DEMO_DATASETS", "MARK"]

DEMO_DATASETS = ("8gaussians", "checkerboard")
MARK = ".refgen-demo"
_PANEL = 256
_LEGEND_H = 28


def _choose(args):
    names = [n for n in models.names() if getattr(models.get(n), "demo", False)]
    if args.models:
        unknown = [m for m in args.models.split(",") if m not in names]
        if unknown:
            raise UsageError(f"demo model(s) {', '.join(unknown)} unknown; accepted: {', '.join(names)}")
        names = args.models.split(",")
    datasets = args.data.split(",") if args.data else list(DEMO_DATASETS)
    for name in datasets:
        if name not in data.toy2d.names():
            raise UsageError(f"demo data {name!r} is not a toy 2D data set; accepted: "
                             f"{', '.join(data.toy2d.names())}")
    return names, datasets


def run_demo(args) -> int:
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARK).exists())):
        raise UsageError(f"{out} exists and is not a refgen demo directory; choose another --out")
    names, datasets = _choose(args)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARK).write_text("written by refgen demo; safe to delete\n")
    rows, summary = [], []
    t_all = time.perf_counter()
    with backend.use_backend("numpy"):  # the demo is the CPU job, whatever REFGEN_BACKEND says
        for dname in datasets:
            train_ds, test_ds = data.load(dname, "train"), data.load(dname, "test")
            panels = [io.labelled_panel(io.scatter_image(None, reference=test_ds.x[:3000],
                                                         size=_PANEL), f"DATA {dname}")]
            for mname in names:
                cls = models.get(mname)
                st = train_settings({"steps": args.steps}, cls)
                st["log_every"], st["ckpt_every"] = max(1, st["steps"] // 5), st["steps"]
                model = build_model(mname, data_shape=train_ds.shape, seed=st["seed"])
                run = out / f"{mname}-{dname}"
                if run.exists():
                    shutil.rmtree(run)
                print(f"refgen demo: {mname} on {dname}, {st['steps']} steps", file=sys.stderr)
                config = run_config(mname, dname, train_ds, model_kwargs={}, train=st,
                                    command=f"refgen demo (model {mname}, data {dname})")
                t = time.perf_counter()
                m = run_training(model, train_ds, test_ds, out=run, st=st, config=config,
                                 resume=False, quiet=args.quiet, samples=False)
                x = _samples(run, train_ds)
                panels.append(io.labelled_panel(io.scatter_image(x, size=_PANEL), f"{mname} {dname}"))
                summary.append((mname, dname, m, time.perf_counter() - t))
            rows.append(io.concat_images_horizontal(panels))
    grid = io.concat_images_vertical([io.scatter_legend(rows[0].shape[1], _LEGEND_H)] + rows)
    io.write_png(out / "demo.png", grid)
    print(f"columns: the data (blue), then samples (orange) of {', '.join(names)}; "
          f"rows: {', '.join(datasets)}; runs in {out}/MODEL-DATA")
    for mname, dname, m, seconds in summary:
        extra = ""
        if "test_nll_nats" in m and dname in data.toy2d.DENSITIES:
            h = data.toy2d.entropy(dname)[0]
            extra = f"  test NLL {m['test_nll_nats']:.3f} nats (data entropy {h:.3f})"
        print(f"  {mname:<10} {dname:<14} {seconds:.1f} s (training {m['wall_s']:.1f} s){extra}")
    print(f"refgen demo: wrote {out / 'demo.png'} in {time.perf_counter() - t_all:.0f} s")
    return 0


def _samples(run: Path, train_ds):
    """The run's samples.png (drawn as refgen train draws it: the EMA weights where there are
    any, the samples generator), and its points for the demo's panel, from one draw."""
    from refgen.train import SAMPLE_SEED, draw_samples
    model, _ = load_run(run)
    x = draw_samples(model, 2000, backend.default_rng(SAMPLE_SEED)).reshape(-1, 2)
    io.scatter_png(run / "samples.png", x, reference=train_ds.x[:2000])
    return x

