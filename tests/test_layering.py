"""The import structure: one-way layering (``mixerc`` -> ``codegen`` -> ``rt`` -> ``ir``; generated code
imports ``rt`` only), no import cycle
(function-level imports counted), and no module importing another module's underscore names."""

import ast
import os
import pathlib

import networkx as nx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = {"mixerc": "mixerc", "mixerc.ir": "ir", "mixerc.codegen": "codegen", "mixerc.rt": "rt",
            "mixerc.specs": "specs"}


def _modules() -> dict:
    mods = {}
    for pkg, folder in PACKAGES.items():
        for root, _, files in os.walk(os.path.join(ROOT, folder)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(root, f), os.path.join(ROOT, folder))[:-3]
                    parts = [p for p in rel.split(os.sep) if p != "__init__"]
                    mods[".".join([pkg] + parts)] = os.path.join(root, f)
    return mods


def _imports():
    """(importer, imported module, imported names) for every import statement, at any depth."""
    mods = _modules()
    for name, path in mods.items():
        base = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(pathlib.Path(path).read_text())):
            if isinstance(node, ast.Import):
                for a in node.names:
                    yield name, a.name, ()
            elif isinstance(node, ast.ImportFrom):
                m = node.module or ""
                if node.level:
                    b = base
                    for _ in range(node.level - 1):
                        b = b.rsplit(".", 1)[0]
                    m = f"{b}.{m}" if m else b
                for a in node.names:
                    sub = f"{m}.{a.name}"
                    yield name, sub if sub in mods else m, () if sub in mods else (a.name,)


def test_no_import_cycle():
    mods = _modules()
    g = nx.DiGraph()
    for src, dst, _ in _imports():
        if dst in mods and dst != src and not src.startswith(dst + "."):  # a package's own parent: not a cycle
            g.add_edge(src, dst)
    assert list(nx.simple_cycles(g)) == []


def test_layers_import_one_way():
    for src, dst, _ in _imports():
        if src.startswith("mixerc.ir"):
            assert dst.startswith("mixerc.ir") or not dst.startswith("mixerc"), (src, dst)
        if src.startswith("mixerc.codegen"):
            assert dst.startswith(("mixerc.codegen", "mixerc.rt", "mixerc.ir")) or not dst.startswith("mixerc"), (src, dst)
        if src.startswith("mixerc.rt"):
            assert dst.startswith(("mixerc.rt", "mixerc.ir")) or not dst.startswith("mixerc"), (src, dst)


def test_no_underscore_names_of_another_module():
    bad = [(src, dst, n) for src, dst, names in _imports() for n in names if n.startswith("_") and dst != src]
    assert bad == []


def test_every_package_is_installed():
    """pyproject.toml's package list names every folder with an __init__.py: a package missing there is
    absent from a wheel (an editable install hides it)."""
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    found = set()
    for pkg, folder in {**PACKAGES, "mixerc.templates": "templates"}.items():
        for root, _, files in os.walk(os.path.join(ROOT, folder)):
            if "__init__.py" in files and "__pycache__" not in root:
                rel = os.path.relpath(root, os.path.join(ROOT, folder))
                found.add(".".join([pkg] + ([] if rel == "." else rel.split(os.sep))))
    assert found - listed == set()
