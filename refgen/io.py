"""Files: checkpoints (.npz, never pickle), a PNG writer, image grids, 2D plots, and line
plots with their axes labelled in a built-in 3x5 bitmap font.

Every writer is atomic: it writes a temporary file in the target's directory and renames
it over the target (``os.replace``), so a crash never leaves a half-written file behind
and an existing file is either the old one or the new one.

Image conventions: uint8, or float in [0, 1] (clipped); (H, W) gray or (H, W, 3) RGB.
2D plots map ``extent = (xmin, xmax, ymin, ymax)`` onto the image with y pointing up.
"""
from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from refgen.backend import to_numpy

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError", "write_png", "png_bytes",
           "to_uint8", "colormap", "image_grid", "scatter_image", "scatter_png", "heatmap_image", "heatmap_png",
           "grid_points", "concat_images_horizontal", "captioned", "atomic_write", "draw_text", "text_width",
           "line_plot", "is_refgen_png"]

_META_KEY = "__meta__"


class CheckpointError(ValueError):
    """A checkpoint file that refgen will not read (not an .npz, or holding pickles)."""


@contextlib.contextmanager
def atomic_write(path):
    """``with atomic_write(path) as f:`` -> a binary file that becomes ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ----------------------------------------------------------------------------- checkpoints
def _json_default(o):
    if isinstance(o, (np.generic, np.ndarray)):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"checkpoint meta holds a {type(o).__name__}, which JSON cannot store")


def save_checkpoint(path, arrays: dict, meta: dict | None = None) -> None:
    """Write ``arrays`` (name -> array, host or device) and JSON-able ``meta`` to an .npz.

    ``meta`` is stored as its JSON text, UTF-8 bytes in a uint8 array under ``__meta__``.
    """
    out = {}
    for k, v in arrays.items():
        if k == _META_KEY:
            raise ValueError(f"array name {_META_KEY!r} is reserved for the checkpoint meta")
        a = np.asarray(to_numpy(v))
        if a.dtype.hasobject:
            raise TypeError(f"array {k!r} has dtype object; checkpoints hold numeric arrays only")
        out[k] = a
    text = json.dumps(meta or {}, default=_json_default, sort_keys=True)
    out[_META_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    with atomic_write(path) as f:
        np.savez(f, **out)


def load_checkpoint(path) -> tuple[dict, dict]:
    """(arrays: name -> NumPy array, meta: dict) of a checkpoint; pickled objects refused."""
    try:
        with open(path, "rb") as f:  # our handle, closed even when np.load fails
            z = np.load(f, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise CheckpointError(f"{path}: a single .npy array, not an .npz checkpoint")
            with z:
                arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        if isinstance(e, CheckpointError):
            raise
        if "pickle" in str(e).lower():
            raise CheckpointError(f"{path}: holds pickled objects, which can run code when "
                                  "loaded; refgen checkpoints are plain arrays, refusing it") from None
        raise CheckpointError(f"{path}: not a readable .npz checkpoint ({e})") from None
    except (zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable .npz checkpoint ({e})") from None
    meta_bytes = arrays.pop(_META_KEY, None)
    try:
        meta = json.loads(meta_bytes.tobytes().decode("utf-8")) if meta_bytes is not None else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: its {_META_KEY} entry is not JSON text ({e})") from None
    return arrays, meta


# ----------------------------------------------------------------------------- PNG
def to_uint8(img) -> np.ndarray:
    """uint8 as is; floats in [0, 1] -> round(255 x), clipped (NaN -> 0)."""
    img = np.asarray(to_numpy(img))
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.bool_:
        return img.astype(np.uint8) * 255
    img = np.nan_to_num(img.astype(np.float64), nan=0.0)
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


_PNG_MARK = b"Software\x00refgen"  # a tEXt chunk naming the writer


def is_refgen_png(path) -> bool:
    """Whether ``path`` is a PNG that refgen wrote (its tEXt chunk says so)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return False
    return head.startswith(b"\x89PNG\r\n\x1a\n") and _PNG_MARK in head


