"""What every benchmark script shares: where results go, and how a result records the exact
command and the machine it ran on.

Importing this module changes nothing in the environment (benchmarks/ops.py decides its own
BLAS threads); the training scripts set ``OPENBLAS_NUM_THREADS=1`` themselves, before NumPy is
imported, because OpenBLAS's default pool oversubscribes a small shared machine (measured in
benchmarks/made_mnist.py: a 100x784 @ 784x500 product took 35 ms with the default pool,
0.8 ms with one thread).
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


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
            "load_avg_at_end": ([round(v, 2) for v in os.getloadavg()]
                                if hasattr(os, "getloadavg") else None),
            "process_cpu_s": round(time.process_time(), 1)}


def command() -> str:
    """The command line that reproduces this run, from the repository root, with the
    environment variables that change what it does."""
    env = " ".join(f"{k}={os.environ[k]}" for k in ("REFGEN_BACKEND",) if k in os.environ)
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
    """benchmarks/results/<tag>.json."""
    return write_json(RESULTS / f"{tag}.json", result)
