"""Shared fixtures. Test tiers (pytest markers, see pytest.ini):

* default: unit and small integration tests, `make test` (< 15 min on 2 cores in total);
* `slow`: long end-to-end runs, `make test-slow`.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "spec" / "fixtures"
KEYS = REPO.parent / "shared" / "spec" / "keys"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def spec_fixtures() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"spec fixtures not found at {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="session")
def spec_keys() -> Path:
    if not KEYS.is_dir():
        pytest.skip(f"spec key listings not found at {KEYS}")
    return KEYS


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory) -> Path:
    """16 train + 4 valid synthetic AV clips with 25 Hz `.km` and 100 Hz `.mfcc` labels."""
    from preparation.make_synthetic_data import make_corpus

    return make_corpus(tmp_path_factory.mktemp("corpus"), {"train": 16, "valid": 4}, num_classes=8, seed=0)


def run_cli(args, cwd=None, timeout=600, env=None) -> subprocess.CompletedProcess:
    """Run a command with the venv's Python on PATH; fail the test with its output on error."""
    full_env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.run(args, cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"command failed ({proc.returncode}): {' '.join(map(str, args))}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def bin_dir() -> Path:
    return Path(sys.executable).parent
