"""The training loop: learning, checkpoints, bit-for-bit resume, divergence, logs."""
import json

import numpy as np
import pytest

from refgen import backend, data, io
from refgen.backend import to_numpy
from refgen.data import Dataset
from refgen.models.baseline.gmm import GaussianMixture
from refgen.train import Batcher, TrainConfig, TrainingDiverged, train


def _small_noisy_data(n=100, seed=0):
    """Few examples (so 40 steps cross epochs) with a per-batch transform drawing from the
    loop's NumPy generator, as dynamic binarization does."""
    x = np.random.default_rng(seed).normal(size=(n, 2)).astype(np.float32)
    jitter = lambda xb, rng: xb + np.float32(0.05) * rng.standard_normal(xb.shape, dtype=np.float32)
    return Dataset("toy", "train", x, None, "continuous", (2,), transform=jitter)


class NoisyGMM(GaussianMixture):
    """A GMM whose loss draws noise from ``rng``, the generator the loop owns and hands it."""

    def loss(self, batch, rng):
        noise = rng.standard_normal(batch.x.shape, dtype=np.float32)
        return -self.log_prob(batch.x + 0.1 * noise).mean()


class NaNAt(GaussianMixture):
    """A GMM whose loss is NaN from its ``nan_at``-th call on."""

    def __init__(self, data_shape, *, seed=0, nan_at=13):
        super().__init__(data_shape, seed=seed)
        self.nan_at, self.calls = nan_at, 0

    def loss(self, batch, rng):
        self.calls += 1
        loss = super().loss(batch, rng)
        return loss * float("nan") if self.calls >= self.nan_at else loss


def _run(model, ds, out, steps, **kw):
    kw = dict(dict(batch_size=32, lr=1e-2, seed=3, log_every=5, ckpt_every=10, progress=False,
                   samples=False), **kw)
    return train(model, ds, steps=steps, out_dir=out, **kw)


def test_loss_decreases_on_8gaussians(tmp_path):
    ds, test = data.load("8gaussians", "train"), data.load("8gaussians", "test")
    model = GaussianMixture((2,), seed=0)
    nll = lambda m: float(-m.log_prob(test.x[:2000]).mean().item())
    before = nll(model)
    metrics = train(model, ds, steps=200, batch_size=256, lr=2e-2, seed=0, out_dir=tmp_path,
                    log_every=20, progress=False, test_dataset=test,
                    eval_fn=lambda m, t: {"test_nll_nats": nll(m)})
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(20, 201, 20))
    assert set(log[0]) >= {"step", "loss", "lr", "steps_per_s", "wall_s"}
    assert log[-1]["loss"] < log[0]["loss"] - 0.8
    assert metrics["test_nll_nats"] < before - 1.0 and metrics["test_nll_nats"] < 3.0  # floor 2.83
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["steps"] == 200 and saved["backend"] == backend.name() and saved["wall_s"] > 0
    assert saved["loss"] == log[-1]["loss"]
    assert (tmp_path / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_resume_is_bit_for_bit(tmp_path, ema_decay):
    ds = _small_noisy_data()
    straight = NoisyGMM((2,), seed=1)
    _run(straight, ds, tmp_path / "a", 40, ema_decay=ema_decay)
    _run(NoisyGMM((2,), seed=1), ds, tmp_path / "b", 20, ema_decay=ema_decay)
    resumed = NoisyGMM((2,), seed=99)  # weights come from the checkpoint, not the seed
    _run(resumed, ds, tmp_path / "b", 40, ema_decay=ema_decay, resume=True)
    for k, v in straight.state_dict().items():
        assert np.array_equal(to_numpy(v), to_numpy(resumed.state_dict()[k])), k
    a, meta_a = io.load_checkpoint(tmp_path / "a" / "checkpoint.npz")
    b, meta_b = io.load_checkpoint(tmp_path / "b" / "checkpoint.npz")
    assert sorted(a) == sorted(b) and any(k.startswith("opt/") for k in a)
    assert any(k.startswith("ema/") for k in a) == (ema_decay is not None)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert meta_a["step"] == meta_b["step"] == 40
    assert meta_a["batcher"] == meta_b["batcher"] and meta_a["rng"] == meta_b["rng"]
    # the log of the resumed run reads as one run
    la = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in la] == [(r["step"], r["loss"]) for r in lb]


