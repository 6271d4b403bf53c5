"""refgen.io: PNG bytes decoded back by hand, grid layout, plots, atomic writes, checkpoints."""
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refgen import io


def decode_png(path):
    """Minimal decoder for what write_png writes: 8-bit gray/RGB/RGBA, filter 0 rows."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert crc == zlib.crc32(tag + body)
        chunks.append((tag, body))
        pos += 12 + n
    assert chunks[0][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    w, h, depth, color, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, comp, filt, interlace) == (8, 0, 0, 0)
    channels = {0: 1, 2: 3, 6: 4}[color]
    raw = zlib.decompress(b"".join(body for tag, body in chunks if tag == b"IDAT"))
    rows = np.frombuffer(raw, np.uint8).reshape(h, 1 + w * channels)
    assert np.all(rows[:, 0] == 0)
    img = rows[:, 1:].reshape(h, w, channels)
    return img[:, :, 0] if channels == 1 else img


@given(h=st.integers(1, 12), w=st.integers(1, 12), rgb=st.booleans(), seed=st.integers(0, 999))
def test_png_round_trip(tmp_path_factory, h, w, rgb, seed):
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3) if rgb else (h, w), np.uint8)
    path = tmp_path_factory.mktemp("png") / "a.png"
    io.write_png(path, img)
    np.testing.assert_array_equal(decode_png(path), img)


def test_png_float_and_channel_squeeze(tmp_path):
    img = np.array([[0.0, 0.5, 1.0], [-1.0, 2.0, 0.25]])
    io.write_png(tmp_path / "f.png", img)
    np.testing.assert_array_equal(decode_png(tmp_path / "f.png"), [[0, 128, 255], [0, 255, 64]])
    io.write_png(tmp_path / "c.png", img[:, :, None])
    assert decode_png(tmp_path / "c.png").shape == (2, 3)
    with pytest.raises(ValueError, match="shape"):
        io.write_png(tmp_path / "bad.png", np.zeros((2, 3, 2)))


def test_image_grid_layout():
    n, h, w, pad = 5, 3, 4, 2
    imgs = np.arange(n)[:, None, None] / 10 + np.zeros((n, h, w))
    g = io.image_grid(imgs, nrow=3, pad=pad, pad_value=0.9)
    assert g.shape == (2 * (h + pad) + pad, 3 * (w + pad) + pad)
    for i in range(n):
        r, c = divmod(i, 3)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        np.testing.assert_array_equal(g[top:top + h, left:left + w], imgs[i])
    assert g[0, 0] == 0.9 and g[pad + h, pad] == 0.9  # padding
    np.testing.assert_array_equal(g[pad + h + pad:, pad + 2 * (w + pad):], 0.9)  # empty slot
    # (N, C, H, W) RGB -> (H', W', 3), channel last
    rgb = np.stack([imgs, 1 - imgs, imgs * 0], axis=1)
    g3 = io.image_grid(rgb, nrow=3, pad=pad)
    assert g3.shape == g.shape + (3,)
    np.testing.assert_array_equal(g3[pad:pad + h, pad:pad + w], np.moveaxis(rgb[0], 0, -1))
    assert io.image_grid(np.zeros((16, 1, 2, 2)), pad=0).shape == (8, 8)  # default sqrt layout
    with pytest.raises(ValueError):
        io.image_grid(np.zeros((2, 2, 5, 5)))


def test_atomic_writes_leave_only_targets(tmp_path):
    io.write_png(tmp_path / "a.png", np.zeros((2, 2)))
    io.save_checkpoint(tmp_path / "ck.npz", {"w": np.ones(3)}, {"step": 1})
    io.scatter_png(tmp_path / "s.png", np.zeros((4, 2)), size=16)
    assert sorted(os.listdir(tmp_path)) == ["a.png", "ck.npz", "s.png"]


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ck.npz"
    io.save_checkpoint(path, {"w": np.ones(3)}, {"step": 1})

    def broken_savez(f, **arrays):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint(path, {"w": np.zeros(3)}, {"step": 2})
    assert os.listdir(tmp_path) == ["ck.npz"]
    arrays, meta = io.load_checkpoint(path)
    np.testing.assert_array_equal(arrays["w"], np.ones(3))
    assert meta == {"step": 1}


def test_checkpoint_round_trip(tmp_path):
    arrays = {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "f64": np.linspace(0, 1, 5),
        "i64": np.array([-1, 2**40], dtype=np.int64),
        "u8": np.array([[0, 255]], dtype=np.uint8),
        "b": np.array([True, False]),
        "scalar": np.float32(3.5),
        "empty": np.zeros((0, 4)),
        "layer.0.weight": np.ones((2, 2)),
    }
    meta = {"model": "realnvp", "step": np.int64(7), "lr": 1e-3, "cfg": {"dims": [2, 64]},
            "text": "héllo"}
    io.save_checkpoint(tmp_path / "ck.npz", arrays, meta)
    got, got_meta = io.load_checkpoint(tmp_path / "ck.npz")
    assert set(got) == set(arrays)
    for k, v in arrays.items():
        v = np.asarray(v)
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v)
    assert got_meta == {"model": "realnvp", "step": 7, "lr": 1e-3, "cfg": {"dims": [2, 64]},
                        "text": "héllo"}


def test_checkpoint_refusals(tmp_path):
    hostile = tmp_path / "hostile.npz"
    np.savez(hostile, w=np.ones(2), evil=np.array([{"a": 1}], dtype=object))
    with pytest.raises(io.CheckpointError, match="pickle"):
        io.load_checkpoint(hostile)
    pickled = tmp_path / "pickled.npz"
    pickled.write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(io.CheckpointError, match="pickle"):
        io.load_checkpoint(pickled)
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(io.CheckpointError):
        io.load_checkpoint(tmp_path / "junk.npz")
    with pytest.raises(TypeError, match="object"):
        io.save_checkpoint(tmp_path / "o.npz", {"o": np.array([None], dtype=object)}, {})
    with pytest.raises(ValueError, match="reserved"):
        io.save_checkpoint(tmp_path / "m.npz", {"__meta__": np.zeros(1)}, {})
    with pytest.raises(TypeError, match="JSON"):
        io.save_checkpoint(tmp_path / "j.npz", {}, {"f": print})
    assert not (tmp_path / "j.npz").exists()


def test_scatter_orientation_and_colours():
    size = 32
    img = io.scatter_image(np.array([[3.99, 3.99]]), reference=np.array([[-3.99, -3.99]]),
                           size=size)
    assert img.shape == (size, size, 3) and img.dtype == np.uint8
    assert np.all(img[size // 2, size // 2] == 255)  # background white
    top_right, bottom_left = img[0, size - 1].astype(int), img[size - 1, 0].astype(int)
    assert top_right[0] > top_right[2]  # model: orange-red
    assert bottom_left[2] > bottom_left[0]  # data: blue-grey
    # points outside the extent, and NaNs, are dropped
    blank = io.scatter_image(np.array([[9.0, 0.0], [np.nan, 0.0]]), size=size)
    assert np.all(blank == 255)


def test_heatmap_orientation_and_grid_points():
    n = 4
    pts = io.grid_points((-1, 1, -2, 2), n)
    assert pts.shape == (n * n, 2)
    np.testing.assert_allclose(pts[:n, 1], -1.5)  # first row of the grid is y = ymin
    np.testing.assert_allclose(pts[:n, 0], [-0.75, -0.25, 0.25, 0.75])
    values = pts[:, 1].reshape(n, n)  # grows with y
    img = io.heatmap_image(values, (-1, 1, -2, 2), size=8)
    assert img.shape == (8, 8, 3) and img.dtype == np.uint8
    assert img[0].astype(int).sum() > img[-1].astype(int).sum()  # high values (top) brighter
    flat = io.heatmap_image(np.zeros((3, 3)))
    assert np.all(flat == flat[0, 0])


def test_concat_images_horizontal():
    a = np.zeros((4, 3), np.uint8)
    b = np.ones((6, 2, 3))
    c = io.concat_images_horizontal([a, b], pad=1)
    assert c.shape == (6, 3 + 1 + 2, 3) and c.dtype == np.uint8
    assert np.all(c[:4, :3] == 0) and np.all(c[4:, :3] == 255) and np.all(c[:, 4:] == 255)


def test_draw_text_glyphs_scale_and_refusals():
    img = np.ones((20, 40))
    io.draw_text(img, "1", 2, 3, scale=2)
    ink = np.argwhere(img == 0.0)
    # '1' is .#./##./.#./.#./###: at scale 2 it spans 10 rows and 6 columns from (2, 3)
    assert ink[:, 0].min() == 2 and ink[:, 0].max() == 11
    assert ink[:, 1].min() == 3 and ink[:, 1].max() == 8
    assert len(ink) == 4 * (1 + 2 + 1 + 1 + 3)          # 8 font pixels of 2 x 2
    a, b = np.ones((12, 40)), np.ones((12, 40))
    io.draw_text(a, "rate", 0, 0)
    io.draw_text(b, "RATE", 0, 0)
    np.testing.assert_array_equal(a, b)                  # lower case drawn as upper case
    assert io.text_width("RATE") == 4 * 2 * 4 - 2
    edge = np.ones((5, 5))
    io.draw_text(edge, "88", 3, 3)                       # ink off the image is dropped
    with pytest.raises(ValueError, match="no glyph"):
        io.draw_text(np.ones((10, 10)), "é", 0, 0)


def test_line_plot_puts_points_where_their_values_say():
    xs, ys = [1.0, 4.0, 10.0], [20.0, 5.0, 0.0]
    img, (x_max, y_max) = io.line_plot(xs, ys, xlabel="x", ylabel="y", size=300, margin=40)
    assert (x_max, y_max) == pytest.approx((11.0, 22.0))
    orange = np.all(np.isclose(img, (0.85, 0.33, 0.10)), axis=-1)
    inner = 300 - 2 * 40
    for x, y in zip(xs, ys):
        r, c = int(300 - 40 - y / y_max * inner), int(40 + x / x_max * inner)
        assert orange[r, c]
    assert orange.sum() == 3 * 49                        # three 7 x 7 markers, nothing else
    with pytest.raises(ValueError, match="non-negative x"):
        io.line_plot([-1.0], [1.0], xlabel="x", ylabel="y")
    with pytest.raises(ValueError, match="finite"):
        io.line_plot([1.0], [np.nan], xlabel="x", ylabel="y")


def test_line_plot_draws_each_series_in_its_colours_on_shared_axes():
    xs, ys = [0.0, 5.0, 10.0], [[30.0, 10.0, 40.0], [20.0, 12.0, 8.0]]
    img, (x_max, y_max) = io.line_plot(xs, ys, xlabel="w", ylabel="FID", size=300, margin=40,
                                       series_labels=["static", "dynamic"])
    assert (x_max, y_max) == pytest.approx((11.0, 44.0))           # the largest of either series
    inner = 300 - 2 * 40
    for y, (_, marker) in zip(ys, io.SERIES_COLOURS):
        hit = np.all(np.isclose(img, marker), axis=-1)
        for xv, yv in zip(xs, y):
            assert hit[int(300 - 40 - yv / y_max * inner), int(40 + xv / x_max * inner)]
        assert hit.sum() == 4 * 49                                  # 3 markers and the key's square
    with pytest.raises(ValueError, match=r"\(S <= 3, N\) for S series"):
        io.line_plot([1.0, 2.0], [[1.0, 2.0]] * 4, xlabel="x", ylabel="y")
    with pytest.raises(ValueError, match="finite"):
        io.line_plot([1.0, 2.0], [[1.0, 2.0], [np.inf, 1.0]], xlabel="x", ylabel="y")


def test_line_plot_with_negative_values_starts_its_y_axis_below_them():
    xs, ys = [1.0, 4.0, 10.0], [20.0, -5.0, 0.0]
    img, (x_max, y_max) = io.line_plot(xs, ys, xlabel="x", ylabel="y", size=300, margin=40)
    assert (x_max, y_max) == pytest.approx((11.0, 22.0))
    orange = np.all(np.isclose(img, (0.85, 0.33, 0.10)), axis=-1)
    inner, y_min = 300 - 2 * 40, -5.5
    for x, y in zip(xs, ys):
        r = int(300 - 40 - (y - y_min) / (y_max - y_min) * inner)
        assert orange[r, int(40 + x / x_max * inner)]
    assert orange.sum() == 3 * 49
    zero_row = int(300 - 40 - 5.5 / 27.5 * inner)
    assert np.all(img[zero_row, 135:225] == 0.7)                     # the grey line y = 0
    with pytest.raises(ValueError, match="one length"):
        io.line_plot([1.0, 2.0], [1.0], xlabel="x", ylabel="y")


def test_vertical_concat_labelled_panel_and_legend():
    a = np.zeros((5, 7, 3), np.uint8)
    b = np.full((3, 4), 0.5)                                    # gray, narrower
    v = io.concat_images_vertical([a, b], pad=2, pad_value=255)
    assert v.shape == (5 + 2 + 3, 7, 3) and v.dtype == np.uint8
    assert (v[:5] == 0).all() and (v[5:7] == 255).all()
    np.testing.assert_array_equal(v[7:, :4], io.to_uint8(b)[:, :, None].repeat(3, 2))
    assert (v[7:, 4:] == 255).all()                             # padded on the right
    p = io.labelled_panel(np.full((40, 60, 3), 255, np.uint8), "AB")
    assert (p[0] == 190).all() and (p[:, -1] == 190).all()      # the grey frame
    assert (p[6:16, 6:30] < 100).any()                          # the text, dark
    empty = io.scatter_image(None, reference=None, size=16)
    assert (empty == 255).all()
    leg = io.scatter_legend(200)
    assert leg.shape == (28, 200, 3) and (leg != 255).any()
