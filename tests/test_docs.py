"""The docs cannot silently rot: code references name real definitions, links reach pages
that exist (or are openly listed as planned), and README's commands and examples run."""
import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]

# Pages linked before they are written. Remove a page from here in the change that adds it.
PLANNED_PAGES: set = set()

CODE_REF = re.compile(r"\b(refgen/[\w/]+\.py)::([A-Za-z_]\w*)(?:\.([A-Za-z_]\w*))?")
LINK = re.compile(r"\]\(([^)\s#]+\.md)(?:#[^)]*)?\)")


def _defined(body) -> dict:
    """name -> node for the definitions and assignments directly in ``body``."""
    out = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        out[n.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = node
    return out


def _refs():
    for doc in DOCS:
        for m in CODE_REF.finditer(doc.read_text()):
            yield doc.relative_to(REPO), m.group(1), m.group(2), m.group(3)


def _links():
    for doc in DOCS:
        for m in LINK.finditer(doc.read_text()):
            target = m.group(1)
            if "://" in target:
                continue
            yield doc.relative_to(REPO), (doc.parent / target).resolve()


def test_there_is_something_to_check():
    assert (REPO / "README.md").exists() and (REPO / "docs" / "index.md").exists()
    assert len(list(_refs())) >= 5 and len(list(_links())) >= 5


@pytest.mark.parametrize("doc,path,name,attr", sorted(set(_refs()), key=str))
def test_code_reference_exists(doc, path, name, attr):
    source = REPO / path
    assert source.is_file(), f"{doc}: {path} does not exist"
    top = _defined(ast.parse(source.read_text()).body)
    assert name in top, f"{doc}: {path} defines no top-level {name!r}"
    if attr:
        node = top[name]
        assert isinstance(node, ast.ClassDef), f"{doc}: {path}::{name} is not a class"
        assert attr in _defined(node.body), f"{doc}: class {name} in {path} has no {attr!r}"


def test_links_reach_pages_or_planned_pages():
    planned_linked = set()
    for doc, target in _links():
        rel = target.relative_to(REPO).as_posix() if target.is_relative_to(REPO) else str(target)
        if not target.exists():
            assert rel in PLANNED_PAGES, f"{doc} links to {rel}, which neither exists nor is planned"
            planned_linked.add(rel)
    written = {p for p in PLANNED_PAGES if (REPO / p).exists()}
    assert not written, f"written now, remove from PLANNED_PAGES: {sorted(written)}"
    assert planned_linked == PLANNED_PAGES, f"planned but never linked: {PLANNED_PAGES - planned_linked}"


def _code_blocks(text):
    return re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S)


def test_readme_opens_with_the_two_commands():
    blocks = _code_blocks((REPO / "README.md").read_text())
    lines = [ln.strip() for _, body in blocks[:2] for ln in body.splitlines() if ln.strip()]
    assert lines[:2] == ["pip install -e . && refgen demo",
                         "pip install -e '.[test]' && python -m pytest -q"]


def test_readme_python_examples_run():
    blocks = [body for lang, body in _code_blocks((REPO / "README.md").read_text()) if lang == "python"]
    assert blocks
    for body in blocks:
        exec(compile(body, "README.md", "exec"), {"__name__": "readme_example"})


@pytest.mark.parametrize("page", ["docs/engine.md", "docs/dit.md"])
def test_doc_python_examples_run(page):
    blocks = [body for lang, body in _code_blocks((REPO / page).read_text()) if lang == "python"]
    assert blocks
    for body in blocks:
        exec(compile(body, page, "exec"), {"__name__": "doc_example"})
