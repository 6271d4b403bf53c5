"""What every benchmark script shares: the preamble, where results go, how a result records
the exact command and the machine it ran on, the smoke mode, and the helpers that score and
draw from a model.

Importing this module (the scripts do it first, with
``sys.path.insert(0, str(Path(__file__).resolve().parent)); from common import ...``):

* puts the repository root on ``sys.path``;
* sets ``OPENBLAS_NUM_THREADS=1`` and ``OMP_NUM_THREADS=1`` unless they are set or NumPy is
  already imported (benchmarks/ops.py chooses its own BLAS threads before importing NumPy).
  OpenBLAS's default pool oversubscribes a small shared machine: a 100x784 @ 784x500 product
  took 35 ms with the default pool and 0.8 ms with one thread;
* reads ``--smoke`` off the command line. Every script has this mode: a few steps on tiny
  data (``load`` keeps the first rows of each split), writing into a fresh temporary
  directory (``RESULTS``) instead of benchmarks/results, so that tests/test_benchmarks.py can
  run each script in seconds and an API change cannot silently break a benchmark.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if "numpy" not in sys.modules:  # only effective before NumPy is first imported
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

SMOKE = "--smoke" in sys.argv[1:]
RESULTS = Path(tempfile.mkdtemp(prefix="refgen_smoke_")) if SMOKE else ROOT / "benchmarks" / "results"
SMOKE_HELP = "a few steps on tiny data, written to a temporary directory (what the tests run)"


def add_smoke(parser):
    """Give an argparse parser the --smoke flag (read at import as ``SMOKE``)."""
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    return parser


def smoke(full, tiny):
    """``tiny`` in smoke mode, else ``full``."""
    return tiny if SMOKE else full


def run_dir(tag: str, given=None) -> Path:
    """Where a run's checkpoints and log go: ``given``, else /tmp/refgen_<tag> (in smoke
    mode always inside the smoke directory)."""
    if SMOKE:
        return RESULTS / "runs" / (Path(given).name if given else tag)
    return Path(given) if given else Path(tempfile.gettempdir()) / f"refgen_{tag}"


def rel(path) -> str:
    """A result file's name as the JSON records it: relative to the repository root."""
    path = Path(path).resolve()
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


_LOADED: dict = {}


def load(name: str, split: str = "train", n_smoke: int = 64, **kw):
    """refgen.data.load, keeping only the first ``n_smoke`` rows in smoke mode (where each
    split is read once per process)."""
    import dataclasses

    from refgen import data
    if not SMOKE:
        return data.load(name, split, **kw)
    key = (name, split, tuple(sorted(kw.items())))
    if key not in _LOADED:
        _LOADED[key] = data.load(name, split, **kw)
    ds = _LOADED[key]
    if ds.kind == "categorical":
        return ds
    return dataclasses.replace(ds, x=ds.x[:n_smoke], y=None if ds.y is None else ds.y[:n_smoke])


# ----------------------------------------------------------------------------- records
def machine() -> dict:
    """nproc, CPU model, backend, library versions, BLAS threads, the load average and the
    CPU seconds this process has used when called (at the end of a run): what a reader needs
    to compare timings. On a shared machine the CPU seconds, not the wall time, say what the
    run cost."""
    import numpy as np

    from refgen import backend
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "backend": backend.name(),
            "python": platform.python_version(), "numpy": np.__version__,
            "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
            "blas_core": backend.blas_core(), "avx512": _cpu_has("avx512f"),
            "load_avg_at_end": ([round(v, 2) for v in os.getloadavg()]
                                if hasattr(os, "getloadavg") else None),
            "process_cpu_s": round(time.process_time(), 1)}


def _cpu_has(flag: str) -> bool | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return flag in line.split(":", 1)[1].split()
    except OSError:
        pass
    return None


def command() -> str:
    """The command line that reproduces this run, from the repository root, with the
    environment variables that change what it does."""
    env = " ".join(f"{k}={os.environ[k]}" for k in ("REFGEN_BACKEND", "OPENBLAS_CORETYPE")
                   if k in os.environ)  # the second picks the BLAS kernels: a timing's context
    return (env + " " if env else "") + "python " + " ".join(
        [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])


