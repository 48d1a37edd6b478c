"""`make demo`'s trainer launcher: data-parallel CPU ranks through fairseq's gloo engine."""

from __future__ import annotations

import subprocess
import time

import pytest
import torch

from demo.run import _kill_when_one_fails, hydra_train


def test_a_failing_rank_kills_the_logged_rank_at_once():
    main = subprocess.Popen(["sleep", "60"])
    companion = subprocess.Popen(["sh", "-c", "exit 3"])
    start = time.perf_counter()
    _kill_when_one_fails(main, [companion])
    assert main.wait(timeout=5) != 0
    assert time.perf_counter() - start < 5


@pytest.mark.slow  # two trainer processes importing fairseq: ~40 s
def test_hydra_train_runs_two_data_parallel_ranks(synthetic_corpus, tmp_path):
    ckpt = hydra_train("pretrain", tmp_path, [
        f"task.data={synthetic_corpus}", f"task.label_dir={synthetic_corpus}", "optimization.max_update=4",
        "dataset.max_tokens=150", "optimization.lr=[0.0005]", "lr_scheduler.warmup_updates=1",
        "common.log_interval=1"], procs=2)
    log = (tmp_path / "train.log").read_text()
    assert "distributed init (rank 0)" in log and "done training" in log
    assert "distributed init (rank 1)" in (tmp_path / "train.rank1.log").read_text()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["cfg"]["distributed_training"]["distributed_world_size"] == 2
    assert state["optimizer_history"][-1]["num_updates"] == 4
    assert not list((tmp_path / "rank1").glob("checkpoints*"))  # rank 0 alone writes checkpoints


@pytest.mark.slow  # two trainer processes importing fairseq: ~15 s
def test_hydra_train_with_failing_ranks_raises_without_hanging(tmp_path):
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="failed"):
        hydra_train("pretrain", tmp_path, [f"task.data={tmp_path / 'missing'}", f"task.label_dir={tmp_path}"], procs=2)
    assert time.perf_counter() - start < 120
