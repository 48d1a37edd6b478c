"""`fairseq-hydra-train` with conf/classify/tiny.yaml (tiny pre-training -> classifier), the best
checkpoint by accuracy, the end-of-validation report, `python -m avhubert.classify` on its clips, and
a 2-process CPU run whose validation report covers both ranks' shards."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from avdata.manifest import read_manifest, resolve
from tests.conftest import run_cli
from tests.finetune.test_finetune_decode import hydra_train, log_stats
from tests.plugin.test_train_cli import free_port

pytestmark = pytest.mark.slow


def classify_args(repo: Path, data: Path, pretrained: Path, exp: Path, *extra: str) -> list:
    return ["--config-dir", str(repo / "conf" / "classify"), "--config-name", "tiny", f"task.data={data}",
            f"task.label_dir={data}", f"model.w2v_path={pretrained}", f"common.user_dir={repo / 'avhubert'}",
            f"checkpoint.save_dir={exp / 'ckpt'}", *extra]


@pytest.fixture(scope="module")
def trained(bin_dir, repo, cls_data, pretrained, tmp_path_factory):
    exp = tmp_path_factory.mktemp("cls")
    log = hydra_train(bin_dir, repo, "classify", "tiny", exp, f"task.data={cls_data}", f"task.label_dir={cls_data}",
                      f"model.w2v_path={pretrained}", "optimization.max_update=6", "model.pooling=attention",
                      f"common.tensorboard_logdir={exp / 'tb'}")
    return exp, log


def test_training_keeps_the_best_checkpoint_by_accuracy_and_reports(trained, cls_data):
    exp, log = trained
    valid = log_stats(log, "valid")
    assert all("accuracy" in v and "top5_accuracy" in v for v in valid)
    assert valid[-1]["best_accuracy"] == max(v["accuracy"] for v in valid)
    assert (exp / "ckpt" / "checkpoint_best.pt").is_file()
    report = json.loads((exp / "ckpt" / "classification" / "valid_per_class.json").read_text())
    n_valid = len((cls_data / "valid.lbl").read_text().split())
    assert sum(c["count"] for c in report["per_class"].values()) == n_valid
    assert report["num_updates"] == valid[-1]["num_updates"] and report["accuracy"] == valid[-1]["accuracy"]
    assert (exp / "ckpt" / "classification" / "valid_confusion.png").is_file()
    assert list((exp / "tb" / "valid_classification").glob("events.*"))


def test_classify_cli_prints_and_writes_top_k(trained, repo, cls_data, tmp_path):
    exp, _ = trained
    ckpt = exp / "ckpt" / "checkpoint_best.pt"
    names = [l.split()[0] for l in (cls_data / "dict.lbl.txt").read_text().splitlines()]
    root, rows = read_manifest(cls_data / "valid.tsv")
    video, wav = Path(resolve(root, rows[0].video)), Path(resolve(root, rows[1].audio))
    out = tmp_path / "out.json"
    proc = run_cli([sys.executable, "-m", "avhubert.classify", str(video), str(wav), "--checkpoint", str(ckpt),
                    "--top-k", "3", "--output", str(out)])
    res = json.loads(out.read_text())
    assert [r["path"] for r in res] == [str(video), str(wav)]
    assert [r["modality"] for r in res] == ["audio-visual", "audio"]  # the video's wav is in the parallel audio/ folder
    for r in res:
        probs = [t["prob"] for t in r["top_k"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
        assert all(t["label"] in names for t in r["top_k"])
    assert proc.stdout.count("\n") == 2
    video_only = run_cli([sys.executable, "-m", "avhubert.classify", str(video), "--checkpoint", str(ckpt), "--modality", "video"])
    assert "(video)" in video_only.stdout


def test_classify_cli_errors(trained, pretrained, repo, cls_data):
    exp, _ = trained
    env = {"PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    root, rows = read_manifest(cls_data / "valid.tsv")
    wav = Path(resolve(root, rows[1].audio))
    proc = subprocess.run([sys.executable, "-m", "avhubert.classify", str(wav), "--checkpoint", str(pretrained)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "not an av_hubert_classifier" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "avhubert.classify", str(wav), "/missing.mp4", "--checkpoint",
                           str(exp / "ckpt" / "checkpoint_best.pt")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "error: /missing.mp4: file not found" in proc.stderr and str(wav) in proc.stdout


def test_two_process_cpu_training_gathers_the_validation(bin_dir, repo, cls_data, pretrained, tmp_path):
    port = free_port()
    common = [str(bin_dir / "fairseq-hydra-train"), *classify_args(repo, cls_data, pretrained, tmp_path),
              "optimization.max_update=4", "dataset.max_tokens=300",
              "distributed_training.distributed_world_size=2", "distributed_training.distributed_backend=gloo",
              f"distributed_training.distributed_init_method=tcp://127.0.0.1:{port}",
              "distributed_training.distributed_no_spawn=true", "distributed_training.ddp_backend=legacy_ddp"]
    env = {"PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen(common + [f"distributed_training.distributed_rank={r}", f"hydra.run.dir={tmp_path / f'run{r}'}"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    assert "distributed init (rank 1)" in outs[1]
    assert log_stats(outs[0], "valid")  # rank 0 logs the validation
    n_valid = len((cls_data / "valid.lbl").read_text().split())
    report = json.loads((tmp_path / "ckpt" / "classification" / "valid_per_class.json").read_text())
    assert sum(c["count"] for c in report["per_class"].values()) == n_valid
    assert (tmp_path / "ckpt" / "checkpoint_best.pt").is_file()


def test_lora_classifier_saves_adapters_and_heads_and_classifies(bin_dir, repo, cls_data, pretrained, tmp_path):
    hydra_train(bin_dir, repo, "classify", "tiny", tmp_path, f"task.data={cls_data}", f"task.label_dir={cls_data}",
                f"model.w2v_path={pretrained}", "model.lora_r=2", "optimization.max_update=3", "dataset.disable_validation=true")
    ckpt = tmp_path / "ckpt" / "checkpoint_last.pt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["model"]
    assert "lora_base_sha256" in state and {"classifier.weight", "classifier.bias"} <= set(state)
    assert any(".lora_A." in k for k in state) and not any(k.endswith("q_proj.base_layer.weight") for k in state)
    root, rows = read_manifest(cls_data / "valid.tsv")
    proc = run_cli([sys.executable, "-m", "avhubert.classify", resolve(root, rows[0].audio), "--checkpoint", str(ckpt), "--top-k", "1"])
    assert "(audio): " in proc.stdout
