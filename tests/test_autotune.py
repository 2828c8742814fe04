"""`mixerc autotune` (mixerc/autotune.py), the tuning cache (mixerc/tuning.py) and how a CompiledMixer
uses it (MIXERC_AUTOTUNE, mixer.config, mx.load_tuning). Tiny shapes; every test has its own cache dir."""

from __future__ import annotations

import json
import pathlib
import re
import warnings

import pytest
import torch
from click.testing import CliRunner
from rich.console import Console

import mixerc as mx
from mixerc import autotune, cli, tuning
from mixerc.check import random_inputs, run_check
from mixerc.cli import main
from mixerc.runtime import CompiledMixer

DIMS = dict(h=2, p=4, n=4, g=1)
FAST = dict(autotune.EFFORTS["quick"], repeats=2, leaders=2)


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXERC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MIXERC_AUTOTUNE", raising=False)
    monkeypatch.delenv("MIXERC_BACKEND", raising=False)
    monkeypatch.setitem(autotune.EFFORTS, "quick", FAST)
    tuning.unload_tuning()
    yield
    tuning.unload_tuning()


def _mixer(**kw):
    return mx.compile("mamba2", dims=DIMS, dtype=torch.float64, **kw)


def _inputs(m, l=40, b=1, seed=0):
    return random_inputs(m, b, l, torch.Generator().manual_seed(seed), dtype=torch.float64)


def _store(m, l, lowering, chunk=None, dtype=torch.float64, backward=True):
    """A cache entry for ``m``'s bucket of ``l`` whose winner is ``lowering`` (written as the tuner does);
    ``backward``: for training calls (these tests call with grad enabled and parameters requiring grad)."""
    default = tuning.default_config(m.plan)  # the plan compile() made: the defaults
    winner = (tuning.Choice(default[0].node, default[0].structure, lowering, chunk),)
    fields = tuning.key_fields(m.ir, m.sizes, dtype, "cpu", {"l": l}, backward=backward)
    return tuning.store(fields, winner, default, {"median_s": 1.0, "default_median_s": 2.0})


# -- the search space ---------------------------------------------------------------------------------
def test_mamba2_space_holds_chunk_sizes_and_recurrent_and_the_cost_model_prunes():
    _, graph, sizes = mx.trace(mx.load_spec("mamba2"), dict(h=8, p=64, n=64, g=1))
    (opts,) = autotune.options(graph, {"l": 8192}, "quick")
    assert {c.label() for c in opts} == {"recurrent", "scan", "chunked/32", "chunked/64", "chunked/128", "chunked/256"}
    kept, pruned = autotune.search_space(graph, sizes, 2, {"l": 8192}, "quick")
    assert kept[0].default and kept[0].name == "scan" and len(kept) + len(pruned) == 6
    _, graph, sizes = mx.trace(mx.load_spec("mamba2"), dict(h=2, p=8, n=8, g=1))
    kept, pruned = autotune.search_space(graph, sizes, 2, {"l": 300}, "quick")
    assert [name for name, _ in pruned] == ["chunked/256"] and "x the best estimate" in pruned[0][1]
    assert kept[0].default and [c.estimate for c in kept[1:]] == sorted(c.estimate for c in kept[1:])
    full, _ = autotune.search_space(graph, sizes, 2, {"l": 300}, "full")
    assert {"chunked/16"} <= {c.name for c in full}
    # a short sequence: no chunk beyond the length's bucket
    (short,) = autotune.options(graph, {"l": 20}, "quick")
    assert {c.label() for c in short} == {"recurrent", "scan", "chunked/32", "chunked/64"}


