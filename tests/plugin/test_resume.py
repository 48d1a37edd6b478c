"""Resuming survives a damaged checkpoint_last.pt: the newest readable checkpoint of the run (by
update count) is used, the bad file is named in the log, and with nothing readable the run stops
with one line listing every file and its problem."""

import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from fairseq.dataclass.configs import CheckpointConfig
from omegaconf import OmegaConf

import avhubert  # noqa: F401  (installs the fairseq hooks)
from avhubert import checkpoint_io
from tests.conftest import run_cli


def fake_checkpoint(path: Path, updates, size: int = 2048) -> Path:
    hist = [{"num_updates": updates}] if updates is not None else [{}]
    torch.save({"model": {"w": torch.arange(size, dtype=torch.float32)}, "optimizer_history": hist}, path)
    return path


def flip_tensor_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    i = data.index(torch.arange(2048, dtype=torch.float32).numpy().tobytes()[800:832])
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_newest_readable_checkpoint_by_update_count(tmp_path):
    fake_checkpoint(tmp_path / "checkpoint_1_5.pt", 5)
    fake_checkpoint(tmp_path / "checkpoint_2_10.pt", 10)
    fake_checkpoint(tmp_path / "checkpoint_best.pt", 8)
    fake_checkpoint(tmp_path / "checkpoint3.pt", 12)
    flip_tensor_byte(tmp_path / "checkpoint3.pt")  # opens and unpickles, fails its CRC
    fake_checkpoint(tmp_path / "checkpoint_4_14.pt", 14)
    (tmp_path / "checkpoint_4_14.pt").write_bytes((tmp_path / "checkpoint_4_14.pt").read_bytes()[:3000])
    (tmp_path / "checkpoint_last.pt").write_bytes(b"")
    fake_checkpoint(tmp_path / ".checkpoint_9_99.pt.tmp", 99)  # a temporary file is never a candidate
    fake_checkpoint(tmp_path / "model_averaged.pt", 50)  # nor a foreign name
    path, updates, problems = checkpoint_io.find_resume_checkpoint(str(tmp_path), exclude=(str(tmp_path / "checkpoint_last.pt"),))
    assert (Path(path).name, updates) == ("checkpoint_2_10.pt", 10)
    assert any(p.startswith("checkpoint3.pt (") and "CRC" in p for p in problems), problems
    assert any(p.startswith("checkpoint_4_14.pt (truncated or not a checkpoint") for p in problems), problems


def test_update_count_from_the_name_when_not_recorded(tmp_path):
    fake_checkpoint(tmp_path / "checkpoint_1_7.pt", None)
    fake_checkpoint(tmp_path / "checkpoint_best.pt", 3)
    path, updates, _ = checkpoint_io.find_resume_checkpoint(str(tmp_path))
    assert (Path(path).name, updates) == ("checkpoint_1_7.pt", 7)


