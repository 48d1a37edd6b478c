"""Whole chain on generated data: tiny pre-training -> seq2seq / CTC fine-tuning -> infer_s2s
in audio, video and audio-visual modes; released-format fixtures; clear errors on bad input."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from fairseq import checkpoint_utils

from avhubert.infer_s2s import InferConfig, decode
from avhubert.model_asr import CheckpointKindError
from tests.finetune.helpers import add_test_split_and_vocab, copy_corpus
from tests.conftest import run_cli, shared_fixture
from tests.fixed_init import assert_summary, fixed_tensor
from omegaconf import OmegaConf


@pytest.fixture(scope="module")
def ft_data(synthetic_corpus, tmp_path_factory) -> Path:
    """The synthetic corpus plus a sentencepiece vocabulary and a test split."""
    return add_test_split_and_vocab(copy_corpus(synthetic_corpus, tmp_path_factory.mktemp("ftdata")))


@pytest.fixture(scope="module")
def learn_data(tmp_path_factory) -> Path:
    """A task a tiny model learns in 100 updates: 32 train / 8 unseen valid (= test) utterances of 20-40
    frames whose transcript names every run of tone classes (a function of the audio), one sentencepiece
    piece per word (`model_type=word`, so CTC always fits in the frames)."""
    from demo.synthetic_data import WORDS, make_corpus

    data = make_corpus(tmp_path_factory.mktemp("learn"), {"train": 32, "valid": 8}, num_classes=8,
                       min_frames=20, max_frames=40, seed=1)
    for split in ("train", "valid"):
        lines = []
        for row in (data / f"{split}.km").read_text().splitlines():
            c = row.split()
            lines.append(" ".join(WORDS[int(x)] for i, x in enumerate(c) if i == 0 or c[i - 1] != x))
        (data / f"{split}.wrd").write_text("\n".join(lines) + "\n")
    return add_test_split_and_vocab(data, vocab_size=20, model_type="word")


# Audio only (fast), constant lr 0.01 after 5 warm-up updates, no dropout: 100 updates of 2 batches.
_LEARN = ["optimization.max_update=100", "task.modalities=[audio]", "optimization.lr=[0.01]",
          "lr_scheduler.warmup_steps=5", "lr_scheduler.hold_steps=94", "lr_scheduler.decay_steps=1",
          "model.activation_dropout=0.0", "common.log_interval=1000"]
LEARN_CTC = [*_LEARN, "dataset.validate_interval=5", "model.final_dropout=0.0"]
LEARN_JOINT = [*_LEARN, "dataset.validate_interval=50", "model.ctc_weight=0.3", "criterion._name=av_hubert_seq2seq_ctc",
               "task.eval_wer=false", "checkpoint.best_checkpoint_metric=loss", "model.decoder_dropout=0.0",
               "model.decoder_activation_dropout=0.0"]


def log_stats(log: str, tag: str) -> list:
    """Per-epoch `[train]` or `[valid]` statistics lines of a `log_format=simple` run, as dicts of floats."""
    rows = []
    for line in log.splitlines():
        if f"[{tag}][INFO] - epoch" in line:
            fields = [f.strip().rsplit(" ", 1) for f in line.split(" - ", 1)[1].split("|")[1:]]
            rows.append({k: float(v) for k, v in (f for f in fields if len(f) == 2) if v.replace(".", "").isdigit()})
    assert rows, f"no [{tag}] statistics in the log:\n{log[-3000:]}"
    return rows


def finetune_logged(bin_dir, repo, data, pretrained, exp, name, *extra):
    """As `finetune`, also returning the trainer's log."""
    log = hydra_train(bin_dir, repo, "finetune", name, exp, f"task.data={data}", f"task.label_dir={data}",
                      f"task.tokenizer_bpe_model={data / 'spm' / 'spm.model'}", f"model.w2v_path={pretrained}", *extra)
    return exp / "ckpt" / "checkpoint_last.pt", log


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


def test_cpu_decoding_prints_no_pinned_memory_warning(repo, ft_data, s2s_ckpt, tmp_path):
    # fairseq's loader asks for pinned memory, which torch warns about on every decode without a GPU
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = infer(repo, s2s_ckpt, tmp_path / "out", ["audio"], ft_data, **{"common.cpu": True})
    assert res["num_utts"] > 0
    assert not [w for w in caught if "pin_memory" in str(w.message)]


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


def test_ctc_chain_learns_a_learnable_task(bin_dir, repo, learn_data, pretrained, tmp_path):
    """CTC fine-tuning must learn: the transcripts are a function of the audio (one word per tone run).

    Measured (2 cores, ~40 s): valid WER 100 % after 10 updates, 4 % after 100; loss / sentence 77 -> 0.2.
    """
    ckpt, log = finetune_logged(bin_dir, repo, learn_data, pretrained, tmp_path / "ctc", "tiny_ctc", *LEARN_CTC)
    train, valid = log_stats(log, "train"), log_stats(log, "valid")
    assert valid[0]["num_updates"] == 10 and valid[0]["wer"] >= 90, valid[0]  # not learnt yet
    assert valid[-1]["num_updates"] == 100 and valid[-1]["wer"] <= 25, valid
    assert train[0]["loss"] / train[-1]["loss"] > 20, (train[0], train[-1])
    # unseen utterances: greedy on audio, prefix beam search through the audio-visual path (measured 4 %, 4 %)
    for name, mods, beam in (("greedy", ["audio"], 1), ("beam", ["audio", "video"], 4)):
        res = infer(repo, ckpt, tmp_path / name, mods, learn_data, beam=beam)
        assert res["num_utts"] == 8 and res["wer"] <= 25, res
        assert (tmp_path / name / f"wer.{res['fid']}").is_file()


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


