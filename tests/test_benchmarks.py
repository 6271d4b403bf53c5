"""Every benchmark script runs: each one's ``--smoke`` mode (a few steps on tiny data, written
to a temporary directory; see benchmarks/common.py) as a subprocess, so that a change of
refgen's API cannot silently break a benchmark. The scripts that read MNIST take it from the
``mnist_dir`` fixture (skipped without the files). benchmarks/results is never written."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
HELPERS = {"common.py", "t2i_common.py"}  # imported by the scripts, not run
# scripts whose smoke run lives in another test file, with a reason
ELSEWHERE = {"mutation.py": "tests/test_mutants.py::test_harness_smoke_run_kills_its_mutants",
             "sample_metrics_reference.py": "tests/metrics/test_sample_metrics_reference.py",
             "gan_2d.py": "tests/models/gan/test_benchmark_smoke.py",
             "energy_2d.py": "tests/models/energy/test_benchmark_smoke.py",
             "score_2d.py": "tests/models/score/test_benchmark.py"}

# script -> (extra arguments, reads MNIST); one script may appear with several argument sets
SMOKE_RUNS = [
    ("broadcast_rows.py", [], False),
    ("cascade_mnist.py", [], True),
    ("clip_mnist.py", [], True),
    ("conv_speed.py", [], False),
    ("controlnet_mnist.py", [], True),
    ("dalle_mnist.py", [], True),
    ("diffusion_2d.py", ["--quiet"], False),
    ("diffusion_2d.py", ["--quiet", "--variant", "hybrid", "--set", "learn_sigma=true"], False),
    ("diffusion_classifier_guidance.py", [], True),
    ("diffusion_fewsteps_2d.py", [], False),
    ("diffusion_mnist.py", [], True),
    ("dit_mnist.py", [], True),
    ("energy_mnist.py", [], True),
    ("energy_mnist.py", ["--model", "jem"], True),
    ("fewsteps_mnist.py", [], True),
    ("fid_reference.py", [], True),
    ("flows_2d.py", [], False),
    ("flows_mnist.py", ["--model", "glow"], True),
    ("flows_mnist.py", ["--model", "maf", "--measure", "2"], True),
    ("flows_mnist.py", ["--model", "gflow"], True),
    ("gan_mnist.py", ["--truncation", "0.5,2", "--drs", "0,-1", "--drs-fit", "2"], True),
    ("gan_mnist.py", ["--model", "infogan", "--set", "codes=3", "--drs", "0"], True),
    ("gan_mnist.py", ["--model", "wgan-gp", "--drs", "0", "--drs-fit", "2,3"], True),
    ("gan_mnist.py", ["--model", "infowgan-gp", "--set", "codes=3", "--drs", "0", "--drs-fit", "2"], True),
    ("gan_mnist_torch.py", [], True),
    ("gflow_2d.py", [], False),
    ("glide_mnist.py", [], True),
    ("glide_upsampler_mnist.py", [], True),
    ("glide_mnist.py", ["--guidance", "", "--clip-scales", "0,5"], True),
    ("gpt_mnist14.py", [], True),
    ("group_norm_chunks.py", [], False),
    ("imagen_mnist.py", [], True),
    ("gpu_check.py", [], False),
    ("latent_diffusion_mnist.py", [], True),
    ("made_mnist.py", [], True),
    ("ops.py", [], False),
    ("pixelcnn_mnist.py", [], True),
    ("pixelcnn_mnist.py", ["--model", "pixelrnn", "--variant", "diagonal"], True),
    ("pixelcnn_recipe.py", [], True),
    ("pixelcnn_step_cost.py", [], False),
    ("pixel_sampling_speed.py", [], True),
    ("sampling_speed.py", [], False),
    ("score_mnist.py", [], True),
    ("score_mnist.py", ["--part", "ncsn", "--config", "v1", "--workers", "2"], True),
    ("speed.py", [], False),
    ("t2i_table_mnist.py", [], True),
    ("train_mnist_classifier.py", [], True),
    ("vae_beta_sweep.py", [], True),
    ("vae_mnist.py", ["--model", "cvae", "--latent-dim", "2"], True),
    ("unclip_mnist.py", ["--ar-prior-steps", "3", "--prior-alone-steps", "3", "--prior-steps-sweep", "1,2"], True),
    ("unet_variants_mnist.py", [], True),
    ("vqvae_mnist.py", [], True),
    ("vqvae2_mnist.py", [], True),
]


def _results_state():
    return {p.name: p.stat().st_mtime_ns for p in (BENCH / "results").iterdir()}


def test_every_script_has_a_smoke_run():
    scripts = {p.name for p in BENCH.glob("*.py")} - HELPERS - set(ELSEWHERE)
    covered = {s for s, _, _ in SMOKE_RUNS}
    assert scripts == covered, f"scripts without a smoke run: {sorted(scripts - covered)}"


@pytest.mark.parametrize("script,extra,mnist", SMOKE_RUNS,
                         ids=[" ".join([s] + e) for s, e, _ in SMOKE_RUNS])
def test_smoke(script, extra, mnist, request, tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path), REFGEN_BACKEND="numpy",
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    if mnist:
        env["REFGEN_DATA_DIR"] = str(request.getfixturevalue("mnist_dir"))
    before = _results_state()
    proc = subprocess.run([sys.executable, str(BENCH / script), "--smoke", *extra], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{script} --smoke failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    written = list(tmp_path.glob("refgen_smoke_*/*.json"))
    assert written, f"{script} --smoke wrote no result JSON into its temporary directory"
    assert _results_state() == before, "a smoke run touched benchmarks/results"


def test_conv_speed_against_torch_smoke(tmp_path):
    """conv_speed.py --torch (PyTorch is an optional benchmark extra): every U-Net layer timed
    on both sides, ratios and the GEMM floor written."""
    pytest.importorskip("torch")
    env = dict(os.environ, TMPDIR=str(tmp_path), REFGEN_BACKEND="numpy", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(BENCH / "conv_speed.py"), "--smoke", "--torch"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = tmp_path.glob("refgen_smoke_*/conv_vs_torch_cpu.json")
    res = json.loads(path.read_text())["unet28"]
    assert res["layers"] and all(r["torch_forward_ms"] > 0 and r["gemm_ms"] > 0 for r in res["layers"])
    assert res["per_forward_pass"]["forward_ratio"] > 0


def test_gpu_check_refuses_an_unknown_part_before_it_starts(tmp_path):
    """A misspelt --train or --skip part is one error line naming what is accepted, not a run
    that silently trains nothing."""
    env = dict(os.environ, TMPDIR=str(tmp_path), REFGEN_BACKEND="numpy")
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--smoke", "--train", "unet28,wgan-gp"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown part(s) wgan-gp" in proc.stderr and "wgan_gp" in proc.stderr
    assert not list(tmp_path.glob("refgen_smoke_*/gpu_check.json"))


def _common():
    import importlib.util
    spec = importlib.util.spec_from_file_location("benchmarks_common", BENCH / "common.py")
    common = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = common    # importable by name: PoolDraw's workers unpickle its functions
    spec.loader.exec_module(common)
    return common


def test_fit_at_point_sees_the_average_and_leaves_training_alone():
    """benchmarks/common.py::fit's at_point runs in eval mode on the EMA weights (those the run
    ends with at its last point), and a run with it ends on the same weights as one without."""
    from types import SimpleNamespace

    import numpy as np

    from refgen import backend, models
    fit = _common().fit
    ds = SimpleNamespace(x=np.random.default_rng(0).standard_normal((64, 2)).astype(np.float32))

    def run(at_point=None):
        m = models.create("consistency-training", data_shape=(2,), seed=0, K=6, hidden=16, depth=1)
        fit(m, ds, 6, 1e-2, 0, 8, log=[], points=3, ema=0.5, at_point=at_point and at_point(m))
        return m, {k: backend.to_numpy(v).copy() for k, v in m.state_dict().items()}
    seen = []

    def at_point(m):
        def call(step):
            online = {k: backend.to_numpy(p.data).copy() for k, p in m.named_parameters()}
            seen.append((step, m.training, online))
        return call
    m, with_calls = run(at_point)
    _, without = run()
    assert [s for s, _, _ in seen] == [2, 4, 6] and not any(t for _, t, _ in seen)
    assert with_calls.keys() == without.keys()
    assert all(np.array_equal(with_calls[k], without[k]) for k in without)
    last = seen[-1][2]                     # the average at the last point is what fit leaves
    assert all(np.array_equal(last[k], with_calls[k]) for k in last)
    assert any(not np.array_equal(seen[0][2][k], last[k]) for k in last)


def test_machine_records_the_blas_kernel_and_command_its_override(monkeypatch):
    """Timings are only comparable with the BLAS kernels that ran: machine() names them and
    command() keeps an OPENBLAS_CORETYPE that chose them."""
    common = _common()
    m = common.machine()
    assert m["blas_core"] is None or (isinstance(m["blas_core"], str) and m["blas_core"])
    assert m["avx512"] in (True, False, None)
    monkeypatch.setenv("OPENBLAS_CORETYPE", "SkylakeX")
    monkeypatch.delenv("REFGEN_BACKEND", raising=False)
    assert common.command().startswith("OPENBLAS_CORETYPE=SkylakeX python ")


def test_nfe_counter_counts_network_evaluations_per_sample():
    """benchmarks/common.py::NFECounter on annealed Langevin: L levels of T steps and the final
    denoising step are L * T + 1 evaluations per sample; the network is restored afterwards."""
    from refgen import backend, models
    NFECounter = _common().NFECounter
    m = models.create("ncsn", data_shape=(2,), seed=0, sigma_max=1.5, num_levels=3, T=4, hidden=8,
                      depth=1)
    with NFECounter(m.net) as c:
        m.sample(5, rng=backend.default_rng(0))
    assert c.rows == 5 * (3 * 4 + 1) and c.per_sample(5) == 13
    assert "forward" not in m.net.__dict__
    m.sample(5, rng=backend.default_rng(0), denoise=False)
    assert c.rows == 65


@pytest.mark.skipif(os.environ.get("REFGEN_BACKEND", "numpy") != "numpy",
                    reason="PoolDraw forks CPU processes")
def test_pool_draw_is_the_serial_per_batch_draw_for_any_number_of_workers():
    """benchmarks/common.py::PoolDraw: batch j drawn from default_rng([seed, j]) whatever the
    number of workers, handed out in order; the workers' network rows counted; no more rows
    than drawn."""
    from refgen import backend, models
    from refgen.autograd import no_grad
    PoolDraw = _common().PoolDraw
    m = models.create("ncsn", data_shape=(2,), seed=0, sigma_max=1.5, num_levels=3, T=4, hidden=8,
                      depth=1)

    def fn(n, rng):
        return m.sample(n, rng=rng)
    with no_grad():
        want = np.concatenate([backend.to_numpy(fn(k, backend.default_rng([5, j])))
                               for j, k in enumerate((3, 3, 1))])
    for workers in (1, 2):
        d = PoolDraw(fn, 7, 3, workers, 5, net=m.net)
        got = np.concatenate([backend.to_numpy(d.sample(k, rng=None)) for k in (3, 3, 1)])
        np.testing.assert_array_equal(got, want)
        assert d.rows == 7 * (3 * 4 + 1)
        with pytest.raises(ValueError, match="drew 7"):
            d.sample(1, rng=None)


def _script(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name[:-3]}", BENCH / name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gan_mnist_continues_a_run_with_its_settings_and_a_new_lr_or_ema(tmp_path):
    """A run directory that continues keeps its own model and batch settings; --lr and --ema
    change the run from its checkpoint's step on, each change recorded; a flag that would
    change anything else is an error naming it, not a value silently dropped."""
    import numpy as np

    from refgen import io
    gm = _script("gan_mnist.py")
    train = {"batch_size": 64, "lr": 2e-4, "seed": 0, "optimizer": "adam", "schedule": "constant",
             "log_every": 30, "ema_decay": 0.999, "steps": 100}
    cfg = {"model": "nsgan", "data": "mnist", "model_kwargs": {"channels": 32}, "train": train}
    io.save_checkpoint(tmp_path / "checkpoint.npz", {"w": np.zeros(1)}, {"step": 100})

    def cont(argv, cfg=cfg):
        args = gm.parse(argv)
        return gm.continued(args, cfg, tmp_path)
    kw, st, changes = cont(["--steps", "300"])  # nothing given: the run as it was
    assert kw == {"channels": 32} and changes == [] and st == {k: v for k, v in train.items() if k != "steps"}
    kw, st, changes = cont(["--ema", "0.9999", "--set", "channels=32", "--batch-size", "64"])
    assert st["ema_decay"] == 0.9999 and st["lr"] == 2e-4
    assert changes == [{"step": 100, "setting": "--ema", "from": 0.999, "to": 0.9999}]
    later = dict(cfg, train=dict(train, ema_decay=0.9999), train_changes=changes)
    _, st, changes2 = cont(["--lr", "2e-5", "--ema", "0.9999"], later)
    assert st["lr"] == 2e-5 and st["ema_decay"] == 0.9999
    assert changes2 == changes + [{"step": 100, "setting": "--lr", "from": 2e-4, "to": 2e-5}]
    with pytest.raises(SystemExit, match=r"--batch-size 32 \(the run has 64\); --set channels 64 "
                                         r"\(the run has 32\)\. Accepted changes: --lr, --ema"):
        cont(["--set", "channels=64", "--batch-size", "32"])
    with pytest.raises(SystemExit, match=r"--model wgan-gp \(the run has nsgan\)"):
        cont(["--model", "wgan-gp"])
    with pytest.raises(SystemExit, match="trained without an EMA"):
        cont(["--ema", "0.999"], dict(cfg, train=dict(train, ema_decay=None)))


def test_a_continued_run_takes_the_changes_it_accepts_and_refuses_the_rest(tmp_path):
    """common.asked_flags: a flag left unset (None) is not asked, one given is, even at its
    usual value, and a --set always is; common.fill_defaults fills only the unset ones;
    common.continue_run: an accepted change is applied and recorded at the checkpoint's step,
    an asked value equal to the run's is no change, and any other difference is refused."""
    from types import SimpleNamespace

    import numpy as np

    from refgen import io
    common = _common()
    flags = {"--batch-size": 64, "--lr": 2e-4, "--ema": 0.999}
    args = SimpleNamespace(batch_size=None, lr=1e-4, ema=0.999, set=["channels=8"])
    asked = common.asked_flags(args, flags)
    assert asked == {"--lr": 1e-4, "--ema": 0.999, "--set channels": 8}
    assert vars(common.fill_defaults(SimpleNamespace(**vars(args)), flags)) == dict(
        vars(args), batch_size=64)
    stored = {"--batch-size": 32, "--lr": 2e-4, "--ema": 0.99, "--set channels": 8}
    io.save_checkpoint(tmp_path / "checkpoint.npz", {"w": np.zeros(1)}, {"step": 40})
    now, changes = common.continue_run(tmp_path, stored, asked, changeable=("--lr", "--ema"))
    assert now == dict(stored, **{"--lr": 1e-4, "--ema": 0.999}) and changes == [
        {"step": 40, "setting": "--lr", "from": 2e-4, "to": 1e-4},
        {"step": 40, "setting": "--ema", "from": 0.99, "to": 0.999}]   # back to the usual value
    assert common.continue_run(tmp_path, stored, {"--batch-size": 32}) == (stored, [])
    with pytest.raises(SystemExit, match=r"got --set channels 16 \(the run has 8\)\. "
                                         r"Accepted changes: --lr$"):
        common.continue_run(tmp_path, stored, {"--set channels": 16, "--lr": 1e-3}, changeable=("--lr",))


