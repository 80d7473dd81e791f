"""The import rules of docs/architecture.md, checked on the source (every import statement, also the ones
inside functions) and on a real import:

- neutral/ imports neither MindSpore nor torch, nor either tree, nor convert;
- torch_ref/ imports nothing from mindspore_impl (nor MindSpore, nor convert);
- mindspore_impl/ imports neither torch nor torch_ref nor convert;
- inside each tree imports run downward: core <- shared rendering math and model families (mvdream, genvs,
  zero123)
  <- lift3d.
"""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = {"core": 0, "rendering": 1, "mvdream": 1, "genvs": 1, "zero123": 1, "lift3d": 2}  # a module may import its own layer and lower ones


def _py_files(package: str) -> list[str]:
    out = []
    for folder, _, names in os.walk(os.path.join(ROOT, package)):
        out += [os.path.join(folder, n) for n in names if n.endswith(".py")]
    return sorted(out)


def _imports(path: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in the file."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def _violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in _py_files(package):
        for line, name in _imports(path):
            if name.split(".")[0] in forbidden:
                bad.append(f"{os.path.relpath(path, ROOT)}:{line} imports {name}")
    return bad


@pytest.mark.parametrize("package, forbidden", [
    ("neutral", ("mindspore", "torch", "mindspore_impl", "torch_ref", "convert")),
    ("torch_ref", ("mindspore", "mindspore_impl", "convert")),
    ("mindspore_impl", ("torch", "torch_ref", "convert")),
])
def test_tree_imports_only_what_its_rule_allows(package, forbidden):
    bad = _violations(package, forbidden)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("tree", ["mindspore_impl", "torch_ref"])
def test_imports_run_downward(tree):
    bad = []
    for path in _py_files(tree):
        rel = os.path.relpath(path, os.path.join(ROOT, tree)).split(os.sep)
        own = LAYERS.get(rel[0])
        if own is None:
            continue
        for line, name in _imports(path):
            parts = name.split(".")
            if parts[0] == tree and len(parts) > 1 and LAYERS.get(parts[1], -1) > own:
                bad.append(f"{tree}/{'/'.join(rel)}:{line} ({rel[0]}) imports {name} ({parts[1]})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_the_rule_checker_sees_a_violation(tmp_path, monkeypatch):
    """The checks above would fail on a forbidden import, also one inside a function."""
    pkg = tmp_path / "neutral"
    pkg.mkdir()
    (pkg / "bad.py").write_text("def f():\n    import mindspore as ms\n    return ms\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    assert _violations("neutral", ("mindspore",)) == ["neutral/bad.py:2 imports mindspore"]


def test_importing_all_of_neutral_loads_no_framework():
    names = []
    for path in _py_files("neutral"):
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        names.append(rel[:-len(".__init__")] if rel.endswith(".__init__") else rel)
    code = ("import importlib, sys\n"
            f"for n in {names!r}: importlib.import_module(n)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'mindspore', 'torch', 'mindspore_impl', "
            "'torch_ref', 'convert'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"importing neutral loaded {out.stdout.strip()}"
    assert len(names) > 20
