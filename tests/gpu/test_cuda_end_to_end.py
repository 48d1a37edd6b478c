"""GPU tier (`make test-gpu`, marker `gpu`; skipped without CUDA): issue 10 end to end on CUDA.

Tiny pre-training in fp16 and bf16 (+ resume), the Base config for a few fp16/bf16 updates, tiny
seq2seq and CTC fine-tuning in fp16, `infer_s2s.py` decoding on CUDA in fp16, the clustering
feature dump + k-means on CUDA, and the device-guard models on CUDA with exact-device assertions.
Every subprocess must exit 0 (the prefetch-thread abort at exit is checked too).
Run on the GPU machine with `bash bench/gpu_check.sh` (see that script).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda", 0)


def run(args: list, timeout: int = 600) -> str:
    """Run with this interpreter's import path (the GPU kit installs into PYTHONPATH); exit 0 required."""
    path = os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    env = dict(os.environ, PYTHONPATH=path)
    proc = subprocess.run([str(a) for a in args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exit {proc.returncode}: {' '.join(map(str, args))}\n{out[-6000:]}"
    assert "terminate called" not in out and "exception not rethrown" not in out, out[-3000:]
    return out


def hydra_train(conf: str, name: str, exp: Path, *overrides: str) -> str:
    exe = shutil.which("fairseq-hydra-train") or str(Path(sys.executable).parent / "fairseq-hydra-train")
    return run([exe, "--config-dir", REPO / "conf" / conf, "--config-name", name, f"common.user_dir={REPO / 'avhubert'}",
                f"hydra.run.dir={exp}", f"checkpoint.save_dir={exp / 'ckpt'}", "common.cpu=false",
                "common.log_format=json", "common.log_interval=1", *overrides])


def train_records(log: str) -> list:
    return [json.loads(line.split(" - ", 1)[1]) for line in log.splitlines() if "[train_inner][INFO] - {" in line]


def assert_finite_losses(log: str, n: int) -> None:
    recs = train_records(log)
    assert len(recs) >= n, log[-3000:]
    for r in recs:
        assert float(r["loss"]) == float(r["loss"]) and abs(float(r["loss"])) < 1e4, r  # finite


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Synthetic corpus + sentencepiece vocabulary (as tests/finetune)."""
    from demo.synthetic_data import make_corpus
    from preparation.tokenizer import train_sentencepiece

    data = make_corpus(tmp_path_factory.mktemp("gpu_corpus"), {"train": 32, "valid": 4}, num_classes=8, seed=0)
    texts = (data / "train.wrd").read_text().splitlines()
    _, dct = train_sentencepiece(texts, data / "spm" / "spm", vocab_size=30)
    shutil.copy(dct, data / "dict.wrd.txt")
    return data


def pretrain_args(data: Path) -> list:
    return [f"task.data={data}", f"task.label_dir={data}", "dataset.disable_validation=true"]


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory) -> Path:
    exp = tmp_path_factory.mktemp("pt_fp16")
    log = hydra_train("pretrain", "tiny", exp, *pretrain_args(data), "common.fp16=true", "optimization.max_update=8")
    assert_finite_losses(log, 8)
    return exp / "ckpt" / "checkpoint_last.pt"


def test_tiny_pretraining_fp16_trains_and_resumes(pretrained, data):
    state = torch.load(pretrained, map_location="cpu", weights_only=False)
    assert state["optimizer_history"][-1]["num_updates"] == 8
    assert state["cfg"]["common"]["fp16"] is True
    log = hydra_train("pretrain", "tiny", pretrained.parent.parent, *pretrain_args(data), "common.fp16=true",
                      "optimization.max_update=12")
    assert "Loaded checkpoint" in log and "@ 8 updates)" in log
    assert torch.load(pretrained, map_location="cpu", weights_only=False)["optimizer_history"][-1]["num_updates"] == 12


def test_tiny_pretraining_bf16(data, tmp_path):
    log = hydra_train("pretrain", "tiny", tmp_path, *pretrain_args(data), "common.bf16=true", "optimization.max_update=6")
    assert_finite_losses(log, 6)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_base_config_a_few_updates(data, tmp_path, precision):
    """The shipped Base config (same_seq masking, the original crash) on one GPU."""
    precision_args = ["common.fp16=true"] if precision == "fp16" else ["common.fp16=false", "common.bf16=true"]
    log = hydra_train("pretrain", "base_lrs3_iter5", tmp_path, *pretrain_args(data), *precision_args, "model.label_rate=25",
                      "distributed_training.distributed_world_size=1", "distributed_training.nprocs_per_node=1",
                      "optimization.max_update=3", "lr_scheduler.warmup_updates=1", "dataset.max_tokens=1000")
    assert_finite_losses(log, 3)


def finetune_args(data: Path, pretrained: Path) -> list:
    return [f"task.data={data}", f"task.label_dir={data}", f"task.tokenizer_bpe_model={data / 'spm' / 'spm.model'}",
            f"model.w2v_path={pretrained}", "common.fp16=true", "optimization.max_update=6",
            "dataset.validate_interval=1"]


@pytest.fixture(scope="module")
def s2s(data, pretrained, tmp_path_factory) -> Path:
    exp = tmp_path_factory.mktemp("s2s_fp16")
    log = hydra_train("finetune", "tiny_s2s", exp, *finetune_args(data, pretrained))
    assert_finite_losses(log, 6)
    return exp / "ckpt" / "checkpoint_last.pt"


def test_seq2seq_fine_tuning_fp16_saves(s2s):
    assert s2s.is_file()


def test_ctc_and_joint_fine_tuning_fp16(data, pretrained, tmp_path):
    assert_finite_losses(hydra_train("finetune", "tiny_ctc", tmp_path / "ctc", *finetune_args(data, pretrained)), 6)
    log = hydra_train("finetune", "tiny_s2s", tmp_path / "joint", *finetune_args(data, pretrained), "model.ctc_weight=0.3",
                      "criterion._name=av_hubert_seq2seq_ctc", "task.eval_wer=false", "checkpoint.best_checkpoint_metric=loss")
    assert_finite_losses(log, 6)


def test_infer_s2s_decodes_on_cuda_in_fp16(s2s, data, tmp_path):
    out = tmp_path / "dec"
    run([sys.executable, REPO / "avhubert" / "infer_s2s.py", "--config-dir", REPO / "conf", "--config-name", "s2s_decode",
         f"common_eval.path={s2s}", f"common_eval.results_path={out}", "dataset.gen_subset=valid", "+common.fp16=true",
         "override.modalities=[audio,video]", f"+override.data={data}", f"+override.label_dir={data}", "generation.beam=3"])
    assert list(out.glob("wer.*")) and (out / "decode.jsonl").is_file()


def test_clustering_feature_dump_and_kmeans_on_cuda(data, pretrained, tmp_path):
    from clustering.run_iteration import IterationConfig, run_iteration

    out = tmp_path / "iter2"
    run_iteration(IterationConfig(str(data), str(out), feature="avhubert", ckpt=str(pretrained), layer=1, n_clusters=6,
                                  nshard=1, percent=-1, n_init=2, device="cuda"))
    lines = (out / "train.km").read_text().splitlines()
    assert len(lines) == len((data / "train.tsv").read_text().splitlines()) - 1
    assert {int(t) for line in lines for t in line.split()} <= set(range(6))


# ----------------------------------------------------------------------------- guard models on CUDA
def _to(obj, device, dtype=None):
    if isinstance(obj, torch.Tensor):
        return obj.to(device, dtype) if dtype is not None and obj.is_floating_point() else obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device, dtype) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to(v, device, dtype) for v in obj]
    return obj


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_pretraining_model_and_criterion_on_cuda(dtype):
    from avhubert.criterion import AVHubertCriterion
    from tests.plugin.test_device_guard import pretrain_sample, tiny_model
    from types import SimpleNamespace

    for overrides in (dict(selection_type="same_seq"), dict(selection_type="same_other_seq"), dict(masking_type="feature")):
        model = tiny_model(**overrides).to(CUDA, dtype).train()
        sample = _to(pretrain_sample(), CUDA, dtype)
        loss, _, log = AVHubertCriterion(SimpleNamespace(), 1.0, 1.0, loss_weights=[10.0])(model, sample)
        loss.backward()
        assert loss.device == CUDA and torch.isfinite(loss)
        assert all(p.grad is None or p.grad.device == CUDA for p in model.parameters())
        assert all(v.device == CUDA for v in log.values() if isinstance(v, torch.Tensor))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fine_tuning_and_decoding_models_on_cuda(dtype):
    from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
    from types import SimpleNamespace

    from avhubert.beam_search import BeamSearchConfig
    from avhubert.criterion_ctc_attention import Seq2SeqCtcCriterion
    from avhubert.sequence_generator import CTCGenerator, Seq2SeqGenerator
    from tests.plugin.test_device_guard import ctc_model, finetune_sample, seq2seq_model, target_dictionary

    task = SimpleNamespace(target_dictionary=target_dictionary())
    for ctc_weight, crit in ((0.0, LabelSmoothedCrossEntropyCriterion(task, sentence_avg=True, label_smoothing=0.1)),
                             (0.3, Seq2SeqCtcCriterion(task, sentence_avg=True, label_smoothing=0.1))):
        model = seq2seq_model(ctc_weight).to(CUDA, dtype).train()
        sample = _to(finetune_sample(), CUDA, dtype)
        loss, _, _ = crit(model, sample)
        loss.backward()
        assert loss.device == CUDA and torch.isfinite(loss)
        model.eval()
        gen = Seq2SeqGenerator(task.target_dictionary, BeamSearchConfig(beam=3, max_len_a=0.5, max_len_b=2, ctc_weight=ctc_weight))
        hyps = gen.generate([model], sample)
        assert len(hyps) == 3 and all(h["tokens"].device.type == "cpu" for utt in hyps for h in utt)
    model = ctc_model().to(CUDA, dtype).eval()
    sample = _to(finetune_sample(), CUDA, dtype)
    del sample["net_input"]["prev_output_tokens"]
    for beam in (1, 3):
        assert len(CTCGenerator(task.target_dictionary, beam=beam).generate([model], sample)) == 3


def test_no_hidden_syncs_in_the_pretraining_criterion_step():
    """CUDA's sync debug mode: the criterion adds no synchronising call (the model's are listed
    in tests/plugin/test_device_guard.py)."""
    from avhubert.criterion import AVHubertCriterion
    from tests.plugin.test_device_guard import pretrain_sample, tiny_model
    from types import SimpleNamespace

    model = tiny_model().to(CUDA).train()
    sample = _to(pretrain_sample(), CUDA)
    net_output = model(target_list=sample["target_list"], **sample["net_input"])
    crit = AVHubertCriterion(SimpleNamespace(), 1.0, 1.0, loss_weights=[10.0])
    model_forward = model.forward
    model.forward = lambda **kw: net_output  # the criterion alone
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss, _, _ = crit(model, sample)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        model.forward = model_forward
    assert loss.device == CUDA