def test_s4d_space_is_fft_or_direct_and_direct_is_pruned_for_long_kernels():
    _, graph, sizes = mx.trace(mx.load_spec("s4d"), dict(h=4, n2=8, k=8192))
    (opts,) = autotune.options(graph, {"l": 8192}, "quick")
    assert [c.label() for c in opts] == ["fft", "direct"]
    kept, pruned = autotune.search_space(graph, sizes, 2, {"l": 8192}, "quick")
    assert [c.name for c in kept] == ["fft"] and [name for name, _ in pruned] == ["direct"]
    _, graph, sizes = mx.trace(mx.load_spec("s4d"), dict(h=4, n2=8, k=4))
    kept, _ = autotune.search_space(graph, sizes, 2, {"l": 64}, "quick")
    assert [c.name for c in kept] == ["fft", "direct"]  # a 4-tap kernel: direct is a candidate


def test_a_2d_spec_tunes_the_lowerings_its_layout_supports():
    _, graph, sizes = mx.trace(mx.load_spec("ssm2d"), dict(h=2, p=2, n=2, g=1))
    (opts,) = autotune.options(graph, {"v": 4, "l": 100}, "quick")
    (apply,) = graph.nodes_of("apply")
    sdef = mx.ir.STRUCTURES[graph.node(apply.args[0]).op]
    want = {"grid"} | {low for low in ("recurrent", "fft2")
                                                            if sdef.supports(low, apply.attrs["layout"])}
    assert {c.label() for c in opts} == want and "recurrent" in want
    kept, _ = autotune.search_space(graph, sizes, 1, {"v": 4, "l": 100}, "quick")
    assert kept[0].default and kept[0].name == "grid"


# -- the tuner ----------------------------------------------------------------------------------------
def test_a_wrong_or_crashing_candidate_is_rejected_and_never_cached(monkeypatch):
    real = CompiledMixer.run_config

    def sabotaged(self, config, **inputs):
        if config[0].label() == "chunked/32":
            return real(self, config, **inputs) + 1e-2  # a config that changes the result
        if config[0].label() == "recurrent":
            raise RuntimeError("miscompiled")
        return real(self, config, **inputs)

    monkeypatch.setattr(CompiledMixer, "run_config", sabotaged)
    r = autotune.tune(mx.load_spec("mamba2"), DIMS, 1, 40)
    why = {c.name: c.contender.why_not for c in r.candidates}
    assert why["chunked/32"].startswith("rejected: output differs from the fp64 reference")
    assert why["recurrent"] == "rejected: raised RuntimeError: miscompiled"
    assert r.winner is not None and r.winner[0].label() not in ("chunked/32", "recurrent")
    entry = json.loads(pathlib.Path(r.path).read_text())
    assert "chunked/32" not in entry["measured"]["candidates"] and "recurrent" not in entry["measured"]["candidates"]


def test_cache_round_trip_keys_the_bucket_and_a_second_run_runs_nothing(monkeypatch):
    first = autotune.tune(mx.load_spec("mamba2"), DIMS, 1, 40)
    assert not first.hit and first.path and first.winner
    entry = json.loads(pathlib.Path(first.path).read_text())
    assert entry["key"]["bucket"] == {"l": 64} and entry["key"]["dims"] == DIMS
    numbers = re.findall(r"(?<![0-9a-f])[0-9]+(?![0-9a-f])", json.dumps(entry["key"]))  # not inside a hash
    assert "40" not in numbers, "the key holds the bucket, never the exact length"
    assert set(entry["key"]) == {"spec", "ir_hash", "generator", "device", "backend", "torch", "triton", "dtype",
                                 "dims", "bucket", "pass"} and entry["key"]["pass"] == "forward"

    def no_run(*a, **k):
        raise AssertionError("a cache hit runs no candidate")

    monkeypatch.setattr(CompiledMixer, "run_config", no_run)
    second = autotune.tune(mx.load_spec("mamba2"), DIMS, 1, 57)  # same bucket (64)
    assert second.hit and second.path == first.path and second.winner == first.winner
    assert second.elapsed < first.elapsed / 10
    third = autotune.tune(mx.load_spec("mamba2"), DIMS, 1, 65)  # another bucket (128): it runs them
    assert not third.hit and third.winner is None and third.path is None
    assert all("a cache hit runs no candidate" in c.contender.why_not for c in third.candidates)


