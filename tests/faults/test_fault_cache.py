"""Fault injection on the kernel cache: every damaged entry is regenerated with one `CacheWarning`
naming the file, results stay correct, writes are atomic under concurrency, and an unusable cache
directory falls back to a temporary one. Most tests use a tiny stand-in module (``VALUE = ...``) so
that they run in milliseconds; the end-to-end ones compile ``mamba2``'s Triton module (the
interpreter on CPU) and compare its output with the ``chunked`` lowering."""

import errno
import os
import subprocess
import sys
import time
import warnings

import pytest
import torch

import mixerc as mx
from mixerc import cache
from mixerc.ir import BackendError

KEY = "toy_0123456789ab"
BODY = "VALUE = 42\n"


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty cache directory of this test's own, and a process that has loaded nothing yet."""
    d = tmp_path / "cache"
    monkeypatch.setenv("MIXERC_CACHE_DIR", str(d))
    monkeypatch.setattr(cache, "_LOADED", {})
    monkeypatch.setattr(cache, "_FALLBACK", {})
    monkeypatch.setattr(cache, "_WRITTEN", {})
    for name in [m for m in sys.modules if m.startswith("mixerc_generated_toy_")]:
        monkeypatch.delitem(sys.modules, name)
    return d


def load(key=KEY, body=BODY, calls=None):
    """``cached_source`` + ``load_module`` as the runtime calls them; ``calls`` counts ``make()``."""
    def make():
        if calls is not None:
            calls.append(1)
        return body
    source = cache.cached_source(key, make)
    return source, cache.load_module(key, source)


def cache_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, cache.CacheWarning)]


def test_entry_round_trip_and_trailer(fresh):
    calls = []
    source, module = load(calls=calls)
    assert source == BODY and module.VALUE == 42 and calls == [1]
    path = cache.source_path(KEY)
    text = path.read_text()
    assert text.startswith(BODY) and text.count("\n") == 2  # the body, then one trailer line
    assert text.splitlines()[-1].startswith(f"# mixerc-cache-entry v1 key={KEY} sha256=")
    assert cache.check_file(path).ok
    cache._LOADED.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a valid entry is used silently, without regenerating
        assert load(calls=calls)[0] == BODY and calls == [1]


