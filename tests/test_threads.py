"""`mixerc.threads`: the thread count of a mixer call on the CPU. The policy's decisions (no timing),
the count set during the call and its backward and restored after both (also when the call raises),
the setting, and no graph break under torch.compile."""

from __future__ import annotations

import pytest
import torch

import mixerc as mx
from mixerc import threads
from mixerc.settings import Settings


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("want,current,cpus,others,expected", [
    ("auto", 2, 2, 0, 2),  # an idle machine: torch's own count
    ("auto", 2, 2, 1, 1),  # one busy process on 2 CPUs: the one free CPU
    ("auto", 2, 2, 5, 1),  # heavily loaded: never fewer than 1
    ("auto", 4, 8, 2, 4),  # enough free CPUs: never more than torch's count
    ("auto", 8, 8, 3, 5),
    ("keep", 2, 2, 5, 2),
    (3, 2, 2, 5, 3),  # a fixed number wins over everything
])
def test_decide(want, current, cpus, others, expected):
    assert threads.decide(want, current, cpus, others) == expected


def test_the_setting_parses():
    assert Settings.from_env({}).cpu_threads == "auto"
    assert Settings.from_env({"MIXERC_CPU_THREADS": "keep"}).cpu_threads == "keep"
    assert Settings.from_env({"MIXERC_CPU_THREADS": "3"}).cpu_threads == 3
    for bad in ("0", "two", "-1"):
        with pytest.raises(mx.BackendError, match=r"MIXERC_CPU_THREADS=.*set it to auto, keep or a positive"):
            Settings.from_env({"MIXERC_CPU_THREADS": bad})


def test_runnable_others_is_a_count():
    assert threads.runnable_others() >= 0


class _Probe(torch.autograd.Function):
    """The identity; records the thread count its backward runs with."""
    seen = []

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        _Probe.seen.append(torch.get_num_threads())
        return g


def test_the_call_and_its_backward_run_with_the_count_then_restore(monkeypatch, two_threads):
    monkeypatch.setenv("MIXERC_CPU_THREADS", "1")
    x = torch.randn(3, requires_grad=True)
    during = []

    def fn():
        during.append(torch.get_num_threads())
        return _Probe.apply(x) * 2, ()

    _Probe.seen.clear()
    y, _ = threads.call(torch.device("cpu"), fn)
    assert during == [1] and torch.get_num_threads() == 2
    (y.sum() + x.sum()).backward()  # x.sum()'s branch needs no mixer: the pass still ends restored
    assert _Probe.seen == [1] and torch.get_num_threads() == 2
    assert torch.equal(x.grad, torch.full((3,), 3.0))


def test_two_calls_in_one_backward_restore_the_count_before_it(monkeypatch):
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        x = torch.randn(3, requires_grad=True)
        ys = []
        for n in ("2", "1"):  # the later call (its backward runs first) lowers to 1, the earlier one to 2
            monkeypatch.setenv("MIXERC_CPU_THREADS", n)
            ys.append(threads.call(torch.device("cpu"), lambda: (_Probe.apply(x if not ys else ys[-1]), ()))[0])
        _Probe.seen.clear()
        ys[-1].sum().backward()
        assert _Probe.seen == [1, 1] and torch.get_num_threads() == 4  # never raised within the pass
    finally:
        torch.set_num_threads(before)


def test_the_count_is_restored_when_the_call_raises(monkeypatch, two_threads):
    monkeypatch.setenv("MIXERC_CPU_THREADS", "1")

    def fn():
        assert torch.get_num_threads() == 1
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        threads.call(torch.device("cpu"), fn)
    assert torch.get_num_threads() == 2


def test_auto_follows_the_machine_and_keep_changes_nothing(monkeypatch, two_threads):
    monkeypatch.setattr(threads, "_cpus", lambda: 2)
    monkeypatch.setattr(threads, "runnable_others", lambda: 1)
    monkeypatch.setattr(threads, "_sample", {"at": -1.0, "others": 0, "seen": 1})  # seen at the last reading too
    seen = []

    def fn():
        seen.append(torch.get_num_threads())
        return torch.zeros(1), ()

    threads.call(torch.device("cpu"), fn)
    monkeypatch.setenv("MIXERC_CPU_THREADS", "keep")
    threads.call(torch.device("cpu"), fn)
    assert seen == [1, 2] and torch.get_num_threads() == 2


def test_a_mixer_gives_the_same_values_and_gradients_with_any_count(monkeypatch, two_threads):
    m = mx.compile(mx.load_spec("mamba2"), dims=dict(h=2, p=4, n=4, g=1), backend="chunked", chunk_size=8,
                   dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    ins = dict(x=torch.randn(2, 37, 2, 4, generator=g, dtype=torch.float64),
               dt=torch.randn(2, 37, 2, generator=g, dtype=torch.float64) - 1,
               B=torch.randn(2, 37, 1, 4, generator=g, dtype=torch.float64),
               C=torch.randn(2, 37, 1, 4, generator=g, dtype=torch.float64))
    results = []
    for want in ("keep", "1"):
        monkeypatch.setenv("MIXERC_CPU_THREADS", want)
        leaves = {k: v.clone().requires_grad_() for k, v in ins.items()}
        m.zero_grad()
        y = m(**leaves)
        y.pow(2).sum().backward()
        results.append([y, *(v.grad for v in leaves.values()), *(p.grad.clone() for p in m.parameters())])
        assert torch.get_num_threads() == 2
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.slow  # dynamo traces the whole call (8 s here); tests/test_compile.py's fullgraph runs cover `auto`
def test_no_graph_break_under_torch_compile(monkeypatch, two_threads):
    monkeypatch.setenv("MIXERC_CPU_THREADS", "1")
    m = mx.compile(mx.load_spec("mamba2"), dims=dict(h=2, p=4, n=4, g=1), backend="chunked", chunk_size=8)
    ins = dict(x=torch.randn(1, 16, 2, 4), dt=torch.randn(1, 16, 2), B=torch.randn(1, 16, 1, 4),
               C=torch.randn(1, 16, 1, 4))
    torch._dynamo.reset()
    compiled = torch.compile(lambda i: m(**i), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(ins), m(**ins))
    assert torch.get_num_threads() == 2


def test_one_reading_of_another_runnable_thread_does_not_lower_the_count(monkeypatch):
    """A thread seen once (this process's own, caught between two reads, or a kernel daemon) is not
    contention: the count falls only when the next reading still sees it, and rises at the first reading
    without it."""
    readings = iter([1, 0, 1, 1, 2, 0])
    monkeypatch.setattr(threads, "runnable_others", lambda: next(readings))
    monkeypatch.setattr(threads, "_sample", {"at": -1.0, "others": 0, "seen": 0})
    monkeypatch.setattr(threads, "SAMPLE_SECONDS", -1.0)  # a reading at every call
    assert [threads._others() for _ in range(6)] == [0, 0, 0, 1, 1, 0]
