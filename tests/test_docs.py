"""The repository documents itself: the README's concept table and docs/architecture.md name files that exist
(and the symbols they name are in them), and no source cites a document outside the repository."""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(rel: str) -> str:
    return open(os.path.join(ROOT, rel), encoding="utf-8").read()


def _concept_rows() -> list[tuple[str, str]]:
    text = _read("README.md")
    table = text[text.index("### Where each concept lives"):]
    rows = [line for line in table.splitlines()[1:] if line.startswith("| ")]
    out = []
    for line in rows[2:]:  # header and separator
        concept, where = [c.strip() for c in line.strip("|").split("|")]
        out.append((concept, where))
    return out


def _resolve(path: str, previous: str) -> str:
    """A table path, or one relative to the previous path's package (`core/checkpoint.py`, `ray_sampling.py`)."""
    if os.path.exists(os.path.join(ROOT, path)):
        return path
    for base in (os.path.dirname(previous), os.path.dirname(os.path.dirname(previous))):
        candidate = os.path.join(base, path)
        if os.path.exists(os.path.join(ROOT, candidate)):
            return candidate
    return path


def test_concept_table_names_existing_files_and_symbols():
    rows = _concept_rows()
    assert len(rows) >= 10, rows
    for concept, where in rows:
        names = re.findall(r"`([^`]+)`", where)
        paths, previous = [], ""
        for name in names:
            if name.endswith(".py"):
                previous = _resolve(name, previous)
                assert os.path.isfile(os.path.join(ROOT, previous)), f"{concept}: {name} does not exist"
                paths.append(previous)
        assert paths, f"{concept}: no file named"
        for symbol in (n for n in names if not n.endswith(".py")):
            assert any(re.search(rf"\b(def|class)\s+{re.escape(symbol)}\b", _read(p)) for p in paths), \
                f"{concept}: {symbol} is not defined in {paths}"


def test_architecture_doc_names_existing_files():
    text = _read("docs/architecture.md")
    named = set(re.findall(r"`((?:[\w.]+/)+[\w.]+\.py)", text))
    assert len(named) >= 15
    missing = []
    for rel in named:
        candidates = [rel] + [os.path.join(top, rel) for top in ("mindspore_impl", "neutral", "mindspore_impl/lift3d",
                                                                 "mindspore_impl/mvdream")]
        if not any(os.path.isfile(os.path.join(ROOT, c)) for c in candidates):
            missing.append(rel)
    assert not missing, f"docs/architecture.md names files that do not exist: {sorted(missing)}"


@pytest.mark.parametrize("pattern", [r"DESIGN\.md", r"mvdream\.md", r"related-systems\.md", r"shared/reference"])
def test_no_source_cites_documents_outside_the_repository(pattern):
    bad = []
    for top in ("mindspore_impl", "torch_ref", "neutral", "convert", "scripts", "tests", "configs", "launch.py"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)) if top != "launch.py" else [(ROOT, [], [top])]:
            for name in files:
                if name.endswith((".py", ".yaml")) and name != "test_docs.py":
                    path = os.path.join(folder, name)
                    if re.search(pattern, open(path, encoding="utf-8").read()):
                        bad.append(os.path.relpath(path, ROOT))
    assert not bad, f"{pattern} cited in {bad}"