def test_a_resumed_run_averages_at_its_own_ema_decay(tmp_path):
    """A run resumed with another ema_decay averages at the new decay from the checkpoint on,
    not at the stored one: with a decay of 1e-9 each update leaves the average within 1e-9 of
    the weights (at the stored 0.9 it would trail them), and the checkpoint records the new
    decay."""
    ds = _small_noisy_data()
    _run(NoisyGMM((2,), seed=1), ds, tmp_path, 20, ema_decay=0.9)
    model = NoisyGMM((2,), seed=1)
    _run(model, ds, tmp_path, 40, ema_decay=1e-9, resume=True)
    arrays, _ = io.load_checkpoint(tmp_path / "checkpoint.npz")
    assert float(arrays["ema/decay"]) == 1e-9
    for k, p in model.named_parameters():
        shadow, w = arrays[f"ema/shadow.{k}"], to_numpy(p.data)
        assert np.max(np.abs(w - arrays[f"model/{k}"])) == 0.0
        np.testing.assert_allclose(shadow, w, rtol=1e-6, atol=1e-7)


def test_resume_drops_log_lines_after_the_checkpoint(tmp_path):
    ds = _small_noisy_data()
    _run(GaussianMixture((2,)), ds, tmp_path, 20)  # checkpoint at step 20
    with open(tmp_path / "log.jsonl", "a") as f:  # a run killed after logging steps 25 and 30
        f.write(json.dumps({"step": 25, "loss": 0.0}) + "\n" + json.dumps({"step": 30, "loss": 0.0}) + "\n")
    _run(GaussianMixture((2,)), ds, tmp_path, 30, resume=True)
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [5, 10, 15, 20, 25, 30]
    assert all(r["loss"] > 0 for r in log)


def test_checkpoints_are_periodic_and_atomic(tmp_path, monkeypatch):
    ds = _small_noisy_data()
    model = GaussianMixture((2,))
    _run(model, ds, tmp_path, 20)
    path = tmp_path / "checkpoint.npz"
    arrays, meta = io.load_checkpoint(path)
    assert meta["step"] == 20 and meta["train"]["steps"] == 20
    assert {"model/logits", "model/mu", "model/log_sigma"} <= set(arrays)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz", "log.jsonl", "metrics.json"]
    before = path.read_bytes()

    def broken_savez(f, **arrays):  # dies half way through writing
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(io.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        _run(GaussianMixture((2,)), ds, tmp_path, 40, resume=True)
    assert path.read_bytes() == before  # the old checkpoint, whole
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    ds = _small_noisy_data()
    model = NaNAt((2,), nan_at=13)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 13.*step 10\) is kept"):
        _run(model, ds, tmp_path, 40)
    arrays, meta = io.load_checkpoint(tmp_path / "checkpoint.npz")
    assert meta["step"] == 10
    assert all(np.all(np.isfinite(v)) for v in arrays.values())
    assert not (tmp_path / "metrics.json").exists()
    # the parameters in memory are those after step 12: the NaN never reached them
    assert all(np.all(np.isfinite(to_numpy(p.data))) for p in model.parameters())


class TwoStep(GaussianMixture):
    """A model with its own train_step and two optimizer groups."""

    def param_groups(self):
        return {"means": [self.mu], "rest": dict(params=[self.logits, self.log_sigma], lr=0.0)}

    def train_step(self, batch, optimizers, rng):
        assert sorted(optimizers) == ["means", "rest"] and optimizers["rest"].lr == 0.0
        loss = self.loss(batch, rng)
        for opt in optimizers.values():
            opt.zero_grad()
        loss.backward()
        for opt in optimizers.values():
            opt.step()
        return {"loss": loss.item(), "extra": 1.5}


def test_train_step_and_param_groups(tmp_path):
    model = TwoStep((2,))
    sigma0, mu0 = to_numpy(model.log_sigma.data).copy(), to_numpy(model.mu.data).copy()
    _run(model, _small_noisy_data(), tmp_path, 10)
    assert np.array_equal(to_numpy(model.log_sigma.data), sigma0)  # lr 0 group did not move
    assert not np.array_equal(to_numpy(model.mu.data), mu0)
    rec = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert rec["extra"] == 1.5
    arrays, _ = io.load_checkpoint(tmp_path / "checkpoint.npz")
    assert any(k.startswith("opt/means/") for k in arrays) and any(k.startswith("opt/rest/") for k in arrays)


class PerGroupOptimizer(TwoStep):
    """Each group names its own optimizer and its keywords, as WGAN and WGAN-GP do."""

    def param_groups(self):
        return {"means": dict(params=[self.mu], optimizer="rmsprop", options=dict(alpha=0.5)),
                "rest": dict(params=[self.logits, self.log_sigma], lr=0.0, optimizer="adam",
                             options=dict(betas=(0.0, 0.9)))}


