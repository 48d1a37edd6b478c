"""`fairseq-hydra-train` with conf/pretrain/tiny.yaml on generated data: learns, checkpoints,
resumes; input and feature masking; 25 Hz and 100 Hz labels; 2-process CPU distributed runs."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import run_cli  # noqa: E402  (shared helper)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(bin_dir: Path, repo: Path, data: Path, exp: Path, *overrides: str) -> str:
    args = [
        str(bin_dir / "fairseq-hydra-train"), "--config-dir", str(repo / "conf/pretrain"), "--config-name", "tiny",
        f"task.data={data}", f"task.label_dir={data}", f"common.user_dir={repo / 'avhubert'}",
        f"hydra.run.dir={exp}", f"checkpoint.save_dir={exp / 'ckpt'}", "common.log_format=json", *overrides,
    ]
    proc = run_cli(args)
    return proc.stdout + proc.stderr


def losses(log: str, tag: str) -> list[dict]:
    out = []
    for line in log.splitlines():
        if f"[{tag}][INFO] - {{" in line:
            out.append(json.loads(line.split(" - ", 1)[1]))
    return out


def test_input_masking_25hz_learns_checkpoints_and_resumes(bin_dir, repo, synthetic_corpus, tmp_path):
    log = train(bin_dir, repo, synthetic_corpus, tmp_path, "optimization.max_update=30")
    inner = losses(log, "train_inner")
    epochs = losses(log, "train")
    assert inner and epochs
    first, last = float(inner[0]["loss"]), float(epochs[-1]["train_loss"])
    assert last < first - 0.3, f"loss did not fall: {first} -> {last}"
    ckpt = tmp_path / "ckpt" / "checkpoint_last.pt"
    assert ckpt.is_file()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["optimizer_history"][-1]["num_updates"] == 30
    log2 = train(bin_dir, repo, synthetic_corpus, tmp_path, "optimization.max_update=36")
    assert "Loaded checkpoint" in log2 and "@ 30 updates)" in log2
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["optimizer_history"][-1]["num_updates"] == 36


def test_feature_masking_with_100hz_mfcc_labels(bin_dir, repo, synthetic_corpus, tmp_path):
    log = train(
        bin_dir, repo, synthetic_corpus, tmp_path, "optimization.max_update=24", "task.labels=[mfcc]",
        "model.label_rate=100", "model.masking_type=feature", "model.mask_prob_image=0.8",
        "model.mask_length_image=10", "model.mask_prob_audio=0.8", "model.mask_length_audio=10",
    )
    inner, epochs = losses(log, "train_inner"), losses(log, "train")
    assert float(epochs[-1]["train_loss"]) < float(inner[0]["loss"])
    assert (tmp_path / "ckpt" / "checkpoint_last.pt").is_file()


def test_two_cpu_processes_share_updates_and_stay_identical(repo, synthetic_corpus, tmp_path):
    port = free_port()
    worker = repo / "tests" / "plugin" / "ddp_worker.py"
    procs = [
        subprocess.Popen([sys.executable, str(worker), str(synthetic_corpus), str(tmp_path), str(r), "2", str(port)],
                         env={"PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert r0["world"] == r1["world"] == 2
    assert r0["records"] and len(r0["records"]) == len(r1["records"])
    for a, b in zip(r0["records"], r1["records"]):
        assert not set(a["ids"]) & set(b["ids"]), "each rank trains on its own shard"
        # the reduced statistics of every update cover both ranks' batches
        assert a["global_frames"] == b["global_frames"] == a["local_frames"] + b["local_frames"]
    diff = [k for k in r0["params"] if not torch.equal(r0["params"][k], r1["params"][k])]
    assert not diff, f"parameters diverged across ranks: {diff[:5]}"


def test_two_process_cli_run(bin_dir, repo, synthetic_corpus, tmp_path):
    port = free_port()
    common = [
        str(bin_dir / "fairseq-hydra-train"), "--config-dir", str(repo / "conf/pretrain"), "--config-name", "tiny",
        f"task.data={synthetic_corpus}", f"task.label_dir={synthetic_corpus}", f"common.user_dir={repo / 'avhubert'}",
        f"checkpoint.save_dir={tmp_path / 'ckpt'}", "optimization.max_update=4",
        "distributed_training.distributed_world_size=2", "distributed_training.distributed_backend=gloo",
        f"distributed_training.distributed_init_method=tcp://127.0.0.1:{port}",
        "distributed_training.distributed_no_spawn=true", "distributed_training.ddp_backend=legacy_ddp",
    ]
    env = {"PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen(common + [f"distributed_training.distributed_rank={r}", f"hydra.run.dir={tmp_path / f'run{r}'}"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    assert "done training" in outs[0]  # non-master ranks log warnings only
    assert "distributed init (rank 1)" in outs[1]
    assert (tmp_path / "ckpt" / "checkpoint_last.pt").is_file()
