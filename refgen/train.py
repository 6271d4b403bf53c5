"""The one training loop, for every model: batches, steps, progress, checkpoints, resume.

    train(model, dataset, steps=..., batch_size=..., lr=..., seed=..., out_dir=...)
    train(model, dataset, settings=TrainConfig(...), out_dir=...)

Each step reads in order: the learning rate (``optim.LRScheduler`` per optimizer, driven by
``TrainConfig.lr_factor``: warmup, then constant or cosine), the batch, the update (the
model's ``train_step(batch, optimizers, rng)`` where one backward and one step is not its
algorithm, as for GANs and EMA teachers, else ``loss(batch, rng)``, zero_grad, backward, clip,
step), the divergence check, the EMA, then the log line, the evaluation and the checkpoint
when they are due. A model may set ``self.last_stats`` (a dict of floats about its last
loss, e.g. its terms); the loop writes it into each log line.

Everything random is owned here and saved in each checkpoint: the NumPy generator that
shuffles the data and drives per-batch transforms (dynamic binarization, dequantization)
and the backend generator ``rng`` handed to ``loss`` / ``train_step`` at every step, the only
source of the noise a model draws while it trains (models keep no generator). So on NumPy a
run resumed from step k ends bit-for-bit equal to the run that was never interrupted.

A run directory holds log.jsonl (one line per logged step), checkpoint.npz (atomic,
every ``ckpt_every`` steps and at the end), metrics.json and samples.png.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from refgen import backend, io
from refgen.autograd import Tensor, no_grad
from refgen.models.base import Batch
from refgen.progress import Stage, StepProgress

__all__ = ["train", "TrainConfig", "TrainingDiverged", "Batcher", "write_samples", "data_facts",
           "draw_samples", "load_run_state", "load_weights", "ema_weights", "CHECKPOINT", "OPTIMIZERS", "SCHEDULES"]

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


def _loop_rng(seed: int, step: int = 0):
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


def draw_samples(model, n: int, rng, stage=None, chunk: int = 16, options=None) -> np.ndarray:
    """``n`` samples as a NumPy array, in eval mode without a graph, drawn ``chunk`` at a time
    from the one generator ``rng`` (all at once when ``stage`` is None), reporting each chunk
    to ``stage`` (a refgen.progress.Stage). ``options`` are keywords of the model's ``sample``
    (``steps``, ``sampler``)."""
    options = dict(options or {})
    was_training = model.training
    model.eval()
    step = n if stage is None else max(1, chunk)
    parts = []
    try:
        with no_grad():
            for i in range(0, n, step):
                chunk_options = dict(options)
                if "cond" in options:  # one condition per sample: this chunk's share
                    chunk_options["cond"] = options["cond"][i:i + step]
                parts.append(backend.to_numpy(model.sample(min(step, n - i), rng=rng, **chunk_options)))
                if stage is not None:
                    stage.update(i + len(parts[-1]), n, "samples")
    finally:
        model.train(was_training)
    return np.concatenate(parts)


def write_samples(model, path, *, shape, kind="continuous", n=None, seed=SAMPLE_SEED,
                  value_range=None, reference=None, stage=None, options=None):
    """Draw ``n`` samples with a generator seeded by ``seed`` and write a PNG of them: a grid
    for images (``value_range`` of the data mapped to black..white), a scatter in orange
    over ``reference`` points (the data, in blue) for 2D. Returns the path written, or None
    for data that has no picture (text) and for models that do not sample (CLIP). Images are
    drawn in chunks reported to ``stage``."""
    shape = tuple(shape)
    if not callable(getattr(model, "sample", None)):
        return None
    if kind == "categorical" or len(shape) not in (1, 3) or (len(shape) == 1 and shape[0] != 2):
        return None
    image = len(shape) == 3
    n = int(n or (64 if image else 2000))
    x = draw_samples(model, n, backend.default_rng(seed), stage if image else None, options=options)
    if image:
        lo, hi = value_range if value_range is not None else (float(np.nanmin(x)), float(np.nanmax(x)))
        x = x.reshape((n,) + shape)
        io.write_png(path, io.image_grid((x - lo) / max(hi - lo, 1e-12)))
    else:
        io.scatter_png(path, x.reshape(n, 2), reference=reference)
    return path


# ----------------------------------------------------------------------------- files
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




# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run (config.json's "train" entry and each checkpoint's meta)."""
    steps: int
    batch_size: int
    lr: float
    seed: int = 0
    optimizer: str = "adam"
    ema_decay: float | None = None
    grad_clip: float | None = None
    warmup: int = 0
    schedule: str = "constant"
    log_every: int = 100
    eval_every: int = 0
    ckpt_every: int = 1000

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; accepted: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; accepted: {', '.join(SCHEDULES)}")
        for key in ("steps", "batch_size", "log_every", "ckpt_every"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be a positive integer, got {getattr(self, key)!r}")
        for key in ("warmup", "eval_every"):
            if int(getattr(self, key)) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)!r}")

    def lr_factor(self, step: int) -> float:
        """The multiplier of each group's base learning rate at (0-based) ``step``: a linear
        warmup over ``warmup`` steps, then constant, or a half cosine down to 0 at ``steps``."""
        from refgen import optim
        if self.schedule == "cosine":
            return optim.cosine_schedule(step, self.steps, self.warmup)
        return optim.linear_warmup(step, self.warmup)

    def as_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- run state
