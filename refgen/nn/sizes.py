"""Layer sizes from a hyperparameter: an int, a sequence, or a string such as "512,256" or
"(500, 500)" as ``--set hidden=...`` passes it."""
from __future__ import annotations

__all__ = ["parse_hidden"]


def parse_hidden(hidden) -> tuple:
    """Positive layer sizes as a tuple of ints: 64 -> (64,), "512,256" -> (512, 256)."""
    if isinstance(hidden, str):
        hidden = [h for h in hidden.strip("()[] ").replace(" ", "").split(",") if h]
    if isinstance(hidden, (int, float)):
        hidden = [hidden]
    try:
        sizes = tuple(int(h) for h in hidden)
    except (TypeError, ValueError):
        raise ValueError(f"layer sizes must be an int, a list of ints or a string such as "
                         f"'512,256'; got {hidden!r}") from None
    if any(h < 1 for h in sizes):
        raise ValueError(f"layer sizes must be positive ints, got {hidden!r}")
    return sizes
