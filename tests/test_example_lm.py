"""examples/train_lm.py --quick: trains both models a few steps, writes the loss PNG, decodes through
``step`` (checked against the full forward inside the script) and prints its summary."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_lm_quick(tmp_path):
    png = tmp_path / "loss.png"
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "train_lm.py"), "--quick",
                          "--out", str(png)],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "160"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert png.exists() and png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = out.stdout
    assert "unigram entropy (train split):" in text
    assert "A: causal LM, Mamba2 blocks: train" in text and "B: masked LM, Hydra blocks: train" in text
    assert "x unigram entropy" in text and "step-decoded logits vs full forward" in text
    assert "OK: the causal LM beats the unigram entropy" in text
