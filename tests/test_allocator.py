"""The CPU allocator policy (mixerc/allocator.py): when it applies, that it keeps freed pages, and that a
mixer call applies it."""

import json
import os
import platform
import subprocess
import sys

import pytest
import torch

import mixerc as mx
from mixerc import allocator
from mixerc.ir import BackendError
from mixerc.settings import Settings

GLIBC = platform.libc_ver()[0] == "glibc"


def test_the_setting_reads_retain_keep_and_refuses_the_rest():
    assert Settings.from_env({}).cpu_allocator == "retain"
    assert Settings.from_env({"MIXERC_CPU_ALLOCATOR": "keep"}).cpu_allocator == "keep"
    with pytest.raises(BackendError, match=r"MIXERC_CPU_ALLOCATOR='always'.*retain or keep"):
        Settings.from_env({"MIXERC_CPU_ALLOCATOR": "always"})


@pytest.mark.parametrize("want, environ, libc, reason", [
    ("retain", {}, "glibc", ""),
    ("keep", {}, "glibc", "MIXERC_CPU_ALLOCATOR=keep"),
    ("retain", {}, "musl", "not glibc"),
    ("retain", {}, "", "unknown, not glibc"),
    ("retain", {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "glibc", "preloaded"),
    ("retain", {"LD_PRELOAD": "/opt/libfoo.so"}, "glibc", ""),
    ("retain", {"MALLOC_MMAP_THRESHOLD_": "65536"}, "glibc", "tuned already (MALLOC_MMAP_THRESHOLD_)"),
    ("retain", {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}, "glibc", "GLIBC_TUNABLES"),
    ("retain", {"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}, "glibc", ""),
])
def test_when_the_policy_applies(want, environ, libc, reason):
    got = allocator.why_not(want, environ, libc)
    assert (got == "") == (reason == "") and reason in got


# a child process: faults counted while a 64 MiB tensor is allocated, filled and freed, the fewest of rounds
# 2 to 5 (the first faults its pages in whatever the policy; the heap can take a round or two to settle: a
# small block left after the big one keeps the next big one from reusing its place)
_FAULTS = """
import json, resource, sys, torch
from mixerc import allocator
applied = allocator.retain() if sys.argv[1] == "retain" else False
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 << 20).sum()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults()
print(json.dumps({"applied": applied, "faults": min(faults() for _ in range(4))}))
"""


def _faults(policy: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _FAULTS, policy], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MIXERC_CPU_ALLOCATOR": policy})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the policy is glibc's mallopt")
def test_retained_pages_are_not_faulted_in_again():
    pages = (64 << 20) // 4096
    kept, default = _faults("retain"), _faults("keep")
    assert kept["applied"] and not default["applied"]
    assert default["faults"] > pages // 2  # glibc's default: the pages come fresh from the kernel every time
    assert kept["faults"] < pages // 20  # retained: the second tensor reuses the first one's pages


def test_a_mixer_call_on_the_cpu_applies_it_once(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "_state", {"decided": False, "applied": False})
    monkeypatch.setattr(allocator, "retain", lambda: calls.append(1) or allocator._state.update(decided=True))
    mixer = mx.compile(mx.load_spec("mamba2"), dims=dict(h=2, p=4, n=4, g=1), backend="chunked")
    inputs = dict(x=torch.randn(1, 5, 2, 4), dt=torch.randn(1, 5, 2), B=torch.randn(1, 5, 1, 4),
                  C=torch.randn(1, 5, 1, 4))
    mixer(**inputs)
    mixer(**inputs)
    assert calls == [1]


def test_a_bad_setting_raises_at_every_call_and_decides_nothing(monkeypatch):
    monkeypatch.setattr(allocator, "_state", {"decided": False, "applied": False})
    monkeypatch.setenv("MIXERC_CPU_ALLOCATOR", "sometimes")
    for _ in range(2):
        with pytest.raises(BackendError, match="MIXERC_CPU_ALLOCATOR='sometimes'"):
            allocator.retain()
    assert allocator._state["decided"] is False
