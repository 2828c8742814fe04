"""The differential fuzzer's fixed-seed CI subset, and the fuzzer's own behaviour.

The long runs (``mixerc fuzz -n 2000`` and ``mixerc fuzz -n 300 --triton``) are for after a change
to a lowering, a template or the IR; this subset keeps a few of their specs in every test run:
random torch-lowering specs, and triton specs pinned to cover parameter-only decays (the bug that
motivated the fuzzer: their gradient was stored from one row per block) as well as input-driven
ones.
"""

import pytest
import torch

import mixerc as mx
from mixerc.fuzz import FuzzFailure, check_case, fuzz
from mixerc.fuzz.grammar import PinnedDraw, RandomDraw, build
from mixerc.settings import settings

needs_triton = pytest.mark.skipif(not settings().triton_interpret and not torch.cuda.is_available(),
                                  reason="needs a GPU or TRITON_INTERPRET=1 (tests/conftest.py sets it)")


def test_random_specs_on_the_torch_lowerings():
    report = fuzz(40, seed=0, shrink=False)
    assert report.failure is None, report.failure
    assert report.passed >= 36 and sum(report.rejected.values()) <= 4, report


TRITON_PINS = [
    dict(kind="ss", decay="scalar", decay_source="params"),
    dict(kind="ss", decay="diagonal", decay_source="params"),
    dict(kind="ss", decay="scalar", decay_source="seqs", value_dims=("b", "l", "h", "p")),
    dict(kind="qs", decay="scalar", decay_source="both"),
]


@needs_triton
@pytest.mark.parametrize("i", range(len(TRITON_PINS)), ids=["-".join(map(str, p.values())) for p in TRITON_PINS])
def test_pinned_specs_on_triton(i):
    case = build(PinnedDraw(RandomDraw(i), TRITON_PINS[i]), triton=True)
    results = check_case(case)
    assert [r.lowering for r in results][-1] == "triton"


def test_a_failure_is_reported_as_spec_source(monkeypatch):
    """A lowering that disagrees makes `fuzz` stop, shrink, and report pasteable spec source."""
    import mixerc.fuzz.run as run

    real = run.check_case

    def broken(case, tol=1e-9, workdir=None, compiled=False):
        if "mx.exp(" in case.source:  # pretend every spec with an exp is computed wrongly
            raise FuzzFailure("exp is wrong\n" + case.describe())
        return real(case, tol, workdir, compiled)

    monkeypatch.setattr(run, "check_case", broken)
    report = fuzz(30, seed=3)
    assert report.failure is not None and "exp is wrong" in report.failure
    source = report.failure.split("\n", 1)[1].split("\n# check:")[0]
    namespace = {}
    exec(compile(source, "<shrunk>", "exec"), namespace)  # the report is valid spec source
    assert "fuzzed" in namespace and source.count("mx.exp(") >= 1
    assert len(source.splitlines()) <= 12  # shrunk to a few lines


@pytest.mark.slow  # 16 s: dynamo traces the case's calls
def test_the_compiled_row(monkeypatch, tmp_path):
    """``mixerc fuzz --compiled`` adds the compiled CPU path to every case (here with dynamo's graphs run as
    traced instead of inductor's C++, which takes minutes per spec: `mixerc fuzz --compiled` runs that)."""
    from mixerc import compiled
    from ref.graphs import CountingSaved

    monkeypatch.setenv("MIXERC_CACHE_DIR", str(tmp_path))
    counting = CountingSaved()
    monkeypatch.setattr(compiled.CompiledFn, "backend", counting)
    results = check_case(build(PinnedDraw(RandomDraw(5), dict(grid=False, kind="ss")), triton=False), compiled=True)
    assert [r.lowering for r in results][-1] == "compiled" and all(r.ok for r in results)
    assert counting.graphs >= 1


