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
