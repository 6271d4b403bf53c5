"""A one-line progress report for long samplers and solvers (stderr, rewritten in place)."""
from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """``update(i, total=None, t=None)``; enabled=None shows it when stderr is a terminal."""

    def __init__(self, label: str, total=None, enabled=None, every: float = 0.5):
        self.label, self.total = label, total
        self.enabled = sys.stderr.isatty() if enabled is None else bool(enabled)
        self.t0 = self.last = time.perf_counter()
        self.every = every
        self.shown = False

    def __call__(self, i, total=None, t=None):
        if not self.enabled:
            return
        now = time.perf_counter()
        total = total or self.total
        if now - self.last < self.every and i != total:
            return
        self.last = now
        rate = i / max(now - self.t0, 1e-9)
        line = f"{self.label}: step {i}" + (f"/{total}" if total else "")
        if t is not None:
            line += f"  t={t:.4f}"
        line += f"  {rate:.1f} steps/s"
        if total:
            line += f"  ETA {max(total - i, 0) / max(rate, 1e-9):.0f}s"
        sys.stderr.write("\r" + line + " " * 4)
        sys.stderr.flush()
        self.shown = True

    def close(self):
        if self.enabled and self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