def test_param_groups_choose_their_optimizer(tmp_path):
    from refgen import optim
    from refgen.train import _make_optimizers
    opts, lrs = _make_optimizers(PerGroupOptimizer((2,)), "sgd", 0.01)
    assert type(opts["means"]) is optim.RMSprop and opts["means"].alpha == 0.5
    assert type(opts["rest"]) is optim.Adam and opts["rest"].betas == (0.0, 0.9)
    assert lrs == {"means": 0.01, "rest": 0.0}
    _run(PerGroupOptimizer((2,)), _small_noisy_data(), tmp_path, 5)
    arrays, _ = io.load_checkpoint(tmp_path / "checkpoint.npz")
    assert any(k.startswith("opt/means/") and k.endswith("square_avg") for k in arrays)

    class Bad(TwoStep):
        def param_groups(self):
            return {"means": dict(params=[self.mu], optimizer="lbfgs")}
    with pytest.raises(ValueError, match="optimizer 'lbfgs'; accepted: adam, adamw, sgd, rmsprop"):
        _make_optimizers(Bad((2,)), "adam", 0.01)


def test_schedules():
    lr_at = lambda step, total, **kw: TrainConfig(steps=total, batch_size=1, lr=1.0, **kw).lr_factor(step)
    assert lr_at(0, 100, warmup=10) == pytest.approx(0.1)
    assert lr_at(9, 100, warmup=10) == pytest.approx(1.0)
    assert lr_at(50, 100) == 1.0
    assert lr_at(10, 110, warmup=10, schedule="cosine") == pytest.approx(1.0)
    assert lr_at(60, 110, warmup=10, schedule="cosine") == pytest.approx(0.5)
    assert lr_at(110, 110, warmup=10, schedule="cosine") == pytest.approx(0.0, abs=1e-12)


def test_the_loop_follows_the_schedule_and_logs_each_steps_rate(tmp_path):
    # warmup 4 then a half cosine to 0 at step 12, for both groups, whatever their base lr;
    # the lr logged on a line is the one the step of that line used
    model = TwoStep((2,))
    _run(model, _small_noisy_data(), tmp_path, 12, log_every=1, warmup=4, schedule="cosine")
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    cfg = TrainConfig(steps=12, batch_size=32, lr=1e-2, warmup=4, schedule="cosine")
    assert [r["lr"] for r in log] == pytest.approx([1e-2 * cfg.lr_factor(s) for s in range(12)])
    assert log[0]["lr"] == pytest.approx(1e-2 / 4) and log[4]["lr"] == pytest.approx(1e-2)
    # resumed at step 6 with 12 steps in all, the schedule is the 12-step one from step 6 on
    model2 = TwoStep((2,))
    _run(model2, _small_noisy_data(), tmp_path / "b", 6, log_every=1, warmup=4, schedule="cosine")
    _run(model2, _small_noisy_data(), tmp_path / "b", 12, log_every=1, warmup=4, schedule="cosine",
         resume=True)
    log_b = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in log_b[6:]] == [r["lr"] for r in log[6:]]


def test_batcher_covers_each_epoch_and_restores():
    b = Batcher(10, 3, seed=0)
    epoch = np.concatenate([b.next() for _ in range(3)])
    assert len(set(epoch.tolist())) == 9  # no repeats within an epoch; the tail is dropped
    state = json.loads(json.dumps(b.state()))  # survives JSON, as in the checkpoint meta
    ahead = [b.next() for _ in range(5)]
    c = Batcher(10, 3, seed=0)
    c.set_state(state)
    assert all(np.array_equal(x, y) for x, y in zip(ahead, [c.next() for _ in range(5)]))
    with pytest.raises(ValueError, match="larger than the data set"):
        Batcher(2, 3, seed=0)


def test_progress_lines_when_not_a_terminal(tmp_path, capsys):
    _run(GaussianMixture((2,)), _small_noisy_data(), tmp_path, 10, progress=True)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x]
    assert len(lines) == 2 and lines[-1].startswith("step 10/10  loss ")
    assert "steps/s" in lines[-1] and "ETA" in lines[-1] and "\r" not in err


def test_work_after_the_last_step_gets_a_line_each(tmp_path, capsys):
    ds = _small_noisy_data()
    _run(GaussianMixture((2,)), ds, tmp_path, 10, progress=True, samples=True, test_dataset=ds,
         eval_fn=lambda m, t: {"test_nll_nats": 1.0})
    lines = [x for x in capsys.readouterr().err.splitlines() if x]
    assert lines[-2].startswith("evaluating on the test set ... ") and lines[-2].endswith(" s")
    assert lines[-1].startswith(f"drawing samples -> {tmp_path / 'samples.png'} ... ")
    _run(GaussianMixture((2,)), ds, tmp_path, 10, progress=False, samples=True, test_dataset=ds,
         eval_fn=lambda m, t: {})
    assert capsys.readouterr().err == ""