def write_json(path, obj) -> Path:
    """Write ``obj`` as sorted, indented JSON (NumPy scalars as floats); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return path


def write_result(tag: str, result: dict) -> Path:
    """RESULTS/<tag>.json (benchmarks/results, or the smoke directory)."""
    return write_json(RESULTS / f"{tag}.json", result)


def fit(model, ds, steps: int, lr: float, seed: int, batch_size: int, log=None, points: int = 10,
        quiet: bool = True, ema: float | None = None, at_point=None) -> float:
    """``steps`` of model.train_step with one Adam over its trainable parameters, batches drawn
    with replacement (a NumPy generator seeded ``seed``), the model's noise from a backend
    generator seeded ``seed``; (step, loss) at ``points`` steps appended to ``log``. For the
    students whose round or schedule lives in the model (progressive distillation, consistency
    models), where the loop's checkpoints are not needed. at_point(step): called at each log
    point in eval mode, holding the averaged weights under ``ema``; its seconds are not
    counted. Returns the wall seconds of training."""
    import numpy as np

    from refgen import backend, optim
    from refgen.autograd import Tensor
    from refgen.models.base import Batch
    opts = {"model": optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)}
    rng, noise = np.random.default_rng(seed), backend.default_rng(seed)
    average = optim.EMA(model, ema) if ema else None
    model.train()
    t = time.perf_counter()
    for k in range(steps):
        xb = ds.x[rng.integers(0, len(ds.x), batch_size)]
        info = model.train_step(Batch(Tensor(backend.asarray(xb))), opts, noise)
        if average is not None:
            average.update()
        if log is not None and (k + 1) % max(1, steps // points) == 0:
            log.append((k + 1, round(info["loss"], 5)))
            if not quiet:
                print(f"  step {k + 1}/{steps}  loss {info['loss']:.5f}  "
                      f"{(k + 1) / (time.perf_counter() - t):.2f} steps/s", flush=True)
            if at_point is not None:
                t_point = time.perf_counter()
                model.eval()
                with average.swapped() if average is not None else contextlib.nullcontext():
                    at_point(k + 1)
                model.train()
                t += time.perf_counter() - t_point
    if average is not None:
        average.copy_to()
    model.eval()
    return time.perf_counter() - t


def train_and_load(model, train_ds, *, steps: int, batch_size: int, settings: dict, seed: int,
                   quiet: bool = False) -> dict:
    """Train ``model`` in a temporary run directory with ``settings`` (a model's
    default_train: lr, ema, warmup, grad_clip, schedule), load the weights the run's samples would use (the EMA
    where there is one) and return train_wall_s, final_loss and a ten-point loss_curve."""
    from refgen import io
    from refgen.train import CHECKPOINT, load_weights, train
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        m = train(model, train_ds, steps=steps, batch_size=batch_size, lr=settings["lr"],
                  seed=seed, out_dir=tmp, ema_decay=settings["ema"],
                  warmup=settings.get("warmup", 0), grad_clip=settings.get("grad_clip"),
                  schedule=settings.get("schedule", "constant"), progress=not quiet, samples=False, log_every=max(1, steps // 10))
        log = [json.loads(ln) for ln in open(os.path.join(tmp, "log.jsonl"))]
        load_weights(model, io.load_checkpoint(os.path.join(tmp, CHECKPOINT))[0])
    return {"train_wall_s": round(time.perf_counter() - t0, 1), "final_loss": m["loss"],
            "loss_curve": [(r["step"], round(r["loss"], 4)) for r in log]}


def train_in_chunks(model, ds, out, *, steps, budget_min, chunk, **train_kw):
    """refgen.train.train in calls of ``chunk`` steps, each resuming the checkpoint in
    ``out`` (so a stopped run loses at most one chunk), until ``steps`` or ``budget_min``
    minutes (checked between chunks). Returns the step the checkpoint holds."""
    import math

    from refgen import io
    from refgen.train import train
    done = 0
    if (Path(out) / "checkpoint.npz").exists():
        done = int(io.load_checkpoint(Path(out) / "checkpoint.npz")[1]["step"])
    t0 = time.perf_counter()
    deadline = t0 + 60 * budget_min if budget_min else math.inf
    while done < steps and time.perf_counter() < deadline:
        m = train(model, ds, steps=min(steps, done + chunk), out_dir=out, ckpt_every=chunk,
                  resume=done > 0, progress=False, samples=False, **train_kw)
        done = m["steps"]
        print(f"step {done}  loss {m['loss']:.4f}  wall {m['wall_s']:.0f}s  "
              f"(this call {time.perf_counter() - t0:.0f}s)", flush=True)
    return done


def dest(flag):
    """The argparse attribute of a flag: '--batch-size' -> 'batch_size'."""
    return flag[2:].replace("-", "_")


def asked_flags(args, flags) -> dict:
    """{flag: value} for each of ``flags`` ('--batch-size', ...) that the command line gave,
    read from ``args.batch_size``: each such flag's parser default is None, so a flag given at
    all is asked, even at its usual value; and {'--set KEY': value} for each ``--set
    KEY=VALUE``. What a run that continues is asked."""
    from refgen.runs import parse_sets
    asked = {f: getattr(args, dest(f)) for f in flags}
    asked = {f: v for f, v in asked.items() if v is not None}
    asked.update({f"--set {k}": v for k, v in parse_sets(getattr(args, "set", None)).items()})
    return asked


def fill_defaults(args, defaults: dict):
    """Set each flag of ``defaults`` ({'--lr': 2e-4, ...}) that the command line left unset
    (None) to its default, in place: for a new run, after ``asked_flags`` has read what was
    given."""
    for f, v in defaults.items():
        if getattr(args, dest(f)) is None:
            setattr(args, dest(f), v)
    return args


def continue_run(out, stored: dict, asked: dict, changeable=()) -> tuple[dict, list]:
    """The settings of the run in ``out`` that continues, each named by its flag ('--lr',
    '--set channels'). ``stored``: the run's, as its config.json holds them; ``asked``: those
    the command line gives (``asked_flags``: a flag left unset is not asked). A flag in ``changeable``
    takes the asked value from the checkpoint's step on, each change returned as {step,
    setting, from, to}; any other asked value that differs from the run's is an error naming
    it, so that a continued run never drops a flag silently. Returns (the stored settings
    with the changes made, the changes)."""
    from refgen import io
    wrong = [f"{k} {v} (the run has {stored.get(k)})" for k, v in asked.items()
             if k not in changeable and v != stored.get(k)]
    if wrong:
        raise SystemExit(f"{out} continues with its own settings; got {'; '.join(wrong)}. "
                         f"Accepted changes: {', '.join(changeable) or 'none'}")
    new = {k: v for k, v in asked.items() if k in changeable and v != stored.get(k)}
    ckpt = Path(out) / "checkpoint.npz"
    step = int(io.load_checkpoint(ckpt)[1]["step"]) if new and ckpt.exists() else 0
    changes = [{"step": step, "setting": k, "from": stored.get(k), "to": v} for k, v in new.items()]
    return dict(stored, **new), changes


def read_log(run, key: str) -> list[dict]:
    """The lines of a run directory's log.jsonl that mention ``key``, parsed."""
    lines = (Path(run) / "log.jsonl").read_text().splitlines()
    return [json.loads(ln) for ln in lines if ln.strip() and key in ln]


