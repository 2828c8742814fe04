"""The compiled CPU path (mixerc/compiled.py): which calls take it, one graph for every length, fp64
results equal to the reference lowering (forward, final states, every gradient, segments), one warning
and the eager path without a C++ compiler or when the compile fails, the progress line, and the on-disk
cache that lets a new process start in under 2 s.

tests/conftest.py turns the path off for the rest of the suite (``MIXERC_CPU_COMPILE=0``); these tests
turn it on. The default tier never runs inductor (a compile takes minutes on a loaded 2-core machine): it
compiles with a counting backend (dynamo's graphs run as traced, saved and loaded like inductor's), which
checks everything but the C++ code; a new mixer in the same process stands in for a new process. The
inductor runs have their own marker (`pytest -m inductor`, not in CI: 20 to 30 min here): every structure in
fp64 against the reference lowering, one fp32 training entry across b*l = 4096, the warm-cache subprocess
and the benchmark's quick mode.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
import textwrap
import types
import warnings

import pytest
import torch

import mixerc as mx
from mixerc import compiled
from mixerc.check import random_inputs
from mixerc.settings import setting
from mixerc.tuning import Choice
from ref.graphs import CountingSaved

CPU = torch.device("cpu")


@pytest.fixture
def on(monkeypatch, tmp_path):
    """The compiled path on, a fresh warning memory and cache, graphs counted instead of compiled by inductor."""
    monkeypatch.setenv("MIXERC_CPU_COMPILE", "1")
    monkeypatch.setenv("MIXERC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(compiled, "_WARNED", set())
    counting = CountingSaved()
    monkeypatch.setattr(compiled.CompiledFn, "backend", counting)
    return counting


@mx.spec
def conv(x: mx.Seq("b l h"), K: mx.Param("h k", init=mx.init.normal(0.5))):
    """The smallest spec to trace (a causal convolution): for the warning and progress tests."""
    return mx.toeplitz(kernel=K) @ x


def _close(got, want, what, tol=1e-12):
    err = float((got - want).detach().abs().max() / want.detach().abs().max().clamp_min(1e-300))
    assert err < tol, f"{what}: {err:.2e} relative"


def _compare(m, ref, lengths, *, seq=True, states=True, b=2):
    """m (compiled) against ref (the reference lowering, same parameters) in fp64: y, final states,
    every input's and parameter's gradient, with segments and initial states where the spec has them."""
    for l in lengths:
        g = torch.Generator().manual_seed(l)
        ins = random_inputs(m, b, l, generator=g)
        kw = {}
        if seq:
            kw["seq_idx"] = (torch.arange(l)[None].expand(b, l) * 3 // l + torch.arange(b)[:, None]) % 5
        if states:
            init = m.init_state(b)
            kw["initial_state"] = tuple(None if s is None else torch.randn(s.shape, generator=g, dtype=s.dtype)
                                        for s in (init if isinstance(init, (tuple, list)) else (init,)))
        outs, names = [], []
        for mod in (m, ref):
            leaves = {k: v.clone().requires_grad_() for k, v in ins.items()}
            y, fin = mod(**leaves, return_final_state=True, **kw)
            fins = [s for s in (fin if isinstance(fin, (tuple, list)) else (fin,)) if s is not None] if states else []
            loss = (y * y).sum() + sum((s * s).sum() for s in fins)
            outs.append([y, *fins, *torch.autograd.grad(loss, [*leaves.values(), *mod.parameters()])])
            names = ["y", *(f"final state {k}" for k in range(len(fins))), *(f"d/d{k}" for k in leaves),
                     *(f"d/d{k}" for k, _ in mod.named_parameters())]
        for name, a, w in zip(names, *outs):
            _close(a, w, f"{name} at l={l}")


def _pair(spec, dims, **kw):
    m = mx.compile(spec, dims=dims, dtype=torch.float64, **kw)
    ref = mx.compile(spec, dims=dims, dtype=torch.float64, backend="reference")
    ref.load_state_dict(m.state_dict())
    return m, ref


# -- default tier: no inductor --------------------------------------------------------------------


def test_auto_on_cpu_compiles_one_graph_for_every_length_equal_to_the_reference(on, capfd):
    m, ref = _pair(conv, dict(h=2, k=5))
    _compare(m, ref, [2], seq=False, states=False)
    err = capfd.readouterr().err  # one progress line, with the time
    assert "mixerc: compiling conv for CPU" in err and err.rstrip().endswith(" s"), err
    _compare(m, ref, [3, 19, 70], seq=False, states=False)
    assert "compiling" not in capfd.readouterr().err  # one graph: nothing to compile at a new length
    assert (compiled.NAME, "auto") in m._compiled, "backend='auto' did not take the compiled path"
    assert on.graphs == 1, f"{on.graphs} graphs for 4 lengths"
    assert m.config == {**m.config, "source": "default", "label": "fft"}


def test_the_thread_policy_leaves_the_compiled_path_alone(on, monkeypatch):
    """dynamo guards on torch's thread count: a count the policy lowered under load would recompile."""
    m, ref = _pair(conv, dict(h=2, k=5))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        monkeypatch.setattr(compiled.CompiledFn, "__call__", lambda self, **kw: seen.append(torch.get_num_threads())
                            or self.fn(**kw))
        monkeypatch.setenv("MIXERC_CPU_THREADS", "1")  # the policy would run with 1 thread
        _compare(m, ref, [5], seq=False, states=False)
    finally:
        torch.set_num_threads(before)
    assert seen == [2], seen


