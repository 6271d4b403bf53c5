"""The command line, called as ``main(argv)``: the happy paths, and every kind of bad input
answered with one line, exit status 2, and nothing on disk touched."""
import json
import os
import subprocess
import sys
from pathlib import Path

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
    assert saved["test_nll_nats"] == pytest.approx(json.loads(before["metrics.json"])["test_nll_nats"])


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
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a[:3]) + f"-{i}" for i, (a, _) in enumerate(BAD)])
def test_bad_input_one_line_exit_2_nothing_touched(argv, message, run_dir, tmp_path, capsys,
                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)
    absent = tmp_path / "absent"
    argv = [str(run_dir) if a == "R" else str(absent) if a == "N" else a for a in argv]
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

    def loss(self, batch):
        self.calls += 1
        return super().loss(batch) * (float("nan") if self.calls >= self.nan_at else 1.0)


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
    assert main(["demo", "--out", str(out), "--steps", "10", "-q", "--data", "moons", "--models", "gmm"]) == 0  # reruns


def test_mismatch_found_in_the_first_step_is_one_line_and_leaves_nothing(tmp_path, capsys):
    # vae's default Bernoulli decoder refuses real-valued 2D data only when it sees a batch
    out = tmp_path / "r"
    assert main(["train", "vae", "--data", "8gaussians", "--out", str(out), "--steps", "5", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("refgen: error: model 'vae' cannot train on '8gaussians'")
    assert not out.exists()
