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
    result = mod.main(["--smoke", "--models", "nsgan,pacgan2", "--data", "ring8"])
    for key in ("nsgan/ring8", "pacgan2/ring8"):
        run = result["runs"][key]
        (rec,) = run["per_seed"]
        assert 0 <= rec["modes_covered"] <= 8 and 0.0 <= rec["hq_fraction"] <= 1.0
        assert rec["modes_covered_strict"] <= rec["modes_covered"]     # the stricter rule
    assert result["n_samples"] == 2500 and "command" in result