def test_legacy_format_and_stale_temporaries(tmp_path):
    path = tmp_path / "checkpoint_last.pt"
    torch.save({"optimizer_history": [{"num_updates": 7}]}, path, _use_new_zipfile_serialization=False)
    assert checkpoint_io.read_num_updates(str(path)) == 7  # not memory-mappable: read normally
    (tmp_path / ".checkpoint_last.pt.tmp").write_bytes(b"half")
    (tmp_path / ".keep.tmp").write_bytes(b"not ours")
    assert checkpoint_io.remove_stale_temporaries(str(tmp_path)) == [".checkpoint_last.pt.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".keep.tmp", "checkpoint_last.pt"]


def test_ties_go_to_the_newest_file_and_suffixes_are_respected(tmp_path):
    fake_checkpoint(tmp_path / "checkpoint_best.pt", 10)
    time.sleep(0.02)
    fake_checkpoint(tmp_path / "checkpoint_2_10.pt", 10)
    os.utime(tmp_path / "checkpoint_best.pt", (1, 1))
    fake_checkpoint(tmp_path / "checkpoint_last-shard0.pt", 30)
    path, _, _ = checkpoint_io.find_resume_checkpoint(str(tmp_path))
    assert Path(path).name == "checkpoint_2_10.pt"
    path, updates, _ = checkpoint_io.find_resume_checkpoint(str(tmp_path), suffix="-shard0")
    assert (Path(path).name, updates) == ("checkpoint_last-shard0.pt", 30)


def _call_resume(save_dir: Path, restore_file: str = "checkpoint_last.pt"):
    """The resume hook around a stand-in for fairseq's load_checkpoint; returns the file it was sent to."""
    seen = {}

    def original(cfg, trainer, **kw):
        seen["restore_file"], seen["finetune"] = cfg.restore_file, cfg.finetune_from_model
        return "state", "itr"

    cfg = OmegaConf.structured(CheckpointConfig(save_dir=str(save_dir), restore_file=restore_file,
                                                finetune_from_model=None))
    out = checkpoint_io._wrap_load_checkpoint(original)(cfg, SimpleNamespace(checkpoint_suffix=""))
    assert out == ("state", "itr") and cfg.restore_file == restore_file, "fairseq's config is left as it was"
    return seen["restore_file"]


def test_resume_hook_leaves_a_good_checkpoint_last_alone(tmp_path):
    fake_checkpoint(tmp_path / "checkpoint_last.pt", 20)
    fake_checkpoint(tmp_path / "checkpoint_1_10.pt", 10)
    assert _call_resume(tmp_path) == "checkpoint_last.pt"
    assert _call_resume(tmp_path / "nothing_yet") == "checkpoint_last.pt", "a first launch is fairseq's business"


def test_resume_hook_falls_back_and_logs_the_bad_file(tmp_path, caplog):
    fake_checkpoint(tmp_path / "checkpoint_1_10.pt", 10)
    fake_checkpoint(tmp_path / "checkpoint_best.pt", 15)
    (tmp_path / "checkpoint_last.pt").write_bytes(b"")
    with caplog.at_level("WARNING", logger="avhubert.checkpoint_io"):
        assert _call_resume(tmp_path) == str(tmp_path / "checkpoint_best.pt")
    msg = caplog.text
    assert f"{tmp_path / 'checkpoint_last.pt'}: truncated or not a checkpoint: empty file, 0 bytes" in msg
    assert "resuming from" in msg and "(15 updates)" in msg
    # an explicit checkpoint.restore_file that is unreadable: same fallback within its directory
    fake_checkpoint(tmp_path / "checkpoint_2_12.pt", 12)
    (tmp_path / "checkpoint_best.pt").write_bytes(b"not a checkpoint")
    assert _call_resume(tmp_path, str(tmp_path / "checkpoint_best.pt")) == str(tmp_path / "checkpoint_2_12.pt")


def test_resume_hook_stops_with_one_line_when_nothing_is_readable(tmp_path):
    (tmp_path / "checkpoint_last.pt").write_bytes(b"")
    fake_checkpoint(tmp_path / "checkpoint_1_10.pt", 10)
    (tmp_path / "checkpoint_1_10.pt").write_bytes((tmp_path / "checkpoint_1_10.pt").read_bytes()[:100])
    with pytest.raises(SystemExit) as e:
        _call_resume(tmp_path)
    line = str(e.value.code)
    assert "\n" not in line and line.startswith("error: cannot resume: no readable checkpoint in")
    assert "checkpoint_last.pt (truncated or not a checkpoint: empty file, 0 bytes)" in line
    assert "checkpoint_1_10.pt (truncated or not a checkpoint" in line


@pytest.mark.slow
def test_training_resumes_from_newest_intact_checkpoint(bin_dir, repo, synthetic_corpus, tmp_path):
    """tiny pre-training saving every 2 updates; checkpoint_last.pt and checkpoint_best.pt are then
    damaged (zeroed / cut in half, as a kill in fairseq's copy step left them); the rerun names the
    bad files, resumes from the newest intact checkpoint_N_M.pt and finishes with exit 0."""
    ckpt = tmp_path / "ckpt"

    def train(max_update: int) -> str:
        proc = run_cli([
            str(bin_dir / "fairseq-hydra-train"), "--config-dir", str(repo / "conf/pretrain"), "--config-name", "tiny",
            f"task.data={synthetic_corpus}", f"task.label_dir={synthetic_corpus}", f"common.user_dir={repo / 'avhubert'}",
            f"hydra.run.dir={tmp_path}", f"checkpoint.save_dir={ckpt}", f"optimization.max_update={max_update}",
            "checkpoint.save_interval_updates=2", "checkpoint.keep_interval_updates=-1",
        ])
        return proc.stdout + proc.stderr

    train(6)
    interval = {int(p.stem.split("_")[2]): p for p in ckpt.glob("checkpoint_*_*.pt")}
    newest = max(interval)
    assert newest >= 4 and checkpoint_io.read_num_updates(str(ckpt / "checkpoint_last.pt")) == 6
    for name, keep in [("checkpoint_last.pt", 0), ("checkpoint_best.pt", 0.5)]:
        data = (ckpt / name).read_bytes()
        (ckpt / name).unlink()  # (the files of one save share an inode: replace, do not write in place)
        (ckpt / name).write_bytes(data[: int(len(data) * keep)])
    log = train(9)
    assert f"{ckpt / 'checkpoint_last.pt'}: truncated or not a checkpoint: empty file, 0 bytes" in log
    assert "skipped unreadable checkpoint checkpoint_best.pt (truncated or not a checkpoint" in log
    assert f"resuming from {interval[newest]} ({newest} updates)" in log
    assert f"Loaded checkpoint {interval[newest]} (epoch" in log and f"@ {newest} updates)" in log
    assert checkpoint_io.read_num_updates(str(ckpt / "checkpoint_last.pt")) == 9