# ----------------------------------------------------------------------------- scoring
def low_res(x):
    """(B, 1, 28, 28) -> the same images at 14x14 resolution, shown at 28x28 (2x2 blocks):
    2x2 average pooling, then nearest upsampling."""
    b = len(x)
    small = x.reshape(b, 1, 14, 2, 14, 2).mean(axis=(3, 5))
    return small.repeat(2, axis=2).repeat(2, axis=3)



def test_nll(log_prob, x, chunk=500) -> float:
    """Mean -log p(x) in nats over the rows of host array ``x``, in chunks, without a graph."""
    from refgen import backend
    from refgen.autograd import no_grad
    total = 0.0
    with no_grad():
        for i in range(0, len(x), chunk):
            lp = log_prob(backend.asarray(x[i:i + chunk]))
            total += float(backend.to_numpy(lp.data if hasattr(lp, "data") else lp).sum())
    return -total / len(x)


def log_probs(model, x, chunk=1000):
    """log p(x) (float64 NumPy, one per row of host array x), in chunks, without a graph."""
    import numpy as np

    from refgen import backend
    from refgen.autograd import Tensor, no_grad
    out = []
    model.eval()
    with no_grad():
        for i in range(0, len(x), chunk):
            lp = model.log_prob(Tensor(backend.asarray(x[i:i + chunk])))
            out.append(backend.to_numpy(lp.data).astype(np.float64))
    model.train()
    return np.concatenate(out)


def sample_grid(model, path, n=64, seed=1234, value_range=(0.0, 1.0), nrow=None, **sample_kw) -> float:
    """Draw n samples with a fixed generator and write them as a PNG grid, mapped from
    ``value_range`` to [0, 1] (and clipped there); returns the seconds the sampling took."""
    import numpy as np

    from refgen import backend, io
    from refgen.autograd import no_grad
    model.eval()
    t = time.perf_counter()
    with no_grad():
        x = backend.to_numpy(model.sample(n, rng=backend.default_rng(seed), **sample_kw))
    took = time.perf_counter() - t
    lo, hi = value_range
    x = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    io.write_png(path, io.image_grid(x) if nrow is None else io.image_grid(x, nrow=nrow))
    model.train()
    return took


