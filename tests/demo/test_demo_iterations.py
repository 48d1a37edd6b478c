"""`demo.run --iterations`: later pre-training iterations cluster the previous model's features."""

from __future__ import annotations

from pathlib import Path
from typing import List

import pytest

import demo.corpus
from demo import run


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    """Stages 1-3 with the corpus, the clustering command and the trainer replaced by recorders."""
    calls: List[tuple] = []
    paths = type("Paths", (), {"pretrain_dir": tmp_path / "data"})()
    monkeypatch.setattr(demo.corpus, "generate_corpus", lambda data, cfg, num_workers: paths)

    def cluster(cmd: List[str], log: Path, **kwargs) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)  # as the real command's log does
        calls.append(("cluster", list(cmd)))

    def train(conf: str, exp: Path, overrides: List[str]) -> Path:
        exp.mkdir(parents=True, exist_ok=True)
        calls.append(("pretrain", exp, list(overrides)))
        return exp / "checkpoints" / "checkpoint_last.pt"

    monkeypatch.setattr(run, "run_logged", cluster)
    monkeypatch.setattr(run, "hydra_train", train)
    return calls


def _arg(cmd: List[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_one_iteration_is_mfcc_clusters_then_pretraining(recorded, tmp_path):
    _, _, ckpt = run.prepare_pretrained(tmp_path, 0, 2, 50, 400)
    assert [c[0] for c in recorded] == ["cluster", "pretrain"]
    assert _arg(recorded[0][1], "--feature") == "mfcc"
    assert ckpt == tmp_path / "pretrain" / "checkpoints" / "checkpoint_last.pt"


def test_second_iteration_clusters_the_first_models_features(recorded, tmp_path):
    _, _, ckpt = run.prepare_pretrained(tmp_path, 0, 2, 50, 400, iterations=2)
    assert [c[0] for c in recorded] == ["cluster", "pretrain", "cluster", "pretrain"]
    second = recorded[2][1]
    assert _arg(second, "--feature") == "avhubert"
    assert _arg(second, "--ckpt") == str(tmp_path / "pretrain" / "checkpoints" / "checkpoint_last.pt")
    assert _arg(second, "--layer") == str(run.ITERATION_LAYER)
    assert _arg(second, "--label-ext") == "km"
    _, exp, overrides = recorded[3]
    assert exp == tmp_path / "pretrain_it2"
    assert f"task.label_dir={tmp_path / 'labels_it2'}" in overrides
    assert "task.labels=[km]" in overrides and "model.label_rate=25" in overrides
    assert ckpt == tmp_path / "pretrain_it2" / "checkpoints" / "checkpoint_last.pt"


def test_finished_iterations_are_reused(recorded, tmp_path):
    for stage in ("labels", "pretrain", "labels_it2", "pretrain_it2"):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / ".done").touch()
    run.prepare_pretrained(tmp_path, 0, 2, 50, 400, iterations=3)
    assert [c[0] for c in recorded] == ["cluster", "pretrain"]  # iteration 3 only
    assert _arg(recorded[0][1], "--ckpt") == str(tmp_path / "pretrain_it2" / "checkpoints" / "checkpoint_last.pt")


def test_iterations_below_one_are_refused(capsys, tmp_path):
    out = tmp_path / "demo_out"
    with pytest.raises(SystemExit) as exc:
        run.main(["--iterations", "0", "--out-dir", str(out)])
    assert exc.value.code == 2
    assert "--iterations must be >= 1" in capsys.readouterr().err
    assert not out.exists()  # refused before anything is written
