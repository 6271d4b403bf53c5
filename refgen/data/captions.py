"""MNIST with captions: text generated from each digit's label and attributes measured on it.

Nothing can be downloaded, so the text is written here from what can be measured on a digit.
Every measurement is a public, vectorised function of a batch of images, so images a model
generates can be scored against the prompt that asked for them (``attribute_levels``).

Measurements on ink images  I (N, H, W), values in [0, 1]  (``to_ink`` maps a data range):

  mass         m = sum_ij I_ij
  centre       (cy, cx) = sum_ij I_ij (i, j) / m                           (centre of mass)
  moments      mu_ab = sum_ij I_ij (a - c_a)(b - c_b) / m,   a, b in {y, x}
  slant        -mu_xy / mu_yy: horizontal shift per pixel of height, > 0 when the top leans
               right (rows grow downwards, hence the sign); a line at angle theta from the
               vertical has slant tan(theta)
  thickness    2 m / P,  P = sum_ij |grad I|_ij (forward differences): ink area over half its
               perimeter, a skeleton-free stroke width (a w x L bar gives w L / (w + L) -> w)
  size         bounding-box area  (rows spanned) x (columns spanned)  of pixels with I > 1/2
  position     cx - (W - 1) / 2: the centre of mass's horizontal offset from the frame's centre

Each measure becomes one of three levels by the training set's tertiles (``thresholds``),
named by a word:

  thickness    thin | regular | thick
  slant        backslanted | upright | slanted
  size         small | medium | large
  position     left | central | right

MNIST's digits are centred by their centre of mass, so ``position`` varies by less than a
pixel across the data set: its levels are relative to the training set, not to the frame.

Captions come from templates with slots ({word}: "seven", {num}: "7", and the four
attributes), e.g. "a thick slanted seven", "7 , thin , small". The tokenizer is word level
over a fixed vocabulary (``VOCAB_PATH``, json, which also keeps the training tertiles) with
<pad>, <sot> and <eot>; every caption is <sot> words <eot> padded with <pad> to ``CONTEXT`` tokens.

Compositional test: ``HELDOUT_TEMPLATES`` are never used for training captions, and no
training caption names a digit together with a (thickness, slant) pair of
``HELDOUT_COMBOS``; the test set is captioned with both (``heldout_captions``).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .datasets import Dataset
from .mnist import find_mnist_dir, load_mnist

__all__ = ["to_ink", "ink_mass", "centre_of_mass", "second_moments", "slant", "thickness",
           "bbox_size", "position", "measure", "thresholds", "levels", "training_cuts",
           "attribute_levels",
           "ATTRIBUTES", "LEVEL_WORDS", "DIGIT_WORDS", "TEMPLATES", "HELDOUT_TEMPLATES",
           "HELDOUT_COMBOS", "CLASS_PROMPTS", "Tokenizer", "CONTEXT", "VOCAB_PATH",
           "caption_ids", "caption_text", "CaptionData", "heldout_captions", "CaptionDataset",
           "load_split"]

ATTRIBUTES = ("thickness", "slant", "size", "position")
LEVEL_WORDS = {"thickness": ("thin", "regular", "thick"),
               "slant": ("backslanted", "upright", "slanted"),
               "size": ("small", "medium", "large"),
               "position": ("left", "central", "right")}
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# training templates; {word} the digit's name, {num} its numeral
TEMPLATES = ("a {thickness} {slant} {word}",
             "{num} , {thickness} , {size}",
             "a {size} {word} , {position}",
             "the digit {word} , {slant} and {thickness}",
             "{num} , {position} , {slant}",
             "a {size} {thickness} {num}",
             "a handwritten {word}",
             "the number {num}")
# never used for training captions: the compositional test's new phrasings
HELDOUT_TEMPLATES = ("a {word} that is {thickness} and {slant}",
                     "{size} {slant} digit {num}")
# (digit, thickness level, slant level): never named together in a training caption
HELDOUT_COMBOS = ((7, 2, 0), (2, 0, 2), (4, 2, 1), (0, 0, 0), (9, 2, 2))
# zero-shot prompts: each is filled with every class to give one text embedding per class
CLASS_PROMPTS = ("a handwritten {word}", "the number {num}", "the digit {word}", "a {word}",
                 "{num}")

CONTEXT = 12  # tokens per caption, <sot> and <eot> included
VOCAB_PATH = Path(__file__).with_name("captions.json")
SPECIALS = ("<pad>", "<sot>", "<eot>")


# ----------------------------------------------------------------------------- measurements
def to_ink(images, value_range=(-1.0, 1.0)):
    """Images (N, 1, H, W) or (N, H, W) whose values lie in ``value_range`` -> ink (N, H, W)
    in [0, 1] (float32), clipped."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"images of shape {x.shape}: expected one channel (N, 1, H, W)")
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"images of shape {x.shape}: expected (N, H, W) or (N, 1, H, W)")
    lo, hi = (float(v) for v in value_range)
    return np.clip((x - np.float32(lo)) * np.float32(1.0 / (hi - lo)), 0.0, 1.0)


