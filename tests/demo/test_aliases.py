"""The demo's old `python -m` paths still run (one release), say they are deprecated, and import
nothing of `demo` when merely imported (the layers below `demo` must not depend on it)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("old,new,usage", [
    ("avhubert.demo", "demo.run", "usage: run.py"),
    ("preparation.make_synthetic_data", "demo.synthetic_data", "usage: synthetic_data.py"),
    ("preparation.make_demo_corpus", "demo.make_corpus", "usage: make_corpus.py"),
])
def test_old_module_path_runs_the_new_one(old, new, usage):
    proc = subprocess.run([sys.executable, "-m", old, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"`python -m {old}` is deprecated" in proc.stderr and f"use `python -m {new}`" in proc.stderr
    assert usage in proc.stdout


def test_importing_an_alias_imports_no_demo_module():
    code = ("import sys, preparation.make_synthetic_data, preparation.make_demo_corpus, avhubert.demo; "
            "print(sorted(m for m in sys.modules if m == 'demo' or m.startswith('demo.')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
