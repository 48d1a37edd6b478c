"""Checkpoint files appear atomically, and an unusable checkpoint is one clear line at every entry point.

- fairseq's copy step (`checkpoint_utils.PathManager.copy`) and first-file write
  (`torch_persistent_save`), killed mid-write (SIGXFSZ from a file-size limit: deterministic),
  leave the destination as it was, never partial;
- a checkpoint whose pickle calls `os.system` is refused before anything runs, and a truncated
  file is "truncated or not a checkpoint": decoding (infer_s2s.py), the clustering feature dump,
  fine-tuning's `model.w2v_path`, training's resume and fairseq's `load_model_ensemble_and_task`
  each end with one line naming the file (and the class wanted), never with torch's traceback
  suggesting `weights_only=False`.
"""

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fairseq import checkpoint_utils

import avhubert  # noqa: F401  (installs the fairseq hooks)
from avhubert import checkpoint_io
from avhubert.checkpoint import (CorruptCheckpointError, UnsafeCheckpointError, checkpoint_damage,
                                 explain_load_error, load_checkpoint)

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


class _RunsShell:
    """Pickles as a call of `os.system(cmd)`: what a malicious checkpoint does."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def malicious_checkpoint(path: Path, sentinel: Path) -> Path:
    """A fairseq-looking checkpoint whose unpickling would create `sentinel`."""
    torch.save({"cfg": {"model": {"_name": "av_hubert"}}, "model": {"w": torch.zeros(2)},
                "payload": _RunsShell(f"touch {sentinel}")}, path)
    return path


def truncated_checkpoint(path: Path) -> Path:
    torch.save({"model": {"w": torch.randn(1000)}, "optimizer_history": [{"num_updates": 3}]}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def child_env(**extra: str) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# ------------------------------------------------------------------------------ atomic writes


def _run_with_file_size_limit(code: str, limit: int) -> subprocess.CompletedProcess:
    """Run `code` in a child that is killed by SIGXFSZ when it writes past `limit` bytes: a kill
    in the middle of a write, at a deterministic point (Python ignores SIGXFSZ; the child restores it)."""
    def limit_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    code = "import signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_DFL)\n" + code
    return subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True,
                          preexec_fn=limit_size, timeout=120)


def test_fairseq_copy_step_killed_mid_copy_leaves_no_partial_file(tmp_path):
    src, dst = tmp_path / "checkpoint_best.pt", tmp_path / "checkpoint_last.pt"
    src.write_bytes(os.urandom(3 << 20))
    old = os.urandom(3 << 20)
    for method in ("fairseq", "copy"):  # fairseq's copy step as patched; the plain-copy fallback
        dst.unlink(missing_ok=True)
        dst.write_bytes(old)
        call = (f"checkpoint_utils.PathManager.copy({str(src)!r}, {str(dst)!r}, overwrite=True)" if method == "fairseq"
                else f"checkpoint_io.atomic_copy({str(src)!r}, {str(dst)!r}, hard_link=False)")
        code = f"import avhubert\nfrom avhubert import checkpoint_io\nfrom fairseq import checkpoint_utils\n{call}\n"
        proc = _run_with_file_size_limit(code, 1 << 20)
        after = dst.read_bytes()
        assert after in (old, src.read_bytes()), f"{method}: partial checkpoint_last.pt ({len(after)} bytes)"
        if method == "copy":
            assert proc.returncode == -signal.SIGXFSZ and after == old, "the copy was killed: the old file must remain"
        visible = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
        assert visible == ["checkpoint_best.pt", "checkpoint_last.pt"]


def test_first_file_write_killed_mid_write_keeps_old_file(tmp_path):
    dst = tmp_path / "checkpoint_3_30.pt"
    torch.save({"model": {"w": torch.ones(4)}}, dst)
    old = dst.read_bytes()
    code = ("import torch, avhubert\nfrom fairseq import checkpoint_utils\n"
            f"checkpoint_utils.torch_persistent_save({{'model': {{'w': torch.randn(1 << 20)}}}}, {str(dst)!r})\n")
    proc = _run_with_file_size_limit(code, 1 << 20)
    assert proc.returncode == -signal.SIGXFSZ, proc.stderr[-2000:]
    assert dst.read_bytes() == old


def test_atomic_copy_hard_links_and_falls_back_to_copy(tmp_path, monkeypatch):
    src = tmp_path / "a.pt"
    src.write_bytes(b"new" * 1000)
    dst = tmp_path / "b.pt"
    dst.write_bytes(b"old")
    assert checkpoint_io.atomic_copy(str(src), str(dst)) == "link"
    assert dst.read_bytes() == src.read_bytes() and os.path.samefile(src, dst)

    def no_links(*a, **k):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    dst2 = tmp_path / "c.pt"
    assert checkpoint_io.atomic_copy(str(src), str(dst2)) == "copy"
    assert dst2.read_bytes() == src.read_bytes() and not os.path.samefile(src, dst2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt", "c.pt"], "no temporary file is left"


def test_writes_are_fsynced_before_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.path.isdir(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", os.path.basename(b))), real_replace(a, b))[1])
    checkpoint_utils.torch_persistent_save({"x": torch.zeros(3)}, str(tmp_path / "checkpoint_best.pt"))
    assert events == [("fsync", False), ("replace", "checkpoint_best.pt"), ("fsync", True)]
    events.clear()
    checkpoint_io.atomic_copy(str(tmp_path / "checkpoint_best.pt"), str(tmp_path / "checkpoint_last.pt"), hard_link=False)
    assert events == [("fsync", False), ("replace", "checkpoint_last.pt"), ("fsync", True)]


def test_hooks_are_installed_once():
    assert checkpoint_utils.PathManager.__name__ == "AtomicCopyPathManager"
    before = checkpoint_utils.load_checkpoint
    checkpoint_io.install_fairseq_hooks()
    assert checkpoint_utils.load_checkpoint is before


# ------------------------------------------------------------------------------ error translation


def test_refused_and_truncated_files_are_named(tmp_path):
    sentinel = tmp_path / "PWNED"
    evil = malicious_checkpoint(tmp_path / "evil.pt", sentinel)
    with pytest.raises(UnsafeCheckpointError) as e:
        load_checkpoint(str(evil))
    assert e.value.wanted == "posix.system" and str(evil) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UnsafeCheckpointError):
        checkpoint_utils.load_checkpoint_to_cpu(str(evil))
    assert not sentinel.exists()
    for path, reason in [(truncated_checkpoint(tmp_path / "cut.pt"), "cut short"),
                         (tmp_path / "empty.pt", "0 bytes"), (tmp_path / "text.pt", "not a zip archive")]:
        if not path.exists():
            path.write_text("" if "empty" in path.name else "hello, I am text\n")
        with pytest.raises(CorruptCheckpointError, match="truncated or not a checkpoint") as e:
            checkpoint_utils.load_checkpoint_to_cpu(str(path))
        assert str(path) in str(e.value) and reason in str(e.value) and "\n" not in str(e.value)


def test_crc_damage_is_found(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"w": torch.arange(4096, dtype=torch.float32)}, path)
    data = bytearray(path.read_bytes())
    i = data.index(torch.arange(4096, dtype=torch.float32).numpy().tobytes()[400:432])
    data[i] ^= 0xFF  # flip one byte of the tensor data: the file still opens and unpickles
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=True)["w"].shape == (4096,)
    assert "CRC" in checkpoint_damage(str(path))
    assert checkpoint_damage(str(path), check_crc=False) is None


def test_other_errors_are_not_relabelled(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"a": 1}, good)
    assert explain_load_error(str(good), ValueError("something else")) is None
    assert explain_load_error(str(tmp_path / "missing.pt"), EOFError()) is None


# ------------------------------------------------------------------------------ entry points


def _assert_one_clear_line(proc: subprocess.CompletedProcess, path: Path, *needles: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    line = last_line(proc.stderr)
    assert str(path) in line and all(n in line for n in needles), out[-3000:]
    assert "weights_only" not in out and "Traceback" not in out, out[-3000:]
    return line


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    return {"sentinel": d / "PWNED", "evil": malicious_checkpoint(d / "evil.pt", d / "PWNED"),
            "cut": truncated_checkpoint(d / "cut.pt")}


@pytest.mark.parametrize("kind", ["evil", "cut"])
def test_decoding_entry_point(bad_files, kind, tmp_path):
    path = bad_files[kind]
    proc = subprocess.run(
        [sys.executable, str(REPO / "avhubert" / "infer_s2s.py"), "--config-dir", str(REPO / "conf"),
         "--config-name", "s2s_decode", f"common_eval.path={path}", f"common_eval.results_path={tmp_path / 'out'}",
         "override.modalities=[video]", f"+override.data={tmp_path}", f"hydra.run.dir={tmp_path / 'hydra'}"],
        env=child_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    _assert_one_clear_line(proc, path, *(["refused", "posix.system"] if kind == "evil" else ["truncated or not a checkpoint"]))
    assert not bad_files["sentinel"].exists()


@pytest.mark.parametrize("kind", ["evil", "cut"])
def test_clustering_feature_dump_entry_point(bad_files, kind, synthetic_corpus, tmp_path):
    path = bad_files[kind]
    proc = subprocess.run(
        [sys.executable, "-m", "clustering.dump_hubert_feature", str(synthetic_corpus), "valid", str(path), "1", "1", "0",
         str(tmp_path / "feat"), "--device", "cpu", "--no-progress"],
        env=child_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    _assert_one_clear_line(proc, path, *(["refused", "posix.system"] if kind == "evil" else ["truncated or not a checkpoint"]))
    assert not bad_files["sentinel"].exists()
    assert not list((tmp_path / "feat").glob("*.npy")) if (tmp_path / "feat").exists() else True


@pytest.mark.parametrize("kind", ["evil", "cut"])
def test_loading_api_raises_one_line_error(bad_files, kind):
    """fairseq's `load_model_ensemble_and_task` (plugin imported): a one-line exception, torch's advice dropped."""
    path = bad_files[kind]
    code = f"import avhubert\nfrom fairseq import checkpoint_utils\ncheckpoint_utils.load_model_ensemble_and_task([{str(path)!r}])\n"
    proc = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    line = last_line(proc.stderr)
    if kind == "evil":
        assert line.startswith("avhubert.checkpoint.UnsafeCheckpointError: ") and "posix.system" in line
    else:
        assert line.startswith("avhubert.checkpoint.CorruptCheckpointError: ") and "truncated or not a checkpoint" in line
    assert str(path) in line and "weights_only" not in proc.stderr
    assert "During handling of the above exception" not in proc.stderr, "torch's own error is not chained in"
    assert not bad_files["sentinel"].exists()


@pytest.mark.parametrize("kind", ["evil", "cut"])
def test_finetuning_w2v_path_entry_point(bad_files, kind, synthetic_corpus, tmp_path):
    """`model.w2v_path` is loaded while the model is built: the run stops there with one line."""
    from preparation.tokenizer import train_sentencepiece

    data = tmp_path / "data"
    shutil.copytree(synthetic_corpus, data)
    _, dct = train_sentencepiece((data / "train.wrd").read_text().splitlines(), data / "spm" / "spm", vocab_size=30)
    shutil.copy(dct, data / "dict.wrd.txt")
    path = bad_files[kind]
    proc = subprocess.run(
        [str(BIN / "fairseq-hydra-train"), "--config-dir", str(REPO / "conf" / "finetune"), "--config-name", "tiny_s2s",
         f"task.data={data}", f"task.label_dir={data}", f"task.tokenizer_bpe_model={data / 'spm' / 'spm.model'}",
         f"model.w2v_path={path}", f"common.user_dir={REPO / 'avhubert'}", f"hydra.run.dir={tmp_path / 'exp'}",
         f"checkpoint.save_dir={tmp_path / 'exp' / 'ckpt'}"],
        env=child_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    _assert_one_clear_line(proc, path, *(["refused", "posix.system"] if kind == "evil" else ["truncated or not a checkpoint"]))
    assert not bad_files["sentinel"].exists()
    assert not (tmp_path / "exp" / "ckpt" / "checkpoint_last.pt").exists()


def test_training_resume_refuses_a_malicious_checkpoint_last(bad_files, synthetic_corpus, tmp_path):
    ckpt = tmp_path / "exp" / "ckpt"
    ckpt.mkdir(parents=True)
    shutil.copy(bad_files["evil"], ckpt / "checkpoint_last.pt")
    proc = subprocess.run(
        [str(BIN / "fairseq-hydra-train"), "--config-dir", str(REPO / "conf" / "pretrain"), "--config-name", "tiny",
         f"task.data={synthetic_corpus}", f"task.label_dir={synthetic_corpus}", f"common.user_dir={REPO / 'avhubert'}",
         f"hydra.run.dir={tmp_path / 'exp'}", f"checkpoint.save_dir={ckpt}", "optimization.max_update=2"],
        env=child_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    line = _assert_one_clear_line(proc, ckpt / "checkpoint_last.pt", "cannot resume", "refused", "posix.system")
    assert line.startswith("error: ")
    assert not bad_files["sentinel"].exists()
    assert sorted(p.name for p in ckpt.iterdir()) == ["checkpoint_last.pt"], "nothing trained, nothing written"