def ink_mass(ink):
    """m = sum of ink per image: (N, H, W) -> (N,) float64."""
    return ink.sum(axis=(1, 2), dtype=np.float64)


def centre_of_mass(ink):
    """(cy, cx), each (N,): the ink-weighted mean row and column."""
    _, h, w = ink.shape
    m = np.maximum(ink_mass(ink), 1e-12)
    rows, cols = ink.sum(axis=2, dtype=np.float64), ink.sum(axis=1, dtype=np.float64)
    return rows @ np.arange(h) / m, cols @ np.arange(w) / m


def second_moments(ink):
    """Central second moments (mu_yy, mu_xx, mu_xy), each (N,), ink-weighted:
    mu_ab = E[a b] - E[a] E[b] under the ink distribution."""
    _, h, w = ink.shape
    m = np.maximum(ink_mass(ink), 1e-12)
    cy, cx = centre_of_mass(ink)
    y, x = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
    e_yy = ink.sum(axis=2, dtype=np.float64) @ (y * y) / m
    e_xx = ink.sum(axis=1, dtype=np.float64) @ (x * x) / m
    e_xy = (ink @ x.astype(np.float32)).astype(np.float64) @ y / m  # sum_ij I_ij y_i x_j
    return e_yy - cy * cy, e_xx - cx * cx, e_xy - cx * cy


def slant(ink):
    """-mu_xy / mu_yy (N,): tan of the lean from the vertical, > 0 leaning right."""
    mu_yy, _, mu_xy = second_moments(ink)
    return -mu_xy / np.maximum(mu_yy, 1e-12)


def thickness(ink):
    """2 m / P (N,): ink area over half the perimeter P = sum |grad ink| (forward differences,
    zero outside the frame)."""
    p = np.pad(ink, ((0, 0), (0, 1), (0, 1)))
    gy, gx = p[:, 1:, :-1] - ink, p[:, :-1, 1:] - ink  # (N, H, W) each
    perimeter = np.sqrt(gy * gy + gx * gx).sum(axis=(1, 2), dtype=np.float64)
    # pixels in row/column 0 have an edge before them that forward differences do not see
    perimeter = (perimeter + ink[:, 0, :].sum(axis=1, dtype=np.float64)
                 + ink[:, :, 0].sum(axis=1, dtype=np.float64))
    return 2.0 * ink_mass(ink) / np.maximum(perimeter, 1e-12)


def bbox_size(ink, level: float = 0.5):
    """Bounding-box area (N,) of the pixels with ink > ``level``: rows spanned x columns spanned
    (0 for an empty image)."""
    on = ink > level
    rows, cols = on.any(axis=2), on.any(axis=1)  # (N, H), (N, W)

    def span(a):
        n = a.shape[1]
        first, last = a.argmax(axis=1), n - 1 - a[:, ::-1].argmax(axis=1)
        return np.where(a.any(axis=1), last - first + 1, 0)
    return (span(rows) * span(cols)).astype(np.float64)