@dataclass
class _State:
    """What the loop carries from step to step; all of it is in each checkpoint."""
    model: object
    cfg: TrainConfig
    opts: dict
    scheds: dict
    ema: object
    batcher: Batcher
    rng: object                            # the backend generator the model's noise comes from
    step: int = 0
    saved_step: int | None = None          # step of the checkpoint on disk, if any
    resumed_from: int | None = None        # step of the checkpoint this call started from
    wall_before: float = 0.0               # wall time of the runs this one resumes
    loss_sum: float = 0.0                  # running loss since the last log line
    loss_n: int = 0
    t0: float = field(default_factory=time.perf_counter)
    t_window: float = 0.0
    step_window: int = 0

    def wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.t0

    def rate(self) -> float:
        return (self.step - self.step_window) / max(time.perf_counter() - self.t_window, 1e-9)

    def meta(self, config) -> dict:
        return {"step": self.step, "batcher": self.batcher.state(),
                "rng": _rng_state(self.rng), "wall_s": self.wall(),
                "loss_sum": self.loss_sum, "loss_n": self.loss_n, "train": self.cfg.as_dict(),
                "config": config or {}, "backend": backend.name()}


def _start(model, dataset, cfg: TrainConfig, ckpt_path: Path, resume: bool) -> _State:
    """Optimizers, schedules, EMA, batcher and the loop's generator: fresh, or from the checkpoint."""
    from refgen import optim
    opts, _ = _make_optimizers(model, cfg.optimizer, cfg.lr)
    scheds = {name: optim.LRScheduler(opt, cfg.lr_factor) for name, opt in opts.items()}
    ema = optim.EMA(model, cfg.ema_decay) if cfg.ema_decay else None
    st = _State(model, cfg, opts, scheds, ema, Batcher(len(dataset), cfg.batch_size, cfg.seed),
                _loop_rng(cfg.seed))
    if resume:
        arrays, meta = io.load_checkpoint(ckpt_path)
        load_run_state(model, arrays, ema)
        for name, opt in opts.items():
            opt.load_state_dict({k: backend.asarray(v) for k, v in _strip(f"opt/{name}", arrays).items()})
        st.step = st.saved_step = st.resumed_from = int(meta["step"])
        if st.step >= cfg.steps:
            raise ValueError(f"{ckpt_path} is at step {st.step}; resuming needs steps > {st.step}, "
                             f"got {cfg.steps}")
        for sched in scheds.values():
            sched.load_state_dict({"last_step": st.step, "base_lr": sched.base_lr})
        st.batcher.set_state(meta["batcher"])
        if meta.get("rng") is not None:
            st.rng.bit_generator.state = meta["rng"]
        else:  # a backend whose generator has no state to save (CuPy)
            st.rng = _loop_rng(cfg.seed, st.step)
        st.wall_before = float(meta.get("wall_s", 0.0))
        st.loss_sum, st.loss_n = float(meta.get("loss_sum", 0.0)), int(meta.get("loss_n", 0))
    st.t_window, st.step_window = time.perf_counter(), st.step
    return st


