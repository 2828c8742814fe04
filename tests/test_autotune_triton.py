"""`mixerc autotune` of the Triton kernels' configs (mixerc/autotune.py `kernel_space`): the real search on
tiny shapes, in Triton's interpreter on CPU tensors here (on CUDA tensors where a GPU is present), its space
restricted to the default and two neighbours so that each test takes seconds."""

from __future__ import annotations

import json
import pathlib
import time

import pytest
import torch
from click.testing import CliRunner
from rich.console import Console

import mixerc as mx
from mixerc import autotune, tuning
from mixerc.check import random_inputs
from mixerc.cli import main
from mixerc.rt import triton as rt_triton
from mixerc.runtime import CompiledMixer
from mixerc.settings import setting

DEV = "cuda" if torch.cuda.is_available() else "cpu"
DIMS = dict(h=2, p=4, n=4, g=1)
L = 20  # bucket 32: chunk 16 and 32 stay, 128 and 256 are pruned as tiles above the padded length
QUICK = autotune.EFFORTS["quick"]
SMALL = dict(QUICK, repeats=2, leaders=2, kernel_cap=2)  # default, chunk=32, num_warps=4


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXERC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MIXERC_AUTOTUNE", raising=False)
    monkeypatch.setitem(autotune.EFFORTS, "quick", SMALL)
    if DEV == "cpu" and not setting("triton_interpret"):
        pytest.skip("the triton lowering on CPU tensors needs TRITON_INTERPRET=1 (tests/conftest.py sets it)")


def _spy_run_config(monkeypatch, change=None):
    """Counts `CompiledMixer.run_config` calls per candidate; ``change(kernel config, y, seconds the call took)``
    alters an output."""
    calls = {}
    real = CompiledMixer.run_config

    def run_config(self, config, **kw):
        kernel = dict(config[0].kernel)
        calls[config] = calls.get(config, 0) + 1
        start = time.perf_counter()
        y = real(self, config, **kw)
        return y if change is None else change(kernel, y, time.perf_counter() - start)
    monkeypatch.setattr(CompiledMixer, "run_config", run_config)
    return calls


def _inputs(m):
    ins = random_inputs(m, 1, L, torch.Generator().manual_seed(0), dtype=torch.float32)
    return {k: v.to(DEV) for k, v in ins.items()}


def _tune(**kw):
    return autotune.tune(mx.load_spec("mamba2"), DIMS, 1, L, device=DEV, backend="triton", budget=120, **kw)


def test_search_prunes_checks_times_caches_and_a_second_run_is_a_hit(monkeypatch):
    def slow_default(kernel, y, seconds):  # the default made slow on purpose: a neighbour must win, and be cached
        if kernel["chunk"] == 64 and kernel["num_warps"] == 8:
            time.sleep(max(0.05, seconds))  # twice its own time: a fixed 50 ms lost to noise beside xdist workers
        return y
    calls = _spy_run_config(monkeypatch, slow_default)
    first = _tune()
    names = [c.name for c in first.candidates]
    assert names == ["default", "chunk=32", "num_warps=4"] and first.space_size == 5 * 4 * 4 * 3 * 4 * 3 * 3 * 3
    pruned = dict(first.pruned)
    assert "padded l (32)" in pruned["chunk=128"] and "padded p (4)" in pruned["BP=32"]
    assert "backward kernels only" in pruned["num_warps_bwd=2"] and "beyond the 2 candidates" in pruned["chunk=16"]
    assert all(c.contender.error < 1e-3 for c in first.candidates)
    assert first.winner in (first.candidates[1].config, first.candidates[2].config) and first.path
    entry = json.loads(pathlib.Path(first.path).read_text())
    assert entry["key"]["backend"] == "triton" and entry["key"]["bucket"] == {"l": 32}
    assert entry["winner"] != entry["default"] and entry["default"][0]["kernel"]["chunk"] == 64
    out = Console(width=200, record=True)
    autotune.render(first, out)
    text = " ".join(out.export_text().split())
    assert "of the declared space's 25920 configs" in text and "winner" in text and "Triton interpreter" in text

    before = dict(calls)
    second = _tune()
    assert second.hit and second.winner == first.winner and calls == before, "a hit runs no candidate"
    assert second.elapsed < first.elapsed / 10
    args = ["autotune", "mamba2", "--dims", "h=2,p=4,n=4,g=1", "--shape", f"b=1,l={L}", "--backend", "triton"]
    r = CliRunner().invoke(main, args + (["--device", "cuda"] if DEV == "cuda" else []))
    assert r.exit_code == 0 and "cache hit" in r.output and calls == before, r.output


def test_a_config_that_changes_a_gradient_or_crashes_is_rejected_and_never_cached(monkeypatch):
    def wrong(kernel, y, seconds):
        if kernel["chunk"] == 32:
            raise RuntimeError("out of resources (injected)")
        return y + 0.01 * (y - y.detach()) if kernel["num_warps"] == 4 else y  # the same output, gradients 1% off
    _spy_run_config(monkeypatch, wrong)
    result = _tune(backward=True)
    why = {c.name: c.contender.why_not for c in result.candidates}
    assert why["default"] is None
    assert why["num_warps=4"].startswith("rejected: a gradient differs from the fp64 reference")
    assert why["chunk=32"] == "rejected: raised RuntimeError: out of resources (injected)"
    entry = json.loads(pathlib.Path(result.path).read_text())
    assert result.winner == result.default and entry["winner"][0]["kernel"]["chunk"] == 64
    assert set(entry["measured"]["candidates"]) == {"default"} and entry["key"]["pass"] == "forward+backward"


