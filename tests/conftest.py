"""Shared test setup: puts tests/ on sys.path so that ``ref`` (tests/ref: the references written from
the math, and ``ref.assert_close``) imports from any test file."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
