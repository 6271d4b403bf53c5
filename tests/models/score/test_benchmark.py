"""The 2D benchmark's recipe cannot rot: its --smoke mode runs every model and sampler."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_score_2d_smoke(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "score_2d.py"), "--smoke", "--quiet",
                    "--data", "8gaussians", "--out-dir", str(tmp_path)], check=True, cwd=ROOT,
                   timeout=600)
    res = json.loads((tmp_path / "score_2d.json").read_text())
    runs = {r["model"]: r for r in res["runs"]}
    assert set(runs) == {"sde-vp", "sde-ve", "ncsn"}
    assert all(runs[m][k]["finite"] for m in ("sde-vp", "sde-ve") for k in ("em", "pc", "ode"))
    assert runs["ncsn"]["als"]["finite"]
    assert all(r == r for r in [runs["sde-vp"]["pf_ode_nll"]["test_nll_nats"]])   # not NaN
