"""`mixerc.settings`: one object reads every environment variable. The README's table is generated
from it, keyword arguments win over the environment, bad values are typed errors naming the
variable, and no other code reads these variables from ``os.environ`` (writes are allowed: Triton
reads ``TRITON_INTERPRET`` itself, so the CLI and tests/conftest.py set it before it is imported)."""

from __future__ import annotations

import ast
import re
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest

import mixerc as mx
from mixerc.settings import Settings, settings, settings_table

REPO = Path(__file__).resolve().parent.parent
ENV = {f.name: f.metadata["env"] for f in fields(Settings)}


def test_every_field_declares_its_variable_and_doc():
    assert list(ENV.values()) == ["MIXERC_BACKEND", "MIXERC_CACHE_DIR", "MIXERC_AUTOTUNE", "MIXERC_CPU_THREADS",
                                  "MIXERC_CPU_ALLOCATOR", "MIXERC_CPU_COMPILE", "TRITON_INTERPRET", "MIXERC_UPDATE_GOLDEN",
                                  "MIXERC_TEST_INTERPRET", "MIXERC_KEEP_LAUNCHES"]
    for f in fields(Settings):
        assert f.metadata["doc"] and "\n" not in f.metadata["doc"] and callable(f.metadata["parse"]), f.name


def test_readme_table_is_generated_from_settings():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Environment variables\n", 1)[1].split("\n## ", 1)[0]
    table = "".join(line + "\n" for line in section.splitlines() if line.startswith("|"))
    assert table == settings_table(), ("README.md's table differs from mixerc.settings; paste "
                                       "`python -c 'from mixerc.settings import settings_table; "
                                       "print(settings_table())'` into it")
    rows = [re.match(r"\| `(\w+)` \|", line).group(1) for line in table.splitlines()[2:]]
    assert rows == list(ENV.values())


def test_defaults_and_parsing():
    default = Settings.from_env({})
    assert default == Settings()
    assert (default.backend, default.triton_interpret, default.update_golden, default.test_interpret,
            default.keep_launches) == (None, None, False, None, None)
    assert default.cache_dir == Path("~/.cache/mixerc").expanduser()
    assert default.autotune == "cached"
    assert Settings.from_env({"MIXERC_AUTOTUNE": "off"}).autotune == "off"
    assert default.cpu_compile is False and Settings.from_env({"MIXERC_CPU_COMPILE": "1"}).cpu_compile is True
    assert Settings.from_env({"MIXERC_BACKEND": "compiled"}).backend == "compiled"
    env = {"MIXERC_BACKEND": "recurrent", "MIXERC_CACHE_DIR": "/tmp/mxc", "TRITON_INTERPRET": "1",
           "MIXERC_UPDATE_GOLDEN": "1", "MIXERC_TEST_INTERPRET": "0", "MIXERC_KEEP_LAUNCHES": "/tmp/l.json"}
    assert Settings.from_env(env) == Settings(backend="recurrent", cache_dir=Path("/tmp/mxc"),
                                              triton_interpret=True, update_golden=True, test_interpret=False,
                                              keep_launches=Path("/tmp/l.json"))
    assert Settings.from_env({"TRITON_INTERPRET": "0"}).triton_interpret is False
    assert Settings.from_env({name: "" for name in ENV.values()}) == default  # empty: unset


def test_keyword_arguments_win_over_the_environment(monkeypatch):
    env = {"MIXERC_BACKEND": "recurrent", "MIXERC_UPDATE_GOLDEN": "1"}
    s = Settings.from_env(env, backend="chunked", update_golden=False)
    assert (s.backend, s.update_golden) == ("chunked", False)
    assert Settings.from_env({"MIXERC_BACKEND": "bogus"}, backend="reference").backend == "reference"
    monkeypatch.setenv("MIXERC_BACKEND", "recurrent")
    assert settings().backend == "recurrent"
    assert settings(backend="chunked").backend == "chunked"
    with pytest.raises(TypeError, match="unknown setting.*colour"):
        Settings.from_env({}, colour="blue")


def test_settings_reads_the_environment_at_call_time(monkeypatch, tmp_path):
    monkeypatch.delenv("MIXERC_BACKEND", raising=False)
    assert settings().backend is None
    monkeypatch.setenv("MIXERC_BACKEND", "reference")
    monkeypatch.setenv("MIXERC_CACHE_DIR", str(tmp_path))
    assert (settings().backend, settings().cache_dir) == ("reference", tmp_path)
    assert mx.compile("mamba2", dims=dict(h=2, p=3, n=4, g=1)).plan.backend == "reference"


