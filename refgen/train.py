"""The one training loop, for every model: batches, steps, progress, checkpoints, resume.

    train(model, dataset, steps=..., batch_size=..., lr=..., seed=..., out_dir=...)

One step draws a batch, then either calls ``model.train_step(batch, optimizers)`` (models
whose algorithm is not one backward and one step: GANs, EMA teachers) or does
``loss = model.loss(batch); zero_grad; backward; clip; step``, and then updates the EMA.

Everything random is owned here and saved in each checkpoint: the NumPy generator that
shuffles the data and drives per-batch transforms (dynamic binarization, dequantization)
and the backend generator ``model.rng`` that models draw their noise from. So on NumPy a
run resumed from step k ends bit-for-bit equal to the run that was never interrupted.

A run directory holds log.jsonl (one line per logged step), checkpoint.npz (atomic,
every ``ckpt_every`` steps and at the end), metrics.json and samples.png.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from refgen import backend, io
from refgen.autograd import Tensor, no_grad
from refgen.models.base import Batch

__all__ = ["train", "TrainingDiverged", "Batcher", "lr_at", "write_samples", "data_facts", "load_run_state",
           "ema_weights", "CHECKPOINT", "OPTIMIZERS", "SCHEDULES"]

CHECKPOINT = "checkpoint.npz"
SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SAMPLE_SEED = 1234  # samples.png is drawn with its own generator, not the training one


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was left as it was."""


