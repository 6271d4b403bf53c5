"""Helpers shared by benchmarks/diffusion_2d.py and benchmarks/diffusion_mnist.py: the machine
facts and exact command recorded with every result, and JSON writing."""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict:
    """nproc, CPU model, backend, BLAS threads and the load at the end: enough to read a timing."""
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
            "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
            "load_avg_at_end": [round(v, 2) for v in os.getloadavg()]}


def command() -> str:
    env = " ".join(f"{k}={os.environ[k]}" for k in ("REFGEN_BACKEND", "REFGEN_DATA_DIR")
                   if k in os.environ)
    return (env + " " if env else "") + "python " + " ".join(
        [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])


def write_json(path, obj):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")
    print(f"wrote {path}", file=sys.stderr)
