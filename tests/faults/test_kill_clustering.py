"""SIGKILL during a clustering iteration (features -> k-means -> labels -> merge), then rerun.

Targeted kills land between the writes of a multi-file output (a feature shard's `.npy` and `.len`,
an output and its `.done` marker, the k-means model, the merged label files); random kills hit
wherever the run is, with two pool workers. After every kill each visible file (and marker) must
be byte-identical to the uninterrupted run's (nothing partial is visible), and the rerun must
reproduce the uninterrupted run byte for byte.
"""

import random
import time
from pathlib import Path
from typing import Dict, List

import pytest

from tests.clustering.synth import make_corpus
from tests.faults.helpers import REPO, python, run_killed_when, run_ok, tree_digest

pytestmark = pytest.mark.faults

INJECT = str(REPO / "tests" / "faults" / "inject.py")


def visible_digest(out: Path) -> Dict[str, str]:
    """Every file except temporaries (`x.tmp`, `x.tmp.npy`: `avdata.atomic.temp_name`)."""
    return tree_digest(out, ignore=lambda p: p.name.endswith(".tmp") or ".tmp." in p.name)


def iteration_args(corpus: Path, out: Path, workers: int = 1) -> List[str]:
    return [
        "-m", "clustering.run_iteration", "--tsv-dir", str(corpus), "--out-dir", str(out), "--feature", "mfcc",
        "--n-clusters", "8", "--nshard", "3", "--percent", "-1", "--device", "cpu", "--n-init", "4",
        "--label-ext", "mfcc", "--num-workers", str(workers),
    ]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("kc"), num_utts=(12, 3), frames=(40, 120), seed=3)


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "it"
    start = time.monotonic()
    run_ok([python(), *iteration_args(corpus, out)], out.parent / "log")
    return visible_digest(out), time.monotonic() - start


def check_not_partial(out: Path, ref: Dict[str, str]) -> None:
    for name, digest in visible_digest(out).items():
        assert name in ref, f"unexpected file after a kill: {name}"
        assert digest == ref[name], f"{name} is visible but differs from the uninterrupted run (partial?)"


# (event, destination glob, n-th match): between the writes of each multi-file output
TARGETS = [
    ("after-replace", "train_0_3.npy", 1),  # feature .npy renamed, its .len not yet written
    ("after-replace", "train_1_3.len", 1),  # .npy + .len, no .done marker
    ("before-replace", ".feat.train_2_3.done", 1),
    ("before-replace", "kmeans.bin", 1),  # model in its temp file
    ("after-replace", "kmeans.bin", 1),  # model written, marker not
    ("after-replace", "train_1_3.km", 1),  # label shard written, marker not
    ("after-replace", "train.mfcc", 1),  # train labels merged, valid not
    ("after-replace", "valid.mfcc", 1),  # before the dictionary
]


@pytest.mark.parametrize("event,glob,nth", TARGETS, ids=[f"{e}:{g}" for e, g, _ in TARGETS])
def test_targeted_kill_then_rerun(corpus, reference, tmp_path, event, glob, nth):
    ref, _ = reference
    out = tmp_path / "it"
    killed = run_killed_when([python(), INJECT, event, glob, str(nth), *iteration_args(corpus, out)], lambda: False, tmp_path / "log")
    assert not killed  # it killed itself: the process ended (by SIGKILL) ...
    assert not (out / "dict.mfcc.txt").exists(), "the injected kill did not happen"  # ... before the end
    check_not_partial(out, ref)
    run_ok([python(), *iteration_args(corpus, out)], tmp_path / "log")
    assert visible_digest(out) == ref


@pytest.mark.parametrize("seed,workers", [(0, 1), (1, 1), (2, 2)])
def test_random_kill_then_rerun(corpus, reference, tmp_path, seed, workers):
    ref, ref_seconds = reference
    out = tmp_path / "it"
    delay = random.Random(seed).uniform(0.3, 1.0) * ref_seconds
    start = time.monotonic()
    killed = run_killed_when(
        [python(), *iteration_args(corpus, out, workers)], lambda: time.monotonic() - start > delay, tmp_path / "log"
    )
    check_not_partial(out, ref)
    run_ok([python(), *iteration_args(corpus, out, workers)], tmp_path / "log")
    assert visible_digest(out) == ref, f"rerun after a kill at {delay:.1f} s (killed={killed}) differs"