# ----------------------------------------------------------------------------- one step's phases
def _next_batch(dataset, batcher: Batcher) -> Batch:
    xb, yb = dataset.batch(batcher.next(), batcher.rng)
    return _to_batch(xb, yb)


def _optimize(model, batch: Batch, opts: dict, grad_clip, rng) -> dict:
    """One update: the model's own ``train_step``, or loss, zero_grad, backward, clip, step,
    the model's noise drawn from ``rng``. Returns {'loss': float, ...}; nothing is stepped
    when the loss is not finite."""
    from refgen import optim
    if hasattr(model, "train_step"):
        return {k: float(v) for k, v in model.train_step(batch, opts, rng).items()}
    loss = model.loss(batch, rng)
    info = {"loss": float(loss.item())}
    if not math.isfinite(info["loss"]):
        return info
    for opt in opts.values():
        opt.zero_grad()
    loss.backward()
    if grad_clip:
        optim.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
    for opt in opts.values():
        opt.step()
    return info


def _check_finite(loss: float, st: _State, ckpt_path: Path):
    if not math.isfinite(loss):
        kept = (f"; {ckpt_path} (step {st.saved_step}) is kept as it was"
                if st.saved_step is not None else "")
        raise TrainingDiverged(f"loss became {loss} at step {st.step + 1}{kept}")


def _advance(st: _State, loss: float):
    """After an update: the EMA, the schedules (to the next step's rate), the counters."""
    if st.ema is not None:
        st.ema.update()
    for sched in st.scheds.values():
        sched.step()
    st.step += 1
    st.loss_sum, st.loss_n = st.loss_sum + loss, st.loss_n + 1


def _log_record(st: _State, info: dict, lr: float) -> dict:
    """The log line of this step: the loss averaged since the last line, the step's learning rate,
    speed, wall time, and the other numbers of the step (train_step's dict, the model's
    ``last_stats``)."""
    rec = {"step": st.step, "loss": st.loss_sum / max(st.loss_n, 1),
           "lr": lr, "steps_per_s": st.rate(), "wall_s": st.wall()}
    rec.update({k: v for k, v in info.items() if k != "loss"})
    stats = getattr(st.model, "last_stats", None)
    if isinstance(stats, dict):
        rec.update({k: float(v) for k, v in stats.items() if k not in rec})
    return rec


def _due(st: _State, every: int) -> bool:
    """Whether the step just taken is one of every ``every`` steps, or the last one."""
    return st.step % every == 0 or st.step == st.cfg.steps


def _write_log(log, rec: dict, st: _State):
    """One line of log.jsonl; the running loss and speed start again from here."""
    log.write(json.dumps(rec) + "\n")
    log.flush()
    st.loss_sum, st.loss_n = 0.0, 0
    st.t_window, st.step_window = time.perf_counter(), st.step


@contextlib.contextmanager
def _log_cut_back_on_failure(st: _State, log_path: Path, bar: StepProgress):
    """When a step fails (divergence, an error, an interrupt), log.jsonl is cut back to the
    checkpoint on disk, so that the run directory reads as that checkpoint's run."""
    try:
        yield
    except BaseException:
        bar.abort()
        if st.saved_step is not None:
            with contextlib.suppress(OSError):
                _truncate_log(log_path, st.saved_step)
        raise


def _evaluate(st: _State, eval_fn, test_dataset, progress=None) -> dict:
    """eval_fn(model, test) in eval mode, with the EMA weights (the training generator is not
    the evaluation's: eval_fn seeds its own); an eval_fn with a ``progress`` parameter gets
    ``progress`` (done, total, label)."""
    model = st.model
    kw = {}
    if progress is not None and "progress" in inspect.signature(eval_fn).parameters:
        kw["progress"] = progress
    model.eval()
    try:
        with ema_weights(model, st.ema):
            return dict(eval_fn(model, test_dataset, **kw))
    finally:
        model.train()


def _checkpoint(st: _State, ckpt_path: Path, config):
    """checkpoint.npz, then (the first time in this call) config.json, so that a run that
    fails before writing a checkpoint leaves config.json as it was."""
    _save(ckpt_path, st.model, st.opts, st.ema, st.meta(config))
    if config is not None and st.saved_step in (None, st.resumed_from):
        _write_json(ckpt_path.parent / "config.json", config)
    st.saved_step = st.step


