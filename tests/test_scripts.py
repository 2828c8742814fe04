"""The scripts under benchmarks/ and examples/ still run end to end (tiny shapes: ratios mean nothing here)."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
    """The GPU benchmark's code path (run_bench's checks, timing and tables) on CPU tensors in the interpreter."""
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_gpu.py"), "--quick"],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TRITON_INTERPRET": "1", "COLUMNS": "160"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    checked = re.findall(r"^│ triton +│ (\d\.\de-\d\d) │", out.stdout, re.M)  # checked, then timed
    assert len(checked) == 6, out.stdout[-3000:]  # mamba2, mamba, hydra; forward, forward + backward


@pytest.mark.slow
def test_bench_hydra_quick(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_hydra.py"), "--quick",
                          "--out", str(tmp_path / "hydra.json")],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "160"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "doubled batch" in out.stdout and (tmp_path / "hydra.json").exists()


@pytest.mark.slow
def test_bench_varlen_small():
    """Every varlen contender checked against the fp64 reference with the lengths, then timed."""
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_varlen.py"), "--dims",
                          "h=2,p=8,n=8", "--sequences", "4", "--longest", "40", "--repeats", "1"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "160"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for name in ("chunked", "loop (extra)", "cu_seqlens (extra)", "cu_seqlens+states (extra)", "padded (extra)"):
        assert re.search(rf"^│ {re.escape(name)} +│ \d\.\de-\d\d │", out.stdout, re.M), name
    assert "speed-up over loop" in out.stdout


def _chimera_uea():
    import importlib.util

    spec = importlib.util.spec_from_file_location("chimera_uea", os.path.join(ROOT, "examples", "chimera_uea.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chimera_uea_reads_ts_files(tmp_path):
    """The example's .ts parser: header, unequal lengths (padded, masked), '?' as missing, class order."""
    f = tmp_path / "toy_TRAIN.ts"
    f.write_text("# comment\n@problemName toy\n@univariate false\n@classLabel true b a\n@data\n"
                 "1,2,3:4,5,6:a\n7,?:8,9:b\n")
    ex = _chimera_uea()
    series, labels, names = ex.read_ts(f)
    assert names == ["b", "a"] and labels.tolist() == [1, 0]
    assert [tuple(s.shape) for s in series] == [(2, 3), (2, 2)]
    X, mask = ex.padded(series)
    assert X.shape == (2, 2, 3) and mask.tolist() == [[True, True, True], [True, True, False]]
    assert X[1].tolist() == [[7.0, 0.0, 0.0], [8.0, 9.0, 0.0]]  # the missing value and the padding are 0


@pytest.mark.slow
def test_chimera_uea_quick(tmp_path):
    import importlib.util
    import json

    if importlib.util.find_spec("aeon") is None:
        pytest.skip("the example reads the UEA files from the aeon wheel: pip install --no-deps aeon==1.6.0")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "chimera_uea.py"), "--quick",
                          "--out", str(tmp_path / "uea.png")], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "COLUMNS": "160"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "uea.json").read_text())
    assert set(summary["results"]) == {"JapaneseVowels", "BasicMotions"}
    for runs in summary["results"].values():
        assert {r["model"] for r in runs} == {"Chimera", "Mamba2"}
        assert all(0.0 <= r["acc"] <= 1.0 and r["eval_loss"] > 0.0 and r["curve"] for r in runs)
    assert summary["split"] == "test"
    assert (tmp_path / "uea.png").stat().st_size > 0 and "quick run" in out.stdout


@pytest.mark.parametrize("script", sorted(p.name for p in Path(ROOT, "benchmarks").glob("*.py")))
def test_every_benchmark_script_imports_and_parses_its_options(script, capsys):
    """A script that imports a helper another script no longer has fails here, not on a user's machine
    (bench_compiled.py did once): each module loads, and its option parser answers --help."""
    spec = importlib.util.spec_from_file_location(f"bench_script_{Path(script).stem}", Path(ROOT, "benchmarks", script))
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(os.path.join(ROOT, "benchmarks"))
    if hasattr(module, "parse_args"):
        with pytest.raises(SystemExit) as done:
            module.parse_args(["--help"])
        assert done.value.code == 0 and "usage" in capsys.readouterr().out


def test_chimera_uea_validation_split_holds_out_each_class():
    """The split used to choose settings: a fixed quarter of every class, disjoint from the rest."""
    ex = _chimera_uea()
    y = torch.tensor([0] * 8 + [1] * 4 + [2] * 12)
    keep, held = ex.validation_split(y, 0.25)
    assert sorted(keep + held) == list(range(len(y))) and not set(keep) & set(held)
    assert [int((y[held] == c).sum()) for c in range(3)] == [2, 1, 3]
    assert ex.validation_split(y, 0.25) == (keep, held)


def test_chimera_uea_evaluate_scores_every_series_once():
    """Accuracy and the unsmoothed cross-entropy over batches of similar length, against one direct computation
    on a model whose logits depend on the series' values and lengths (padding trimmed per batch)."""
    ex = _chimera_uea()

    class Toy(torch.nn.Module):
        def forward(self, x, mask):  # (b, V, L), (b, L) -> (b, 3)
            s = (x * mask[:, None, :]).sum((1, 2))
            return torch.stack([s, -s, mask.sum(1).to(x.dtype) / 3], dim=-1)

    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([3, 7, 5, 7, 2, 6, 4])
    mask = torch.arange(7)[None, :] < lengths[:, None]
    X = torch.randn(7, 2, 7, generator=gen) * mask[:, None, :]
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    logits = Toy()(X, mask)
    acc, loss = ex.evaluate(Toy(), X, mask, y, size=3)
    assert acc == pytest.approx(float((logits.argmax(-1) == y).float().mean()))
    assert loss == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-6)


@pytest.mark.slow
def test_bench_grid2d_memory_only_quick():
    """bench_grid2d's memory section: a fresh capped process per figure, forward and forward + backward."""
    import json

    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_grid2d.py"), "--quick",
                          "--backward", "--memory-only"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(open(os.path.join(ROOT, "benchmarks", "results", "grid2d_quick.json")).read())
    runs = [(m["lowering"], m["backward"], m["l"]) for m in result["memory"]]
    assert runs == [("grid", False, 256), ("grid", True, 256), ("grid", False, 512), ("grid", True, 512)]
    assert all(m["peak_mb"] >= m["before_mb"] > 0 for m in result["memory"]) and "forward" not in result
