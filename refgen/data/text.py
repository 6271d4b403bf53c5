"""Character-level text: one UTF-8 file -> a vocabulary and int64 token ids.

The vocabulary is the sorted set of characters of the whole file (so train and test share
it); token i is ``vocab[i]``.  The first 90% of the tokens are the train split, the rest
the test split.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["load_text", "encode", "decode", "TRAIN_FRACTION"]

TRAIN_FRACTION = 0.9


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4")  # one uint32 per character


def encode(text: str, vocab: list[str]) -> np.ndarray:
    """Characters -> int64 ids (n,); every character must be in vocab."""
    table = _codepoints("".join(vocab))  # sorted, as built by load_text
    codes = _codepoints(text)
    ids = np.minimum(np.searchsorted(table, codes), max(len(table) - 1, 0))
    if len(codes) and (len(table) == 0 or np.any(table[ids] != codes)):
        raise ValueError("text holds characters outside the vocabulary")
    return ids.astype(np.int64)


def decode(ids, vocab: list[str]) -> str:
    """int ids (n,) -> the string they spell."""
    return "".join(np.asarray(vocab, dtype=object)[np.asarray(ids, dtype=np.int64)])


def load_text(path, split: str = "train") -> tuple[np.ndarray, list[str]]:
    """(token ids int64 (n,), vocab list of single characters) of one split of a text file."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; accepted: train, test")
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read text file {path}: {e}") from None
    codes = _codepoints(text)
    table = np.unique(codes)  # sorted code points (V,)
    vocab = [chr(c) for c in table.tolist()]
    ids = np.searchsorted(table, codes).astype(np.int64)
    cut = int(TRAIN_FRACTION * len(ids))
    return (ids[:cut] if split == "train" else ids[cut:]), vocab