def test_diffusion_mnist_continues_a_run_on_its_own_data_and_takes_a_flag_at_its_usual_value(
        tmp_path, mnist_dir, monkeypatch):
    """A continued diffusion_mnist.py run reads the data its config names (here mnist, not the
    script's default mnist-14), and a flag given at its usual value (--lr 2e-4, the default)
    is asked: it changes a run that has another rate, and the change is recorded."""
    monkeypatch.setenv("REFGEN_DATA_DIR", str(mnist_dir))
    dm = _script("diffusion_mnist.py")
    p, out = dm.main_parser(), str(tmp_path / "run")
    tiny = ["--set", "T=30", "--set", "channels=8", "--set", "num_res_blocks=1"]
    dm.train_run(p.parse_args(["train", "--data", "mnist", "--out", out, "--steps", "2", "--chunk",
                               "2", "--batch-size", "4", "--warmup", "1", "--lr", "1e-4"] + tiny))
    assert dm.train_run(p.parse_args(["train", "--out", out, "--steps", "4", "--chunk", "2",
                                      "--lr", "2e-4"])) == 4
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["data"] == "mnist" and cfg["data_facts"]["shape"] == [1, 28, 28]
    assert cfg["train"]["lr"] == 2e-4 and cfg["train"]["warmup"] == 1
    assert cfg["train_changes"] == [{"step": 2, "setting": "--lr", "from": 1e-4, "to": 2e-4}]
    with pytest.raises(SystemExit, match=r"--data mnist-14 \(the run has mnist\)"):
        dm.train_run(p.parse_args(["train", "--out", out, "--steps", "6", "--data", "mnist-14"]))


def test_gan_mnist_refuses_drs_on_a_critic_without_a_fit_before_training(request, tmp_path):
    """A wgan-gp's critic scores no log p / q: --drs without --drs-fit stops in one line,
    before a training step is taken."""
    env = dict(os.environ, TMPDIR=str(tmp_path), REFGEN_BACKEND="numpy", OPENBLAS_NUM_THREADS="1",
               REFGEN_DATA_DIR=str(request.getfixturevalue("mnist_dir")))
    proc = subprocess.run([sys.executable, str(BENCH / "gan_mnist.py"), "--smoke", "--model",
                           "wgan-gp", "--drs", "0"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(err) == 1 and "--drs-fit" in err[0], proc.stderr
    assert not list(tmp_path.rglob("checkpoint.npz"))