def position(ink):
    """cx - (W - 1) / 2 (N,): the centre of mass's offset from the frame's centre, > 0 right."""
    return centre_of_mass(ink)[1] - (ink.shape[2] - 1) / 2.0


_MEASURES = {"thickness": thickness, "slant": slant, "size": bbox_size, "position": position}


def measure(images, value_range=(-1.0, 1.0)) -> dict:
    """{attribute: (N,) float64 measurement} for images in ``value_range``."""
    ink = to_ink(images, value_range)
    return {a: _MEASURES[a](ink) for a in ATTRIBUTES}


def thresholds(measures: dict) -> dict:
    """{attribute: (q_1/3, q_2/3)}: the tertiles of each measurement (of the training set)."""
    return {a: tuple(float(q) for q in np.quantile(measures[a], [1 / 3, 2 / 3])) for a in ATTRIBUTES}


def levels(measures: dict, cuts: dict) -> np.ndarray:
    """(N, 4) int64 levels 0, 1, 2 in ATTRIBUTES order: the bin of each measurement among its
    two cut points."""
    return np.stack([np.searchsorted(np.asarray(cuts[a]), measures[a], side="right")
                     for a in ATTRIBUTES], axis=1).astype(np.int64)


def training_cuts() -> dict:
    """The tertiles of the MNIST training set's measurements, as saved in VOCAB_PATH (a test
    recomputes them from the data)."""
    cuts = json.loads(VOCAB_PATH.read_text())["cuts"]
    return {a: tuple(cuts[a]) for a in ATTRIBUTES}


def attribute_levels(images, value_range=(-1.0, 1.0), cuts: dict | None = None) -> np.ndarray:
    """(N, 4) int64 levels of images (e.g. generated ones): column k is attribute
    ATTRIBUTES[k], 0..2 as in LEVEL_WORDS, under ``cuts`` (default: the training tertiles)."""
    return levels(measure(images, value_range), cuts or training_cuts())


# ----------------------------------------------------------------------------- tokenizer
def _words(text: str) -> list:
    return re.sub(r",", " , ", text.lower()).split()


def _all_template_words() -> list:
    words = set()
    for t in TEMPLATES + HELDOUT_TEMPLATES + CLASS_PROMPTS:
        words.update(w for w in _words(t) if not w.startswith("{"))
    for ws in LEVEL_WORDS.values():
        words.update(ws)
    words.update(DIGIT_WORDS)
    words.update(str(d) for d in range(10))
    return list(SPECIALS) + sorted(words)