def png_bytes(img) -> bytes:
    """The PNG encoding (8-bit, filter 0 on every row) of a (H, W) or (H, W, 3|4) image."""
    img = to_uint8(img)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    color = {2: 0, 3: {3: 2, 4: 6}.get(img.shape[-1])}.get(img.ndim)  # gray / RGB / RGBA
    if color is None:
        raise ValueError(f"image must be (H, W), (H, W, 3) or (H, W, 4); got shape {img.shape}")
    h, w = img.shape[:2]
    rows = np.concatenate([np.zeros((h, 1), np.uint8), img.reshape(h, -1)], axis=1)  # filter byte
    return (b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
            + _chunk(b"tEXt", _PNG_MARK)
            + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + _chunk(b"IEND", b""))


def write_png(path, img) -> None:
    """Write an image (uint8, or float in [0, 1]; (H, W) or (H, W, 3)) as a PNG, atomically."""
    data = png_bytes(img)
    with atomic_write(path) as f:
        f.write(data)


# ----------------------------------------------------------------------------- layouts
def image_grid(images, nrow: int | None = None, pad: int = 2, pad_value: float = 0.5):
    """Tile images (N, H, W) or (N, C, H, W), C in {1, 3}, floats in [0, 1], into one image.

    ``nrow`` images per row (default ceil(sqrt(N))), filled row by row; ``pad`` pixels of
    ``pad_value`` around and between them.  Returns (H', W') for gray, (H', W', 3) for RGB.
    """
    x = np.asarray(to_numpy(images), dtype=np.float64)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W) or (N, C, H, W) with C 1 or 3; got {x.shape}")
    n, c, h, w = x.shape
    ncol = int(nrow or np.ceil(np.sqrt(n)))
    nrows = -(-n // ncol)
    x = np.pad(x, ((0, nrows * ncol - n), (0, 0), (0, pad), (0, pad)), constant_values=pad_value)
    x = x.reshape(nrows, ncol, c, h + pad, w + pad).transpose(0, 3, 1, 4, 2)  # (r, H, col, W, C)
    x = x.reshape(nrows * (h + pad), ncol * (w + pad), c)
    x = np.pad(x, ((pad, 0), (pad, 0), (0, 0)), constant_values=pad_value)
    return x[:, :, 0] if c == 1 else x


def captioned(img, text: str, scale: int = 2, pad: int = 4):
    """A gray image (H, W) in [0, 1] with ``text`` drawn in a white band above it (the band
    and the image widened to the text when it is wider)."""
    img = np.asarray(img, dtype=np.float64)
    w = max(img.shape[1], text_width(text, scale) + 2 * pad)
    band = np.ones((5 * scale + 2 * pad, w))
    draw_text(band, text, pad, pad, scale)
    body = np.pad(img, ((0, 0), (0, w - img.shape[1])), constant_values=1.0)
    return np.concatenate([band, body], axis=0)


def concat_images_horizontal(images, pad: int = 4, pad_value: int = 255) -> np.ndarray:
    """Panels side by side -> uint8 (H, W, 3); shorter panels are padded at the bottom."""
    imgs = [to_uint8(im) for im in images]
    imgs = [np.repeat(im[:, :, None], 3, axis=2) if im.ndim == 2 else im[:, :, :3] for im in imgs]
    h = max(im.shape[0] for im in imgs)
    cols = []
    for i, im in enumerate(imgs):
        if i:
            cols.append(np.full((h, pad, 3), pad_value, np.uint8))
        cols.append(np.pad(im, ((0, h - im.shape[0]), (0, 0), (0, 0)), constant_values=pad_value))
    return np.concatenate(cols, axis=1)


def concat_images_vertical(images, pad: int = 4, pad_value: int = 255) -> np.ndarray:
    """Panels one above the other -> uint8 (H, W, 3); narrower panels are padded on the right."""
    rotated = [np.swapaxes(to_uint8(im), 0, 1) for im in images]
    return np.swapaxes(concat_images_horizontal(rotated, pad, pad_value), 0, 1)


def labelled_panel(img, text: str) -> np.ndarray:
    """A uint8 panel with ``text`` in its top-left corner and a grey frame (so white panels
    side by side stay apart)."""
    f = to_uint8(img).astype(np.float64) / 255.0
    draw_text(f, text, 6, 6, scale=2, color=np.array([0.1, 0.1, 0.1]))
    f[[0, -1], :] = f[:, [0, -1]] = 190 / 255.0
    return to_uint8(f)


# ----------------------------------------------------------------------------- 2D plots
_DATA_RGB = np.array([0.55, 0.62, 0.75])   # reference data: grey-blue
_MODEL_RGB = np.array([0.85, 0.33, 0.10])  # model samples: orange-red


def _pixel_index(points, extent, size):
    """Flat pixel index of each point inside extent (y up), as an int array."""
    p = np.asarray(to_numpy(points), dtype=np.float64).reshape(-1, 2)
    p = p[np.isfinite(p).all(axis=1)]
    xmin, xmax, ymin, ymax = extent
    col = np.floor((p[:, 0] - xmin) / (xmax - xmin) * size).astype(np.int64)
    row = np.floor((ymax - p[:, 1]) / (ymax - ymin) * size).astype(np.int64)
    ok = (col >= 0) & (col < size) & (row >= 0) & (row < size)
    return row[ok] * size + col[ok]


def _splat(canvas, points, extent, rgb, strength):
    """Alpha-blend a point layer: alpha = 1 - exp(-strength * hits) over a 2x2 footprint."""
    size = canvas.shape[0]
    hits = np.bincount(_pixel_index(points, extent, size), minlength=size * size)
    hits = hits.reshape(size, size).astype(np.float64)
    hits[1:, :] += hits[:-1, :]  # widen each dot to 2x2 pixels so it stays visible
    hits[:, 1:] += hits[:, :-1]
    alpha = (1.0 - np.exp(-strength * hits))[:, :, None]
    return canvas * (1.0 - alpha) + rgb * alpha


def scatter_image(points, reference=None, extent=(-4, 4, -4, 4), size=512, strength=0.6):
    """(size, size, 3) uint8: model ``points`` (n, 2) in orange over ``reference`` in blue
    (either may be None)."""
    canvas = np.ones((size, size, 3))
    if reference is not None:
        canvas = _splat(canvas, reference, extent, _DATA_RGB, strength)
    if points is not None:
        canvas = _splat(canvas, points, extent, _MODEL_RGB, strength)
    return to_uint8(canvas)


def scatter_legend(width: int, height: int = 28) -> np.ndarray:
    """A uint8 strip naming scatter_image's colours: the data blue, the samples orange."""
    f = np.ones((height, width, 3))
    draw_text(f, "DATA", 8, 8, scale=2, color=_DATA_RGB)
    draw_text(f, "MODEL SAMPLES", 8, 8 + text_width("DATA ", 2) + 8, scale=2, color=_MODEL_RGB)
    return to_uint8(f)


def scatter_png(path, points, reference=None, extent=(-4, 4, -4, 4), size=512) -> np.ndarray:
    """Write scatter_image(...) as a PNG; returns the image."""
    img = scatter_image(points, reference, extent, size)
    write_png(path, img)
    return img


# viridis-like colour stops, from dark (low) to bright (high)
_CMAP = np.array([[0.267, 0.005, 0.329], [0.229, 0.322, 0.546], [0.128, 0.567, 0.551],
                  [0.369, 0.789, 0.383], [0.993, 0.906, 0.144]])


def colormap(t) -> np.ndarray:
    """Values in [0, 1], any shape S -> RGB floats, shape S + (3,)."""
    t = np.clip(np.nan_to_num(np.asarray(t, dtype=np.float64)), 0.0, 1.0)
    stops = np.linspace(0.0, 1.0, len(_CMAP))
    return np.stack([np.interp(t, stops, _CMAP[:, i]) for i in range(3)], axis=-1)


def grid_points(extent=(-4, 4, -4, 4), n: int = 200) -> np.ndarray:
    """(n*n, 2) cell centres of an n x n grid over extent, in heatmap order:
    ``heatmap_image(f(grid_points(e, n)).reshape(n, n), e)`` draws f."""
    xmin, xmax, ymin, ymax = extent
    xs = xmin + (np.arange(n) + 0.5) * (xmax - xmin) / n
    ys = ymin + (np.arange(n) + 0.5) * (ymax - ymin) / n
    gx, gy = np.meshgrid(xs, ys)  # gx[i, j] = xs[j], gy[i, j] = ys[i]
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def heatmap_image(values, extent=(-4, 4, -4, 4), size=None, points=None, vmin=None, vmax=None):
    """(S, S, 3) uint8 colour map of a (ny, nx) grid of values (row 0 at ymin, as from
    grid_points), stretched to ``size`` pixels (nearest neighbour; default: grid size),
    optionally with ``points`` (n, 2) splatted on top in white."""
    v = np.asarray(to_numpy(values), dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"heatmap values must be a 2D grid; got shape {v.shape}")
    finite = v[np.isfinite(v)]
    lo = vmin if vmin is not None else (finite.min() if finite.size else 0.0)
    hi = vmax if vmax is not None else (finite.max() if finite.size else 1.0)
    t = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    img = colormap(t)[::-1]  # image row 0 is the top, i.e. ymax
    if size is not None:
        rows = np.arange(size) * img.shape[0] // size
        cols = np.arange(size) * img.shape[1] // size
        img = img[rows[:, None], cols[None, :]]
    if points is not None:
        img = _splat(img, points, extent, np.ones(3), 0.6)
    return to_uint8(img)


def heatmap_png(path, values, extent=(-4, 4, -4, 4), size=None, points=None,
                vmin=None, vmax=None) -> np.ndarray:
    """Write heatmap_image(...) as a PNG (e.g. values = exp(log_prob) on a grid); returns it."""
    img = heatmap_image(values, extent, size, points, vmin, vmax)
    write_png(path, img)
    return img


# ----------------------------------------------------------------------------- text and line plots
# A 3x5 bitmap font (upper case, digits and a little punctuation): enough to label axes
# without a font library. Each glyph is five rows of three pixels, '#' = ink.
_FONT = dict(zip(
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ.-=()/:, +",
    [g.split("|") for g in (
        "###|#.#|#.#|#.#|###", ".#.|##.|.#.|.#.|###", "###|..#|###|#..|###", "###|..#|###|..#|###",
        "#.#|#.#|###|..#|..#", "###|#..|###|..#|###", "###|#..|###|#.#|###", "###|..#|..#|..#|..#",
        "###|#.#|###|#.#|###", "###|#.#|###|..#|###", ".#.|#.#|###|#.#|#.#", "##.|#.#|##.|#.#|##.",
        "###|#..|#..|#..|###", "##.|#.#|#.#|#.#|##.", "###|#..|##.|#..|###", "###|#..|##.|#..|#..",
        "###|#..|#.#|#.#|###", "#.#|#.#|###|#.#|#.#", "###|.#.|.#.|.#.|###", "..#|..#|..#|#.#|###",
        "#.#|#.#|##.|#.#|#.#", "#..|#..|#..|#..|###", "#.#|###|###|#.#|#.#", "##.|#.#|#.#|#.#|#.#",
        "###|#.#|#.#|#.#|###", "###|#.#|###|#..|#..", "###|#.#|#.#|###|..#", "##.|#.#|##.|#.#|#.#",
        "###|#..|###|..#|###", "###|.#.|.#.|.#.|.#.", "#.#|#.#|#.#|#.#|###", "#.#|#.#|#.#|#.#|.#.",
        "#.#|#.#|###|###|#.#", "#.#|#.#|.#.|#.#|#.#", "#.#|#.#|.#.|.#.|.#.", "###|..#|.#.|#..|###",
        "...|...|...|...|.#.", "...|...|###|...|...", "...|###|...|###|...", ".#.|#..|#..|#..|.#.",
        ".#.|..#|..#|..#|.#.", "..#|..#|.#.|#..|#..", "...|.#.|...|.#.|...", "...|...|...|.#.|#..",
        "...|...|...|...|...", "...|.#.|###|.#.|...")]))


def text_width(text: str, scale: int = 2) -> int:
    """Width in pixels of ``text`` drawn by draw_text (4 * scale per character, less the last gap)."""
    return max(0, 4 * scale * len(text) - scale)


def draw_text(img, text: str, row: int, col: int, scale: int = 2, color=0.0):
    """Draw ``text`` into the float image ``img`` (H, W[, 3]) in place, its top-left corner at
    (row, col), each font pixel a ``scale`` x ``scale`` block; ink outside the image is
    dropped. Lower case is drawn as upper case; raises ValueError for a character the font
    lacks. Returns img."""
    for ch in text.upper():
        if ch not in _FONT:
            raise ValueError(f"draw_text has no glyph for {ch!r}; it draws "
                             f"{''.join(sorted(_FONT)).strip()} and space")
    h, w = img.shape[:2]
    for i, ch in enumerate(text.upper()):
        glyph = np.array([[c == "#" for c in line] for line in _FONT[ch]])       # (5, 3)
        ink = np.kron(glyph, np.ones((scale, scale), dtype=bool))               # (5s, 3s)
        r0, c0 = row, col + 4 * scale * i
        rr, cc = np.nonzero(ink)
        rr, cc = rr + r0, cc + c0
        keep = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        img[rr[keep], cc[keep]] = color
    return img


def _tick(v: float) -> str:
    return f"{v:.3g}"


# (line, marker) colours of the series of line_plot, in order
SERIES_COLOURS = (((0.55, 0.62, 0.75), (0.85, 0.33, 0.10)), ((0.60, 0.80, 0.60), (0.15, 0.50, 0.15)),
                  ((0.80, 0.65, 0.85), (0.50, 0.20, 0.60)))


def line_plot(xs, ys, *, xlabel: str, ylabel: str, point_labels=None, series_labels=None,
              size: int = 420, margin: int = 48):
    """(size, size, 3) float RGB image: the points (xs[i], ys[i]) joined in order by straight
    segments, the x axis from 0 and the y axis from 0 (or 10% below the smallest value when
    one is negative, with a grey line at y = 0) to 10% above the largest, with the axis
    names and the tick values written on them, and ``point_labels[i]`` beside point i.
    Several series share the axes: ys (S, N) (a list of S lists), point_labels (S, N),
    series_labels (S,) written as a key in the top right, each series in its own colours
    (SERIES_COLOURS, at most 3). Returns (image, (x_max, y_max))."""
    xs, y_in = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    multi, ys = y_in.ndim == 2, np.atleast_2d(y_in)                 # ys (S, N)
    if (xs.ndim != 1 or len(xs) == 0 or y_in.ndim > 2 or ys.shape[1:] != xs.shape
            or len(ys) > len(SERIES_COLOURS)):
        raise ValueError(f"line_plot needs x (N,) and y of one length, (N,) or (S <= "
                         f"{len(SERIES_COLOURS)}, N) for S series; got {xs.shape} and {y_in.shape}")
    if np.any(xs < 0) or not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
        raise ValueError("line_plot draws finite values with non-negative x (its x axis starts at 0)")
    labels = [None] * len(ys) if point_labels is None else (point_labels if multi else [point_labels])
    x_max, y_max = 1.1 * max(xs.max(), 1e-12), 1.1 * max(ys.max(), 1e-12)
    y_min = min(1.1 * ys.min(), 0.0)
    img = np.ones((size, size, 3))
    inner = size - 2 * margin
    cols = margin + xs / x_max * inner
    if y_min < 0:                                                   # the line y = 0
        img[int(size - margin - -y_min / (y_max - y_min) * inner), margin:size - margin] = 0.7
        draw_text(img, _tick(y_min), size - margin - 5, margin - 6 - text_width(_tick(y_min)))
    img[size - margin, margin:size - margin] = 0.0                  # x axis
    img[margin:size - margin + 1, margin] = 0.0                     # y axis
    for y, lab, (line, marker) in zip(ys, labels, SERIES_COLOURS):
        rows = size - margin - (y - y_min) / (y_max - y_min) * inner   # y up
        for (r0, c0), (r1, c1) in zip(zip(rows, cols), zip(rows[1:], cols[1:])):
            t = np.linspace(0.0, 1.0, 4 * inner)
            img[(r0 + t * (r1 - r0)).astype(int), (c0 + t * (c1 - c0)).astype(int)] = line
        for i, (r, c) in enumerate(zip(rows.astype(int), cols.astype(int))):
            img[r - 3:r + 4, c - 3:c + 4] = marker
            if lab is not None:
                draw_text(img, str(lab[i]), r - 14, c + 6)
    for k, (name, (_, marker)) in enumerate(zip(series_labels or [], SERIES_COLOURS)):
        r, c = margin - 28 + 12 * k, size - margin - text_width(str(name)) - 12
        img[r:r + 7, c:c + 7] = marker
        draw_text(img, str(name), r, c + 10)
    draw_text(img, "0", size - margin + 6, margin - 3)
    draw_text(img, _tick(x_max), size - margin + 6, size - margin - text_width(_tick(x_max)))
    draw_text(img, _tick(y_max), margin - 5, margin - 6 - text_width(_tick(y_max)))
    draw_text(img, xlabel, size - margin + 22, (size - text_width(xlabel)) // 2)
    draw_text(img, ylabel, margin - 30, margin)
    return img, (float(x_max), float(y_max))