def test_budget_bounds_the_run():
    r = autotune.tune(mx.load_spec("mamba2"), DIMS, 1, 40, budget=1e-3)
    assert r.out_of_budget
    ran = [c for c in r.candidates if c.contender.why_not is None]
    assert [c.default for c in ran] == [True], "past the budget only the default is measured"
    assert r.path is None and "the budget ran out" in r.not_cached and tuning.entries() == []  # never cached


def test_bad_arguments_are_typed_errors():
    with pytest.raises(mx.InputError, match="effort 'slow'"):
        autotune.tune(mx.load_spec("mamba2"), DIMS, 1, 40, effort="slow")
    with pytest.raises(mx.InputError, match="budget -1"):
        autotune.tune(mx.load_spec("mamba2"), DIMS, 1, 40, budget=-1)
    with pytest.raises(mx.BackendError, match="--backend 'fft' cannot run spec 'mamba2'"):
        autotune.tune(mx.load_spec("mamba2"), DIMS, 1, 40, backend="fft")


# -- the mixer using the cache ------------------------------------------------------------------------
def test_cached_winner_runs_off_runs_the_default_and_config_says_where_it_came_from(monkeypatch):
    m = _mixer()
    assert m.config["source"] == "default" and m.config["label"] == "scan"
    path = _store(m, 40, "recurrent")
    ins = _inputs(m, 40)
    y_cached = m(**ins)
    assert m.config == {"source": "cache", "from": str(path), "label": "recurrent",
                        "choices": [{"node": m.config["choices"][0]["node"], "structure": "semiseparable",
                                     "lowering": "recurrent", "chunk": None}]}
    m(**_inputs(m, 100))  # another bucket: nothing cached there
    assert m.config["source"] == "default" and m.config["label"] == "scan"
    monkeypatch.setenv("MIXERC_AUTOTUNE", "off")
    y_off = m(**ins)
    assert m.config["source"] == "default" and m.config["label"] == "scan"
    # a tuned config never changes a result (fp64)
    torch.testing.assert_close(y_cached, y_off, rtol=1e-9, atol=1e-9)


def test_every_tunable_winner_gives_the_default_result():
    m = _mixer()
    ins = _inputs(m, 45, b=2, seed=3)
    m_default = _mixer(backend="chunked")
    m_default.load_state_dict(m.state_dict())
    want = m_default(**ins)
    for low, chunk in [("recurrent", None), ("chunked", 16), ("chunked", 32), ("chunked", 128)]:
        _store(m, 45, low, chunk)
        got = m(**ins)
        assert m.config["source"] == "cache" and m.config["label"] == tuning.Choice("", "", low, chunk).label()
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_a_tuned_toeplitz_lowering_gives_the_default_result():
    m = mx.compile("s4d", dims=dict(h=3, n2=4, k=50), dtype=torch.float64)
    ins = _inputs(m, 50, b=2, seed=1)
    want = m(**ins)
    assert m.config["label"] == "fft"
    _store(m, 50, "direct")
    got = m(**ins)
    assert (m.config["source"], m.config["label"]) == ("cache", "direct")
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    with pytest.raises(mx.InputError, match="expected a tuple of mixerc.tuning.Choice"):
        m.run_config(("direct",), **ins)


def test_training_calls_and_no_grad_calls_use_their_own_pass():
    m = _mixer()
    _store(m, 40, "recurrent", backward=False)  # a forward-only winner
    ins = _inputs(m, 40)
    m(**ins)  # parameters require grad: a training call
    assert m.config["source"] == "default"
    with torch.no_grad():
        m(**ins)
    assert (m.config["source"], m.config["label"]) == ("cache", "recurrent")
    # a layer passing its own parameters per call: they decide whether the call trains
    bare = mx.compile("mamba2", dims=DIMS, dtype=torch.float64, parameters=False)
    weights = {k: v.detach().clone().requires_grad_(True) for k, v in m.named_parameters()}
    bare(**ins, params=weights)
    assert bare.config["source"] == "default"
    bare(**ins, params={k: v.detach() for k, v in weights.items()})
    assert (bare.config["source"], bare.config["label"]) == ("cache", "recurrent")