class Draw:
    """A sampler as refgen.metrics.evaluation.evaluate reads a model: sample(n, cond=None, *,
    rng) -> fn(n, rng) without a graph; ``wall_s`` sums the seconds spent drawing."""
    training = False

    def __init__(self, fn):
        self.fn, self.wall_s = fn, 0.0

    def sample(self, n, cond=None, *, rng):
        from refgen.autograd import no_grad
        t = time.perf_counter()
        with no_grad():
            out = self.fn(n, rng)
        self.wall_s += time.perf_counter() - t
        return out

    def eval(self):
        return self

    def train(self, mode=True):
        return self


class NFECounter:
    """Counts the rows a network's forward sees while the block runs: ``rows / n`` is the
    number of network evaluations per sample of n samples (a guided batch of 2n counts twice).

        with NFECounter(model.net) as c:
            model.sample(n, rng=rng)
        c.per_sample(n)
    """

    def __init__(self, net):
        self.net, self.rows = net, 0

    def __enter__(self):
        inner = type(self.net).forward.__get__(self.net)

        def forward(x, *a, **kw):
            self.rows += int(x.shape[0])
            return inner(x, *a, **kw)
        object.__setattr__(self.net, "forward", forward)
        return self

    def __exit__(self, *exc):
        del self.net.__dict__["forward"]
        return False

    def per_sample(self, n: int) -> float:
        return self.rows / max(1, int(n))


_POOL = {}   # what the forked workers of PoolDraw read: fn and the network to count


def _pool_batch(job):
    """One batch of PoolDraw in a worker: (rows (size, ...) host array, network rows seen)."""
    from refgen import backend
    from refgen.autograd import no_grad
    j, size, seed = job
    fn, net = _POOL["fn"], _POOL["net"]
    rng = backend.default_rng([seed, j])
    with contextlib.ExitStack() as stack:
        stack.enter_context(no_grad())
        c = stack.enter_context(NFECounter(net)) if net is not None else None
        x = backend.to_numpy(fn(size, rng))
    return x, (c.rows if c is not None else 0)


class PoolDraw(Draw):
    """Draw that spreads a sampler over ``workers`` forked processes (NumPy backend only).

    evaluate asks for its samples batch by batch; the first call draws all ``n`` at once,
    ``batch`` rows at a time, batch j from its own generator default_rng([seed, j]), the
    batches spread over the workers, and each call hands out the next rows. The samples
    depend on (seed, batch, n) and not on the number of workers; they are not the draws of
    the serial Draw (whose batches share evaluate's generator). ``rows`` sums the network
    rows the workers' forwards saw (``net``: the network to count; NFECounter cannot see
    into other processes). ``wall_s`` is the wall time of the parallel draw; ``progress``, a
    label, prints a line as each batch arrives."""

    def __init__(self, fn, n, batch, workers, seed, net=None, progress=None):
        super().__init__(fn)
        from refgen import backend
        if backend.name() != "numpy":
            raise ValueError("PoolDraw forks CPU processes: it needs the NumPy backend")
        self.n, self.batch, self.workers, self.seed, self.net = int(n), int(batch), int(workers), seed, net
        self.rows, self._x, self._at, self.progress = 0, None, 0, progress

    def _draw_all(self):
        import multiprocessing as mp

        import numpy as np
        sizes = [min(self.batch, self.n - i) for i in range(0, self.n, self.batch)]
        _POOL.update(fn=self.fn, net=self.net)
        t = time.perf_counter()
        try:
            with mp.get_context("fork").Pool(self.workers) as pool:
                parts = []
                for part in pool.imap(_pool_batch, [(j, s, self.seed) for j, s in enumerate(sizes)]):
                    parts.append(part)
                    if self.progress:
                        print(f"{self.progress}: {len(parts)}/{len(sizes)} batches drawn by "
                              f"{self.workers} workers, {time.perf_counter() - t:.0f}s", flush=True)
        finally:
            _POOL.clear()
        self.wall_s += time.perf_counter() - t
        self._x = np.concatenate([x for x, _ in parts])
        self.rows += sum(r for _, r in parts)

    def sample(self, n, cond=None, *, rng):
        from refgen import backend
        if self._x is None:
            self._draw_all()
        if self._at + n > len(self._x):
            raise ValueError(f"PoolDraw drew {len(self._x)} samples; asked for rows "
                             f"{self._at}..{self._at + n}")
        out = self._x[self._at:self._at + n]
        self._at += n
        return backend.asarray(out)
