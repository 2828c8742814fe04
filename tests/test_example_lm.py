"""examples/train_lm.py --quick: trains both models a few steps, writes the loss PNG (to exactly the path
it prints, never to a tracked file), decodes through ``step`` (checked against the full forward inside
the script) and ends with one PASS/FAIL verdict that agrees with its exit status. The command line
(--help, --dry-run) is checked without training: those answer before torch is imported."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "train_lm.py")
README_FIGURE = os.path.join(ROOT, "examples", "figures", "train_lm_loss.png")


def run(*args, timeout=60):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "160"})


def git(*args):
    """stdout of a git command in the repository, or None where there is no git work tree."""
    try:
        out = subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def run_many(*arglists, timeout=60):
    """Short runs (each answers before importing torch), started together: [(returncode, stdout, stderr)]."""
    procs = [subprocess.Popen([sys.executable, SCRIPT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "COLUMNS": "160"}) for args in arglists]
    outs = [p.communicate(timeout=timeout) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


def settings(result):
    """The settings a ``--dry-run`` result resolved, as a dict of strings."""
    rc, out, err = result
    assert rc == 0, out + err
    (line,) = out.splitlines()
    assert line.startswith("settings: ")
    return dict(item.split(" ", 1) for item in line[len("settings: "):].split(", "))


def test_train_lm_command_line(tmp_path):
    helptext, default, quick, readme, quick_readme, figq, svg, explicit, zero = run_many(
        ["--help"], ["--dry-run"], ["--dry-run", "--quick"], ["--dry-run", "--readme-figure"],
        ["--dry-run", "--quick", "--readme-figure"], ["--dry-run", "--out", str(tmp_path / "figq")],
        ["--dry-run", "--out", str(tmp_path / "f.svg")], ["--dry-run", "--quick", "--steps", "7", "--target", "0.5"],
        ["--dry-run", "--steps", "0"])
    assert helptext[0] == 0, helptext[2]
    text = " ".join(helptext[1].split())
    default, quick = settings(default), settings(quick)
    # --help states the defaults that really run, with and without --quick
    assert f"--steps STEPS optimizer steps per model (default: {default['steps']})" in text
    assert f"steps {quick['steps']}," in text and quick["steps"] != default["steps"]
    assert f"(default: {default['target']})" in text and f"({quick['target']} with --quick)" in text
    assert "--readme-figure" in text
    # neither default writes a tracked file: both go to a directory git ignores
    for s in (default, quick):
        path = s["out"]
        assert os.path.isabs(path) and path.endswith(".png") and path != README_FIGURE
        assert not path.startswith(os.path.join(ROOT, "examples") + os.sep)
        if git("rev-parse", "--is-inside-work-tree") is not None:
            assert git("check-ignore", "-q", path) is not None, f"{path} is not ignored by git"
            assert git("ls-files", "--", path) == ""
    # the README figure is written only on request, and not by a quick run
    assert settings(readme)["out"] == README_FIGURE
    assert quick_readme[0] == 2 and "--readme-figure" in quick_readme[2]
    # --out: .png appended where there is no image suffix, the path made absolute; explicit flags beat --quick
    assert settings(figq)["out"] == str(tmp_path / "figq.png")
    assert settings(svg)["out"] == str(tmp_path / "f.svg")
    assert settings(explicit) == {**quick, "steps": "7", "target": "0.5"}
    assert zero[0] == 2 and "--steps" in zero[2]


@pytest.mark.slow  # trains for a minute on 2 busy cores
def test_train_lm_quick(tmp_path):
    png = tmp_path / "loss.png"
    before = git("status", "--porcelain", "--", "examples/")
    out = run("--quick", "--out", str(tmp_path / "loss"), timeout=120)  # no suffix: .png is appended
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert git("status", "--porcelain", "--", "examples/") == before  # nothing tracked (re)written
    assert png.exists() and png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(tmp_path.iterdir()) == [png]  # the file it prints, and nothing else
    text = out.stdout
    assert f"\nloss curves: {png}\n" in text
    assert "unigram entropy (train split):" in text
    assert "A: causal LM, Mamba2 blocks: train" in text and "B: masked LM, Hydra blocks: train" in text
    assert "x unigram entropy" in text and "step-decoded logits vs full forward" in text
    # one verdict, and it agrees with the exit status: --quick passes when the causal LM beats the unigram entropy
    verdicts = re.findall(r"^(PASS|FAIL|OK):", text, re.M)
    assert verdicts == ["PASS"], text[-2000:]
    m = re.search(r"^PASS: the causal LM's held-out loss is ([0-9.]+)x the unigram entropy "
                  r"\(target: below ([0-9.]+)x\)$", text, re.M)
    assert m, text[-2000:]
    ratio, target = float(m.group(1)), float(m.group(2))
    assert target == 1.0 and ratio < 1.0  # the causal LM beats the unigram entropy
    assert text.rstrip().splitlines()[-1] == m.group(0)
