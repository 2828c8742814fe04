"""Shared test setup: puts tests/ on sys.path so that ``ref`` (tests/ref: the references written from
the math, and ``ref.assert_close``) imports from any test file.

Two environment variables are set here, at the very top, before anything imports torch, triton or
mixerc (Triton reads ``TRITON_INTERPRET`` when it is first imported, which happens when a test first
compiles a triton backend or imports triton itself):

- ``TRITON_INTERPRET=1`` when no CUDA GPU is present, so that the generated Triton kernels run on CPU
  tensors in Triton's interpreter (the interpreter lane, tests/test_triton.py). The GPU check is cheap
  and does not import torch: no ``nvidia-smi`` on the PATH and no ``/dev/nvidia0`` means no GPU.
  ``MIXERC_TEST_INTERPRET=1`` forces the interpreter even with a GPU, ``MIXERC_TEST_INTERPRET=0``
  never sets it. A ``TRITON_INTERPRET`` already in the environment is kept as it is (setdefault).
- ``MIXERC_CACHE_DIR`` to a fresh per-session temporary directory (``tempfile.mkdtemp``), so that tests
  never write generated kernels to ``~/.cache/mixerc`` and never read stale ones from there. An explicit
  ``MIXERC_CACHE_DIR`` in the environment is kept; the temporary one is removed at exit.
"""

import atexit
import os
import shutil
import tempfile


def _no_cuda_gpu() -> bool:
    return shutil.which("nvidia-smi") is None and not os.path.exists("/dev/nvidia0")


_force = os.environ.get("MIXERC_TEST_INTERPRET")
if _force == "1" or (_force != "0" and _no_cuda_gpu()):
    os.environ.setdefault("TRITON_INTERPRET", "1")
if not os.environ.get("MIXERC_CACHE_DIR"):
    os.environ["MIXERC_CACHE_DIR"] = tempfile.mkdtemp(prefix="mixerc-test-cache-")
    atexit.register(shutil.rmtree, os.environ["MIXERC_CACHE_DIR"], ignore_errors=True)

import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
