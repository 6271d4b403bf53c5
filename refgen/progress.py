"""Progress on stderr for anything that takes more than a moment.

``StepProgress``: the training line (step, running loss, steps/s, ETA): one updating line on
a terminal, a plain line every ``every`` steps otherwise.

``Stage``: one line for a piece of work after or outside training (evaluation, sampling):
``what ...`` then its time, ``what ... 12.3 s``. On a terminal the line shows how far the
work is and its ETA while it runs; elsewhere a count is appended at most every 15 s, so a
log file still gets one line per stage.

``SolverProgress``: the line of a long sampler or ODE solve (step i of total, the solver's
time t, steps/s, ETA), rewritten in place at most every ``every`` seconds; shown only on a
terminal unless asked for.
"""
from __future__ import annotations

import math
import sys
import time

__all__ = ["StepProgress", "Stage", "SolverProgress", "clock"]


def clock(seconds: float) -> str:
    """H:MM:SS (or --:-- when unknown)."""
    if not math.isfinite(seconds):
        return "--:--"
    return time.strftime("%H:%M:%S", time.gmtime(max(0.0, seconds)))


class StepProgress:
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
        line = f"step {step}/{self.total}  loss {loss:.4f}  {rate:.1f} steps/s  ETA {clock(eta)}"
        sys.stderr.write(("\r" + line.ljust(72) + ("\n" if final else "")) if self.tty else line + "\n")
        sys.stderr.flush()

    def abort(self):
        """End an updating terminal line, so an error message starts on its own line."""
        if self.tty:
            sys.stderr.write("\n")


class Stage:
    """``with Stage("evaluating", enabled) as s: ... s.update(done, total, label)``."""

    QUIET_EVERY = 15.0  # seconds between counts when stderr is not a terminal

    def __init__(self, what: str, enabled: bool = True):
        self.what, self.enabled = what, enabled
        self.tty = enabled and sys.stderr.isatty()
        self._t0 = self._last = 0.0

    def __enter__(self):
        self._t0 = self._last = time.perf_counter()
        self._write(f"{self.what} ...")
        return self

    def update(self, done: int, total: int, label: str = ""):
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last < (0.2 if self.tty else self.QUIET_EVERY):
            return
        self._last = now
        part = f"{label} {done}/{total}".strip()
        if self.tty:
            rate = done / max(now - self._t0, 1e-9)
            eta = (total - done) / rate if rate > 0 else float("inf")
            self._write(f"\r{self.what} ... {part}  ETA {clock(eta)}".ljust(72))
        else:
            self._write(f" {part}")

    def __exit__(self, *exc):  # ends the line even when the work fails
        dt = time.perf_counter() - self._t0
        if self.tty:  # wipe the counts, keep "what ..."
            self._write("\r" + " " * 72 + f"\r{self.what} ...")
        self._write(f" {dt:.1f} s\n")
        return False

    def _write(self, text):
        if self.enabled:
            sys.stderr.write(text)
            sys.stderr.flush()


class SolverProgress:
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