def test_backward_tuning_checks_gradients():
    r = autotune.tune(mx.load_spec("mamba2"), DIMS, 1, 40, backward=True)
    assert r.backward and r.winner and json.loads(pathlib.Path(r.path).read_text())["key"]["pass"] == "forward+backward"
    assert all(c.contender.error is not None for c in r.candidates)


@pytest.mark.parametrize("name, dims", [("mamba2", DIMS), ("s4d", dict(h=2, n2=4, k=37)), ("hydra", None)])
def test_every_config_the_tuner_can_cache_passes_the_fuzzers_checks(name, dims):
    """The fuzzer's battery (`mixerc.check.run_check`: output, final state, every gradient, prefill +
    step, segments, fp64) on every option of the quick space at a length that cuts chunks raggedly."""
    spec = mx.load_spec(name)
    _, graph, sizes = mx.trace(spec, dims or spec.example_dims)
    (opts,) = autotune.options(graph, {"l": 37}, "quick")
    for c in opts:
        results = run_check(spec, sizes, b=2, l=37, lowerings=[c.lowering], chunk_size=c.chunk or 16)
        assert results and all(r.ok for r in results), (c.label(), results)


def test_explicit_backend_or_chunk_size_wins_over_the_cache(monkeypatch):
    _store(_mixer(), 40, "recurrent")
    for kw, label in [(dict(chunk_size=32), "chunked/32"), (dict(backend="chunked"), "chunked/64")]:
        m = _mixer(**kw)
        m(**_inputs(m, 40))
        assert (m.config["source"], m.config["label"]) == ("user", label)
    monkeypatch.setenv("MIXERC_BACKEND", "chunked")
    m = _mixer()
    assert (m.config["source"], m.config["label"]) == ("user", "chunked/64")  # before any call too
    m(**_inputs(m, 40))
    assert (m.config["source"], m.config["label"]) == ("user", "chunked/64")


