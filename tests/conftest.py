"""Shared test setup: puts tests/ on sys.path so that ``ref`` (tests/ref: the references written from
the math, and ``ref.assert_close``) imports from any test file.

Three environment variables are set here, at the very top, before anything imports triton (Triton
reads ``TRITON_INTERPRET`` when it is first imported, which happens when a test first compiles a
triton backend or imports triton itself; importing mixerc, which reads the variables through
`mixerc.settings`, imports torch but not triton):

- ``TRITON_INTERPRET=1`` when no CUDA GPU is present, so that the generated Triton kernels run on CPU
  tensors in Triton's interpreter (the interpreter lane, tests/test_triton.py). The GPU check is cheap
  and does not import torch: no ``nvidia-smi`` on the PATH and no ``/dev/nvidia0`` means no GPU.
  ``MIXERC_TEST_INTERPRET=1`` forces the interpreter even with a GPU, ``MIXERC_TEST_INTERPRET=0``
  never sets it. A ``TRITON_INTERPRET`` already in the environment is kept as it is (setdefault).
- ``MIXERC_CACHE_DIR`` to a fresh per-session temporary directory (``tempfile.mkdtemp``), so that tests
  never write generated kernels to ``~/.cache/mixerc`` and never read stale ones from there. An explicit
  ``MIXERC_CACHE_DIR`` in the environment is kept (unless it names the default); the temporary one is
  removed at exit.
- ``MIXERC_CPU_COMPILE=0``, whatever the environment says: ``backend="auto"`` runs the eager lowerings on
  CPU, so that tests do not compile with inductor; tests/test_compiled_cpu.py turns the path on for itself.
"""

import atexit
import os
import shutil
import tempfile

from mixerc.settings import Settings, settings


def _no_cuda_gpu() -> bool:
    return shutil.which("nvidia-smi") is None and not os.path.exists("/dev/nvidia0")


_env = settings()
if _env.test_interpret or (_env.test_interpret is None and _no_cuda_gpu()):
    os.environ.setdefault("TRITON_INTERPRET", "1")
# no inductor compile in every test that runs backend="auto" on CPU (minutes each on 2 cores), even
# for a developer who turned the path on: tests/test_compiled_cpu.py turns it on for its own tests
os.environ["MIXERC_CPU_COMPILE"] = "0"
if _env.cache_dir == Settings().cache_dir:  # unset (or the default): never ~/.cache/mixerc
    _cache = tempfile.mkdtemp(prefix="mixerc-test-cache-")
    os.environ["MIXERC_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

import sys  # noqa: E402

import pytest  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


# The default tier's heaviest parametrized cases, 15-30 s each in the Triton interpreter, run with
# `pytest -m slow` instead (CI runs both tiers), so that the default tier stays under 6 minutes on 2 cores.
# What they cover stays in the default tier through their neighbours: the mamba2 twins of the mamba (diagonal
# kernel) cases, and diag_decay_given / diag_mixed_leaves / decay_given for the two fusion cases.
SLOW_CASES = {
    "tests/test_triton.py::test_seq_idx[mamba-len1-segments]",
    "tests/test_triton.py::test_float32[mamba]",
    "tests/test_triton.py::test_forward_state_and_gradients[mamba-l53]",
    "tests/test_triton.py::test_gradients_of_y_only[mamba]",
    "tests/test_triton.py::test_mixed_extreme_decays[mamba]",
    "tests/test_triton.py::test_seq_idx[mamba-reused-ids]",
    "tests/test_triton.py::test_without_initial_state[mamba]",
    "tests/test_triton.py::test_non_contiguous_inputs[mamba]",
    "tests/test_triton_fusion.py::test_triton_matches_reference[diag_groups]",
    "tests/test_triton_fusion.py::test_triton_matches_reference[two_structures]",
}


@pytest.hookimpl(tryfirst=True)  # before the -m selection reads the marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid in SLOW_CASES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def same_random_numbers():
    """Every test starts from torch's random state seeded with 0, whichever worker runs it after whichever
    tests: a parameter's initial values (drawn from torch's global state) never depend on the order. CI's
    xdist split differs from a local run's, and an fp16 tolerance once failed there only."""
    import torch

    torch.manual_seed(0)
