"""Whole chain on generated data: tiny pre-training -> seq2seq / CTC fine-tuning -> infer_s2s
in audio, video and audio-visual modes; released-format fixtures; clear errors on bad input."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fairseq import checkpoint_utils

from avhubert.infer_s2s import InferConfig, decode
from avhubert.model_asr import CheckpointKindError
from preparation.tokenizer import train_sentencepiece
from tests.conftest import run_cli
from omegaconf import OmegaConf


@pytest.fixture(scope="module")
def ft_data(synthetic_corpus, tmp_path_factory) -> Path:
    """The synthetic corpus plus a sentencepiece vocabulary and a test split."""
    data = tmp_path_factory.mktemp("ftdata")
    for f in synthetic_corpus.iterdir():
        if f.is_file():
            shutil.copy(f, data / f.name)
    shutil.copy(data / "valid.tsv", data / "test.tsv")
    shutil.copy(data / "valid.wrd", data / "test.wrd")
    texts = (data / "train.wrd").read_text().splitlines()
    model, dct = train_sentencepiece(texts, data / "spm" / "spm", vocab_size=30)
    shutil.copy(dct, data / "dict.wrd.txt")
    return data


def hydra_train(bin_dir, repo, conf, name, exp, *overrides):
    args = [str(bin_dir / "fairseq-hydra-train"), "--config-dir", str(repo / "conf" / conf), "--config-name", name,
            f"common.user_dir={repo / 'avhubert'}", f"hydra.run.dir={exp}", f"checkpoint.save_dir={exp / 'ckpt'}", *overrides]
    return run_cli(args).stdout


@pytest.fixture(scope="module")
def pretrained(bin_dir, repo, ft_data, tmp_path_factory) -> Path:
    exp = tmp_path_factory.mktemp("pt")
    hydra_train(bin_dir, repo, "pretrain", "tiny", exp, f"task.data={ft_data}", f"task.label_dir={ft_data}",
                "optimization.max_update=6", "dataset.disable_validation=true")
    return exp / "ckpt" / "checkpoint_last.pt"


def finetune(bin_dir, repo, ft_data, pretrained, exp, name, *extra):
    hydra_train(bin_dir, repo, "finetune", name, exp, f"task.data={ft_data}", f"task.label_dir={ft_data}",
                f"task.tokenizer_bpe_model={ft_data / 'spm' / 'spm.model'}", f"model.w2v_path={pretrained}", *extra)
    return exp / "ckpt" / "checkpoint_last.pt"


def infer(repo, ckpt, out, modalities, data, **kw):
    cfg = OmegaConf.structured(InferConfig)
    cfg.common_eval.path, cfg.common_eval.results_path = str(ckpt), str(out)
    cfg.dataset.gen_subset, cfg.dataset.max_tokens = kw.pop("split", "test"), 1000
    cfg.generation.beam, cfg.generation.max_len_a, cfg.generation.max_len_b = kw.pop("beam", 3), 1.0, 0
    cfg.override.modalities, cfg.override.data, cfg.override.label_dir = modalities, str(data), str(kw.pop("label_dir", data))
    for key, value in kw.items():
        OmegaConf.update(cfg, key, value)
    return decode(cfg)


@pytest.fixture(scope="module")
def s2s_ckpt(bin_dir, repo, ft_data, pretrained, tmp_path_factory) -> Path:
    exp = tmp_path_factory.mktemp("s2s")
    return finetune(bin_dir, repo, ft_data, pretrained, exp, "tiny_s2s", "optimization.max_update=8",
                    "dataset.validate_interval=4", f"task.eval_tensorboard_dir={exp / 'tb'}")


def test_seq2seq_chain_decodes_in_every_modality(repo, ft_data, s2s_ckpt, tmp_path):
    state = torch.load(s2s_ckpt, map_location="cpu", weights_only=False)
    assert state["cfg"]["model"]["w2v_args"] is not None and "s2s_tokenizer" in state["task_state"]
    assert list((s2s_ckpt.parent.parent / "tb").glob("events.*")), "validation samples were written to TensorBoard"
    n_test = len((ft_data / "test.tsv").read_text().splitlines()) - 1
    for mods in (["audio"], ["video"], ["audio", "video"]):
        out = tmp_path / "_".join(mods)
        res = infer(repo, s2s_ckpt, out, mods, ft_data)
        assert res["num_utts"] == n_test and res["wer"] is not None and res["wer"] >= 0
        wer_file = out / f"wer.{res['fid']}"
        lines = wer_file.read_text().splitlines()
        assert lines[0].startswith("WER: ") and lines[1].startswith("err / num_ref_words = ")
        hypo = json.loads((out / f"hypo-{res['fid']}.json").read_text())
        assert len(hypo["utt_id"]) == len(hypo["ref"]) == len(hypo["hypo"]) == n_test
        rows = [json.loads(l) for l in (out / "decode.jsonl").read_text().splitlines()]
        assert [r["id"] for r in rows] == hypo["utt_id"] and all(r["ref"] for r in rows)
        assert (out / "decode.log").read_text().count("HYP:") == n_test


def test_prefix_size_forces_the_references_first_tokens(repo, ft_data, s2s_ckpt, tmp_path):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(ft_data / "spm" / "spm.model"))
    res = infer(repo, s2s_ckpt, tmp_path / "prefix", ["audio", "video"], ft_data, **{"generation.prefix_size": 2})
    rows = [json.loads(l) for l in (tmp_path / "prefix" / "decode.jsonl").read_text().splitlines()]
    assert res["num_utts"] == len(rows) > 0
    for r in rows:
        want = sp.decode(sp.encode(r["ref"], out_type=int)[:2])
        assert r["hyp"].startswith(want), (r["ref"], r["hyp"])
    empty_labels = tmp_path / "nolabels"
    empty_labels.mkdir()
    with pytest.raises(ValueError, match="prefix_size=2 needs reference labels"):
        infer(repo, s2s_ckpt, tmp_path / "noref", ["video"], ft_data, label_dir=empty_labels, **{"generation.prefix_size": 2})


def test_decoding_shards_merge_and_no_references(repo, ft_data, s2s_ckpt, tmp_path):
    single = infer(repo, s2s_ckpt, tmp_path / "one", ["audio", "video"], ft_data)
    out = tmp_path / "sharded"
    r0 = infer(repo, s2s_ckpt, out, ["audio", "video"], ft_data, **{"distributed_training.distributed_world_size": 2, "distributed_training.distributed_rank": 0})
    assert r0["wer"] is None  # waits for the other shard
    r1 = infer(repo, s2s_ckpt, out, ["audio", "video"], ft_data, **{"distributed_training.distributed_world_size": 2, "distributed_training.distributed_rank": 1})
    assert r1["num_utts"] == single["num_utts"] and r1["wer"] == pytest.approx(single["wer"])
    empty_labels = tmp_path / "nolabels"
    empty_labels.mkdir()
    res = infer(repo, s2s_ckpt, tmp_path / "noref", ["video"], ft_data, label_dir=empty_labels)
    assert res["wer"] is None and res["num_utts"] == single["num_utts"]
    rows = [json.loads(l) for l in (tmp_path / "noref" / "decode.jsonl").read_text().splitlines()]
    assert all(r["ref"] is None and isinstance(r["hyp"], str) for r in rows)


def test_ctc_chain(bin_dir, repo, ft_data, pretrained, tmp_path):
    ckpt = finetune(bin_dir, repo, ft_data, pretrained, tmp_path / "ctc", "tiny_ctc", "optimization.max_update=6",
                    "dataset.validate_interval=3")
    for mods, beam in ((["audio", "video"], 1), (["video"], 4)):
        res = infer(repo, ckpt, tmp_path / f"dec{beam}", mods, ft_data, beam=beam)
        assert res["wer"] is not None and (tmp_path / f"dec{beam}" / f"wer.{res['fid']}").is_file()


def test_bad_inputs_get_clear_errors(repo, ft_data, pretrained, s2s_ckpt, tmp_path, bin_dir):
    with pytest.raises(CheckpointKindError, match="pre-trained"):
        infer(repo, pretrained, tmp_path / "a", ["video"], ft_data)
    with pytest.raises(ValueError, match="unknown modalities"):
        infer(repo, s2s_ckpt, tmp_path / "b", ["lips"], ft_data)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "test.tsv").write_text("/\n")
    (empty / "test.wrd").write_text("")
    with pytest.raises(ValueError, match="no utterance"):
        infer(repo, s2s_ckpt, tmp_path / "c", ["video"], empty)
    from avhubert.model_asr import AVHubertSeq2SeqConfig, build_pretrained_encoder

    cfg = OmegaConf.structured(AVHubertSeq2SeqConfig(w2v_path=str(s2s_ckpt), normalize=True, data=str(ft_data)))
    with pytest.raises(CheckpointKindError, match="PRE-TRAINED"):
        build_pretrained_encoder(cfg, None)
    args = [str(bin_dir / "fairseq-hydra-train"), "--config-dir", str(repo / "conf/finetune"), "--config-name", "tiny_s2s",
            f"common.user_dir={repo / 'avhubert'}", f"hydra.run.dir={tmp_path / 'x'}", f"task.data={ft_data}",
            f"task.label_dir={ft_data}", f"task.tokenizer_bpe_model={tmp_path / 'missing.model'}", f"model.w2v_path={pretrained}"]
    proc = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(repo)))
    assert proc.returncode != 0 and "missing.model" in proc.stderr + proc.stdout and "sentencepiece model" in proc.stderr + proc.stdout


def test_released_format_fixture_loads_strictly_and_decodes(repo, spec_fixtures, ft_data, tmp_path):
    path = spec_fixtures / "avhubert_tiny_s2s.pt"
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(path)], strict=True)
    model = models[0].eval()
    raw = torch.load(path, map_location="cpu", weights_only=False)
    assert not Path(raw["cfg"]["model"]["w2v_path"]).exists()
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in raw["model"].items()}, strict=True)
    assert not missing and not unexpected
    video = torch.randn(1, 1, 12, 88, 88)
    with torch.no_grad():
        feats, _ = model.encoder.w2v_model.extract_finetune(source={"video": video, "audio": None}, padding_mask=None)
    assert feats.shape == (1, 12, 256)
    res = infer(repo, path, tmp_path / "fixture", ["audio", "video"], ft_data, beam=2)
    assert res["num_utts"] > 0 and res["wer"] is not None


def test_joint_ctc_attention_training_and_decoding(bin_dir, repo, ft_data, pretrained, tmp_path):
    ckpt = finetune(bin_dir, repo, ft_data, pretrained, tmp_path / "joint", "tiny_s2s", "optimization.max_update=6",
                    "model.ctc_weight=0.3", "criterion._name=av_hubert_seq2seq_ctc", "task.eval_wer=false",
                    "checkpoint.best_checkpoint_metric=loss")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert "ctc_proj.weight" in state["model"]
    plain = infer(repo, ckpt, tmp_path / "att", ["audio", "video"], ft_data)
    joint = infer(repo, ckpt, tmp_path / "joint_dec", ["audio", "video"], ft_data, **{"override.ctc_weight": 0.3})
    assert plain["wer"] is not None and joint["wer"] is not None


def test_infer_cli_and_wrong_config_kind(repo, ft_data, s2s_ckpt, tmp_path):
    base = [sys.executable, str(repo / "avhubert" / "infer_s2s.py"), "--config-dir", str(repo / "conf")]
    args = [f"common_eval.path={s2s_ckpt}", f"common_eval.results_path={tmp_path / 'cli'}", "dataset.gen_subset=test",
            "override.modalities=[video]", f"+override.data={ft_data}", f"+override.label_dir={ft_data}", "generation.beam=2"]
    run_cli(base + ["--config-name", "s2s_decode"] + args)
    assert list((tmp_path / "cli").glob("wer.*")) and (tmp_path / "cli" / "decode.jsonl").is_file()
    proc = subprocess.run(base + ["--config-dir", str(repo / "conf" / "finetune"), "--config-name", "tiny_s2s"] + args,
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(repo)))
    assert proc.returncode != 0 and "common_eval" in proc.stderr  # a fine-tuning YAML is no decoding config