class Tokenizer:
    """Word-level tokenizer over a fixed vocabulary: text <-> (CONTEXT,) int64 ids.

    ``encode(text)`` lowercases, splits on spaces (a comma is a word of its own), and returns
    <sot> ids <eot> padded with <pad>; it refuses an empty text, words outside the vocabulary
    and texts longer than the context, each in one line. ``decode(ids)`` inverts it.
    """

    def __init__(self, words=None, context: int = CONTEXT):
        self.words = list(words) if words is not None else json.loads(VOCAB_PATH.read_text())["words"]
        self.index = {w: i for i, w in enumerate(self.words)}
        self.context = int(context)
        self.pad, self.sot, self.eot = (self.index[s] for s in SPECIALS)

    def __len__(self):
        return len(self.words)

    def save(self, path):
        """Write the vocabulary as json {"words": [...]}; ``Tokenizer.load`` reads it back."""
        Path(path).write_text(json.dumps({"words": self.words}) + "\n")

    @classmethod
    def load(cls, path, context: int = CONTEXT):
        return cls(json.loads(Path(path).read_text())["words"], context)

    def encode(self, text: str) -> np.ndarray:
        words = _words(text)
        if not words:
            raise ValueError("empty prompt: give at least one word, e.g. 'a thick seven'")
        unknown = sorted({w for w in words if w not in self.index or w in SPECIALS})
        if unknown:
            raise ValueError(f"words outside the vocabulary: {', '.join(unknown)}; the "
                             f"{len(self.words)} accepted words are in {VOCAB_PATH} "
                             "(refgen.data.captions.Tokenizer().words)")
        if len(words) + 2 > self.context:
            raise ValueError(f"prompt of {len(words)} words is longer than the context of "
                             f"{self.context - 2} words")
        ids = np.full(self.context, self.pad, dtype=np.int64)
        ids[:len(words) + 2] = [self.sot] + [self.index[w] for w in words] + [self.eot]
        return ids

    def encode_batch(self, texts) -> np.ndarray:
        """(n, CONTEXT) ids of a list of texts."""
        return np.stack([self.encode(t) for t in texts])

    def decode(self, ids) -> str:
        ids = np.asarray(ids).reshape(-1)
        out = []
        for i in ids[1:] if len(ids) and ids[0] == self.sot else ids:
            if i == self.eot:
                break
            out.append(self.words[int(i)])
        return " ".join(out).replace(" ,", ",")


# ----------------------------------------------------------------------------- captions
def _slot_ids(tok: Tokenizer, slot: str) -> np.ndarray:
    """Token id of a slot's word for each value: digits for {word}/{num}, levels else."""
    if slot == "word":
        return np.array([tok.index[w] for w in DIGIT_WORDS])
    if slot == "num":
        return np.array([tok.index[str(d)] for d in range(10)])
    return np.array([tok.index[w] for w in LEVEL_WORDS[slot]])


def caption_ids(template: str, labels, lev, tok: Tokenizer) -> np.ndarray:
    """(N, context) ids of ``template`` filled for each example: labels (N,), lev (N, 4)."""
    labels, lev = np.asarray(labels), np.asarray(lev)
    n = len(labels)
    cols = [np.full(n, tok.sot)]
    for w in _words(template):
        if w.startswith("{"):
            slot = w[1:-1]
            value = labels if slot in ("word", "num") else lev[:, ATTRIBUTES.index(slot)]
            cols.append(_slot_ids(tok, slot)[value])
        else:
            cols.append(np.full(n, tok.index[w]))
    cols.append(np.full(n, tok.eot))
    if len(cols) > tok.context:
        raise ValueError(f"template {template!r} is longer than the context of {tok.context}")
    out = np.full((n, tok.context), tok.pad, dtype=np.int64)
    out[:, :len(cols)] = np.stack(cols, axis=1)
    return out


def caption_text(template: str, label: int, lev) -> str:
    """One caption as text (the same words caption_ids encodes)."""
    fill = {a: LEVEL_WORDS[a][int(lev[k])] for k, a in enumerate(ATTRIBUTES)}
    return template.format(word=DIGIT_WORDS[int(label)], num=str(int(label)), **fill)


def _names_combo(template: str) -> bool:
    return all(s in template for s in ("{thickness}", "{slant}"))


def _in_heldout_combo(labels, lev) -> np.ndarray:
    """(N,) bool: the example's (digit, thickness, slant) is one of HELDOUT_COMBOS."""
    key = np.stack([labels, lev[:, 0], lev[:, 1]], axis=1)  # (N, 3)
    return (key[:, None, :] == np.array(HELDOUT_COMBOS)[None]).all(axis=2).any(axis=1)


