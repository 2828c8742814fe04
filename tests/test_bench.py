"""`mixerc bench` (mixerc/bench.py, mixerc/peers): every contender is checked against the fp64 reference
before it is timed, a wrong or crashing one is rejected with why, peers that are not installed or need
another device or shape say so, the timing interleaves and repeats, the CLI draws the table and PNG."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

import mixerc as mx
from mixerc import bench, check, peers
from mixerc.cli import main

DIMS = dict(h=2, p=4, n=4, g=1)


def _by_name(result):
    return {c.name: c for c in result.contenders}


def test_every_lowering_and_the_listing_checked_then_timed():
    r = bench.run_bench(mx.load_spec("mamba2"), DIMS, 1, [48, 32], chunk_size=16, repeats=2)
    assert r.lengths == [32, 48] and r.baseline == "chunked"  # a chunk size asks auto for chunked
    c = _by_name(r)
    for name in ("reference", "recurrent", "chunked", "scan", "einsum listing"):
        assert c[name].why_not is None and c[name].error < 1e-5, (name, c[name].why_not)
        assert [len(c[name].times[l]) for l in r.lengths] == [2, 2]
    rows = {name: cells for name, _, cells, _ in r.table_rows()}
    assert all(cell[3] == 1.0 for cell in rows["chunked"])  # the baseline against itself
    assert c["mamba-ssm mamba_chunk_scan_combined"].why_not is not None  # CUDA only (or not installed)


def test_the_seed_draws_the_parameters_too_and_the_callers_generator_is_left_alone():
    """The same seed checks the same numbers (the mixers' parameters drawn from it, not from the global
    generator's state of the moment), another seed others; torch's global generator is where it was."""
    def errors(seed):
        r = bench.run_bench(mx.load_spec("mamba2"), DIMS, 1, [32], backward=True, lowerings=["chunked"],
                            chunk_size=16, repeats=1, peers=False, seed=seed)
        return _by_name(r)["chunked"].error

    torch.manual_seed(5)
    first = errors(0)
    after_a_run = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(3), after_a_run), "the run drew from the global generator"
    torch.manual_seed(6)
    assert errors(0) == first and errors(1) != first


def test_a_peer_needing_whole_chunks_is_skipped_where_l_is_not_one():
    r = bench.run_bench(mx.load_spec("mamba2"), DIMS, 1, [32, 40], chunk_size=16, repeats=1,
                        lowerings=["chunked"])
    listing = _by_name(r)["einsum listing"]
    assert listing.times.get(32) and not listing.times.get(40)
    assert listing.skipped[40] == "needs l % chunk == 0 (l=40, chunk=16)"


@pytest.mark.parametrize("make,why", [
    (lambda m, chunk: lambda ins: m(**ins) * 1.01, r"rejected: output differs from the fp64 reference by 1.0e-02"),
    (lambda m, chunk: lambda ins: m(**ins)[:, :-1], r"rejected: output has shape \(1, 31, 2, 4\), the reference "
                                                    r"\(1, 32, 2, 4\)"),
    (lambda m, chunk: lambda ins: m(**ins)["y"], r"rejected: raised TypeError: new\(\): invalid data type"),
])
def test_a_wrong_or_crashing_peer_is_rejected_not_timed(monkeypatch, make, why):
    bad = peers.Peer("bad peer", "mamba2", "torch", ("cpu",), make)
    monkeypatch.setattr(peers, "PEERS", peers.PEERS + [bad])
    r = bench.run_bench(mx.load_spec("mamba2"), DIMS, 1, [32], chunk_size=16, repeats=1, lowerings=["chunked"])
    c = _by_name(r)["bad peer"]
    assert c.why_not is not None and c.times == {}
    assert re.match(why, c.why_not), c.why_not


def test_a_wrong_gradient_is_rejected_with_backward(monkeypatch):
    class Detached(torch.autograd.Function):  # right values, a gradient scaled by 2
        @staticmethod
        def forward(ctx, y):
            return y.clone()

        @staticmethod
        def backward(ctx, g):
            return 2 * g
    bad = peers.Peer("bad grad", "mamba2", "torch", ("cpu",), lambda m, chunk: lambda ins: Detached.apply(m(**ins)))
    monkeypatch.setattr(peers, "PEERS", [bad])
    r = bench.run_bench(mx.load_spec("mamba2"), DIMS, 1, [32], chunk_size=16, repeats=1, lowerings=["chunked"],
                        backward=True)
    c = _by_name(r)
    assert c["chunked"].why_not is None
    assert c["bad grad"].why_not.startswith("rejected: a gradient differs from the fp64 reference")


def test_a_peer_wrong_only_at_a_longer_length_is_not_timed_there_and_probes_are(monkeypatch):
    drift = peers.Peer("drifts", "mamba2", "torch", ("cpu",),
                       lambda m, chunk: lambda ins: m(**ins) * (1.01 if ins["x"].shape[1] > 32 else 1.0))
    monkeypatch.setattr(peers, "PEERS", [drift])
    calls = []
    r = bench.run_bench(mx.load_spec("mamba2"), DIMS, 1, [32, 48], chunk_size=16, repeats=2, lowerings=["chunked"],
                        probes={"probe": lambda: calls.append(1)})
    c = _by_name(r)
    assert c["drifts"].why_not is None and len(c["drifts"].times[32]) == 2 and 48 not in c["drifts"].times
    assert c["drifts"].skipped[48] == "rejected: output differs from chunked's by 1.0e-02 at this length"
    assert c["chunked"].agreement == {32: 0.0, 48: 0.0} and c["drifts"].agreement[32] == 0.0
    assert c["probe"].kind == "probe" and [len(c["probe"].times[l]) for l in (32, 48)] == [2, 2] and len(calls) == 6


def test_extras_with_their_inputs_are_checked_and_timed_and_peers_left_out():
    """A caller's contenders on a caller's inputs (here ``lengths``, which the fp64 reference reads too):
    a right one is timed, one that ignores the lengths is rejected, ``peers=False`` runs no peer."""
    def padded(mixer, b, l, generator, dtype):
        ins = check.random_inputs(mixer, b, l, generator, dtype=dtype)
        return {**ins, "lengths": torch.tensor([l, l // 2])}

    def one_by_one(m, chunk):  # each row alone, cut at its length, its padding zeroed
        def run(ins):
            rows = [m(**{k: v[i:i + 1, :n] for k, v in ins.items() if k != "lengths"})
                    for i, n in enumerate(ins["lengths"].tolist())]
            return torch.stack([torch.nn.functional.pad(y[0], (0, 0, 0, 0, 0, ins["x"].shape[1] - y.shape[1]))
                                for y in rows])
        return run
    r = bench.run_bench(mx.load_spec("mamba2"), DIMS, 2, [32], chunk_size=16, repeats=2, lowerings=["chunked"],
                        inputs=padded, peers=False, backward=True,
                        extras={"rows": one_by_one, "no lengths": lambda m, chunk: lambda ins: m(
                            **{k: v for k, v in ins.items() if k != "lengths"})})
    c = _by_name(r)
    assert set(c) == {"chunked", "rows", "no lengths"} and c["rows"].kind == "extra"
    assert c["rows"].why_not is None and c["rows"].error < 1e-5 and len(c["rows"].times[32]) == 2
    assert re.match(r"rejected: (output|a gradient) differs from the fp64 reference", c["no lengths"].why_not)
    assert r.failures() == [f"no lengths: {c['no lengths'].why_not}"]


def test_a_wrong_parameter_gradient_is_rejected_with_backward():
    """With backward the gradients of the parameters are checked too: an extra that reads D detached
    (right output, no gradient for D) is rejected."""
    r = bench.run_bench(mx.load_spec("mamba2"), DIMS, 1, [32], chunk_size=16, repeats=1, lowerings=["chunked"],
                        peers=False, backward=True, extras={"D detached": lambda m, chunk: lambda ins: m(
                            **ins, params={**dict(m.named_parameters()), "D": m.D.detach()})})
    c = _by_name(r)
    assert c["chunked"].why_not is None
    assert c["D detached"].why_not.startswith("rejected: a gradient differs from the fp64 reference"), \
        c["D detached"].why_not


def test_join_makes_one_table_of_runs_whose_dims_follow_the_length(tmp_path):
    runs = [bench.run_bench(mx.load_spec("longconv"), dict(h=2, k=n), 1, [n], repeats=1,
                            lowerings=["fft", "reference"] if n < 32 else ["fft"]) for n in (16, 32)]
    j = bench.join(runs)
    assert j.lengths == [16, 32] and j.sizes == {"h": 2, "k": "varies"} and j.baseline == "fft"
    rows = {name: cells for name, _, cells, _ in j.table_rows()}
    assert rows["reference"][1] == "not run" and rows["reference"][0][3] is not None
    assert [cell[3] for cell in rows["fft"]] == [1.0, 1.0]
    assert bench.plot(j, str(tmp_path / "j.png")) and (tmp_path / "j.png").stat().st_size > 0


def test_missing_peers_and_devices_say_so():
    missing = peers.Peer("ghost", "mamba2", "no_such_module_for_mixerc", ("cpu",), None)
    assert missing.available() == "not installed (pip install no-such-module-for-mixerc)"


def test_mambapy_peer_matches_mamba_forward_and_backward():
    pytest.importorskip("mambapy")
    r = bench.run_bench(mx.load_spec("mamba"), dict(d=3, n=4), 1, [24], repeats=1, lowerings=["chunked"],
                        backward=True)
    c = _by_name(r)["mambapy pscan"]
    assert c.why_not is None and c.error < 1e-5 and len(c.times[24]) == 1


def test_cli_table_and_png(tmp_path):
    png = tmp_path / "t.png"
    out = CliRunner().invoke(main, ["bench", "mamba2", "--dims", "h=2,p=4,n=4,g=1", "--shape", "b=1,l=32",
                                    "--lengths", "16,32", "--repeats", "1", "--chunk-size", "16",
                                    "--lowerings", "chunked,recurrent", "--plot", str(png)])
    assert out.exit_code == 0, out.output
    assert "speed vs chunked" in out.output and "l=16" in out.output and "einsum listing" in out.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args,msg", [
    (["--lengths", "1k"], "--lengths '1k': expected comma-separated integers"),
    (["--lengths", "0"], "lengths [0]: give one or more positive integers"),
    (["--lowerings", "fft"], "lowering(s) fft cannot run spec 'mamba2' on cpu; choose among"),
    (["--repeats", "0"], "repeats=0 must be a positive integer"),
    (["--contention", "-1"], "contention=-1: give the number of busy processes, 0 or more"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, msg):
    out = CliRunner().invoke(main, ["bench", "mamba2", "--dims", "h=2,p=4,n=4,g=1", "--shape", "b=1,l=16", *args])
    assert out.exit_code == 2, out.output
    assert msg in out.output and len(out.output.strip().splitlines()) == 1, out.output


def _gone(pid: int) -> bool:
    """No such process, or a zombie waiting for a reaper that does not reap."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_busy_processes_run_inside_and_are_killed_on_exit_and_on_errors():
    with bench.busy_processes(2) as pids:
        assert len(pids) == 2 and not any(_gone(p) for p in pids)
    assert all(_gone(p) for p in pids)
    with pytest.raises(KeyboardInterrupt):
        with bench.busy_processes(1) as pids:
            raise KeyboardInterrupt
    assert _gone(pids[0])


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_a_busy_process_stops_when_its_parent_is_killed():
    parent = ("import os, subprocess, sys\n"
              "q = subprocess.Popen([sys.executable, '-c', sys.argv[1], str(os.getpid())])\n"
              "print(q.pid, flush=True)\nos.kill(os.getpid(), 9)\n")
    out = subprocess.run([sys.executable, "-c", parent, bench.SPIN], capture_output=True, text=True, timeout=60)
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 10
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(pid)


def test_contention_is_run_and_said():
    out = CliRunner().invoke(main, ["bench", "mamba2", "--dims", "h=2,p=4,n=4,g=1", "--shape", "b=1,l=16",
                                    "--repeats", "1", "--chunk-size", "16", "--lowerings", "chunked",
                                    "--contention", "2"])
    assert out.exit_code == 0, out.output
    n = torch.get_num_threads()
    assert f"{n} torch thread{'s' * (n != 1)}, 2 busy processes beside" in re.sub(r"\s+", " ", out.output), out.output


def test_the_loss_weights_are_made_once_inside_a_run_and_freed_after_it():
    """The weights of the backward's loss are kept per output shape only while `loss_weights_kept` runs
    (outside the timing of every call of a run), and nothing is held after it."""
    with bench.loss_weights_kept():
        w = bench._loss_weights((2, 3), torch.float32, torch.device("cpu"))
        assert bench._loss_weights((2, 3), torch.float32, torch.device("cpu")) is w
        assert bench._loss_weights((3, 2), torch.float32, torch.device("cpu")) is not w
        assert torch.equal(w.flatten(), torch.cos(torch.arange(6.0)))
    assert not bench._KEPT
    assert bench._loss_weights((2, 3), torch.float32, torch.device("cpu")) is not w  # made again: none kept