# `avhubert_tiny_s2s.pt` (the original's weights) on a fixed video-only input: encoder output [T, B, D] and
# decoder logits for fixed tokens. Recorded regression values (tests/fixed_init.py); its encoder equals the
# pre-training fixture's, whose transformer tests/plugin/test_checkpoint_and_registration.py checks against fairseq.
EXPECTED_S2S = {
    "encoder_out": {"mean": 0.012502209504101339, "std": 1.0143997111866168, "abs_sum": 4911.033537300915,
                    "weighted": -7.744142455632669, "x[0]": 0.11722800135612488, "x[2047]": 1.7667676210403442,
                    "x[4095]": 1.6182513236999512, "x[6143]": 1.3575105667114258},
    "logits": {"mean": -0.0896481766558524, "std": 0.9742098317393654, "abs_sum": 930.3382760375971,
               "weighted": 0.5975322822946809, "x[0]": 0.010144228115677834, "x[399]": 1.3874266147613525,
               "x[799]": 1.3401856422424316, "x[1199]": 1.331188678741455},
}


def test_released_format_fixture_loads_strictly_and_decodes(repo, ft_data, tmp_path):
    path = shared_fixture("avhubert_tiny_s2s.pt")
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(path)], strict=True)
    model = models[0].eval()
    raw = torch.load(path, map_location="cpu", weights_only=False)
    assert not Path(raw["cfg"]["model"]["w2v_path"]).exists()
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in raw["model"].items()}, strict=True)
    assert not missing and not unexpected
    video = fixed_tensor((2, 1, 12, 88, 88), 1.0)
    tokens = torch.tensor([[2, 10, 25, 40, 7, 99], [2, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        enc = model.encoder(source={"audio": None, "video": video}, padding_mask=None)
        logits, _ = model.decoder(prev_output_tokens=tokens, encoder_out=enc)
    assert enc["encoder_out"].shape == (12, 2, 256) and logits.shape == (2, 6, len(task.target_dictionary))
    assert_summary(enc["encoder_out"], EXPECTED_S2S["encoder_out"])
    assert_summary(logits, EXPECTED_S2S["logits"])
    res = infer(repo, path, tmp_path / "fixture", ["audio", "video"], ft_data, beam=2)
    assert res["num_utts"] > 0 and res["wer"] is not None


def test_joint_ctc_attention_training_and_decoding(bin_dir, repo, learn_data, pretrained, tmp_path):
    """Joint CTC/attention training lowers both losses by large factors and both decoders fit the task.

    Measured: CTC loss 74 -> 1.2, attention nll 4.0 -> 1.0, accuracy 6 % -> 76 %; train-set WER 27 %
    (attention) and 0.6 % (joint CTC/attention decoding).
    """
    ckpt, log = finetune_logged(bin_dir, repo, learn_data, pretrained, tmp_path / "joint", "tiny_s2s", *LEARN_JOINT)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert "ctc_proj.weight" in state["model"]
    train = log_stats(log, "train")
    assert train[0]["ctc_loss"] / train[-1]["ctc_loss"] > 10, (train[0], train[-1])
    assert train[0]["nll_loss"] / train[-1]["nll_loss"] > 2.5, (train[0], train[-1])
    assert train[-1]["accuracy"] > 60 > 4 * train[0]["accuracy"]
    plain = infer(repo, ckpt, tmp_path / "att", ["audio"], learn_data, split="train")
    joint = infer(repo, ckpt, tmp_path / "joint_dec", ["audio"], learn_data, split="train", **{"override.ctc_weight": 0.3})
    assert plain["num_utts"] == joint["num_utts"] == 32
    assert plain["wer"] <= 50 and joint["wer"] <= 10 and joint["wer"] < plain["wer"], (plain, joint)


def test_infer_cli_and_wrong_config_kind(repo, ft_data, s2s_ckpt, tmp_path):
    base = [sys.executable, str(repo / "avhubert" / "infer_s2s.py"), "--config-dir", str(repo / "conf")]
    args = [f"common_eval.path={s2s_ckpt}", f"common_eval.results_path={tmp_path / 'cli'}", "dataset.gen_subset=test",
            "override.modalities=[video]", f"+override.data={ft_data}", f"+override.label_dir={ft_data}", "generation.beam=2"]
    run_cli(base + ["--config-name", "s2s_decode"] + args)
    assert list((tmp_path / "cli").glob("wer.*")) and (tmp_path / "cli" / "decode.jsonl").is_file()
    proc = subprocess.run(base + ["--config-dir", str(repo / "conf" / "finetune"), "--config-name", "tiny_s2s"] + args,
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(repo)))
    assert proc.returncode != 0 and "common_eval" in proc.stderr  # a fine-tuning YAML is no decoding config