@dataclass(eq=False)
class CaptionData:
    """Captions of one split: every training template's ids for every image, and which
    templates each image may be captioned with.

    ids      (N, len(TEMPLATES), context) int64
    allowed  (N, len(TEMPLATES)) bool: False where the template would name a held-out
             (digit, thickness, slant) combination
    """
    labels: np.ndarray
    lev: np.ndarray
    tok: Tokenizer = field(default_factory=Tokenizer)

    def __post_init__(self):
        self.ids = np.stack([caption_ids(t, self.labels, self.lev, self.tok) for t in TEMPLATES],
                            axis=1)
        combo = _in_heldout_combo(self.labels, self.lev)
        names = np.array([_names_combo(t) for t in TEMPLATES])
        self.allowed = ~(combo[:, None] & names[None, :])

    def sample(self, idx, rng) -> np.ndarray:
        """(B, context) ids: one allowed template per example, drawn uniformly with ``rng``."""
        idx = np.asarray(idx, dtype=np.int64)
        u = np.random.default_rng(rng).random((len(idx), len(TEMPLATES)))
        choice = np.where(self.allowed[idx], u, -1.0).argmax(axis=1)  # (B,)
        return self.ids[idx, choice]


def heldout_captions(labels, lev, tok: Tokenizer | None = None) -> dict:
    """The compositional test's captions of a (test) split: {name: (ids (M, context), rows)}

    'heldout_templates/<k>': HELDOUT_TEMPLATES[k] for every example (rows = all);
    'heldout_combos': TEMPLATES[0] for the examples whose (digit, thickness, slant) is held out.
    """
    tok = tok or Tokenizer()
    labels, lev = np.asarray(labels), np.asarray(lev)
    out = {f"heldout_templates/{k}": (caption_ids(t, labels, lev, tok), np.arange(len(labels)))
           for k, t in enumerate(HELDOUT_TEMPLATES)}
    rows = np.flatnonzero(_in_heldout_combo(labels, lev))
    out["heldout_combos"] = (caption_ids(TEMPLATES[0], labels[rows], lev[rows], tok), rows)
    return out


# ----------------------------------------------------------------------------- data set
@dataclass(eq=False)
class CaptionDataset(Dataset):
    """``mnist-captions``: x the MNIST images (N, 1, 28, 28) in [-1, 1], y the labels, and
    ``captions`` (a CaptionData). ``batch(idx, rng)`` returns (images, caption ids
    (B, CONTEXT) int64): one training template per image drawn with ``rng``, so the same
    seed gives the same captions."""
    captions: CaptionData | None = None

    def batch(self, indices, rng=None):
        idx = np.asarray(indices, dtype=np.int64)
        return self.x[idx], self.captions.sample(idx, rng)


_CACHE: dict = {}


def load_split(split: str, data_dir=None, download: bool = True, size: int = 28) -> CaptionDataset:
    """The ``split`` of mnist-captions (levels measured once per process and split).

    size 14: ``mnist-captions-14``, the images 2x2 average pooled as ``mnist-14``; the
    captions are those of the 28x28 digits (the attributes are measured there)."""
    images, labels = load_mnist(split, data_dir=data_dir, download=download)
    x = images[:, None].astype(np.float32) / np.float32(127.5) - np.float32(1)
    key = (split, str(find_mnist_dir(data_dir)))
    if key not in _CACHE:
        _CACHE[key] = attribute_levels(x)
    if size == 14:  # pooled as mnist-14 pools: the 0..255 values, then mapped to [-1, 1]
        k = images[:, None].astype(np.float32).reshape(len(x), 1, 14, 2, 14, 2).mean(axis=(3, 5))
        x = k / np.float32(127.5) - np.float32(1)                          # (N, 1, 14, 14)
    elif size != 28:
        raise ValueError(f"mnist-captions comes at size 28 or 14, got {size}")
    tok = Tokenizer()
    name = "mnist-captions" if size == 28 else f"mnist-captions-{size}"
    return CaptionDataset(name, split, x, labels.astype(np.int64), "continuous",
                          x.shape[1:], num_classes=10, vocab=list(tok.words),
                          value_range=(-1.0, 1.0),
                          captions=CaptionData(labels.astype(np.int64), _CACHE[key], tok))
