"""Run records of `fairseq-hydra-train`: metrics.json + model_card.json, `+run.metrics_csv` rows from
concurrent runs, `+run.dev_run`, and early stopping in the right direction for WER and accuracy."""

import csv
import json
import multiprocessing
from pathlib import Path
from types import SimpleNamespace

import pytest

from avhubert.run_records import CSV_COLUMNS, append_csv_row
from tests.conftest import run_cli


def _dev_run(bin_dir: Path, repo: Path, data: Path, exp: Path, csv_path: Path) -> str:
    proc = run_cli([
        str(bin_dir / "fairseq-hydra-train"), "--config-dir", str(repo / "conf/pretrain"), "--config-name", "tiny",
        f"task.data={data}", f"task.label_dir={data}", f"common.user_dir={repo / 'avhubert'}",
        f"hydra.run.dir={exp}", f"checkpoint.save_dir={exp / 'ckpt'}", "common.log_format=json",
        "optimization.max_update=1000", "+run.dev_run=true", f"+run.metrics_csv={csv_path}",
    ])
    return proc.stdout + proc.stderr


def test_dev_run_writes_records_and_a_csv_row(bin_dir, repo, synthetic_corpus, tmp_path):
    csv_path = tmp_path / "sweep" / "runs.csv"
    log = _dev_run(bin_dir, repo, synthetic_corpus, tmp_path / "a", csv_path)
    ckpt = tmp_path / "a" / "ckpt"
    assert "num_updates: 2 >= max_update: 2" in log
    assert not list(ckpt.glob("*.pt")), "a dev run writes no checkpoint"
    m = json.loads((ckpt / "metrics.json").read_text())
    assert m["status"] == "finished" and m["dev_run"] and m["updates"] == 2
    assert m["valid"]["loss"] > 0 and m["best_valid"]["loss"] == m["valid"]["loss"] and m["train_loss"] > 0
    assert m["params_total"] == m["params_trainable"] > 0 and m["precision"] == "fp32" and m["device"] == "cpu"
    assert m["peak_rss_mb"] > 100 and m["time_per_update_s"] > 0 and m["effective_batch_utts"] > 0
    assert m["config"]["task"]["data"] == str(synthetic_corpus) and m["config"]["run"]["dev_run"] is True
    assert m["git_commit"] is None or len(m["git_commit"].split("-")[0]) == 40
    card = json.loads((ckpt / "model_card.json").read_text())
    assert card["architecture"]["name"] == "av_hubert" and card["architecture"]["encoder_layers"] == 2
    assert card["data"]["train"]["utterances"] == 16 and card["data"]["valid"]["utterances"] == 4
    assert card["modalities"] == ["audio", "video"] and card["dictionaries"]["km"].endswith("dict.km.txt")

    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(CSV_COLUMNS) and len(rows) == 2
    row = dict(zip(rows[0], rows[1]))
    assert row["save_dir"] == str(ckpt) and row["status"] == "finished" and row["updates"] == "2"
    assert row["arch"] == "av_hubert" and float(row["valid_loss"]) == m["valid_loss"]


def _append_many(path: str, worker: int) -> None:
    for i in range(40):
        append_csv_row(path, {"save_dir": f"w{worker}/{i}", "updates": i, "status": "finished"})


def test_concurrent_csv_appends_keep_one_header_and_whole_rows(tmp_path):
    path = tmp_path / "runs.csv"
    ctx = multiprocessing.get_context("fork")  # inherits the imports: the appends start at once
    procs = [ctx.Process(target=_append_many, args=(str(path), w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(CSV_COLUMNS)
    assert len(rows) == 121 and all(len(r) == len(CSV_COLUMNS) for r in rows)
    assert sorted(r[CSV_COLUMNS.index("save_dir")] for r in rows[1:]) == sorted(
        f"w{w}/{i}" for w in range(3) for i in range(40))
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="header is not this project's"):
        append_csv_row(other, {})


@pytest.mark.parametrize("metric,maximize,values,stops_at", [
    ("wer", False, [50.0, 40.0, 45.0, 44.0], 3),  # lower is better: 45 and 44 do not beat 40
    ("accuracy", True, [0.5, 0.6, 0.55, 0.58], 3),  # higher is better
    ("accuracy", True, [0.5, 0.6, 0.7, 0.8], None),
])
def test_patience_follows_the_metric_direction(metric, maximize, values, stops_at):
    """fairseq's `checkpoint.patience` (what the run uses) with WER and accuracy."""
    import fairseq_cli.train as fairseq_train

    cfg = SimpleNamespace(checkpoint=SimpleNamespace(patience=2, maximize_best_checkpoint_metric=maximize,
                                                     best_checkpoint_metric=metric))
    for attr in ("best", "num_runs"):
        if hasattr(fairseq_train.should_stop_early, attr):
            delattr(fairseq_train.should_stop_early, attr)
    stopped = None
    for i, v in enumerate(values):
        if fairseq_train.should_stop_early(cfg, v):
            stopped = i
            break
    assert stopped == stops_at
