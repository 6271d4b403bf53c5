"""The command line, called as ``main(argv)``: the happy paths, and every kind of bad input
answered with one line, exit status 2, and nothing on disk touched."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from refgen import cli, io, models
from refgen.backend import BackendError
from refgen.cli import main
from refgen.models.baseline.gmm import GaussianMixture

REPO = Path(__file__).resolve().parents[1]


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "gmm", "--data", "8gaussians", "--steps", "30", "--out", str(d), "-q"]) == 0
    return d


def test_train_writes_a_run_directory(run_dir):
    names = {p.name for p in run_dir.iterdir()}
    assert names == {"config.json", "checkpoint.npz", "log.jsonl", "metrics.json", "samples.png"}
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["model"] == "gmm" and cfg["data"] == "8gaussians" and cfg["model_kwargs"] == {}
    assert cfg["train"]["steps"] == 30 and cfg["train"]["lr"] == GaussianMixture.default_train["lr"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 30 and "test_nll_nats" in metrics and "modes_covered" in metrics


def test_set_reaches_the_constructor_and_resume_extends(tmp_path, capsys):
    out = tmp_path / "r"
    argv = ["train", "gmm", "--data", "8gaussians", "--out", str(out), "-q", "--seed", "2"]
    assert main(argv + ["--steps", "10", "--set", "components=3", "--set", "init_std=0.5"]) == 0
    arrays, meta = io.load_checkpoint(out / "checkpoint.npz")
    assert arrays["model/mu"].shape == (3, 2) and meta["step"] == 10
    assert main(argv + ["--steps", "20", "--resume"]) == 0  # --set comes from config.json
    arrays, meta = io.load_checkpoint(out / "checkpoint.npz")
    assert arrays["model/mu"].shape == (3, 2) and meta["step"] == 20
    assert json.loads((out / "config.json").read_text())["train"]["steps"] == 20
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["steps"] == 20


def test_sample_and_eval(run_dir, tmp_path, capsys):
    before = _snapshot(run_dir)
    png = tmp_path / "s.png"
    assert main(["sample", str(run_dir), "-n", "100", "--out", str(png), "--seed", "1"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert _snapshot(run_dir) == before  # --out elsewhere: the run is untouched
    assert main(["eval", str(run_dir)]) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert printed == saved and saved["steps"] == 30 and saved["test_nll_nats"] > 2.8
    # the full evaluation: every test point, the model's own sample count, stated as such
    after_training = json.loads(before["metrics.json"])
    assert after_training["eval_n_test"] == 2000 and saved["eval_n_test"] == 10_000
    assert saved["eval_n_samples"] == 10_000
    assert saved["test_nll_nats"] == pytest.approx(after_training["test_nll_nats"], abs=0.05)
    from refgen import data
    from refgen.metrics import evaluate
    from refgen.runs import load_run
    model, _ = load_run(run_dir)
    assert saved["test_nll_nats"] == evaluate(model, data.load("8gaussians", "test"))["test_nll_nats"]


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("gmm", "continuous", "8gaussians", "mnist-binary", "test_nll_nats", "components="):
        assert word in out


@pytest.mark.parametrize("cmd", ["list", "train", "sample", "eval", "demo"])
def test_help(cmd, capsys):
    assert main([cmd, "--help"]) == 0
    assert capsys.readouterr().out.startswith(f"usage: refgen {cmd}")


BAD = [  # (argv, where R is the existing run and N a path that must stay absent; message)
    (["train", "nosuch", "--data", "8gaussians", "--out", "N"], "unknown model 'nosuch'; available: "),
    (["train", "gmm", "--data", "nosuch", "--out", "N"], "unknown data set 'nosuch'; accepted: "),
    (["train", "gmm", "--data", "mnist-14", "--out", "N"], "takes vectors, but dataset 'mnist-14'"),
    (["train", "gmm", "--data", "8gaussians", "--set", "components", "--out", "N"], "is not key=value"),
    (["train", "gmm", "--data", "8gaussians", "--set", "nope=1", "--out", "N"],
     "no hyperparameter 'nope'; accepted: components="),
    (["train", "gmm", "--data", "8gaussians", "--set", "components=0", "--out", "N"],
     "cannot build model 'gmm'"),
    (["train", "gmm", "--data", "8gaussians", "--batch-size", "999999", "--out", "N"], "exceeds"),
    (["train", "gmm", "--data", "8gaussians", "--steps", "0", "--out", "N"], "not a positive integer"),
    (["train", "gmm", "--out", "N"], "required: --data"),
    (["train", "gmm", "--data", "8gaussians", "--out", "R"], "already exists; pass --resume"),
    (["train", "gmm", "--data", "8gaussians", "--out", "R", "--resume", "--lr", "0.5"],
     "differs from the run's config.json"),
    (["train", "gmm", "--data", "checkerboard", "--out", "R", "--resume"], "trained as data '8gaussians'"),
    (["train", "gmm", "--data", "8gaussians", "--out", "N", "--resume"], "does not exist"),
    (["sample", "N"], "run directory"),
    (["sample", "R", "--out", "R"], "is a directory"),
    (["eval", "N"], "does not exist"),
    (["demo", "--out", "R"], "not a refgen demo directory"),
    (["demo", "--out", "N", "--data", "mnist"], "not a toy 2D data set"),
    (["train", "ddpm", "--data", "mnist-dequantized", "--out", "N"],
     "takes images in [-1, 1], but dataset 'mnist-dequantized' is in [0, 1]"),
    (["train", "glow", "--data", "mnist", "--out", "N"],
     "takes images in [0, 1], but dataset 'mnist' is in [-1, 1]"),
    (["frobnicate"], "invalid choice"),
    (["train", "gmm", "--data", "8gaussians", "--out", "R", "--resume", "--steps", "30"],
     "--steps 30 is not past the checkpoint's step 30; pass --steps N with N > 30"),
    (["train", "gmm", "--data", "8gaussians", "--out", "R", "--resume", "--steps", "12"],
     "is not past the checkpoint's step 30"),
    (["train", "gmm", "--data", "8gaussians", "--out", "R", "--resume"],
     "the run is complete (its checkpoint is at step 30 of 30); pass --steps N with N > 30"),
    (["train", "gmm", "--data", "8gaussians", "--set", "components=2.5", "--out", "N"],
     "--set components=2.5: components is an integer (default 32)"),
    (["train", "gmm", "--data", "8gaussians", "--set", "components=true", "--out", "N"],
     "components is an integer"),
    (["train", "made", "--data", "mnist-14-binary", "--data-dir", "N", "--out", "N"],
     "data directory N is not a directory"),
    (["sample", "R", "--seed", "-1"], "-1 is not an integer >= 0"),
    (["train", "gmm", "--data", "8gaussians", "--seed", "-3", "--out", "N"], "is not an integer >= 0"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a[:3]) + f"-{i}" for i, (a, _) in enumerate(BAD)])
def test_bad_input_one_line_exit_2_nothing_touched(argv, message, run_dir, tmp_path, capsys,
                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)
    absent = tmp_path / "absent"
    argv = [str(run_dir) if a == "R" else str(absent) if a == "N" else a for a in argv]
    message = message.replace("directory N ", f"directory {absent} ")
    before = _snapshot(run_dir)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("refgen: error: "), err
    assert message in err
    assert _snapshot(run_dir) == before
    assert not absent.exists() and not (tmp_path / "runs").exists()


def test_run_dir_without_checkpoint(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert main(["eval", str(tmp_path)]) == 2
    assert "has no checkpoint.npz" in capsys.readouterr().err


def test_backend_error_is_one_line(monkeypatch, capsys):
    def fail(args):
        raise BackendError("REFGEN_BACKEND=cupy but CuPy is not installed; unset REFGEN_BACKEND")
    monkeypatch.setattr(cli, "cmd_list", fail)
    assert main(["list"]) == 2
    assert capsys.readouterr().err == ("refgen: error: REFGEN_BACKEND=cupy but CuPy is not "
                                       "installed; unset REFGEN_BACKEND\n")


def _python_m_refgen(args, **env):
    return subprocess.run([sys.executable, "-m", "refgen", *args], cwd=REPO, capture_output=True,
                          text=True, env=dict(os.environ, **env), timeout=60)


def test_python_m_refgen():
    r = _python_m_refgen(["list"])
    assert r.returncode == 0 and "gmm" in r.stdout


def test_bad_backend_variable_is_one_line():
    # the backend is chosen when refgen is imported, before the CLI runs: refgen.backend's
    # exception hook turns the uncaught BackendError into one line, exit status 2
    r = _python_m_refgen(["list"], REFGEN_BACKEND="nonsense")
    assert r.returncode == 2 and r.stderr.startswith("refgen: error: ") and r.stderr.count("\n") == 1
    assert "'numpy' or 'cupy'" in r.stderr


class _NaNGMM(GaussianMixture):
    def __init__(self, data_shape, *, seed=0, nan_at=15):
        super().__init__(data_shape, seed=seed)
        self.nan_at, self.calls = nan_at, 0

    def loss(self, batch, rng):
        self.calls += 1
        return super().loss(batch, rng) * (float("nan") if self.calls >= self.nan_at else 1.0)


@pytest.fixture
def nan_model():
    models.names()  # load the families first, then add a test-only model
    models.register("test-nan-gmm")(_NaNGMM)
    yield "test-nan-gmm"
    models._REGISTRY.pop("test-nan-gmm")


def test_divergence_exits_1_keeping_the_checkpoint(nan_model, tmp_path, capsys):
    out = tmp_path / "r"
    rc = main(["train", nan_model, "--data", "8gaussians", "--steps", "40", "--ckpt-every", "10",
               "--set", "nan_at=15", "--out", str(out), "-q"])
    assert rc == 1
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("refgen: error: training diverged: loss became nan at step 15")
    assert "(step 10) is kept" in last
    assert io.load_checkpoint(out / "checkpoint.npz")[1]["step"] == 10


def test_demo(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "30", "-q", "--models", "gmm"]) == 0
    assert (out / "demo.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "gmm-8gaussians" / "checkpoint.npz").exists()
    printed = capsys.readouterr().out
    assert str(out / "demo.png") in printed and "gmm" in printed
    # each panel is a real run directory: refgen sample and eval work on it
    run = out / "gmm-8gaussians"
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 30
    assert main(["sample", str(run), "-n", "50", "--out", str(tmp_path / "s.png"), "-q"]) == 0
    assert main(["eval", str(run), "-q"]) == 0
    assert main(["demo", "--out", str(out), "--steps", "10", "-q", "--data", "moons", "--models", "gmm"]) == 0  # reruns


def test_demo_png_has_a_legend_and_labelled_panels(tmp_path):
    import zlib
    import numpy as np
    from refgen import demo
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "5", "-q", "--models", "gmm",
                 "--data", "8gaussians"]) == 0
    raw = (out / "demo.png").read_bytes()
    w, h = int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")
    idat = b"".join(raw[i + 8:i + 8 + int.from_bytes(raw[i:i + 4], "big")]
                    for i in range(8, len(raw) - 12) if raw[i + 4:i + 8] == b"IDAT")
    img = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + 3 * w)[:, 1:].reshape(h, w, 3)
    assert h == demo._LEGEND_H + 4 + demo._PANEL  # the legend strip, then one row of panels
    legend = img[:demo._LEGEND_H].astype(int)
    blue = (np.abs(legend - np.array([140, 158, 191])) < 3).all(axis=-1)
    orange = (np.abs(legend - np.array([217, 84, 26])) < 3).all(axis=-1)
    assert blue.sum() > 20 and orange.sum() > 20  # "DATA" in the data's colour, "MODEL SAMPLES" in orange
    assert blue.nonzero()[1].max() < orange.nonzero()[1].min()
    label_rows = img[demo._LEGEND_H + 4 + 6:demo._LEGEND_H + 4 + 16]
    for k in range(2):  # the data panel and the gmm panel each carry dark label ink top-left
        panel = label_rows[:, k * (demo._PANEL + 4) + 6:k * (demo._PANEL + 4) + 120]
        assert (panel.max(axis=-1) < 60).sum() > 30


def test_mismatch_found_in_the_first_step_is_one_line_and_leaves_nothing(tmp_path, capsys):
    # vae's default Bernoulli decoder refuses real-valued 2D data only when it sees a batch
    out = tmp_path / "r"
    assert main(["train", "vae", "--data", "8gaussians", "--out", str(out), "--steps", "5", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("refgen: error: model 'vae' cannot train on '8gaussians'")
    assert not out.exists()


# ----------------------------------------------------------------------------- the front door
def _copy_run(run_dir, tmp_path) -> Path:
    import shutil
    out = tmp_path / "copy"
    shutil.copytree(run_dir, out)
    return out


def _one_error_line(capsys, code_was, code=2) -> str:
    err = capsys.readouterr().err
    assert code_was == code, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("refgen: error: "), err
    assert sum(ln.startswith("refgen: error: ") for ln in lines) == 1 and "Traceback" not in err
    return lines[-1]


def test_resume_without_steps_keeps_the_runs_own_length(nan_model, tmp_path, capsys):
    out = tmp_path / "r"
    argv = ["train", nan_model, "--data", "8gaussians", "--out", str(out), "-q"]
    # a 40-step run (not the model's default 2,000) stopped at step 35, checkpoint at 30
    assert main(argv + ["--steps", "40", "--ckpt-every", "10", "--set", "nan_at=35"]) == 1
    config = (out / "config.json").read_bytes()
    assert main(argv + ["--resume"]) == 0  # a fresh model: 10 steps, no NaN
    assert io.load_checkpoint(out / "checkpoint.npz")[1]["step"] == 40
    assert (out / "config.json").read_bytes() == config  # length, schedule, command: as they were
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["steps"] == 40
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(4, 41, 4))  # log_every 40 // 10, one run


def test_corrupt_checkpoint_on_resume_is_one_line_and_touches_nothing(run_dir, tmp_path, capsys):
    out = _copy_run(run_dir, tmp_path)
    (out / "checkpoint.npz").write_bytes(b"PK\x03\x04 not really a zip")
    before = _snapshot(out)
    rc = main(["train", "gmm", "--data", "8gaussians", "--out", str(out), "--resume", "--steps", "60"])
    line = _one_error_line(capsys, rc)
    assert "cannot load" in line and "checkpoint.npz" in line
    assert _snapshot(out) == before


def test_checkpoint_that_does_not_fit_the_model_is_refused_before_writing(run_dir, tmp_path, capsys):
    out = _copy_run(run_dir, tmp_path)
    arrays, meta = io.load_checkpoint(out / "checkpoint.npz")
    arrays["model/mu"] = arrays["model/mu"][:3]  # 3 components in a 32-component model
    io.save_checkpoint(out / "checkpoint.npz", arrays, meta)
    before = _snapshot(out)
    rc = main(["train", "gmm", "--data", "8gaussians", "--out", str(out), "--resume", "--steps", "60"])
    assert "cannot load" in _one_error_line(capsys, rc)
    assert _snapshot(out) == before


def test_a_run_killed_before_its_first_checkpoint_says_what_to_do(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "log.jsonl").write_text("")  # as a run killed (SIGKILL) in its first steps leaves it
    (out / ".lock").write_text("999999999\n")
    before = _snapshot(out)
    for extra in ([], ["--resume"]):
        rc = main(["train", "gmm", "--data", "8gaussians", "--out", str(out), "-q"] + extra)
        line = _one_error_line(capsys, rc)
        assert "stopped before its first checkpoint" in line and f"delete {out}" in line
    assert _snapshot(out) == before


def test_failure_before_the_first_checkpoint_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    import errno

    def full(f, **arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "r"
    argv = ["train", "gmm", "--data", "8gaussians", "--out", str(out), "--steps", "10", "-q"]
    monkeypatch.setattr(io.np, "savez", full)
    line = _one_error_line(capsys, main(argv))
    assert "no space left on the device" in line
    assert not out.exists()  # neither a rerun nor --resume is blocked
    monkeypatch.undo()
    assert main(argv) == 0


def test_full_disk_on_resume_is_one_line_and_keeps_the_run(run_dir, tmp_path, capsys, monkeypatch):
    import errno

    def full(f, **arrays):
        f.write(b"PK\x03\x04 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    out = _copy_run(run_dir, tmp_path)
    before = _snapshot(out)
    monkeypatch.setattr(io.np, "savez", full)
    rc = main(["train", "gmm", "--data", "8gaussians", "--out", str(out), "--resume", "--steps",
               "40", "-q"])
    assert "no space left on the device" in _one_error_line(capsys, rc)
    assert _snapshot(out) == before  # the checkpoint, config.json and the log as they were


def test_unwritable_run_directory_is_one_line(run_dir, tmp_path, capsys, monkeypatch):
    out = _copy_run(run_dir, tmp_path)
    before = _snapshot(out)
    argv = ["train", "gmm", "--data", "8gaussians", "--out", str(out), "--resume", "--steps", "40", "-q"]
    # as root, chmod does not stop writes: the refusal of a write is simulated as the kernel
    # would give it (EACCES from the first file made in the directory)
    from refgen import runs

    def refused(*a, **k):
        raise PermissionError(13, "Permission denied", str(out / ".lock"))

    monkeypatch.setattr(runs.os, "open", refused)
    line = _one_error_line(capsys, main(argv))
    assert "cannot write" in line and "Permission denied" in line
    monkeypatch.undo()
    assert _snapshot(out) == before
    # and os.access saying no (a read-only directory for a non-root user) is checked first
    monkeypatch.setattr(runs.os, "access", lambda path, mode: False)
    line = _one_error_line(capsys, main(argv))
    assert f"cannot write to {out}" in line
    assert _snapshot(out) == before


def test_read_only_run_directory_by_chmod(run_dir, tmp_path, capsys):
    """chmod 555 on the run directory: a user it stops gets one line and nothing changes; root,
    whom mode bits do not stop (CI runs as root), is not refused on the mode bits alone and
    the resumed run completes (the refusal itself is covered for root by the test above)."""
    out = _copy_run(run_dir, tmp_path)
    before = _snapshot(out)
    out.chmod(0o555)
    try:
        really_read_only = not os.access(out, os.W_OK)
        rc = main(["train", "gmm", "--data", "8gaussians", "--out", str(out), "--resume",
                   "--steps", "40", "-q", "--no-eval"])
        if really_read_only:
            assert "cannot write" in _one_error_line(capsys, rc)
            assert _snapshot(out) == before
        else:
            assert rc == 0, capsys.readouterr().err
            assert io.load_checkpoint(out / "checkpoint.npz")[1]["step"] == 40
    finally:
        out.chmod(0o755)


def test_a_run_directory_being_written_is_locked(run_dir, tmp_path, capsys):
    out = _copy_run(run_dir, tmp_path)
    (out / ".lock").write_text(f"{os.getppid()}\n")  # a living process that is not this one
    before = _snapshot(out)
    for argv in (["train", "gmm", "--data", "8gaussians", "--out", str(out), "--resume",
                  "--steps", "40", "-q"], ["eval", str(out), "-q"]):
        line = _one_error_line(capsys, main(argv))
        assert f"{out} is in use by another refgen run (process {os.getppid()})" in line
    assert _snapshot(out) == before
    (out / ".lock").write_text("999999999\n")  # left by a process that died: taken over
    assert main(["train", "gmm", "--data", "8gaussians", "--out", str(out), "--resume",
                 "--steps", "35", "-q"]) == 0
    assert not (out / ".lock").exists()


def test_data_dir_without_the_files_never_falls_through(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("REFGEN_DATA_DIR", str(tmp_path / "elsewhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = main(["train", "made", "--data", "mnist-14-binary", "--data-dir", str(empty),
               "--out", str(tmp_path / "r")])
    line = _one_error_line(capsys, rc)
    assert f"data directory {empty} lacks the MNIST file(s)" in line
    assert "download" not in line and "elsewhere" not in line
    assert not (tmp_path / "r").exists()


def test_no_eval_and_the_evaluation_counts(tmp_path, capsys):
    from refgen.metrics.evaluation import AFTER_TRAINING
    out = tmp_path / "r"
    assert main(["train", "gmm", "--data", "8gaussians", "--steps", "5", "--out", str(out),
                 "-q", "--no-eval"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 5 and not set(metrics) & {"test_nll_nats", "modes_covered", "mmd"}
    assert main(["train", "gmm", "--data", "8gaussians", "--steps", "5", "--out", str(tmp_path / "e")]) == 0
    err = capsys.readouterr().err
    assert "evaluating on the test set ... " in err
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["eval_n_samples"] == AFTER_TRAINING["other"]["n_samples"]
    assert metrics["eval_n_test"] == AFTER_TRAINING["other"]["max_test"] and metrics["eval_wall_s"] >= 0


def test_every_model_of_a_kind_is_evaluated_at_the_same_counts(monkeypatch):
    from refgen import data
    from refgen.metrics.evaluation import AFTER_TRAINING, evaluate_after_training
    test = data.load("8gaussians", "test")
    a, b = GaussianMixture((2,), seed=0), GaussianMixture((2,), seed=0)
    b.eval_samples = 7  # a model's own cheaper default must not change the training-end count
    ma, mb = evaluate_after_training(a, test), evaluate_after_training(b, test)
    assert ma["eval_n_samples"] == mb["eval_n_samples"] == AFTER_TRAINING["other"]["n_samples"]
    assert ma == mb


def test_eval_and_sample_show_progress(run_dir, tmp_path, capsys):
    out = _copy_run(run_dir, tmp_path)
    assert main(["eval", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("evaluating on the test set ... ") and err[-1].endswith(" s")
    assert main(["sample", str(out), "-n", "10", "--out", str(tmp_path / "s.png")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("drawing 10 ... ") and err[-1].endswith(" s")
    assert main(["sample", str(out), "-n", "10", "--out", str(tmp_path / "s.png"), "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_sample_out_refuses_to_overwrite_what_refgen_did_not_write(run_dir, tmp_path, capsys):
    target = tmp_path / "notes.png"
    target.write_text("my notes, not a picture\n")
    rc = main(["sample", str(run_dir), "-n", "10", "--out", str(target), "-q"])
    assert "pass --force to overwrite it" in _one_error_line(capsys, rc)
    assert target.read_text() == "my notes, not a picture\n"
    assert main(["sample", str(run_dir), "-n", "10", "--out", str(target), "-q", "--force"]) == 0
    assert io.is_refgen_png(target)
    assert main(["sample", str(run_dir), "-n", "20", "--out", str(target), "-q"]) == 0  # refgen's own


def test_list_into_a_closed_pipe_is_quiet():
    p = subprocess.Popen([sys.executable, "-m", "refgen", "list"], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()  # as `refgen list | head -0` does, before refgen writes
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 0 and err == ""


def test_list_says_which_data_each_model_accepts(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    gmm = out[[i for i, ln in enumerate(out) if ln.split()[:1] == ["gmm"]][0] + 1]
    assert gmm.split() == ["data:", "2D", "toys"]
    gpt = out[[i for i, ln in enumerate(out) if ln.split()[:1] == ["gpt"]][0] + 1]
    assert "text:PATH" in gpt and "mnist-14-binary" in gpt
    assert any("mnist " in ln and "labelled" in ln for ln in out)


@pytest.mark.slow
def test_a_short_gpt_run_on_mnist14_ends_within_a_minute(tmp_path, capsys):
    import time
    from refgen.data import find_mnist_dir
    if find_mnist_dir() is None:
        pytest.skip("MNIST files not found (set REFGEN_DATA_DIR)")
    t = time.perf_counter()
    assert main(["train", "gpt", "--data", "mnist-14-binary", "--steps", "20", "-q",
                 "--out", str(tmp_path / "r")]) == 0
    seconds = time.perf_counter() - t
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["eval_n_samples"] == 256 and "fid_mnist" in metrics and "test_bpd" in metrics
    assert seconds < 60, f"{seconds:.0f} s (on an idle core; a loaded machine is slower)"


def test_sample_steps_and_sampler_reach_the_models_sampler(run_dir, tmp_path, capsys, monkeypatch):
    """`refgen sample --steps K --sampler NAME` calls model.sample(steps=K, sampler=NAME), and
    what it draws is that sampler's output (two DDIM draws with one seed agree, ancestral
    sampling differs); a name the model refuses, or a flag its sample does not take, is one
    line and exit 2, with nothing written."""
    from refgen.models.diffusion.ddpm import DDPM
    ddpm = tmp_path / "ddpm"
    assert main(["train", "ddpm", "--data", "8gaussians", "--steps", "3", "--out", str(ddpm), "-q",
                 "--no-eval", "--set", "T=40", "--set", "hidden=8", "--set", "depth=1"]) == 0
    calls, real = [], DDPM.sample

    def spy(self, n, cond=None, *, rng, **kw):
        x = real(self, n, cond, rng=rng, **kw)
        calls.append((kw, np.asarray(x).copy()))
        return x
    monkeypatch.setattr(DDPM, "sample", spy)
    for name, extra in (("a", ["--sampler", "ddim"]), ("b", ["--sampler", "ddim"]),
                        ("c", ["--sampler", "ddpm"])):
        assert main(["sample", str(ddpm), "-n", "50", "--steps", "5", "--out",
                     str(tmp_path / f"{name}.png"), "-q"] + extra) == 0
    assert [kw for kw, _ in calls] == [dict(steps=5, sampler="ddim")] * 2 + [dict(steps=5, sampler="ddpm")]
    assert np.array_equal(calls[0][1], calls[1][1]) and not np.allclose(calls[1][1], calls[2][1])
    capsys.readouterr()
    line = _one_error_line(capsys, main(["sample", str(ddpm), "--sampler", "bogus", "-q",
                                         "--out", str(tmp_path / "d.png")]))
    assert "bogus" in line and "ddim" in line
    line = _one_error_line(capsys, main(["sample", str(run_dir), "--steps", "3", "-q",
                                         "--out", str(tmp_path / "e.png")]))
    assert "'gmm' takes no --steps" in line
    line = _one_error_line(capsys, main(["sample", str(run_dir), "--truncation", "0.5", "-q",
                                         "--out", str(tmp_path / "e.png")]))
    assert "'gmm' takes no --truncation" in line
    assert not (tmp_path / "d.png").exists() and not (tmp_path / "e.png").exists()


def test_load_component_takes_a_model_or_its_run_and_refuses_the_rest_in_one_line(tmp_path):
    """refgen.runs.load_component, the one door for a model built on a trained one: a model of
    the named kind (itself, or copy(model)), the model of a run directory with the run's
    weights, and one ValueError line for the wrong kind, a wrong shape, a missing run, a bad
    type, or nothing given."""
    from refgen.runs import load_component, load_run
    run_dir = tmp_path / "flow"
    assert main(["train", "realnvp", "--data", "8gaussians", "--steps", "2", "--no-eval", "-q",
                 "--out", str(run_dir)]) == 0
    ref, _ = load_run(run_dir)
    kw = dict(who="student", option="base")
    got = load_component(str(run_dir), kinds="realnvp", data_shape=(2,), **kw)
    assert type(got) is type(ref) and not got.training
    for k, v in ref.state_dict().items():
        np.testing.assert_array_equal(got.state_dict()[k], v)
    assert load_component(ref, kinds=("ddpm", "realnvp"), **kw) is ref
    sub = type("Sub", (type(ref),), {})(data_shape=(2,), seed=1)   # a class built on the kind's
    assert load_component(sub, kinds="realnvp", **kw) is sub
    twin = models.create("realnvp", data_shape=(2,), seed=1)
    assert load_component(ref, kinds="realnvp", copy=lambda m: twin, **kw) is twin
    cases = [(dict(spec=str(run_dir), kinds="ddpm"), r"^base '.*' is a 'realnvp' run; student needs a ddpm run$"),
             (dict(spec=ref, kinds="ddpm"), r"^base is a 'realnvp' model; student needs a ddpm$"),
             (dict(spec=str(run_dir), kinds="realnvp", data_shape=(3,)),
              r"^student: the data has shape \(3,\) but the base was trained on \(2,\)$"),
             (dict(spec=str(run_dir / "none"), kinds="realnvp"), r"^base: run directory .* does not exist"),
             (dict(spec=3, kinds="realnvp"), r"^base must be a realnvp run directory or a realnvp model, got int$"),
             (dict(spec=None, kinds=("a", "b")),
              r"^student builds on a trained a or b: pass its run directory, --set base=runs/<a or b run>$")]
    for case, message in cases:
        spec = case.pop("spec")
        with pytest.raises(ValueError, match=message):
            load_component(spec, **case, **kw)
