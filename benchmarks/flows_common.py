"""Helpers shared by the flow benchmarks (flows_2d.py, flows_mnist.py): the machine
description, the exact command, a chunked test NLL and result writing."""
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
    """nproc, CPU model, load average, library versions: what a reader needs to compare timings."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from refgen import backend
    return {"nproc": os.cpu_count(), "cpu": cpu, "backend": backend.name(),
            "python": platform.python_version(), "numpy": np.__version__,
            "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
            "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def command() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])


def log_probs(model, x, chunk=1000) -> np.ndarray:
    """log p(x) (float64 NumPy, one per row of host array x), in chunks, without a graph."""
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


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"wrote {path}")
    return path