@pytest.mark.slow
def test_mamba2_one_graph_for_every_length_with_states_and_segments(on):
    m, ref = _pair("mamba2", dict(h=2, p=3, n=4, g=1), chunk_size=4)
    # l = 70: 18 chunks, two groups of the state pass; segments, initial and final states
    _compare(m, ref, [3, 19, 70])
    assert on.graphs == 1, f"{on.graphs} graphs for 3 lengths"


def test_which_calls_compile(on, monkeypatch):
    m = mx.compile("mamba2", dims=dict(h=2, p=3, n=4, g=1))
    # auto plans the fused scan, faster than the compiled chunked pass: not compiled; a Toeplitz mixer is
    assert m._on_device("auto", CPU) == "auto"
    assert mx.compile(conv, dims=dict(h=2, k=3))._on_device("auto", CPU) == (compiled.NAME, "auto")
    tuned = ("config", (Choice(m.plan.structures[0].node, "semiseparable", "chunked", 32),))
    assert m._on_device(tuned, CPU) == (compiled.NAME, tuned)  # a tuned variant compiles too
    assert m._on_device("chunked", CPU) == "chunked"  # an explicit lowering never does
    assert m._on_device("auto", torch.device("meta")) == "auto"  # CPU only
    # a lowering with a loop over the length (the 2-D grid) would recompile per length: not compiled
    assert mx.compile("chimera", dims=dict(h=2, p=4, n=4, g=1))._on_device("auto", CPU) == "auto"
    monkeypatch.setenv("MIXERC_CPU_COMPILE", "0")
    assert m._on_device("auto", CPU) == "auto"
    assert m._on_device(compiled.NAME, CPU) == (compiled.NAME, "auto")  # named, it is the user's choice
    explicit = mx.compile("mamba2", dims=dict(h=2, p=3, n=4, g=1), backend="compiled")
    assert explicit._resolve() == compiled.NAME and explicit.config["source"] == "user"
    monkeypatch.setenv("MIXERC_BACKEND", "compiled")
    assert m._resolve() == compiled.NAME
    monkeypatch.setenv("MIXERC_CPU_COMPILE", "maybe")
    with pytest.raises(mx.BackendError, match="MIXERC_CPU_COMPILE='maybe'"):
        m._on_device("auto", CPU)


