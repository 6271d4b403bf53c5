"""benchmarks/gan_2d.py cannot rot: its --smoke mode runs one tiny training per model and
scores it with the published protocol (no files written)."""
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "gan_2d.py"
pytestmark = pytest.mark.usefixtures("numpy_backend")


def test_gan_2d_smoke():
    spec = importlib.util.spec_from_file_location("gan_2d_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    result = mod.main(["--smoke", "--models", "nsgan,pacgan2", "--data", "ring8", "--drs", "0"])
    for key in ("nsgan/ring8", "pacgan2/ring8"):
        run = result["runs"][key]
        (rec,) = run["per_seed"]
        assert 0 <= rec["modes_covered"] <= 8 and 0.0 <= rec["hq_fraction"] <= 1.0
        assert rec["modes_covered_strict"] <= rec["modes_covered"]     # the stricter rule
    # rejection sampling scored for the unpacked minimax model only, with its share kept
    thinned = result["runs"]["nsgan/ring8"]["per_seed"][0]["drs"]
    assert 0 < thinned["acceptance_rate"] <= 1 and 0 <= thinned["modes_covered"] <= 8
    assert "drs" not in result["runs"]["pacgan2/ring8"]["per_seed"][0]
    assert result["n_samples"] == 2500 and "command" in result


def test_gan_2d_keeps_a_diverged_seed_as_such(monkeypatch):
    """A seed whose training diverges is recorded with the reason and left out of the means;
    the other models and data sets still run."""
    spec = importlib.util.spec_from_file_location("gan_2d_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    real_train = mod.train

    def train(model, *args, **kw):
        if getattr(model, "div", None) is not None and model.div.name == "reverse_kl":
            raise mod.TrainingDiverged("loss became nan at step 7")
        return real_train(model, *args, **kw)
    monkeypatch.setattr(mod, "train", train)
    result = mod.main(["--smoke", "--models", "fgan-reverse-kl,fgan-kl", "--data", "ring8"])
    bad, good = result["runs"]["fgan-reverse-kl/ring8"], result["runs"]["fgan-kl/ring8"]
    assert bad["per_seed"][0]["diverged"] == "loss became nan at step 7"
    assert bad["mean_se"]["diverged_seeds"] == 1 and all(v != v for v in bad["mean_se"]["modes_covered"])
    assert good["mean_se"]["diverged_seeds"] == 0 and 0 <= good["per_seed"][0]["modes_covered"] <= 8