# ----------------------------------------------------------------------------- batches
class Batcher:
    """Index batches from per-epoch permutations of ``range(n)``, dropping each epoch's tail.

    One NumPy generator does the shuffling and is handed to ``dataset.batch`` for the
    per-batch transforms, so its state after a batch depends on both. To resume mid-epoch
    without storing the permutation, the state the epoch started from is kept as well: the
    permutation is redrawn from it, then the current state is put back.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        if batch_size > n:
            raise ValueError(f"batch size {batch_size} is larger than the data set ({n} examples)")
        self.n, self.batch_size = int(n), int(batch_size)
        self.rng = np.random.default_rng([int(seed), 0])
        self.epoch, self.pos = 0, 0
        self._new_epoch()

    def _new_epoch(self):
        self.epoch_state = self.rng.bit_generator.state
        self.perm = self.rng.permutation(self.n)
        self.pos = 0

    def next(self) -> np.ndarray:
        if self.pos + self.batch_size > self.n:
            self.epoch += 1
            self._new_epoch()
        idx = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "epoch_state": self.epoch_state,
                "state": self.rng.bit_generator.state}

    def set_state(self, s: dict):
        self.rng.bit_generator.state = s["epoch_state"]
        self._new_epoch()
        self.rng.bit_generator.state = s["state"]
        self.epoch, self.pos = int(s["epoch"]), int(s["pos"])


def _to_batch(xb, yb) -> Batch:
    x = backend.asarray(xb)
    return Batch(Tensor(x), None if yb is None else backend.asarray(yb))


# ----------------------------------------------------------------------------- schedule
def lr_at(step: int, lr: float, total: int, warmup: int = 0, schedule: str = "constant") -> float:
    """Learning rate for step ``step`` (0-based): a linear warmup over ``warmup`` steps, then
    constant, or a half cosine down to 0 at ``total`` (refgen.optim's multipliers)."""
    from refgen import optim
    if schedule == "cosine":
        return lr * optim.cosine_schedule(step, total, warmup)
    return lr * optim.linear_warmup(step, warmup)


# ----------------------------------------------------------------------------- optimizers
def _make_optimizers(model, kind: str, lr: float) -> tuple[dict, dict]:
    """{group: optimizer} and {group: base lr}; see refgen.models.base (several optimizers).

    A group given as a dict may name its own ``optimizer`` (one of OPTIMIZERS) and pass
    constructor keywords in ``options`` (WGAN: RMSprop; WGAN-GP: Adam with betas (0, 0.9)).
    """
    from refgen import optim
    classes = {"adam": optim.Adam, "adamw": optim.AdamW, "sgd": optim.SGD, "rmsprop": optim.RMSprop}
    groups = model.param_groups() if hasattr(model, "param_groups") else {"model": None}
    opts, base_lr = {}, {}
    for name, g in groups.items():
        gkind, options = kind, {}
        if g is None:
            params, glr = list(model.parameters()), lr
        elif isinstance(g, dict):
            params, glr = list(g["params"]), float(g.get("lr", lr))
            gkind, options = g.get("optimizer", kind), dict(g.get("options", {}))
        else:
            params, glr = list(g), lr
        if gkind not in classes:
            raise ValueError(f"parameter group {name!r} asks for optimizer {gkind!r}; "
                             f"accepted: {', '.join(classes)}")
        params = [p for p in params if p.requires_grad]
        opts[name], base_lr[name] = classes[gkind](params, lr=glr, **options), glr
    return opts, base_lr


# ----------------------------------------------------------------------------- RNG state
def _rng_state(rng):
    """JSON-able state of a backend generator, or None where the backend cannot give one."""
    try:
        state = rng.bit_generator.state
        json.dumps(state)
        return state
    except Exception:  # CuPy's generators do not expose their state
        return None


def _model_rng(seed: int, step: int = 0):
    # fresh runs: seeded by the run's seed; a resume without a saved state (CuPy): by step too
    return backend.default_rng(int(seed) if step == 0 else int(seed) * 1_000_003 + int(step))


# ----------------------------------------------------------------------------- checkpoints
def _arrays(prefix: str, state: dict) -> dict:
    return {f"{prefix}/{k}": backend.to_numpy(v) for k, v in state.items()}


def _strip(prefix: str, arrays: dict) -> dict:
    p = prefix + "/"
    return {k[len(p):]: v for k, v in arrays.items() if k.startswith(p)}


def _save(path, model, opts, ema, meta):
    arrays = _arrays("model", model.state_dict())
    for name, opt in opts.items():
        arrays.update(_arrays(f"opt/{name}", opt.state_dict()))
    if ema is not None:
        arrays.update(_arrays("ema", ema.state_dict()))
    io.save_checkpoint(path, arrays, meta)


def load_run_state(model, arrays: dict, ema=None):
    """Load a checkpoint's model weights (and EMA, when ``ema`` is given) into place."""
    model.load_state_dict({k: backend.asarray(v) for k, v in _strip("model", arrays).items()})
    if ema is not None:
        ema.load_state_dict({k: backend.asarray(v) for k, v in _strip("ema", arrays).items()})


def load_weights(model, arrays: dict, use_ema: bool = True) -> bool:
    """Put a checkpoint's weights into ``model``: its EMA averages when it holds them and
    ``use_ema``, else the trained weights. Returns whether the averages were used."""
    from refgen.optim import EMA
    ema = EMA(model, 0.0) if use_ema and any(k.startswith("ema/") for k in arrays) else None
    load_run_state(model, arrays, ema)
    if ema is not None:
        ema.copy_to(model)
    return ema is not None


def ema_weights(model, ema):
    """Context: inside it the model holds the EMA weights (when there is an EMA)."""
    return ema.swapped(model) if ema is not None else contextlib.nullcontext(model)


# ----------------------------------------------------------------------------- samples
def data_facts(dataset) -> dict:
    """What sampling needs to know about the data, JSON-able (config.json keeps it)."""
    facts = {"shape": [int(d) for d in dataset.shape], "kind": dataset.kind}
    if dataset.kind != "categorical":
        facts["value_range"] = [float(dataset.x.min()), float(dataset.x.max())]
    return facts


def write_samples(model, path, *, shape, kind="continuous", n=None, seed=SAMPLE_SEED,
                  value_range=None, reference=None):
    """Draw ``n`` samples with a generator seeded by ``seed`` and write a PNG of them: a grid
    for images (``value_range`` of the data mapped to black..white), a scatter in orange
    over ``reference`` points (the data, in blue) for 2D. Returns the path written, or None
    for data that has no picture (text)."""
    shape = tuple(shape)
    if kind == "categorical" or len(shape) not in (1, 3) or (len(shape) == 1 and shape[0] != 2):
        return None
    image = len(shape) == 3
    n = int(n or (64 if image else 2000))
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            x = backend.to_numpy(model.sample(n, rng=backend.default_rng(seed)))
    finally:
        model.train(was_training)
    if image:
        lo, hi = value_range if value_range is not None else (float(np.nanmin(x)), float(np.nanmax(x)))
        x = x.reshape((n,) + shape)
        io.write_png(path, io.image_grid((x - lo) / max(hi - lo, 1e-12)))
    else:
        io.scatter_png(path, x.reshape(n, 2), reference=reference)
    return path


# ----------------------------------------------------------------------------- progress
class _Progress:
    """Step, running loss, steps/s and ETA on stderr: one updating line on a terminal,
    a plain line every ``every`` steps otherwise."""

    def __init__(self, total: int, every: int, enabled: bool):
        self.total, self.every, self.enabled = total, max(1, every), enabled
        self.tty = enabled and sys.stderr.isatty()
        self._last = 0.0

    def update(self, step, loss, rate, final=False):
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tty and not final and now - self._last < 0.1:
            return
        if not self.tty and not final and step % self.every:
            return
        self._last = now
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        eta_s = "--:--" if not math.isfinite(eta) else time.strftime("%H:%M:%S", time.gmtime(eta))
        line = (f"step {step}/{self.total}  loss {loss:.4f}  {rate:.1f} steps/s  ETA {eta_s}")
        if self.tty:
            sys.stderr.write("\r" + line.ljust(72) + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    @contextlib.contextmanager
    def stage(self, what: str):
        """One line for work after the last step (evaluation, samples): what, then its time."""
        if self.enabled:
            sys.stderr.write(f"{what} ...")
            sys.stderr.flush()
        t = time.perf_counter()
        try:
            yield
        finally:  # ends the line even when the work fails, so the traceback starts clean
            if self.enabled:
                sys.stderr.write(f" {time.perf_counter() - t:.1f} s\n")
                sys.stderr.flush()


def _truncate_log(path: Path, step: int):
    """Drop log lines past ``step`` (written after the checkpoint we resume from)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip()
            and json.loads(ln).get("step", 0) <= step]
    with io.atomic_write(path) as f:
        f.write("".join(ln + "\n" for ln in keep).encode())


def _write_json(path, obj):
    with io.atomic_write(path) as f:
        f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


# ----------------------------------------------------------------------------- the loop
def train(model, dataset, *, steps: int, batch_size: int, lr: float, seed: int = 0, out_dir,
          optimizer: str = "adam", ema_decay: float | None = None, grad_clip: float | None = None,
          warmup: int = 0, schedule: str = "constant", log_every: int = 100,
          eval_every: int = 0, ckpt_every: int = 1000, eval_fn=None, resume: bool = False,
          progress: bool = True, test_dataset=None, config: dict | None = None,
          samples: bool = True) -> dict:
    """Train ``model`` on ``dataset`` for ``steps`` steps; returns the metrics written.

    eval_fn(model, test_dataset) -> dict is called every ``eval_every`` steps (0: never) and
    at the end, with the EMA weights when there is an EMA; its numbers go to log.jsonl and
    metrics.json. ``resume`` continues from out_dir/checkpoint.npz. Raises TrainingDiverged
    when the loss is not finite (nothing is written for that step).
    """
    from refgen import optim
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; accepted: {', '.join(OPTIMIZERS)}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; accepted: {', '.join(SCHEDULES)}")
    steps, batch_size = int(steps), int(batch_size)
    out = Path(out_dir)
    ckpt_path, log_path = out / CHECKPOINT, out / "log.jsonl"
    if resume and not ckpt_path.exists():
        raise FileNotFoundError(f"{ckpt_path} does not exist: nothing to resume")
    out.mkdir(parents=True, exist_ok=True)

    batcher = Batcher(len(dataset), batch_size, seed)
    opts, base_lr = _make_optimizers(model, optimizer, lr)
    ema = optim.EMA(model, ema_decay) if ema_decay else None
    model.rng = _model_rng(seed)
    step, wall_before, loss_sum, loss_n, last = 0, 0.0, 0.0, 0, None
    hyper = dict(steps=steps, batch_size=batch_size, lr=lr, seed=seed, optimizer=optimizer,
                 ema_decay=ema_decay, grad_clip=grad_clip, warmup=warmup, schedule=schedule)

    if resume:
        arrays, meta = io.load_checkpoint(ckpt_path)
        load_run_state(model, arrays, ema)
        for name, opt in opts.items():
            opt.load_state_dict({k: backend.asarray(v) for k, v in _strip(f"opt/{name}", arrays).items()})
        step = last = int(meta["step"])
        batcher.set_state(meta["batcher"])
        if meta.get("model_rng") is not None:
            model.rng.bit_generator.state = meta["model_rng"]
        else:
            model.rng = _model_rng(seed, step)
        wall_before = float(meta.get("wall_s", 0.0))
        loss_sum, loss_n = float(meta.get("loss_sum", 0.0)), int(meta.get("loss_n", 0))
        _truncate_log(log_path, step)

    def meta_now(wall):
        return {"step": step, "batcher": batcher.state(), "model_rng": _rng_state(model.rng),
                "wall_s": wall, "loss_sum": loss_sum, "loss_n": loss_n, "train": hyper,
                "config": config or {}, "backend": backend.name()}

    def evaluate():
        if eval_fn is None or test_dataset is None:
            return {}
        saved_rng = model.rng
        model.rng = backend.default_rng(SAMPLE_SEED)  # evaluation must not move the training RNG
        model.eval()
        try:
            with ema_weights(model, ema):
                return dict(eval_fn(model, test_dataset))
        finally:
            model.rng = saved_rng
            model.train()

    custom_step = hasattr(model, "train_step")
    params = [p for p in model.parameters() if p.requires_grad]
    bar = _Progress(steps, log_every, progress)
    model.train()
    t0 = time.perf_counter()
    t_window, step_window = t0, step
    with open(log_path, "a" if resume else "w") as log:
        while step < steps:
            for name, opt in opts.items():
                opt.lr = lr_at(step, base_lr[name], steps, warmup, schedule)
            xb, yb = dataset.batch(batcher.next(), batcher.rng)
            batch = _to_batch(xb, yb)
            if custom_step:
                info = {k: float(v) for k, v in model.train_step(batch, opts).items()}
                loss = info["loss"]
            else:
                loss_t = model.loss(batch)
                loss = float(loss_t.item())
                info = {"loss": loss}
            if not math.isfinite(loss):
                if progress:
                    sys.stderr.write("\n" if bar.tty else "")
                kept = f"; {ckpt_path} (step {last}) is kept as it was" if last is not None else ""
                raise TrainingDiverged(f"loss became {loss} at step {step + 1}{kept}")
            if not custom_step:
                for opt in opts.values():
                    opt.zero_grad()
                loss_t.backward()
                if grad_clip:
                    optim.clip_grad_norm_(params, grad_clip)
                for opt in opts.values():
                    opt.step()
            if ema is not None:
                ema.update()
            step += 1
            loss_sum, loss_n = loss_sum + loss, loss_n + 1
            now = time.perf_counter()
            rate = (step - step_window) / max(now - t_window, 1e-9)
            bar.update(step, loss_sum / loss_n, rate, final=step == steps)
            do_eval = eval_every and step % eval_every == 0 and step < steps
            if step % log_every == 0 or step == steps or do_eval:
                rec = {"step": step, "loss": loss_sum / loss_n,
                       "lr": next(iter(opts.values())).lr, "steps_per_s": rate,
                       "wall_s": wall_before + now - t0}
                rec.update({k: v for k, v in info.items() if k != "loss"})
                if do_eval:
                    rec.update(evaluate())
                log.write(json.dumps(rec) + "\n")
                log.flush()
                loss_sum, loss_n = 0.0, 0
                t_window, step_window = time.perf_counter(), step
            if step % ckpt_every == 0 or step == steps:
                _save(ckpt_path, model, opts, ema, meta_now(wall_before + time.perf_counter() - t0))
                last = step

    wall = wall_before + time.perf_counter() - t0
    final_loss = None
    if log_path.exists():
        lines = [json.loads(ln) for ln in log_path.read_text().splitlines() if ln.strip()]
        final_loss = lines[-1]["loss"] if lines else None
    metrics = {"steps": step, "wall_s": round(wall, 3), "backend": backend.name(),
               "loss": final_loss}
    if eval_fn is not None and test_dataset is not None:
        with bar.stage("evaluating on the test set"):
            metrics.update(evaluate())
    _write_json(out / "metrics.json", metrics)
    if samples:
        saved_rng = model.rng
        try:
            drawing = (bar.stage(f"drawing samples -> {out / 'samples.png'}")
                       if dataset.kind != "categorical" else contextlib.nullcontext())  # text: none
            with ema_weights(model, ema), drawing:
                ref = dataset.x[:2000] if tuple(dataset.shape) == (2,) else None
                write_samples(model, out / "samples.png", reference=ref, **data_facts(dataset))
        finally:
            model.rng = saved_rng
    return metrics