# ----------------------------------------------------------------------------- the loop
def train(model, dataset, *, out_dir, settings: TrainConfig | None = None, resume: bool = False,
          eval_fn=None, test_dataset=None, config: dict | None = None, progress: bool = True,
          samples: bool = True, evaluate_at_end: bool = True, **kw) -> dict:
    """Train ``model`` on ``dataset``; returns the metrics written to out_dir/metrics.json.

    The settings are a TrainConfig, or its fields as keywords (``steps=..., batch_size=...,
    lr=..., seed=..., ema_decay=...``). eval_fn(model, test_dataset) -> dict is called every
    ``eval_every`` steps (0: never) and, when ``evaluate_at_end``, after the last step, with
    the EMA weights when there is an EMA; its numbers go to log.jsonl and metrics.json.
    ``resume`` continues from out_dir/checkpoint.npz. ``config`` (the CLI's run description)
    is kept in each checkpoint's meta and written to out_dir/config.json after the first
    checkpoint this call writes. Raises TrainingDiverged when the loss is not finite (nothing is
    written for that step).
    """
    cfg = settings if settings is not None else TrainConfig(**kw)
    out = Path(out_dir)
    ckpt_path, log_path = out / CHECKPOINT, out / "log.jsonl"
    if resume and not ckpt_path.exists():
        raise FileNotFoundError(f"{ckpt_path} does not exist: nothing to resume")
    st = _start(model, dataset, cfg, ckpt_path, resume)  # reads, and may refuse; writes nothing
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        _truncate_log(log_path, st.step)
    evaluating = eval_fn is not None and test_dataset is not None and cfg.eval_every > 0
    bar = StepProgress(cfg.steps, cfg.log_every, progress)
    model.train()
    with open(log_path, "a" if resume else "w") as log, _log_cut_back_on_failure(st, log_path, bar):
        while st.step < cfg.steps:
            lr = next(iter(st.opts.values())).lr                      # learning rate
            batch = _next_batch(dataset, st.batcher)                  # batch
            info = _optimize(model, batch, st.opts, cfg.grad_clip, st.rng)  # step
            _check_finite(info["loss"], st, ckpt_path)                # divergence check
            _advance(st, info["loss"])
            bar.update(st.step, st.loss_sum / st.loss_n, st.rate(), final=st.step == cfg.steps)
            do_eval = evaluating and st.step % cfg.eval_every == 0 and st.step < cfg.steps
            if _due(st, cfg.log_every) or do_eval:                    # log
                rec = _log_record(st, info, lr)
                if do_eval:                                           # evaluate
                    rec.update(_evaluate(st, eval_fn, test_dataset))
                _write_log(log, rec, st)
            if _due(st, cfg.ckpt_every):                              # checkpoint
                _checkpoint(st, ckpt_path, config)
    return _finish(st, dataset, out, eval_fn if evaluate_at_end else None, test_dataset,
                   progress, samples)


def _finish(st: _State, dataset, out: Path, eval_fn, test_dataset, progress, samples) -> dict:
    """metrics.json (the final loss, the run's wall time, the evaluation) and samples.png."""
    lines = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines() if ln.strip()]
    metrics = {"steps": st.step, "wall_s": round(st.wall(), 3), "backend": backend.name(),
               "loss": lines[-1]["loss"] if lines else None}
    if eval_fn is not None and test_dataset is not None:
        t = time.perf_counter()
        with Stage("evaluating on the test set", progress) as stage:
            metrics.update(_evaluate(st, eval_fn, test_dataset, stage.update))
        metrics["eval_wall_s"] = round(time.perf_counter() - t, 3)
    _write_json(out / "metrics.json", metrics)
    if samples and dataset.kind != "categorical":  # text: no picture
        with ema_weights(st.model, st.ema), Stage(f"drawing samples -> {out / 'samples.png'}",
                                                  progress) as stage:
            ref = dataset.x[:2000] if tuple(dataset.shape) == (2,) else None
            # a model conditioned on images (cascade-sr) samples from the first 64 examples'
            first = dataset.x[np.arange(64) % len(dataset.x)]
            cond = ({"cond": st.model.eval_cond(backend.asarray(first))}
                    if hasattr(st.model, "eval_cond") else None)
            write_samples(st.model, out / "samples.png", reference=ref, stage=stage,
                          options=cond, **data_facts(dataset))
    return metrics