@pytest.mark.parametrize("var, value, allowed", [
    ("MIXERC_BACKEND", "foo", "choose one of auto, reference, recurrent, chunked, scan, triton"),
    ("MIXERC_AUTOTUNE", "always", "choose one of off, cached, full"),
    ("TRITON_INTERPRET", "maybe", "set it to 1 or 0 (or true/false, yes/no, on/off), or leave it unset"),
    ("MIXERC_UPDATE_GOLDEN", "2", "set it to 1 or 0 (or true/false, yes/no, on/off), or leave it unset"),
    ("MIXERC_TEST_INTERPRET", "2", "set it to 1 or 0 (or true/false, yes/no, on/off), or leave it unset"),
])
def test_a_bad_value_is_a_typed_error_naming_the_variable(monkeypatch, var, value, allowed):
    with pytest.raises(mx.BackendError) as info:
        Settings.from_env({var: value})
    assert f"{var}={value!r}" in str(info.value) and allowed in str(info.value), str(info.value)
    monkeypatch.setenv(var, value)
    with pytest.raises(mx.BackendError, match=var):
        settings()


def test_a_bad_backend_reaches_the_caller_of_an_auto_mixer(monkeypatch):
    monkeypatch.setenv("MIXERC_BACKEND", "foo")
    with pytest.raises(mx.BackendError, match="unknown backend 'foo' \\(from MIXERC_BACKEND='foo'\\)"):
        mx.compile("mamba2", dims=dict(h=2, p=3, n=4, g=1))


# -- nothing else reads these variables ---------------------------------------------------------------


def _is_environ(node) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ")


def _env_reads(source: str, names) -> list[tuple[int, str]]:
    """``(line, variable)`` for each read of one of ``names`` (or any ``MIXERC_*``) from the process
    environment: ``os.environ[...]`` loaded, ``os.environ.get/pop``, ``os.getenv``, ``... in
    os.environ``. Writes (``os.environ[...] = ``, ``setdefault``, a child's ``{**os.environ, ...}``)
    and ``assert`` statements (a test checking the environment itself) are not reads."""
    def ours(node):
        value = node.value if isinstance(node, ast.Constant) else None
        return isinstance(value, str) and (value in names or value.startswith("MIXERC_"))

    reads = []

    def visit(node):
        if isinstance(node, ast.Assert):
            return
        key = None
        if isinstance(node, ast.Subscript) and _is_environ(node.value) and isinstance(node.ctx, ast.Load):
            key = node.slice
        elif isinstance(node, ast.Call) and node.args and (
                (isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "pop")
                 and _is_environ(node.func.value))
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "getenv")
                or (isinstance(node.func, ast.Name) and node.func.id == "getenv")):
            key = node.args[0]
        elif (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], (ast.In, ast.NotIn))
              and _is_environ(node.comparators[0])):
            key = node.left
        if key is not None and ours(key):
            reads.append((node.lineno, key.value))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return reads


def test_the_scan_finds_reads_and_allows_writes():
    source = '''
import os
a = os.environ.get("MIXERC_NEW")
b = os.environ["TRITON_INTERPRET"]
c = "MIXERC_CACHE_DIR" in os.environ
d = os.getenv("MIXERC_BACKEND", "")
e = __import__("os").environ.get("TRITON_INTERPRET") == "1"
os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("TRITON_INTERPRET", "1")
env = {**os.environ, "TRITON_INTERPRET": "1"}
env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
assert "TRITON_INTERPRET" not in os.environ
f = os.environ.get("HOME")
'''
    assert _env_reads(source, set(ENV.values())) == [(3, "MIXERC_NEW"), (4, "TRITON_INTERPRET"),
                                                     (5, "MIXERC_CACHE_DIR"), (6, "MIXERC_BACKEND"),
                                                     (7, "TRITON_INTERPRET")]


def _python_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True)
        return [REPO / p for p in out.stdout.split()] + [REPO / p for p in subprocess.run(
            ["git", "ls-files", "--others", "--exclude-standard", "*.py"], cwd=REPO, capture_output=True,
            text=True, check=True).stdout.split()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        return [p for p in REPO.rglob("*.py") if not any(part.startswith(".") or part.endswith(".egg-info")
                                                         for part in p.relative_to(REPO).parts)]


def test_no_other_module_reads_these_variables():
    names = set(ENV.values())
    found = []
    for path in _python_files():
        if path == REPO / "mixerc" / "settings.py" or not path.exists():
            continue
        found += [f"{path.relative_to(REPO)}:{line}: {name}"
                  for line, name in _env_reads(path.read_text(), names)]
    assert not found, ("read these through mixerc.settings.settings() (add a Settings field for a new "
                       "variable):\n" + "\n".join(found))


def test_switches_read_as_triton_reads_its_own():
    from mixerc.settings import Settings

    for raw, value in (("1", True), ("true", True), ("Yes", True), ("on", True), ("0", False), ("off", False)):
        assert Settings.from_env({"TRITON_INTERPRET": raw}).triton_interpret is value


def test_the_library_parses_only_the_variable_it_reads(monkeypatch):
    """A malformed variable fails only what reads it: mx.compile on reference ignores a bad test switch."""
    import mixerc as mx

    monkeypatch.setenv("MIXERC_UPDATE_GOLDEN", "maybe")
    mx.compile("mamba2", dims=dict(h=2, p=2, n=2, g=1), backend="reference")
    monkeypatch.setenv("MIXERC_BACKEND", "bogus")
    with pytest.raises(mx.BackendError, match="MIXERC_BACKEND='bogus'"):
        mx.compile("mamba2", dims=dict(h=2, p=2, n=2, g=1))