DAMAGE = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: len(BODY) + 20]), "truncated"),
    "truncated at a newline": (lambda p: p.write_text(BODY), "no mixerc-cache-entry trailer"),
    "empty": (lambda p: p.write_bytes(b""), "is empty"),
    "garbage bytes": (lambda p: p.write_bytes(os.urandom(300) + b"\xff\n"), "not text"),
    "garbage text": (lambda p: p.write_text("def broken(:\n"), "no mixerc-cache-entry trailer"),
    "other key": (lambda p: p.write_text(cache.entry_text("toy_ffffffffffff", "VALUE = 7\n")), "another key"),
    "body edited": (lambda p: p.write_text(p.read_text().replace("42", "43")), "sha256"),
    "newer format": (lambda p: p.write_text(p.read_text().replace(" v1 ", " v9 ")), "format v9"),
    "directory": (lambda p: (p.unlink(), p.mkdir(), (p / "x").write_text("x")), "is a directory"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_entry_is_regenerated_with_one_warning(fresh, kind):
    load()
    path = cache.source_path(KEY)
    damage, why = DAMAGE[kind]
    damage(path)
    cache._LOADED.clear()
    sys.modules.pop(f"mixerc_generated_{KEY}", None)
    calls = []
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        source, module = load(calls=calls)
    assert source == BODY and module.VALUE == 42 and calls == [1]
    msgs = cache_warnings(record)
    assert len(msgs) == 1 and len(record) == 1, msgs
    assert record[0].filename == str(path) and KEY in msgs[0] and why in msgs[0] and "\n" not in msgs[0]
    if kind == "directory":  # not ours to delete: the entry went to a private directory
        assert path.is_dir() and (path / "x").read_text() == "x"
        assert f"regenerated it in {cache._WRITTEN[KEY]}" in msgs[0]
        cache._LOADED.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # and this process keeps using it, without a second warning
            assert load(calls=calls)[1].VALUE == 42 and calls == [1]
    else:
        assert cache.check_file(path).ok


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_entry_is_regenerated(fresh):
    load()
    path = cache.source_path(KEY)
    path.chmod(0)
    cache._LOADED.clear()
    with pytest.warns(mx.CacheWarning, match="unreadable"):
        assert load()[1].VALUE == 42
    assert cache.check_file(path).ok


def test_unreadable_entry_reported(fresh, monkeypatch):
    """Root reads every file, so a read that fails is injected."""
    load()
    path = cache.source_path(KEY)
    real = type(path).read_bytes

    def read_bytes(self):
        if self == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(type(path), "read_bytes", read_bytes)
    assert cache.read_entry(KEY) == (None, "is unreadable (PermissionError: Permission denied)")
    assert not cache.check_file(path).ok and "unreadable" in cache.check_file(path).why


def test_cache_dir_under_a_regular_file_falls_back(fresh, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("MIXERC_CACHE_DIR", str(blocker / "cache"))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        source, module = load()
        cache._LOADED.clear()
        assert load()[1].VALUE == 42  # the fallback serves the second load, without a second warning
    msgs = cache_warnings(record)
    assert len(msgs) == 1 and "cannot be used" in msgs[0] and "NotADirectoryError" in msgs[0], msgs
    assert record[0].filename == str(blocker / "cache")
    assert module.VALUE == 42 and blocker.read_text() == "not a directory"
    assert cache.cache_dir() != blocker / "cache" and cache.check_file(cache.source_path(KEY)).ok


def test_read_only_cache_dir_falls_back(fresh, monkeypatch):
    """A read-only filesystem: every file creation in the cache directory fails with EROFS."""
    real = cache.tempfile.mkstemp

    def mkstemp(*a, dir=None, **kw):
        if str(dir).startswith(str(fresh)):
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real(*a, dir=dir, **kw)

    monkeypatch.setattr(cache.tempfile, "mkstemp", mkstemp)
    with pytest.warns(cache.CacheWarning, match="Read-only file system") as record:
        assert load()[1].VALUE == 42
    assert len(record) == 1 and not any(fresh.rglob("*.py"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_cache_dir_by_permissions(fresh):
    (fresh / "kernels").mkdir(parents=True)
    (fresh / "kernels").chmod(0o500)
    try:
        with pytest.warns(cache.CacheWarning, match="PermissionError"):
            assert load()[1].VALUE == 42
    finally:
        (fresh / "kernels").chmod(0o700)


def test_disk_full_falls_back_then_raises_typed(fresh, monkeypatch):
    """A write that fails (ENOSPC) leaves no temporary file behind; the process falls back to a
    temporary directory; when that fails too, a `BackendError` says what to do."""
    real = os.fsync
    state = {"fail": 1}

    def fsync(fd):
        if state["fail"]:
            state["fail"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(cache.os, "fsync", fsync)
    with pytest.warns(cache.CacheWarning, match="No space left on device"):
        assert load()[1].VALUE == 42
    assert list((fresh / "kernels").iterdir()) == []  # the failed temporary file was removed
    state["fail"] = 10
    with pytest.raises(BackendError, match="No space left on device.*free disk space"):
        load(key="toy_999999999999")
    assert not list(cache.kernels_dir().glob(".*.tmp"))


KILLED_WRITER = """
import os, sys, time
from mixerc import cache
def fsync(fd):  # the temporary file is written: say so, then hang until killed
    print("written", flush=True)
    time.sleep(60)
cache.os.fsync = fsync
cache.store({key!r}, {body!r})
"""


def test_killed_writer_mid_file(fresh):
    """A writer killed before its rename leaves its temporary file, never a partial entry; the next
    process regenerates silently (no entry: nothing damaged) and ``cache --clear`` removes the leftover."""
    env = {**os.environ, "MIXERC_CACHE_DIR": str(fresh)}
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER.format(key=KEY, body=BODY * 1000)],
                             stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert child.stdout.readline().strip() == "written"
    finally:
        child.kill()
        child.wait()
    assert not cache.source_path(KEY).exists() and len(cache.leftovers()) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load()[1].VALUE == 42
    assert cache.clear() == 2 and not list((fresh / "kernels").iterdir())


def test_truncated_by_a_non_atomic_writer(fresh):
    """An entry cut at any byte is refused (the trailer is the last line and hashes the body)."""
    load()
    data = cache.source_path(KEY).read_bytes()
    for cut in range(len(data)):
        assert cache.parse_entry(data[:cut], KEY)[0] is None, cut
    assert cache.parse_entry(data, KEY)[0] == BODY


def test_two_versions_share_one_cache(fresh, monkeypatch):
    """The key hashes mixerc's version and generator code, so two versions write two entries; an entry
    at the same key from another cache format is regenerated, not run."""
    from mixerc.codegen import triton_emit

    graph_key = _mamba2_key()
    monkeypatch.setattr(triton_emit, "VERSION", "0.0.0-other")
    assert _mamba2_key() != graph_key
    path = cache.source_path(KEY)
    path.parent.mkdir(parents=True)
    path.write_text(BODY.replace("42", "41"))  # an older mixerc's entry: no trailer
    with pytest.warns(cache.CacheWarning, match="not written by this mixerc"):
        assert load()[1].VALUE == 42


def _mamba2_key(dims=None):
    from mixerc import codegen

    spec, graph, sizes = mx.trace("mamba2", dims or dict(h=2, p=8, n=8, g=1))
    return codegen.triton_key(graph, sizes, codegen.plan(graph, "triton", None))


def test_generated_module_runs_the_verified_text(fresh):
    """The module executes the text that was verified, and no bytecode is written beside it."""
    source, module = load()
    assert module.__file__ == str(cache.source_path(KEY))
    assert not (fresh / "kernels" / "__pycache__").exists()


# -- end to end: the real Triton module --------------------------------------------------------------
DIMS_A, DIMS_B = dict(h=2, p=8, n=8, g=1), dict(h=2, p=16, n=8, g=1)


def _inputs(dims, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, l, h, p, n = 1, 9, dims["h"], dims["p"], dims["n"]
    return dict(x=torch.randn(b, l, h, p, generator=g), dt=torch.randn(b, l, h, generator=g),
                B=torch.randn(b, l, 1, n, generator=g), C=torch.randn(b, l, 1, n, generator=g))


def test_module_of_other_dims_copied_over_a_key(fresh):
    """The failure that gave wrong results silently: a generated module of other dims copied over a
    key. Now refused (the trailer names the other key), regenerated, and the result is right."""
    a = mx.compile("mamba2", dims=DIMS_A, backend="triton")
    a.source("triton")
    b = mx.compile("mamba2", dims=DIMS_B, backend="triton")
    b.source("triton")
    path_a, path_b = cache.source_path(_mamba2_key(DIMS_A)), cache.source_path(_mamba2_key(DIMS_B))
    path_b.write_bytes(path_a.read_bytes())
    cache._LOADED.clear()
    with pytest.warns(cache.CacheWarning, match="another key") as record:
        fresh_b = mx.compile("mamba2", dims=DIMS_B, backend="triton")
    assert [w.filename for w in record] == [str(path_b)]
    fresh_b.load_state_dict(b.state_dict())
    inputs = _inputs(DIMS_B)
    before = {k: v.clone() for k, v in inputs.items()}
    y = fresh_b(**inputs)
    b.backend = "chunked"
    torch.testing.assert_close(y, b(**inputs), rtol=1e-4, atol=1e-4)
    assert all(torch.equal(before[k], inputs[k]) for k in inputs)
    assert cache.check_file(path_b).ok


CHILD = """
import sys, time, warnings
warnings.simplefilter("always")
import mixerc as mx
from mixerc import cache
while time.time() < {start}:
    time.sleep(0.005)
m = mx.compile("mamba2", dims={dims!r}, backend="triton")
src = m.source("triton")
print("ok", len(src), cache.source_path(cache.entries()[0].stem).name, flush=True)
"""


@pytest.mark.slow  # 8 interpreters importing torch at once: ~40 s
def test_eight_processes_on_a_cold_cache(fresh):
    """8 processes started together compile the same spec on an empty cache: all succeed, none sees
    a damaged entry, and one valid entry is left (no temporary files)."""
    env = {**os.environ, "MIXERC_CACHE_DIR": str(fresh)}
    start = time.time() + 8  # all imports done by then on 2 busy cores
    procs = [subprocess.Popen([sys.executable, "-c", CHILD.format(start=start, dims=DIMS_A)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
             for _ in range(8)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.startswith("ok ") and "CacheWarning" not in err, err
    assert len({out.split()[1] for out, _ in outs}) == 1  # every process got the same source
    entries = cache.entries()
    assert len(entries) == 1 and cache.check_file(entries[0]).ok and cache.leftovers() == []
