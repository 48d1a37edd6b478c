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
# Checkpoints saved by the original code (55 MB) live beside the checkout, not in it.
FIXTURES = REPO.parent / "shared" / "spec" / "fixtures"
# Small reference data copied into the repository (tests/data/README.md): never skipped.
DATA = REPO / "tests" / "data"
KEYS = DATA / "keys"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def shared_fixture(name: str) -> Path:
    """Path of `../shared/spec/fixtures/<name>`; skips the calling test with an explicit reason when absent.

    pytest's `-ra` (pytest.ini) lists the reason in the summary, so a missing `../shared` is visible.
    """
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"needs ../shared/spec/fixtures/{name} (not present at {path})")
    return path


@pytest.fixture(scope="session")
def spec_fixtures() -> Path:
    """`../shared/spec/fixtures` (original-format checkpoints); explicit skip reason when absent."""
    if not FIXTURES.is_dir():
        pytest.skip(f"needs ../shared/spec/fixtures (not present at {FIXTURES})")
    return FIXTURES


@pytest.fixture(scope="session")
def spec_keys() -> Path:
    """The released checkpoints' key/shape listings, kept in the repository (`tests/data/keys`)."""
    assert KEYS.is_dir(), f"{KEYS} is part of the repository and must exist"
    return KEYS


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory) -> Path:
    """16 train + 4 valid synthetic AV clips with 25 Hz `.km` and 100 Hz `.mfcc` labels."""
    from demo.synthetic_data import make_corpus

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