def _seen_chunks(monkeypatch):
    seen = []
    real = rt_triton.config_values

    def config_values(space, default, cfg):
        values = real(space, default, cfg)
        seen.append(dict(zip(space, values))["chunk"])
        return values
    monkeypatch.setattr(rt_triton, "config_values", config_values)
    return seen


def test_a_triton_call_runs_the_cached_configs_of_its_bucket_unless_the_user_chose(monkeypatch):
    m = mx.compile("mamba2", dims=DIMS, backend="triton").to(DEV)
    defaults = [k["config"] for k in m.kernel_configs()]
    winner = tuning.kernel_choices(m.plan, [{**defaults[0], "chunk": 16}])
    fields = tuning.key_fields(m.ir, m.sizes, torch.float32, DEV, {"l": L}, backend="triton")
    path = tuning.store(fields, winner, tuning.kernel_choices(m.plan, defaults), {"median_s": 1.0})
    ins = _inputs(m)
    seen = _seen_chunks(monkeypatch)
    with torch.no_grad():
        y = m(**ins)
        assert seen[-1] == 16 and m.config["source"] == "cache" and m.config["from"] == str(path)
        assert m.config["choices"][0]["kernel"]["chunk"] == 16 and m.config["label"].startswith("triton[")
        other = mx.compile("mamba2", dims=DIMS, backend="triton").to(DEV)
        other.load_state_dict(m.state_dict())
        monkeypatch.setenv("MIXERC_AUTOTUNE", "off")
        y_off = other(**ins)
        assert seen[-1] == 64 and other.config["source"] == "default"
        torch.testing.assert_close(y, y_off, rtol=1e-4, atol=1e-4)
        monkeypatch.delenv("MIXERC_AUTOTUNE")
        m.set_kernel_config(0, chunk=32)
        m(**ins)
        assert seen[-1] == 32 and m.config["source"] == "user" and m.config["choices"][0]["kernel"]["chunk"] == 32


def test_a_cached_config_outside_the_kernels_space_is_stale_and_warned_about(monkeypatch):
    m = mx.compile("mamba2", dims=DIMS, backend="triton").to(DEV)
    defaults = [k["config"] for k in m.kernel_configs()]
    winner = tuning.kernel_choices(m.plan, [{**defaults[0], "chunk": 24}])  # not in the space
    fields = tuning.key_fields(m.ir, m.sizes, torch.float32, DEV, {"l": L}, backend="triton")
    tuning.store(fields, winner, tuning.kernel_choices(m.plan, defaults), {"median_s": 1.0})
    ins = _inputs(m)
    with torch.no_grad(), pytest.warns(mx.CacheWarning, match="does not fit"):
        m(**ins)
    assert m.config["source"] == "default"


def test_refusals_name_what_to_do():
    with pytest.raises(mx.BackendError, match="on a GPU the tuner searches the Triton"):
        autotune.tune(mx.load_spec("mamba2"), DIMS, 1, L, device="cuda", backend="chunked")
    if DEV == "cpu":
        with pytest.raises(mx.InputError, match="interpreter computes bf16 wrongly"):
            _tune(dtype=torch.bfloat16)
        with pytest.raises(mx.BackendError, match="no CUDA device is visible here"):
            autotune.tune(mx.load_spec("mamba2"), DIMS, 1, L, device="cuda")


def test_quick_changes_one_knob_full_two_nearest_first_and_a_forward_search_leaves_backward_knobs_out(monkeypatch):
    monkeypatch.setitem(autotune.EFFORTS, "quick", QUICK)
    m = mx.compile("mamba2", dims=dict(h=2, p=64, n=64, g=1), backend="triton")  # p=n=64: BP=128 is too big
    quick, pruned, size = autotune.kernel_space(m, {"l": 8192}, "quick", backward=False)
    names = [c.name for c in quick]
    assert size == 25920 and names[:3] == ["default", "chunk=32", "chunk=128"] and len(names) == 14
    assert all("," not in n for n in names) and not any(n.startswith(("BN", "num_warps_bwd")) for n in names)
    assert dict(pruned)["BP=128"].startswith("tile larger than the padded p (64)") and len(pruned) == 8
    full, pruned, _ = autotune.kernel_space(m, {"l": 8192}, "full", backward=True)
    pairs = [c.name for c in full if "," in c.name]
    assert len(full) == 1 + 64 and pairs and all(c.name in [f.name for f in full] for c in quick)
    assert any(why.startswith("beyond the 64 candidates") for _, why in pruned)
    assert len({c.config for c in full}) == len(full), "every candidate a different config"


def test_autotune_full_tunes_a_missing_bucket_of_a_triton_call_on_its_device(monkeypatch):
    m = mx.compile("mamba2", dims=DIMS, backend="triton").to(DEV)
    defaults = [k["config"] for k in m.kernel_configs()]
    asked = []

    def tune(spec, sizes, b, l, **kw):  # stands in for the search (tested above): stores what it would find
        asked.append((b, l, kw["device"], kw["backend"], kw["backward"]))
        fields = tuning.key_fields(m.ir, sizes, kw["dtype"], kw["device"], {"l": l}, backend="triton")
        winner = tuning.kernel_choices(m.plan, [{**defaults[0], "chunk": 32}])
        tuning.store(fields, winner, tuning.kernel_choices(m.plan, defaults), {"median_s": 1.0})
    monkeypatch.setattr(tuning, "TUNER", [tune])
    monkeypatch.setenv("MIXERC_AUTOTUNE", "full")
    seen = _seen_chunks(monkeypatch)
    with torch.no_grad():
        m(**_inputs(m))
    assert asked == [(1, L, DEV, "triton", False)] and seen[-1] == 32 and m.config["source"] == "tuned"
