"""How many torch threads a mixer call runs with on the CPU (docs/contention.md).

With OpenMP's default wait policy, a parallel region whose worker thread has been descheduled by
another process costs a scheduler time slice (about 20 ms here) instead of its 0.1 ms of work: the
other thread spins at the barrier. A ``chunked`` call runs dozens of such regions. So, when the
processes of other programs already want the CPUs torch's threads would use, a call runs with fewer
threads (``cpus - others``, at least 1), and with torch's own count otherwise.

`MIXERC_CPU_THREADS` (`Settings.cpu_threads`): ``auto`` (this policy, the default), ``keep``
(never change torch's count) or a number (that many threads for every call). The count is set
around the call and restored after it, also when it raises; the backward of the call's output runs
with the same count, from the output's gradient to the end of that backward pass. Under
``torch.compile`` nothing is changed (the compiled code keeps the user's count; no graph break).
"""

from __future__ import annotations

import os
import time

import torch

from .settings import setting

SAMPLE_SECONDS = 0.25  # the machine's load is read at most this often (0.1 to 0.9 ms a read on a loaded VM)
_sample = {"at": -1.0, "others": 0, "seen": 0}  # when it was read, the count kept, the last reading


def decide(want, current: int, cpus: int, others: int) -> int:
    """The thread count of one call. ``want``: the setting (``"auto"``, ``"keep"`` or a number);
    ``current``: torch's count now; ``cpus``: the CPUs this process may run on; ``others``: threads of
    other processes that are runnable now."""
    if want == "keep":
        return current
    if want != "auto":
        return want
    return max(1, min(current, cpus - others))


def runnable_others() -> int:
    """Runnable threads of other processes now: the kernel's count of runnable threads
    (``/proc/loadavg``'s fourth field) less this process's own runnable ones (an OpenMP worker spinning
    after the last parallel region is one). 0 where ``/proc`` cannot tell."""
    try:
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])
        if running <= 1:  # this thread alone
            return 0
        own = 0
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/stat") as f:
                own += f.read().rpartition(")")[2].split()[0] == "R"
    except (OSError, ValueError, IndexError):  # not Linux, or /proc hidden: no evidence of others
        return 0
    return max(0, running - own)


def _others() -> int:
    """Other processes' runnable threads, as `runnable_others` read at most every `SAMPLE_SECONDS`: the smaller
    of the last two readings. One reading counts a thread now and then that is not another process's (a
    thread of this process that stops running between the kernel's count and the reading of its own state,
    the kernel's page daemons): 4 readings in 100 in a quiet `mamba2` training loop here, each of which ran
    the calls of the next `SAMPLE_SECONDS` on half the CPUs. A busy process is still there at the next
    reading, at least `SAMPLE_SECONDS` later (readings happen only at calls), and is noticed then."""
    now = time.monotonic()
    if now - _sample["at"] > SAMPLE_SECONDS:
        seen = runnable_others()
        _sample.update(at=now, others=min(seen, _sample["seen"]), seen=seen)
    return _sample["others"]


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def call(device: torch.device, fn):
    """``fn()`` (a mixer's generated function; returns ``(y, finals)``) with the thread count the
    policy picks, torch's count restored afterwards; ``y``'s backward runs with the same count."""
    if device.type != "cpu" or torch.compiler.is_compiling():
        return fn()
    want, current = setting("cpu_threads"), torch.get_num_threads()
    n = decide(want, current, _cpus(), _others() if want == "auto" else 0)
    if n == current:
        return fn()
    torch.set_num_threads(n)
    try:
        y, finals = fn()
    finally:
        torch.set_num_threads(current)
    if y.requires_grad:
        y.register_hook(lambda grad: _enter_backward(n))
    return y, finals


def _enter_backward(n: int):
    """Runs when the gradient of a call's output is computed: the rest of that backward pass runs with
    ``n`` threads (never more than it has now); the count it had is restored when the pass ends. The
    count only falls during a pass, so the count before the pass is the largest one a callback holds:
    each callback restores at least its own, whatever order they run in."""
    current = torch.get_num_threads()
    if n < current:
        torch.set_num_threads(n)
        torch.autograd.Variable._execution_engine.queue_callback(
            lambda: torch.set_num_threads(max(torch.get_num_threads(), current)))
