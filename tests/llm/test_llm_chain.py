"""`av_hubert_llm` end to end on generated data: tiny pre-training -> `python -m demo.tiny_llm` ->
`fairseq-hydra-train --config-dir conf/llm --config-name tiny` (LoRA on the LM, validation WER and
sample predictions) -> `infer_s2s.py` (greedy and beam search) with the seq2seq path's outputs."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import run_cli
from tests.finetune.helpers import add_test_split_and_vocab, copy_corpus
from tests.finetune.test_finetune_decode import hydra_train, infer, log_stats

pytestmark = pytest.mark.slow  # ~2 min on 2 cores: pre-training, LM building, training and three decodes


@pytest.fixture(scope="module")
def data(synthetic_corpus, tmp_path_factory):
    return add_test_split_and_vocab(copy_corpus(synthetic_corpus, tmp_path_factory.mktemp("llmdata")))


@pytest.fixture(scope="module")
def pretrained(bin_dir, repo, data, tmp_path_factory):
    exp = tmp_path_factory.mktemp("pt")
    hydra_train(bin_dir, repo, "pretrain", "tiny", exp, f"task.data={data}", f"task.label_dir={data}",
                "optimization.max_update=4", "dataset.disable_validation=true")
    return exp / "ckpt" / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def tiny_lm(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm") / "tiny_lm"
    run_cli([sys.executable, "-m", "demo.tiny_llm", "--text", str(data / "train.wrd"), "--out", str(out), "--steps", "60"])
    return out


def _train(bin_dir, repo, data, pretrained, lm, exp, *extra):
    return hydra_train(bin_dir, repo, "llm", "tiny", exp, f"task.data={data}", f"task.label_dir={data}",
                       f"model.w2v_path={pretrained}", f"model.llm_path={lm}", "task.modalities=[audio]",
                       "optimization.max_update=6", "dataset.validate_interval=3", "common.log_interval=1", *extra)


def test_train_and_decode(bin_dir, repo, data, pretrained, tiny_lm, tmp_path):
    exp = tmp_path / "exp"
    log = _train(bin_dir, repo, data, pretrained, tiny_lm, exp, f"task.eval_tensorboard_dir={exp / 'tb'}",
                 "model.frame_stack=2", "model.frame_dedup_threshold=0.999")
    train, valid = log_stats(log, "train"), log_stats(log, "valid")
    assert valid[-1]["num_updates"] == 6 and "wer" in valid[-1] and train[-1]["loss"] < train[0]["loss"]
    assert "validation samples at update" in log and list((exp / "tb").glob("events.*"))
    ckpt = exp / "ckpt" / "checkpoint_last.pt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["cfg"]["model"]["_name"] == "av_hubert_llm" and state["cfg"]["model"]["w2v_args"] is not None
    assert any(".lora_A." in k for k in state["model"]) and "projector.fc1.weight" in state["model"]
    n_test = len((data / "test.tsv").read_text().splitlines()) - 1
    results = {}
    for beam in (1, 3):
        out = tmp_path / f"beam{beam}"
        res = infer(repo, ckpt, out, ["audio"], data, beam=beam)
        assert res["num_utts"] == n_test and res["wer"] is not None
        lines = (out / f"wer.{res['fid']}").read_text().splitlines()
        assert lines[0].startswith("WER: ") and lines[1].startswith("err / num_ref_words = ")
        hypo = json.loads((out / f"hypo-{res['fid']}.json").read_text())
        rows = [json.loads(l) for l in (out / "decode.jsonl").read_text().splitlines()]
        refs = dict(zip(hypo["utt_id"], hypo["ref"]))
        wrd = dict(zip([l.split("\t")[0] for l in (data / "test.tsv").read_text().splitlines()[1:]],
                       (data / "test.wrd").read_text().splitlines()))
        assert [r["id"] for r in rows] == hypo["utt_id"] and all(refs[k] == wrd[k] for k in refs)  # exact references
        assert json.loads((out / "metrics.json").read_text())["num_utts"] == n_test
        results[beam] = res
    # the decode CLI and a missing LM folder (the checkpoint names it): a clear one-line reason
    moved = tmp_path / "moved_lm"
    os.rename(tiny_lm, moved)
    try:
        proc = subprocess.run([sys.executable, str(repo / "avhubert" / "infer_s2s.py"), "--config-dir", str(repo / "conf"),
                               "--config-name", "s2s_decode", f"common_eval.path={ckpt}",
                               f"common_eval.results_path={tmp_path / 'cli'}", "dataset.gen_subset=test",
                               "override.modalities=[audio]", f"+override.data={data}", "generation.beam=1"],
                              capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1"))
    finally:
        os.rename(moved, tiny_lm)
    assert proc.returncode != 0 and "model.llm_path" in proc.stderr and "is not a folder" in proc.stderr


def test_bad_llm_path_fails_training_with_a_clear_error(bin_dir, repo, data, pretrained, tmp_path):
    args = [str(bin_dir / "fairseq-hydra-train"), "--config-dir", str(repo / "conf" / "llm"), "--config-name", "tiny",
            f"common.user_dir={repo / 'avhubert'}", f"hydra.run.dir={tmp_path / 'x'}", f"task.data={data}",
            f"task.label_dir={data}", f"model.w2v_path={pretrained}", f"model.llm_path={data}"]
    proc = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1"))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "has no config.json: not a Hugging Face model folder" in out
