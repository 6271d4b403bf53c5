"""The 2D energy benchmark's recipe runs end to end (tiny nets, 3 steps), so it cannot rot."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.usefixtures("numpy_backend")
def test_energy_2d_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("energy_2d", ROOT / "benchmarks" / "energy_2d.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--smoke", "--data", "checkerboard", "--out", str(tmp_path / "runs"),
              "--results-dir", str(tmp_path)])
    runs = json.loads((tmp_path / "energy_2d.json").read_text())["runs"]
    assert set(runs) == {f"{m}/checkerboard" for m in ("ebm", "ebm-nce", "ebm-fce", "ebm-sm")}
    for r in runs.values():
        assert r["test_nll_nats"] > 0 and 0 <= r["edge_mass"] < 1e-4 and "command" in r
        assert (tmp_path / Path(r["png"]).name).exists()
