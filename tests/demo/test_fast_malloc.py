"""Trainer subprocesses start with tcmalloc preloaded (`make setup` installs it when it can)."""

import subprocess
import sys

import pytest

from demo.fast_malloc import find_tcmalloc, with_tcmalloc

needs_tcmalloc = pytest.mark.skipif(find_tcmalloc() is None, reason="libtcmalloc-minimal4 not installed (optional)")


@needs_tcmalloc
def test_subprocess_runs_with_tcmalloc():
    env = with_tcmalloc({"PATH": "/usr/bin:/bin"})
    maps = subprocess.run([sys.executable, "-c", "print(open('/proc/self/maps').read())"], env=env,
                          capture_output=True, text=True, check=True).stdout
    assert "libtcmalloc_minimal" in maps
    plain = subprocess.run([sys.executable, "-c", "print(open('/proc/self/maps').read())"], env={"PATH": "/usr/bin:/bin"},
                           capture_output=True, text=True, check=True).stdout
    assert "libtcmalloc_minimal" not in plain


@needs_tcmalloc
def test_preload_is_prepended_once_and_opt_out_is_kept():
    lib = find_tcmalloc()
    env = with_tcmalloc({"LD_PRELOAD": "/opt/other.so"})
    assert env["LD_PRELOAD"] == f"{lib}:/opt/other.so"
    assert with_tcmalloc(env) == env  # already preloaded: unchanged
    assert "LD_PRELOAD" not in with_tcmalloc({"AVHUBERT_NO_TCMALLOC": "1"})
