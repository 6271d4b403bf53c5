"""``refgen train dvae``, ``refgen train dalle --set dvae=RUN`` and ``refgen sample RUN
--prompt TEXT`` on real MNIST: the captioned grid, and each kind of bad prompt answered with
one line and exit status 2, nothing in the run touched."""
import numpy as np
import pytest

from refgen import io
from refgen.cli import main


def _snapshot(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mnist_dir):
    root = tmp_path_factory.mktemp("dalle")
    common = ["--steps", "2", "--batch-size", "8", "--no-eval", "-q"]
    assert main(["train", "dvae", "--data", "mnist", "--out", str(root / "dvae"), *common,
                 "--set", "num_codes=8", "--set", "channels=8"]) == 0
    assert main(["train", "dalle", "--data", "mnist-captions", "--out", str(root / "dalle"), *common,
                 "--set", f"dvae={root / 'dvae'}", "--set", "width=16", "--set", "layers=1"]) == 0
    return root


def _read_png_gray(path):
    import zlib
    data = path.read_bytes()
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    chunks, i = b"", 8
    while i < len(data):
        n = int.from_bytes(data[i:i + 4], "big")
        if data[i + 4:i + 8] == b"IDAT":
            chunks += data[i + 8:i + 8 + n]
        i += 12 + n
    raw = np.frombuffer(zlib.decompress(chunks), dtype=np.uint8)
    return h, w, raw


def test_sample_with_a_prompt_writes_a_captioned_grid(runs, tmp_path, capsys):
    out = tmp_path / "p.png"
    assert main(["sample", str(runs / "dalle"), "--prompt", "a thick slanted seven", "-n", "4",
                 "--out", str(out), "-q"]) == 0
    assert io.is_refgen_png(out)
    h, w, _ = _read_png_gray(out)
    grid = io.image_grid(np.zeros((4, 1, 28, 28)))
    assert h == grid.shape[0] + 5 * 2 + 2 * 4                            # the caption's band on top
    assert w == max(grid.shape[1], io.text_width("a thick slanted seven") + 8)


@pytest.mark.parametrize("prompt,says", [
    ("a thick zebra", ["outside the vocabulary: zebra", "Tokenizer().words"]),
    ("", ["empty prompt"]),
    (" ".join(["seven"] * 11), ["longer than the context of 10 words"]),
])
def test_bad_prompts_get_one_line_and_exit_2(runs, prompt, says, capsys):
    before = _snapshot(runs)
    assert main(["sample", str(runs / "dalle"), "--prompt", prompt, "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(s in err for s in says), err
    assert _snapshot(runs) == before


def test_a_model_without_text_refuses_a_prompt(runs, capsys):
    assert main(["sample", str(runs / "dvae"), "--prompt", "a seven", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "takes no --prompt" in err


def test_dalle_without_a_dvae_is_refused_in_one_line(tmp_path, mnist_dir, capsys):
    assert main(["train", "dalle", "--data", "mnist-captions", "--steps", "1", "-q",
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--set dvae=runs/<dvae run>" in err
