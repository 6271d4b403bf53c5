"""Equation tags point at the lines that compute them, and the docs and the tests agree.

The convention, which every docs page and every comment in refgen/ follows:

* A bare tag ``# (n)`` opening a comment in refgen/ (``# (3)``, ``# (24), (25)``,
  ``# (13)-(16): ...``) means: this line computes equation n of the numbered diffusion
  derivation ("What are Diffusion Models and Study Notes?", 2024, an annotated edition of
  Lilian Weng's "What are Diffusion Models?", 2021, with equations (1)-(34)). That numbering
  is the only one written bare. Other families name the paper instead
  (``# Gulrajani et al. 2017, eq. 3``).
* A docs page may hold an equation table: a Markdown table whose header row is exactly
  ``| eq. | what | computed in | tested by |``. Each row is one equation: its label (``(n)``
  for the numbered derivation, or the paper's own label such as ``Gulrajani et al. 2017,
  eq. 3``), what it is, the code that computes it as ``refgen/...py::Name`` references
  (``Name`` a top-level function or class, or ``Class.member``; a row may name none when no
  single line computes the equation, and then says so), and the tests that check it as
  ``tests/...py::test_name`` references. Pages without such a table are not checked here.

What is checked:

1. every function named in a row carries a comment tagging that row's equation (a bare
   ``# (n)`` tag, or for a paper's label a comment containing the label);
2. every bare ``# (n)`` tag in refgen/ sits in a function that the row (n) of some page's
   table names (same file, same function), so a tag cannot drift to a line the docs do not
   claim, and an equation cannot be documented in one place and tagged in another;
3. every row names at least one test, each named test exists, and its docstring, comments or
   name name the equation: ``(n)``, ``eq. n`` or ``eqs. n`` for the numbered derivation, the
   label for a paper's equation.

A tag on a nested function or a method belongs to its top-level function, or to
``Class.method``.
"""
import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted((REPO / "docs").glob("*.md"))
HEADER = ["eq.", "what", "computed in", "tested by"]

NUM = r"\d+(?:\.\d+)?"
BARE_TAG = re.compile(rf"^#\s*(\({NUM}\)(?:\s*[,-]\s*\({NUM}\))*)")
CODE_REF = re.compile(r"(refgen/[\w/]+\.py)::([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)")
TEST_REF = re.compile(r"(tests/[\w/]+\.py)::([A-Za-z_]\w*)")


def _expand(tags: str) -> list[str]:
    """'(13)-(16)' -> ['13', '14', '15', '16']; '(24), (25)' -> ['24', '25']."""
    out = []
    for part in re.split(r"\s*,\s*", tags):
        ends = re.findall(NUM, part)
        if len(ends) == 2 and "-" in part:
            a, b = int(float(ends[0])), int(float(ends[1]))
            out += [str(i) for i in range(a, b + 1)]
        else:
            out += ends
    return out


def _owners(tree) -> list[tuple[int, int, str]]:
    """(first line, last line, reference name) of every top-level def/class and class member."""
    spans = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            spans.append((node.lineno, node.end_lineno, node.name))
            if isinstance(node, ast.ClassDef):
                for sub in node.body:
                    if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        spans.append((sub.lineno, sub.end_lineno, f"{node.name}.{sub.name}"))
    return spans


def _owner(spans, line: int) -> str:
    inside = [(end - start, name) for start, end, name in spans if start <= line <= end]
    return min(inside)[1] if inside else "<module>"


def _comments(path: Path):
    """(line, comment text) of every comment in a Python file."""
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type == tokenize.COMMENT:
            yield tok.start[0], tok.string


def _code_comments(path: Path) -> dict[str, list[str]]:
    """owner name -> the comments inside it."""
    spans = _owners(ast.parse(path.read_text()))
    out: dict[str, list[str]] = {}
    for line, text in _comments(path):
        out.setdefault(_owner(spans, line), []).append(text)
    return out


