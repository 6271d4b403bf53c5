"""The mutant lists (benchmarks/mutants/*.json) stay runnable: every entry is well formed, its
``find`` text occurs exactly once in its file, and its tests exist. The mutation run itself
(benchmarks/mutation.py) takes minutes and is not part of the default suite."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LISTS = sorted((ROOT / "benchmarks" / "mutants").glob("*.json"))


def _harness():
    spec = importlib.util.spec_from_file_location("refgen_mutation",
                                                  ROOT / "benchmarks" / "mutation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_there_are_mutant_lists():
    assert LISTS, "benchmarks/mutants/ holds no lists"


@pytest.mark.parametrize("path", LISTS, ids=[p.stem for p in LISTS])
def test_mutant_list_is_well_formed(path):
    problems = _harness().problems
    mutants = json.loads(path.read_text())
    assert isinstance(mutants, list) and mutants
    bad = [f"[{i}] {m.get('why', '') if isinstance(m, dict) else ''}: {p}"
           for i, m in enumerate(mutants) for p in problems(m, ROOT)]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_rot(tmp_path):
    problems = _harness().problems
    (tmp_path / "refgen").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "refgen" / "m.py").write_text("a = 1\nb = 1\n")
    (tmp_path / "tests" / "test_m.py").write_text("")
    ok = {"file": "refgen/m.py", "find": "a = 1", "replace": "a = 2", "why": "w",
          "tests": ["tests/test_m.py::test_x"]}
    assert problems(ok, tmp_path) == []
    assert problems(dict(ok, find="= 1"), tmp_path)              # twice
    assert problems(dict(ok, find="c = 1"), tmp_path)            # gone
    assert problems(dict(ok, tests=["tests/test_gone.py"]), tmp_path)
    assert problems(dict(ok, replace="a = 1"), tmp_path)
    assert problems(dict(ok, extra=1), tmp_path)
    assert problems({k: v for k, v in ok.items() if k != "why"}, tmp_path)


def test_harness_smoke_run_kills_its_mutants(tmp_path):
    """benchmarks/mutation.py --smoke applies two engine mutants in a copy of the tree and
    must report both killed (a harness that ran no test, or the wrong tests, would not)."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, TMPDIR=str(tmp_path), OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "mutation.py"), "--smoke",
                           "--no-baseline"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "kill rate 1.0: 2 of 2 killed" in proc.stdout, proc.stdout[-2000:]