def test_bad_arguments(tmp_path):
    ds = _small_noisy_data()
    with pytest.raises(ValueError, match="optimizer"):
        _run(GaussianMixture((2,)), ds, tmp_path, 5, optimizer="lbfgs")
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        _run(GaussianMixture((2,)), ds, tmp_path / "none", 5, resume=True)


def test_progress_line_updates_in_place_on_a_terminal(tmp_path, monkeypatch):
    import io as _io
    import sys

    class Terminal(_io.StringIO):
        def isatty(self):
            return True

    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    _run(GaussianMixture((2,)), _small_noisy_data(), tmp_path, 10, progress=True)
    text = err.getvalue()
    assert text.startswith("\rstep ") and text.endswith("\n") and text.count("\n") == 1
    assert "step 10/10" in text.rsplit("\r", 1)[-1]


def test_evaluation_does_not_move_the_training_generator(tmp_path):
    ds = _small_noisy_data()
    calls = []

    def eval_fn(model, test):  # samples, as a sampler-based metric would, from its own generator
        calls.append(model.training)
        assert not hasattr(model, "rng")  # the loop's generator is out of its reach
        return {"probe": float(to_numpy(model.sample(4, rng=backend.default_rng(0))).sum())}

    a, b = NoisyGMM((2,), seed=1), NoisyGMM((2,), seed=1)
    _run(a, ds, tmp_path / "a", 30)
    _run(b, ds, tmp_path / "b", 30, eval_every=10, eval_fn=eval_fn, test_dataset=ds, ema_decay=0.5)
    assert calls == [False, False, False]  # steps 10, 20 and the end, in eval mode
    assert b.training
    log = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "probe" in r] == [10, 20]
    assert "probe" in json.loads((tmp_path / "b" / "metrics.json").read_text())
    for k, v in a.state_dict().items():
        assert np.array_equal(to_numpy(v), to_numpy(b.state_dict()[k])), k


def test_samples_png_for_images(tmp_path):
    from refgen.train import write_samples
    model = GaussianMixture((16,))  # 16-vectors drawn as 1x4x4 images
    path = write_samples(model, tmp_path / "s.png", shape=(1, 4, 4), n=9, value_range=(-1.0, 1.0))
    assert path == tmp_path / "s.png" and path.read_bytes()[:4] == b"\x89PNG"
    assert write_samples(model, tmp_path / "t.png", shape=(64,), kind="categorical") is None


class WithStats(GaussianMixture):
    """A model that describes its last loss in ``last_stats``, as the VAEs and DDPM do."""

    def loss(self, batch, rng):
        loss = super().loss(batch, rng)
        self.last_stats = {"half_loss": 0.5 * float(loss.item()), "calls": 1.0}
        return loss


def test_last_stats_go_into_the_log(tmp_path):
    _run(WithStats((2,)), _small_noisy_data(), tmp_path, 10, log_every=1)
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all(r["calls"] == 1.0 and r["half_loss"] > 0 for r in log)
    # with log_every 1 the logged loss is the step's own, so the stat is exactly its half
    assert all(r["half_loss"] == pytest.approx(0.5 * r["loss"], rel=1e-6) for r in log)


def test_train_config_refuses_bad_settings():
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        TrainConfig(steps=0, batch_size=1, lr=1.0)
    with pytest.raises(ValueError, match="warmup must be >= 0"):
        TrainConfig(steps=1, batch_size=1, lr=1.0, warmup=-1)
    with pytest.raises(ValueError, match="unknown schedule 'linear'; accepted: constant, cosine"):
        TrainConfig(steps=1, batch_size=1, lr=1.0, schedule="linear")


def test_resume_refuses_a_length_at_or_below_the_checkpoint(tmp_path):
    ds = _small_noisy_data()
    _run(GaussianMixture((2,)), ds, tmp_path, 10)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match="at step 10; resuming needs steps > 10, got 10"):
        _run(GaussianMixture((2,)), ds, tmp_path, 10, resume=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_the_last_step_is_logged_and_checkpointed_off_the_period(tmp_path):
    _run(GaussianMixture((2,)), _small_noisy_data(), tmp_path, 13, log_every=5, ckpt_every=5)
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [5, 10, 13]
    assert io.load_checkpoint(tmp_path / "checkpoint.npz")[1]["step"] == 13


def test_a_stage_on_a_terminal_shows_counts_then_its_time(monkeypatch):
    import io as _io
    import sys
    from refgen.progress import Stage

    class Terminal(_io.StringIO):
        def isatty(self):
            return True

    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    with Stage("evaluating") as s:
        s._last = -1.0  # as if the last update was long ago
        s.update(3, 10, "samples")
    text = err.getvalue()
    assert "evaluating ... samples 3/10  ETA " in text
    assert text.endswith(" s\n") and text.rsplit("\r", 1)[-1].startswith("evaluating ... ")
