"""infer_s2s bookkeeping without a model: modality warnings, skipped utterances, `wer.*` and
`metrics.json`, and the language-model loader's refusals."""

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from avhubert.infer_s2s import InferConfig, check_modalities, skipped_utterances, training_modalities, write_outputs
from avhubert.language_model import load_language_model


def test_decoding_with_a_modality_the_model_was_not_fine_tuned_with_warns_loudly(caplog):
    saved = OmegaConf.create({"task": {"modalities": ["video"]}})
    assert training_modalities(saved) == ["video"]
    with caplog.at_level(logging.WARNING, logger="avhubert.infer_s2s"):
        assert check_modalities(["video"], ["audio", "video"]) == ["audio"]
    text = caplog.text
    assert "DECODING WITH AUDIO, WHICH THIS MODEL WAS NOT FINE-TUNED WITH" in text and "override.modalities=[video]" in text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="avhubert.infer_s2s"):
        assert check_modalities(["audio", "video"], ["video"]) == []  # a subset is the usual AV-HuBERT use
        assert check_modalities(["audio", "video"], ["audio", "video"]) == []
    assert not caplog.records


def _manifest(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for i in range(5):
        (data / f"u{i}.mp4").write_bytes(b"x")
        (data / f"u{i}.wav").write_bytes(b"x")
        rows.append(f"u{i}\tu{i}.mp4\tu{i}.wav\t25\t16000")
    (data / "test.tsv").write_text(f"{data}\n" + "\n".join(rows) + "\n")
    (data / "u3.mp4").unlink()
    (data / "u4.wav").unlink()
    return data


def test_skipped_utterances_name_the_missing_file(tmp_path):
    data = _manifest(tmp_path)
    kept = SimpleNamespace(rows=[SimpleNamespace(id=f"u{i}") for i in (0, 1, 2)])
    task = SimpleNamespace(cfg=SimpleNamespace(data=str(data), modalities=["video"]))
    # video only: u4's missing audio does not matter, yet the dataset kept only 3 (size filter)
    assert skipped_utterances(task, "test", kept) == [
        {"id": "u3", "reason": "missing video file u3.mp4"},
        {"id": "u4", "reason": "filtered by the dataset (size or label alignment)"}]
    task.cfg.modalities = ["audio", "video"]
    assert [s["reason"] for s in skipped_utterances(task, "test", kept)] == [
        "missing video file u3.mp4", "missing audio file u4.wav"]


def _cfg(out: Path):
    cfg = OmegaConf.structured(InferConfig)
    cfg.common_eval.path, cfg.common_eval.results_path = "model.pt", str(out)
    cfg.dataset.gen_subset = "test"
    cfg.override.modalities = ["audio"]
    return cfg


def test_wer_file_and_metrics_say_how_many_utterances_the_wer_covers(tmp_path):
    rows = [{"id": f"u{i}", "hyp": "a b", "ref": "a c"} for i in range(4)]
    run = {"modalities": {"decoded": ["audio"], "fine_tuned": ["video"], "not_fine_tuned_with": ["audio"]},
           "skipped": [{"id": "u4", "reason": "missing audio file u4.wav"}], "decode_time_s": 2.0,
           "wall_time_s": 5.0, "device": "cpu", "lm": None}
    res = write_outputs(tmp_path, 123, rows, _cfg(tmp_path), 1, 0, run)
    assert res["num_utts"] == 4 and res["num_skipped"] == 1 and res["wer"] == pytest.approx(50.0)
    lines = (tmp_path / "wer.123").read_text().splitlines()
    assert lines[0] == "WER: 50.0" and lines[1] == "err / num_ref_words = 4 / 8"  # the original's format
    assert lines[2] == "4 of 5 utterances decoded; 1 SKIPPED: u4 (missing audio file u4.wav)"
    assert lines[3].startswith("modalities: decoded with ['audio'], fine-tuned with ['video']")
    assert "not fine-tuned with ['audio']" in lines[3]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["wer"] == pytest.approx(50.0) and m["cer"] is not None
    assert (m["num_utts"], m["num_skipped"], m["num_in_manifest"]) == (4, 1, 5)
    assert m["skipped"] == [{"id": "u4", "reason": "missing audio file u4.wav"}]
    assert m["modalities"]["fine_tuned"] == ["video"] and m["modalities"]["decoded"] == ["audio"]
    assert m["utt_per_s"] == pytest.approx(2.0) and m["wall_time_s"] == 5.0 and m["word_errors"] == 4


def test_wer_uses_the_labels_text_normalisation(tmp_path):
    """With the labels' text_norm.json (preparation.import_manifest), references and hypotheses are
    normalised alike before scoring; the rows keep the raw texts."""
    rows = [{"id": "a", "hyp": "hello world", "ref": "Hello, world!"}, {"id": "b", "hyp": "dont go", "ref": "Don't go."}]
    run = {"modalities": {}, "skipped": [], "decode_time_s": 1.0, "text_norm": {"case": "lower", "punctuation": "drop"},
           "peak_rss_mb": 321.0, "git_commit": "abc"}
    assert write_outputs(tmp_path / "n", 1, rows, _cfg(tmp_path / "n"), 1, 0, run)["wer"] == 0.0
    m = json.loads((tmp_path / "n" / "metrics.json").read_text())
    assert m["text_norm"] == {"case": "lower", "punctuation": "drop"} and m["peak_rss_mb"] == 321.0
    assert m["git_commit"] == "abc"
    assert json.loads((tmp_path / "n" / "hypo-1.json").read_text())["ref"][0] == "Hello, world!"
    raw = write_outputs(tmp_path / "r", 1, rows, _cfg(tmp_path / "r"), 1, 0, {**run, "text_norm": None})
    assert raw["wer"] == pytest.approx(100.0)


def test_sharded_metrics_are_written_once_by_the_merging_process(tmp_path):
    run = {"modalities": {"decoded": ["video"], "fine_tuned": ["video"], "not_fine_tuned_with": []},
           "skipped": [], "decode_time_s": 1.0, "wall_time_s": 2.0}
    write_outputs(tmp_path, 7, [{"id": "a", "hyp": "x", "ref": "x"}], _cfg(tmp_path), 2, 0, run)
    assert not (tmp_path / "metrics.json").exists()
    write_outputs(tmp_path, 7, [{"id": "b", "hyp": "y", "ref": "x"}], _cfg(tmp_path), 2, 1, {**run, "decode_time_s": 3.0})
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["num_utts"] == 2 and m["wer"] == pytest.approx(50.0) and m["decode_time_s"] == 3.0
    assert (tmp_path / "wer.7").read_text().splitlines()[2] == "2 of 2 utterances decoded"


def _fake_lm_checkpoint(path: Path, task_name: str, data: str = "/nonexistent/lm-data") -> Path:
    torch.save({"cfg": {"task": {"_name": task_name, "data": data}, "model": {"_name": "transformer_lm"}},
                "model": {}}, path)
    return path


def test_language_model_loader_refuses_clearly(tmp_path):
    from fairseq.data import Dictionary

    tgt = Dictionary()
    for s in ("▁a", "▁b", "c"):
        tgt.add_symbol(s)
    with pytest.raises(FileNotFoundError, match="generation.lm_path"):
        load_language_model(str(tmp_path / "missing.pt"), tgt)
    with pytest.raises(ValueError, match="task 'translation'.*language_modeling"):
        load_language_model(str(_fake_lm_checkpoint(tmp_path / "mt.pt", "translation")), tgt)
    lm_dir = tmp_path / "lm"
    lm_dir.mkdir()
    ckpt = _fake_lm_checkpoint(lm_dir / "lm.pt", "language_modeling")
    with pytest.raises(FileNotFoundError, match="cannot find the language model's dictionary"):
        load_language_model(str(ckpt), tgt)
    other = Dictionary()
    for s in ("▁a", "c", "▁b"):
        other.add_symbol(s)
    other.save(str(lm_dir / "dict.txt"))
    with pytest.raises(ValueError, match=r"dictionary differs .*index 5: LM 'c' vs target '▁b'"):
        load_language_model(str(ckpt), tgt)
    # a checkpoint that pickles code is refused before anything runs
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"cfg": Evil(), "model": {}}, lm_dir / "evil.pt")
    with pytest.raises(Exception, match="evil.pt"):
        load_language_model(str(lm_dir / "evil.pt"), tgt)
    assert not marker.exists()


def test_lm_text_is_what_the_label_encoder_makes(tmp_path):
    """`python -m avhubert.language_model`: lower-cased sentencepiece pieces, one transcript a line,
    the same pieces the task's label encoder turns into targets."""
    from fairseq.data.encoders.sentencepiece_bpe import SentencepieceBPE, SentencepieceConfig

    from avhubert.language_model import main
    from preparation.tokenizer import train_sentencepiece

    texts = ["Five two ZERO six", "six five four two", "three one seven", "", "two two zero"] * 4
    spm_model, _ = train_sentencepiece(texts, tmp_path / "spm" / "spm", vocab_size=20)
    (tmp_path / "train.wrd").write_text("\n".join(texts) + "\n")
    assert main(["--spm-model", str(spm_model), "--out-dir", str(tmp_path / "lm"), str(tmp_path / "train.wrd")]) == 0
    lines = (tmp_path / "lm" / "train.txt").read_text().splitlines()
    bpe = SentencepieceBPE(SentencepieceConfig(sentencepiece_model=str(spm_model)))
    assert lines == [bpe.encode(t.lower()) for t in texts if t]
    assert lines[0].startswith("▁") and lines[0] == lines[0].lower()
