"""benchmarks/sample_metrics_reference.py --smoke runs, records its command and machine, and
its numbers order the way the metrics promise (N = 60 and 120, so loose bounds)."""
import importlib.util
import json
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sample_metrics_reference.py"


def test_smoke_run(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("REFGEN_DATA_DIR", str(mnist_dir))
    spec = importlib.util.spec_from_file_location("sample_metrics_reference", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "smoke.json"
    mod.main(["--smoke", "--out", str(out)])
    result = json.loads(out.read_text())
    assert "--smoke" in result["command"] and result["machine"]["nproc"] >= 1
    rows = result["rows"]
    assert set(rows) == {f"{s}, N={n}" for s in ("train", "train + noise std 0.3",
                                                 "train digits 0-4 only") for n in (60, 120)}
    for r in rows.values():
        assert 0.0 <= r["precision"] <= 1.0 and 0.0 <= r["recall"] <= 1.0 and r["kid_mnist_se"] > 0
    floor, dropped = rows["train, N=120"], rows["train digits 0-4 only, N=120"]
    assert abs(floor["kid_mnist"]) < 3 * floor["kid_mnist_se"]
    assert dropped["kid_mnist"] > 2 * dropped["kid_mnist_se"]
    assert dropped["recall"] < floor["recall"] - 0.2
    assert abs(dropped["class_kl"] - math.log(2)) < 0.15 and floor["class_kl"] < 0.15
