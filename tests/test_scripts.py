"""The scripts under benchmarks/ and examples/ still run end to end (tiny shapes: ratios mean nothing here)."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_bench_cpu_quick(tmp_path):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "bench_cpu.py"), "--quick",
         "--out", str(tmp_path / "cpu.json")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "160"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "than the einsum listing" in out.stdout.replace("\n", " ")
    assert (tmp_path / "cpu.json").exists()


def test_listing_selftest():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "ssd_listing.py"), "--selftest"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow  # ~30 s: the example checks every lowering
def test_custom_spec_example_runs():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "custom_spec.py")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    from mixerc.check import default_lowerings  # the child inherits TRITON_INTERPRET
    from mixerc.ir import STRUCTURES

    lows = [low for low in default_lowerings() if low in STRUCTURES["semiseparable"].lowerings]
    rows = re.findall(r"^  (\w+) +forward .* (pass|FAIL)$", out.stdout, re.M)  # the check's table
    assert rows == [(low, "pass") for low in lows] and "def mixer(" in out.stdout


@pytest.mark.slow
def test_bench_gpu_quick_runs_in_the_interpreter():
    """The GPU benchmark's code path (checks, timing, table) on CPU tensors; no peer here."""
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_gpu.py"), "--quick"],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TRITON_INTERPRET": "1", "COLUMNS": "160"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("mixerc triton") == 3  # mamba2, mamba, hydra


@pytest.mark.slow
def test_bench_hydra_quick(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_hydra.py"), "--quick",
                          "--out", str(tmp_path / "hydra.json")],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "160"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "doubled batch" in out.stdout and (tmp_path / "hydra.json").exists()