def test_a_compiled_row_that_fell_back_to_eager_is_a_finding(monkeypatch, tmp_path):
    """The eager fallback gives the right numbers, so the compiled row would pass: the fuzzer asks the
    mixer whether it ran compiled (`compiled_fallbacks`) and fails the case when it did not."""
    from mixerc import compiled

    def broken(gm, example_inputs):
        raise RuntimeError("the C++ compiler exploded")

    monkeypatch.setenv("MIXERC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(compiled.CompiledFn, "backend", staticmethod(broken))
    with pytest.warns(compiled.CompiledWarning), pytest.raises(FuzzFailure, match="compiled fell back to eager:.*"
                                                                                   "exploded"):
        check_case(build(PinnedDraw(RandomDraw(5), dict(grid=False, kind="ss")), triton=False), compiled=True)


def test_the_same_seed_gives_the_same_specs():
    a = [build(RandomDraw(s)).source for s in range(5)]
    assert a == [build(RandomDraw(s)).source for s in range(5)]
    assert len(set(a)) == 5


def test_an_exact_zero_is_judged_by_its_absolute_error(monkeypatch):
    """Found by the long run: K = K1 + 0.25 with K1 initialised to -0.25 is exactly zero, so the
    output is exactly zero in the reference and 1e-17 (roundoff) in fft: a relative error of 1e12.
    The fuzzer judges such a tensor by its absolute error (`run.FLOOR`)."""
    from mixerc.fuzz import Case

    source = (
        "import mixerc as mx\n\n\n"
        "@mx.spec\n"
        "def fuzzed(x1: mx.Seq(\"b l h p\"), K1: mx.Param(\"k\", init=-0.25), K_rev1: mx.Param(\"k\", init=0.5)):\n"
        "    M1 = mx.toeplitz(kernel=K1 + 0.25, kernel_rev=K_rev1, causal=False)\n"
        "    return M1 @ ((M1 @ x1) / 10.0)\n")
    from mixerc.fuzz import run

    monkeypatch.setattr(run, "JITTER", 0.0)  # the zero comes from K1's init: jitter would move it
    results = check_case(Case(source, dict(h=1, k=3, p=1), b=1, l=2, chunk=4, seq_idx=False, seed=0, triton=False))
    assert {r.lowering for r in results} == {"fft", "direct"}


def test_an_exact_zero_gradient_through_a_2d_fft_passes():
    """Found by the long run (seed 122): `diff` along v of dt + w removes w, so w's gradient is exactly zero
    in the reference and 1.5e-15 (roundoff of O(1) terms) through the 2-D FFT: over an absolute floor of
    1e-15 (FLOOR 1e-6), within 1e-14 (FLOOR 1e-5)."""
    from mixerc.fuzz import Case

    source = (
        "import mixerc as mx\n\n\n"
        "@mx.spec(example_dims=dict(h=2, n=1, p=3), seq_axes=(\"v\", \"l\"))\n"
        "def fuzzed(x1: mx.Seq(\"b v l h p\"), C11: mx.Seq(\"b v l h n\"), B11: mx.Seq(\"b v l h n\"),\n"
        "           C21: mx.Seq(\"b v l h n\"), B21: mx.Seq(\"b v l h n\"), dt1: mx.Seq(\"b v l h\"),\n"
        "           w1: mx.Param(\"\", init=0.5)):\n"
        "    dt2 = mx.diff(dt1 + w1, axis=\"v\")\n"
        "    M1 = mx.grid2d(C1=C11, B1=B11, C2=C21, B2=B21, scale1=mx.softplus(dt2))\n"
        "    return M1 @ x1\n")
    case = Case(source, dict(h=2, n=1, p=3), b=1, l=4, chunk=4, seq_idx=False, seed=0, triton=False, axes={"v": 2})
    assert "fft2" in {r.lowering for r in check_case(case)}


def test_parameters_with_the_same_init_do_not_tie():
    """Found by the long run (seed 123): K and w both initialised to 0.5 made 0.5 - maximum(K, w) an exact zero
    kernel, y exactly zero where abs has its kink, and fft's roundoff took the other side of it: K's
    gradient off by a whole term (0.54 relative). The fuzzer now jitters every parameter (`run.JITTER`)."""
    from mixerc.fuzz import Case
    from mixerc.fuzz import run

    source = (
        "import mixerc as mx\n\n\n"
        "@mx.spec(example_dims=dict(h=1, k=3, n2=1, p=1))\n"
        "def fuzzed(x1: mx.Seq(\"b l h p\"), K1: mx.Param(\"h k\", init=0.5), w1: mx.Param(\"\", init=0.5),\n"
        "           log_dt1: mx.Param(\"h\", init=0.5), A1: mx.Param(\"h n2\", init=0.5),\n"
        "           Ai1: mx.Param(\"h n2\", init=0.5), Cr1: mx.Param(\"h n2\", init=0.5),\n"
        "           Ci1: mx.Param(\"h n2\", init=0.5), u1: mx.Seq(\"b l h p\")):\n"
        "    K_rev1 = mx.s4d_kernel(log_dt1, A1, Ai1, Cr1, Ci1, disc=\"zoh\")\n"
        "    M1 = mx.toeplitz(kernel=0.5 - mx.maximum(K1, w1), kernel_rev=K_rev1, causal=False)\n"
        "    return mx.abs(M1 @ x1) + u1\n")
    case = Case(source, dict(h=1, k=3, n2=1, p=1), b=1, l=2, chunk=4, seq_idx=False, seed=0, triton=False)
    assert run.JITTER > 0
    assert "fft" in {r.lowering for r in check_case(case)}


def test_the_triton_row_runs_kernel_configs_drawn_from_the_declared_space():
    """What the tuner can cache is fuzzed: a seed draws every knob from the space, not the defaults."""
    from mixerc.fuzz.run import kernel_configs

    m = mx.compile("mamba2", dims=dict(h=2, p=4, n=4, g=1), backend="triton")
    default = dict(m.kernel_configs()[0]["config"])
    space = m.kernel_configs()[0]["space"]
    seen = []
    for seed in range(4):
        configure, drawn = kernel_configs(seed)
        configure("chunked", m)  # another row: untouched
        assert drawn == []
        configure("triton", m)
        (cfg,) = drawn
        assert cfg == m.kernel_configs()[0]["config"] and all(cfg[k] in space[k] for k in space)
        seen.append(cfg)
    assert any(cfg != default for cfg in seen) and len({tuple(sorted(c.items())) for c in seen}) > 1


def test_a_reports_check_line_replays_it_without_the_fuzzer(tmp_path):
    """The ``# check:`` line holds every keyword of `run_check` the fuzzer judged with (floor and jitter
    included), and `run_check` draws random parameter inits from its seed (they came from torch's global
    generator, wherever earlier cases had left it): the same errors, to the last digit, from the report alone."""
    from mixerc.check import run_check
    from mixerc.fuzz.run import lowerings_of
    from mixerc.loader import load_spec

    case = build(PinnedDraw(RandomDraw(7), dict(grid=False, kind="ss")), triton=False)
    assert "mx.Param(" in case.source  # the jitter changes its numbers
    with pytest.raises(FuzzFailure) as info:
        check_case(case, tol=1e-300)  # every inexact result fails: a report to replay
    verdict, rest = str(info.value).split("\n", 1)
    source, line = rest.split("\n# check: ")
    kwargs = eval(f"dict({line.splitlines()[0]})")  # noqa: S307 - the report's own line
    assert {"floor", "jitter"} <= set(kwargs)
    kwargs.pop("varlen", None)
    path = tmp_path / "fuzzed.py"
    path.write_text(source)
    spec = load_spec(str(path))
    dims = kwargs.pop("dims")
    rng = torch.get_rng_state()
    results = run_check(spec, dims, lowerings=lowerings_of(spec, dims, False), tol=1e-300, **kwargs)
    assert "; ".join(str(r) for r in results if not r.ok) == verdict
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's generator as it was (each lowering's
    # compile draws inits that the reference's then replace)


def test_varlen_check_gives_every_lowering_the_seeds_inits_and_leaves_the_callers_generator():
    """`run_varlen_check` compiles a mixer per lowering; their random inits came from torch's global
    generator, so two calls with the same seed judged different parameters."""
    import mixerc as mx
    from mixerc.check import run_varlen_check

    spec = mx.load_spec("s4d")  # random inits (log_dt, C_re, C_im)
    dims = dict(spec.example_dims, k=16)
    runs = []
    for caller_seed in (1, 2):
        torch.manual_seed(caller_seed)
        rng = torch.get_rng_state()
        runs.append(run_varlen_check(spec, dims, [5, 9], ["fft", "direct"], seed=3))
        assert torch.equal(torch.get_rng_state(), rng)
    assert runs[0] == runs[1]
