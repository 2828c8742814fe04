"""``mixerc cache --show / --verify / --clear`` on healthy, damaged and unusable caches."""

import pytest
from click.testing import CliRunner

from mixerc import cache
from mixerc.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def filled(monkeypatch, tmp_path):
    """A cache with two valid entries, one damaged entry and one dead writer's temporary file."""
    d = tmp_path / "cache"
    monkeypatch.setenv("MIXERC_CACHE_DIR", str(d))
    monkeypatch.setattr(cache, "_FALLBACK", {})
    k = d / "kernels"
    k.mkdir(parents=True)
    for key in ("toy_000000000001", "toy_000000000002"):
        (k / f"{key}.py").write_text(cache.entry_text(key, f"KEY = {key!r}\n"))
    (k / "toy_000000000003.py").write_text("KEY = 'truncat")
    (k / ".toy_000000000004.py.abc.tmp").write_text("half")
    (k / "notes.txt").write_text("the user's own file")
    return k


def test_show_lists_entries_damage_and_leftovers(filled):
    r = run("cache")
    assert r.exit_code == 0, r.output
    assert f"cache: {filled} (3 entries" in r.output and "1 damaged, 1 leftover" in r.output
    assert "toy_000000000003.py  (damaged: is truncated" in r.output
    assert run("cache", "--show").output == r.output


def test_verify_exits_1_naming_the_damaged_entry(filled):
    r = run("cache", "--verify")
    assert r.exit_code == 1
    assert "ok  toy_000000000001.py" in r.output and "DAMAGED  toy_000000000003.py: is truncated" in r.output
    (filled / "toy_000000000003.py").unlink()
    assert run("cache", "--verify").exit_code == 0


def test_clear_removes_entries_and_leftovers_only(filled):
    r = run("cache", "--clear")
    assert r.exit_code == 0 and f"removed 4 file(s) from {filled}" in r.output
    assert [p.name for p in filled.iterdir()] == ["notes.txt"]
    assert "(0 entries" in run("cache").output


def test_empty_and_missing_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXERC_CACHE_DIR", str(tmp_path / "never_made"))
    r = run("cache", "--verify")
    assert r.exit_code == 0 and "(0 entries" in r.output and not (tmp_path / "never_made").exists()


@pytest.mark.parametrize("args,needle", [
    (("--show", "--clear"), "takes one of --show, --verify, --clear, got --show and --clear"),
    (("--verify",), "is not a directory"),
])
def test_errors_one_line_exit_2(monkeypatch, tmp_path, args, needle):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("MIXERC_CACHE_DIR", str(blocker / "cache"))
    r = CliRunner().invoke(main, ["cache", *args])
    assert r.exit_code == 2 and needle in r.output and len(r.output.strip().splitlines()) == 1, r.output