def bare_tags() -> list[tuple[str, str, str, int]]:
    """(n, file, owner, line) of every bare ``# (n)`` tag in refgen/."""
    found = []
    for path in sorted((REPO / "refgen").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        spans = _owners(ast.parse(path.read_text()))
        for line, text in _comments(path):
            m = BARE_TAG.match(text)
            if m:
                found += [(n, rel, _owner(spans, line), line) for n in _expand(m.group(1))]
    return found


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def equation_rows() -> list[dict]:
    """Every row of every page's equation table."""
    rows = []
    for page in PAGES:
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("|") or [c.lower() for c in _cells(line)] != HEADER:
                continue
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                label, what, code, tests = _cells(row)
                bare = re.fullmatch(rf"\(({NUM})\)", label)
                rows.append({"page": page.relative_to(REPO).as_posix(), "label": label,
                             "n": bare.group(1) if bare else None, "what": what,
                             "code": CODE_REF.findall(code), "code_text": code,
                             "tests": TEST_REF.findall(tests)})
    return rows


ROWS = equation_rows()
TAGS = bare_tags()


def _row_id(row):
    return f"{row['page']}:{row['label']}"


def _names_equation(text: str, row) -> bool:
    if row["n"] is None:
        return row["label"] in text
    n = re.escape(row["n"])
    return bool(re.search(rf"\({n}\)|\beqs?\.\s*{n}(?![\d.])", text))


def _test_text(path: Path, name: str):
    """The docstring, comments and name of test ``name`` in ``path`` (None if absent)."""
    source = path.read_text()
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            comments = [text for line, text in _comments(path)
                        if node.lineno <= line <= node.end_lineno]
            return "\n".join([name, ast.get_docstring(node) or ""] + comments)
    return None


def test_there_are_tags_and_a_table_to_check():
    assert len(TAGS) >= 20, "bare (n) tags in refgen/ went missing"
    numbered = {r["n"] for r in ROWS if r["n"]}
    assert len(numbered) >= 20, "the numbered derivation's equation table went missing"


def test_labels_are_unique_per_page():
    seen = set()
    for row in ROWS:
        key = (row["page"], row["label"])
        assert key not in seen, f"{row['page']} lists {row['label']} twice"
        seen.add(key)


@pytest.mark.parametrize("row", ROWS, ids=_row_id)
def test_named_code_tags_the_equation(row):
    assert row["code"] or "no single line" in row["code_text"], (
        f"{_row_id(row)}: names no code; say 'no single line ...' where none computes it")
    for path, name in row["code"]:
        comments = _code_comments(REPO / path).get(name, [])
        if row["n"] is not None:
            tagged = any(row["n"] in _expand(m.group(1))
                         for m in map(BARE_TAG.match, comments) if m)
        else:
            tagged = any(row["label"] in c for c in comments)
        assert tagged, f"{_row_id(row)}: {path}::{name} has no comment tagging {row['label']}"


@pytest.mark.parametrize("n,path,owner,line", TAGS, ids=lambda v: str(v))
def test_bare_tag_is_claimed_by_a_docs_table(n, path, owner, line):
    rows = [r for r in ROWS if r["n"] == n]
    assert rows, f"{path}:{line} tags ({n}), which no docs page's equation table lists"
    claimed = {(p, name) for r in rows for p, name in r["code"]}
    assert (path, owner) in claimed, (
        f"{path}:{line} tags ({n}) in {owner}, but the table row ({n}) of "
        f"{', '.join(sorted({r['page'] for r in rows}))} does not name {path}::{owner}")


@pytest.mark.parametrize("row", ROWS, ids=_row_id)
def test_named_tests_exist_and_name_the_equation(row):
    assert row["tests"], f"{_row_id(row)}: names no test"
    for path, name in row["tests"]:
        assert (REPO / path).is_file(), f"{_row_id(row)}: {path} does not exist"
        text = _test_text(REPO / path, name)
        assert text is not None, f"{_row_id(row)}: {path} has no top-level {name}"
        assert _names_equation(text, row), (
            f"{_row_id(row)}: {path}::{name} does not name {row['label']} "
            "in its docstring, comments or name")


def test_the_parser_reads_tags_and_ranges():
    assert _expand("(13)-(16)") == ["13", "14", "15", "16"]
    assert _expand("(24), (25)") == ["24", "25"]
    assert _expand("(4.2)") == ["4.2"]
    assert BARE_TAG.match("# (5, 3)") is None              # a shape, not a tag
    assert BARE_TAG.match("# (B, C, H, W)") is None
    assert BARE_TAG.match("# (3) at t = T").group(1) == "(3)"
    row = {"n": "2", "label": "(2)"}
    assert _names_equation("by eq. (2) and", row) and _names_equation("eq. 2,", row)
    assert not _names_equation("eq. (22)", row) and not _names_equation("eq. 2.5", row)