def test_a_variant_is_generated_once_per_mixer(monkeypatch):
    m = _mixer()
    _store(m, 40, "chunked", 16)
    calls = []
    real = mx.codegen.generate
    monkeypatch.setattr(mx.codegen, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    for seed in range(3):
        m(**_inputs(m, 40, seed=seed))
    assert len(calls) == 1 and m.config["label"] == "chunked/16"


@pytest.mark.parametrize("damage", ["garbage", "tampered", "other key"])
def test_a_corrupt_or_stale_entry_warns_once_and_is_ignored(damage, tmp_path):
    m = _mixer()
    path = _store(m, 40, "recurrent")
    if damage == "garbage":
        path.write_bytes(b"\x00{not json")
    elif damage == "tampered":
        entry = json.loads(path.read_text())
        entry["winner"][0]["chunk"] = 7
        path.write_text(json.dumps(entry))
    else:  # another bucket's entry copied over this one
        other = _store(m, 500, "chunked", 32)
        path.write_bytes(other.read_bytes())
    with pytest.warns(mx.CacheWarning, match=f"tuning entry {path.name} .*ignored it"):
        y = m(**_inputs(m, 40))
    assert m.config["source"] == "default" and y.shape[1] == 40
    m2 = _mixer()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m2(**_inputs(m2, 40))  # warned once per process, not per call


def test_full_tunes_a_missing_bucket_at_its_first_call(monkeypatch):
    monkeypatch.setenv("MIXERC_AUTOTUNE", "full")
    m = mx.compile("mamba2", dims=DIMS)
    x = {k: v.float() for k, v in _inputs(m, 40).items()}
    m(**x)
    assert m.config["source"] == "tuned" and m.config["from"]
    assert len(tuning.entries()) == 1
    m2 = mx.compile("mamba2", dims=DIMS)
    m2(**x)
    assert m2.config["source"] == "cache" and m2.config["label"] == m.config["label"]  # the same choice


def test_export_then_load_tuning_pins_the_winners(tmp_path):
    m = _mixer()
    _store(m, 40, "chunked", 16)
    assert tuning.export(tmp_path / "pinned.json") == 1
    tuning.clear()
    m(**_inputs(m, 40))
    assert m.config["source"] == "default"
    assert mx.load_tuning(tmp_path / "pinned.json") == 1
    m(**_inputs(m, 40))
    assert (m.config["source"], m.config["from"], m.config["label"]) == ("file", str(tmp_path / "pinned.json"),
                                                                          "chunked/16")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(mx.InputError, match="not a tuning export"):
        mx.load_tuning(tmp_path / "bad.json")
    with pytest.raises(mx.InputError, match="cannot read it"):
        mx.load_tuning(tmp_path / "missing.json")


# -- the command line ---------------------------------------------------------------------------------
def test_cli_tunes_then_hits_shows_exports_and_clears(tmp_path):
    run = CliRunner().invoke
    args = ["autotune", "mamba2", "--dims", "h=2,p=4,n=4,g=1", "--shape", "b=1,l=40"]
    r = run(main, args)
    assert r.exit_code == 0, r.output
    assert "winner" in r.output and "pruned by the cost model" in r.output and "cached:" in r.output
    r = run(main, args)
    assert r.exit_code == 0 and "cache hit" in r.output and "nothing ran" in r.output
    r = run(main, ["autotune", "--show"])
    assert r.exit_code == 0 and "1 entry" in r.output and "mamba2" in r.output and "l<=64" in r.output
    for width, whole in ((200, "│ mamba2 "), (60, "  spec: mamba2, dims: g=1,h=2,n=4,p=4, dtype: float32")):
        with pytest.MonkeyPatch.context() as mp:  # a wide terminal gets the table, a narrow one a line per entry
            mp.setattr(cli, "console", Console(width=width, highlight=False))  # (xdist's workers pin COLUMNS=80)
            r = run(main, ["autotune", "--show"])
        assert r.exit_code == 0 and whole in r.output and "…" not in r.output, r.output
    r = run(main, ["autotune", "--export", str(tmp_path / "t.json")])
    assert r.exit_code == 0 and json.loads((tmp_path / "t.json").read_text())["entries"]
    r = run(main, ["autotune", "--clear"])
    assert r.exit_code == 0 and "removed 1 file" in r.output
    assert tuning.entries() == []


@pytest.mark.parametrize("extra, message", [
    (["--budget", "soon"], "--budget 'soon': give a positive number of seconds"),
    (["--budget", "0"], "--budget '0': give a positive number of seconds"),
    (["--effort", "max"], "--effort 'max': choose one of quick, full"),
    (["--backend", "fft"], "--backend 'fft' cannot run spec 'mamba2' on the CPU"),
    (["--dtype", "int8"], "--dtype 'int8': choose one of fp32"),
    (["--shape", "b=1,l=x"], "--shape 'b=1,l=x'"),
])
def test_cli_bad_input_is_one_line_and_exit_2(extra, message):
    r = CliRunner().invoke(main, ["autotune", "mamba2", "--dims", "h=2,p=4,n=4,g=1", "--shape", "b=1,l=40", *extra])
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_cli_cache_commands_take_no_spec_and_cuda_without_a_gpu_says_how_to_tune_here():
    r = CliRunner().invoke(main, ["autotune", "mamba2", "--show"])
    assert r.exit_code == 2 and "drop the SPEC" in r.output
    r = CliRunner().invoke(main, ["autotune"])
    assert r.exit_code == 2 and "needs a SPEC" in r.output
    if not torch.cuda.is_available():
        r = CliRunner().invoke(main, ["autotune", "mamba2", "--dims", "h=2,p=4,n=4,g=1", "--device", "cuda"])
        assert r.exit_code == 2 and "no CUDA device is visible" in r.output and "--backend triton" in r.output
