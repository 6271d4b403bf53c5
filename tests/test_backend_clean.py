"""Ops, layers and models reach arrays only through refgen.backend.xp, never NumPy directly:
that is what lets REFGEN_BACKEND=cupy run the very same code on a GPU."""
import ast
from pathlib import Path

import pytest

REFGEN = Path(__file__).resolve().parents[1] / "refgen"
PACKAGES = ["functional", "nn", "models"]
MODULES = ["autograd.py", "optim.py", "distributions.py", "demo.py"]
# The one sanctioned exception (DESIGN.md, RNG): parameters are drawn from a host NumPy
# generator and then moved to the backend, so one seed gives the same weights on CPU and GPU.
HOST_NUMPY_ALLOWED = {"nn/init.py"}


def _backend_bound_files():
    files = []
    for pkg in PACKAGES:
        files += sorted((REFGEN / pkg).rglob("*.py"))
    files += [REFGEN / m for m in MODULES if (REFGEN / m).exists()]
    return [p for p in files if p.relative_to(REFGEN).as_posix() not in HOST_NUMPY_ALLOWED]


def _numpy_imports(path):
    """Line numbers of ``import numpy``, ``from numpy ...`` and ``__import__('numpy')``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else []
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            fn = node.func
            called = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            names = [node.args[0].value] if called in ("__import__", "import_module") else []
        else:
            continue
        if any(isinstance(n, str) and (n == "numpy" or n.startswith("numpy.")) for n in names):
            hits.append(node.lineno)
    return hits


FILES = _backend_bound_files()


def test_the_scan_finds_the_engine():
    names = {p.name for p in FILES}
    assert "elementwise.py" in names and "autograd.py" in names


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(REFGEN)) for p in FILES])
def test_does_not_import_numpy(path):
    hits = _numpy_imports(path)
    assert not hits, (f"refgen/{path.relative_to(REFGEN)} imports numpy at line(s) {hits}; "
                      "use `from refgen.backend import xp` (and to_numpy for host copies)")


def test_the_detector_detects(tmp_path):
    src = tmp_path / "m.py"
    for line in ("import numpy as np", "import numpy.linalg", "from numpy import pi",
                 "def f():\n    from numpy.random import default_rng", "np = __import__('numpy')",
                 "import importlib\nnp = importlib.import_module('numpy')"):
        src.write_text(line + "\n")
        assert _numpy_imports(src), line
    src.write_text("from refgen.backend import xp\nimport numbers\nx = 'import numpy'\n")
    assert not _numpy_imports(src)