def test_without_a_compiler_one_warning_and_the_eager_path(on, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    m = mx.compile(conv, dims=dict(h=2, k=3), dtype=torch.float64)
    x = torch.randn(1, 5, 2, dtype=torch.float64)
    with pytest.warns(compiled.CompiledWarning, match="no C.. compiler found"):
        y = m(x=x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _close(m(x=x), y, "second call")
    assert on.graphs == 0
    eager = mx.compile(conv, dims=dict(h=2, k=3), dtype=torch.float64, backend="fft")
    eager.load_state_dict(m.state_dict())
    _close(y, eager(x=x), "y")


def test_named_compiled_on_a_looping_lowering_warns_once_and_runs_eagerly(on):
    """The 2-D grid's wavefront loops over v + l: compiled, every length would be an unrolled compile of
    its own. ``backend="compiled"`` says so once and runs the eager lowering (equal results)."""
    dims = dict(h=2, p=3, n=4, g=1)
    with pytest.warns(compiled.CompiledWarning, match="ssm2d's lowering grid2d.grid loops over the sequence"):
        m = mx.compile("ssm2d", dims=dims, dtype=torch.float64, backend="compiled")
    eager = mx.compile("ssm2d", dims=dims, dtype=torch.float64)
    eager.load_state_dict(m.state_dict())
    ins = random_inputs(m, 2, 5, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        torch.testing.assert_close(m(**ins), eager(**ins), rtol=0, atol=0)
    assert on.graphs == 0


def test_a_failing_compile_warns_once_and_falls_back(on, monkeypatch):
    def broken(gm, example_inputs):
        raise RuntimeError("the C++ compiler exploded")

    monkeypatch.setattr(compiled.CompiledFn, "backend", staticmethod(broken))
    m = mx.compile(conv, dims=dict(h=2, k=3), dtype=torch.float64)
    eager = mx.compile(conv, dims=dict(h=2, k=3), dtype=torch.float64, backend="fft")
    eager.load_state_dict(m.state_dict())
    x = torch.randn(1, 6, 2, dtype=torch.float64)
    with pytest.warns(compiled.CompiledWarning, match="the compiled CPU path of conv failed .*exploded"):
        y = m(x=x)
    _close(y, eager(x=x), "fallback y")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _close(m(x=x[:, :4]), eager(x=x[:, :4]), "later call")
    assert m.compiled_fallbacks() == {"calls without seq_idx or initial states": "RuntimeError: the C++ compiler "
                                                                                 "exploded"}


def test_a_kind_of_call_that_cannot_compile_leaves_the_others_compiled(on):
    """Segments of a Toeplitz matrix have data-dependent sizes, which dynamo refuses: calls with seq_idx
    run eagerly (one warning), calls without it still compile, and both equal the reference in fp64."""
    m, ref = _pair(conv, dict(h=2, k=3))
    x = torch.randn(2, 9, 2, dtype=torch.float64)
    seg = (torch.arange(9) >= 4).long().expand(2, 9)
    with pytest.warns(compiled.CompiledWarning, match="cannot take calls with seq_idx: dynamo refuses data-dep"):
        y = m(x=x, seq_idx=seg)
    _close(y, ref(x=x, seq_idx=seg), "segmented, eager")
    _compare(m, ref, [6, 11], seq=False, states=False)  # without seq_idx: compiled, one graph
    assert on.graphs == 1 and len(m._get(compiled.NAME)[2].refusals) == 1  # dynamo refused the first before a graph
    assert m.compiled_fallbacks() == {}  # a refusal by design is no failure (the fuzzer fails on failures)


def test_a_new_mixer_loads_the_saved_entry_instead_of_compiling(on, capfd):
    m, ref = _pair(conv, dict(h=2, k=5))
    _compare(m, ref, [6], seq=False, states=False)
    (entry,) = (on_disk := list((setting("cache_dir") / "compiled").rglob("*.bin")))
    assert entry.read_bytes().startswith(compiled.FORMAT), on_disk
    capfd.readouterr()
    again, _ = _pair(conv, dict(h=2, k=5))
    again.load_state_dict(m.state_dict())
    _compare(again, ref, [9, 2], seq=False, states=False)
    assert on.graphs == 1 and "compiling" not in capfd.readouterr().err  # loaded, not compiled
    assert again._get(compiled.NAME)[2].compiles == 0
    with torch.no_grad():  # another context (grad mode is global state the guards do not check): its own entry
        again(x=torch.randn(1, 4, 2, dtype=torch.float64))
    assert on.graphs == 2


@pytest.mark.parametrize("damage", [lambda b: b[:len(b) // 2], lambda b: b.replace(b"sha256=", b"sha256=0"),
                                    lambda b: compiled.entry_bytes(b"not a pickle")],
                         ids=["truncated", "edited", "garbage"])
def test_a_damaged_entry_is_ignored_with_a_warning_and_compiled_again(on, damage):
    m, ref = _pair(conv, dict(h=2, k=5))
    _compare(m, ref, [6], seq=False, states=False)
    (entry,) = (setting("cache_dir") / "compiled").rglob("*.bin")
    entry.write_bytes(damage(entry.read_bytes()))
    again, _ = _pair(conv, dict(h=2, k=5))
    again.load_state_dict(m.state_dict())
    with pytest.warns(mx.CacheWarning, match="compiled entry (has no|does not match|could not be loaded)"):
        _compare(again, ref, [7], seq=False, states=False)
    assert on.graphs == 2


def test_an_unwritable_cache_warns_and_still_runs_compiled(on, monkeypatch, tmp_path):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("MIXERC_CACHE_DIR", str(tmp_path / "file" / "cache"))  # under a regular file
    m, ref = _pair(conv, dict(h=2, k=5))
    with pytest.warns(compiled.CompiledWarning, match="could not be saved .*a new process compiles it again"):
        _compare(m, ref, [6], seq=False, states=False)
    _compare(m, ref, [8], seq=False, states=False)
    assert on.graphs == 1


def test_mixerc_cache_shows_and_clears_the_saved_entries(on):
    from click.testing import CliRunner

    from mixerc.cli import main

    m, ref = _pair(conv, dict(h=2, k=5))
    _compare(m, ref, [6], seq=False, states=False)
    shown = CliRunner().invoke(main, ["cache", "--show"])
    assert shown.exit_code == 0 and "compiled CPU entries:" in shown.output, shown.output
    assert "(1 file(s)" in shown.output, shown.output
    cleared = CliRunner().invoke(main, ["cache", "--clear"])
    assert cleared.exit_code == 0 and not list((setting("cache_dir") / "compiled").rglob("*.bin")), cleared.output


def test_past_the_entry_limit_calls_run_eagerly_with_one_warning(on, monkeypatch):
    monkeypatch.setattr(compiled, "MAX_ENTRIES", 1)
    m = mx.compile(conv, dims=dict(h=2, k=3), dtype=torch.float64)
    eager = mx.compile(conv, dims=dict(h=2, k=3), dtype=torch.float64, backend="fft")
    eager.load_state_dict(m.state_dict())
    x = torch.randn(2, 6, 2, dtype=torch.float64)
    _close(m(x=x), eager(x=x), "y")
    single = x[:1].contiguous()  # b = 1 is a constant to dynamo: a new entry, past the limit
    with pytest.warns(compiled.CompiledWarning, match="compiled variants .* fits none"):
        _close(m(x=single), eager(x=single), "y at b=1")
    assert on.graphs == 1


def test_an_entry_that_fails_at_run_time_falls_back_with_one_warning(on, monkeypatch):
    from ref.graphs import TracedGraph

    m, ref = _pair(conv, dict(h=2, k=5))
    _compare(m, ref, [6], seq=False, states=False)

    def crash(self, *args):
        raise RuntimeError("an entry that crashes")

    monkeypatch.setattr(TracedGraph, "__call__", crash)
    with pytest.warns(compiled.CompiledWarning, match="compiled CPU path of conv failed .*crashes"):
        _compare(m, ref, [7], seq=False, states=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _compare(m, ref, [9], seq=False, states=False)  # eager from then on, silently


class FakeInductor:
    """Stands in for ``torch._inductor.config`` and ``cpu_vec_isa``: probes unless ``cpp.vec_isa_ok`` is set,
    then trusts the CPU's flags (``announced``); ``passing`` is what the probes accept. (A fake, not
    monkeypatch on inductor's own config object, whose entries another test's patching can hide.)"""

    def __init__(self, announced, passing, vec_isa_ok):
        self.announced, self.passing, self.probes = announced, passing, []
        self.cpp = types.SimpleNamespace(vec_isa_ok=vec_isa_ok)
        self.valid_vec_isa_list = functools.wraps(self.listed)(lambda: self.listed())

    def listed(self):
        self.probes.append(self.cpp.vec_isa_ok is None)
        return list(self.announced if self.cpp.vec_isa_ok else self.passing)

    @contextlib.contextmanager
    def patch(self, changes):
        old, self.cpp.vec_isa_ok = self.cpp.vec_isa_ok, changes["cpp.vec_isa_ok"]
        try:
            yield
        finally:
            self.cpp.vec_isa_ok = old


@pytest.mark.parametrize("case", ["all pass", "one fails", "user chose"])
def test_the_vector_isa_probe_is_remembered_per_machine(monkeypatch, tmp_path, case):
    """inductor's probe of the vector instruction sets (child processes, ~2 s of a warm start) runs in one
    process; later processes trust the CPU's flags, but only when every announced set passed."""
    import torch._inductor

    monkeypatch.setenv("MIXERC_CACHE_DIR", str(tmp_path))
    announced = ["avx512", "avx2"]
    chosen = False if case == "user chose" else None
    fake = FakeInductor(announced, announced[1:] if case == "one fails" else announced, chosen)
    monkeypatch.setattr(torch._inductor, "config", fake, raising=False)
    monkeypatch.setattr(torch._inductor, "cpu_vec_isa", fake, raising=False)
    with compiled.remember_isa_probe():  # the first process probes
        pass
    assert compiled.isa_record().is_file() == (case == "all pass")
    fake.cpp.vec_isa_ok = chosen  # a later process
    with compiled.remember_isa_probe():
        trusted = fake.cpp.vec_isa_ok
    assert trusted is {"all pass": True, "one fails": None, "user chose": False}[case]
    assert fake.probes[:1] == ([] if case == "user chose" else [True])  # a user's choice: inductor is not asked


@mx.spec
def wide(x: mx.Seq("b l h p"), C: mx.Seq("b l h n"), B: mx.Seq("b l h n")):
    """With `narrow`: two mixers whose graphs torch's precompile cannot hash (the chunked lowering's
    autograd Function), so it keys each with a nonce drawn from the global `random`."""
    return mx.semiseparable(C=C, B=B) @ x


@mx.spec
def narrow(x: mx.Seq("b l"), C: mx.Seq("b l n"), B: mx.Seq("b l n")):
    return mx.semiseparable(C=C, B=B) @ x


@pytest.mark.slow  # two AOTAutograd compiles: 40 to 50 s here
def test_a_seeded_global_random_never_hands_one_mixer_another_mixers_graph(monkeypatch, tmp_path):
    """Found by ``mixerc fuzz --compiled`` (hypothesis seeds `random` before each example): a user who
    calls ``random.seed(0)`` before building each model got the same nonce for two mixers, and the second
    compile loaded the first one's graph from AOTAutograd's cache (a crash here; silently wrong numbers
    where the shapes fit). AOTAutograd itself, without inductor ("aot_eager"), shows it. The compile also
    leaves the user's random stream where it was."""
    import random

    monkeypatch.setenv("MIXERC_CPU_COMPILE", "1")
    monkeypatch.setenv("MIXERC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(compiled, "_WARNED", set())
    monkeypatch.setattr(compiled.CompiledFn, "backend", "aot_eager")
    after = []
    for spec, dims in ((wide, dict(h=1, p=1, n=1)), (narrow, dict(n=1))):
        random.seed(0)
        m, ref = _pair(spec, dims, chunk_size=4)
        with warnings.catch_warnings():
            warnings.simplefilter("error", mx.CompiledWarning)
            _compare(m, ref, [5], seq=False)
        assert m._get((compiled.NAME, "auto"))[2].compiles >= 1
        after.append(random.random())
    assert after == [random.Random(0).random()] * 2, "a compile moved the user's random stream"


def test_a_genuine_error_is_not_swallowed(on):
    m = mx.compile(conv, dims=dict(h=2, k=3), dtype=torch.float64)
    fn = m._get(compiled.NAME)[2]
    with pytest.raises(TypeError):
        fn(x=torch.randn(1, 4, 2, dtype=torch.float64))  # K missing: eager raises its own error
    assert fn.failures == {}  # the compile itself did not fail



# -- pytest -m inductor -------------------------------------------------------------------------


@mx.spec
def every_kind(x: mx.Seq("b l h p"), dt: mx.Seq("b l h"), B: mx.Seq("b l g n"), C: mx.Seq("b l g n"),
               Bb: mx.Seq("b l g n"), Cb: mx.Seq("b l g n"), A_log: mx.Param("h", init=mx.init.log_uniform(0.5, 2)),
               A_diag: mx.Param("h n", init=mx.init.s4d_real()), D: mx.Param("h", init=0.5)):
    """Every structure the chunked lowering covers, in one graph: semiseparable with scalar, diagonal
    and no decay, and a quasiseparable matrix (scale, both directions, a diagonal)."""
    delta = mx.softplus(dt)
    Ch, Bh = mx.groups_to_heads(C), mx.groups_to_heads(B)
    y = mx.semiseparable(C=C, B=B, log_decay=-mx.exp(A_log) * delta) @ (x * delta)
    y = y + mx.semiseparable(C=Ch, B=Bh, log_decay=-mx.exp(A_diag) * delta) @ x
    y = y + mx.semiseparable(C=C, B=B) @ x
    Q = mx.quasiseparable(C=C, B=B, log_decay=-mx.exp(A_log) * delta, scale=delta, C_bwd=Cb, B_bwd=Bb,
                          log_decay_bwd=-mx.exp(A_log) * delta, scale_bwd=delta, diag=D * delta)
    return y + Q @ x


@pytest.mark.inductor
def test_inductor_every_chunked_structure_fp64(monkeypatch):
    monkeypatch.setenv("MIXERC_CPU_COMPILE", "1")
    m, ref = _pair(every_kind, dict(h=2, p=3, n=4, g=1), chunk_size=4)
    _compare(m, ref, [5, 70])
    assert m._get((compiled.NAME, "auto"))[2].failures == {}


@pytest.mark.inductor
def test_inductor_toeplitz_fp64(monkeypatch):
    monkeypatch.setenv("MIXERC_CPU_COMPILE", "1")
    m, ref = _pair("longconv", dict(h=2, k=6))
    _compare(m, ref, [4, 37], seq=False, states=False)
    assert m._get((compiled.NAME, "auto"))[2].failures == {}


CHILD = textwrap.dedent("""
    import json, sys, time
    import torch
    import mixerc as mx
    from mixerc.check import random_inputs
    m = mx.compile("mamba2", dims=dict(h=2, p=4, n=4, g=1), chunk_size=8)
    ins = {k: v.requires_grad_() for k, v in random_inputs(m, 2, int(sys.argv[1])).items()}
    t = time.perf_counter()
    m(**ins).sum().backward()
    print(json.dumps(dict(first_s=time.perf_counter() - t, failed=m._get(("compiled", "auto"))[2].failures or None)))
""")


@pytest.mark.inductor
@pytest.mark.xfail(reason="a warm process took 2.6 to 2.7 s quiet, 5.0 to 6.0 s at load 4 (cold 164 to 228 s) on the "
                          "2-core machine: torch's imports of dynamo and inductor's select_algorithm alone take 2.0 "
                          "to 2.3 s (docs/compiled_cpu.md)", strict=True)
def test_a_new_process_reaches_its_first_result_in_under_2_s(tmp_path):
    """The first process compiles (and fills the cache under MIXERC_CACHE_DIR); a second one, at
    another length, loads the artifacts: its first forward + backward takes under 2 s."""
    env = {**os.environ, "MIXERC_CPU_COMPILE": "1", "MIXERC_CACHE_DIR": str(tmp_path)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    runs = [json.loads(subprocess.run([sys.executable, "-c", CHILD, str(l)], env=env, capture_output=True,
                                      text=True, check=True).stdout.splitlines()[-1]) for l in (40, 77)]
    assert runs[0]["failed"] is None and runs[1]["failed"] is None
    assert (tmp_path / "inductor").is_dir()
    assert runs[1]["first_s"] < 2.0, f"first call of a new process: {runs[1]['first_s']:.1f} s (cold: " \
                                     f"{runs[0]['first_s']:.1f} s)"


@pytest.mark.inductor
def test_bench_compiled_quick_checks_and_times_every_contender(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "bench_compiled.py"), "--quick"],
                         env={**os.environ, "MIXERC_CACHE_DIR": str(tmp_path)}, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "fraction of the matmul roof compiled" in out.stdout, out.stdout[-3000:]


@pytest.mark.inductor
def test_one_fp32_training_entry_across_b_times_l_4096(monkeypatch):
    """inductor's float-sum accumulator is chosen by size (4096) and guarded: `one_accumulator` keeps one entry."""
    monkeypatch.setenv("MIXERC_CPU_COMPILE", "1")
    dims = dict(h=2, p=8, n=8, g=1)
    m = mx.compile("mamba2", dims=dims, chunk_size=32)
    eager = mx.compile("mamba2", dims=dims, chunk_size=32, backend="chunked")
    eager.load_state_dict(m.state_dict())
    for l in (64, 4096, 300):  # b*l = 128, 8192, 600
        ins = random_inputs(m, 2, l, torch.Generator().manual_seed(l), dtype=torch.float32)
        outs = []
        for mod in (m, eager):
            leaves = {k: v.clone().requires_grad_() for k, v in ins.items()}
            y = mod(**leaves)
            outs.append([y, *torch.autograd.grad((y * y.detach().cos()).sum(), [*leaves.values(), *mod.parameters()])])
        for a, w in zip(*outs):
            _close(a, w, f"fp32 at l={l}", tol=1e-4)
    assert m._get((compiled.NAME, "auto"))[2].compiles == 1
