"""End to end (slow: trains the tiny chain): infer_s2s with `generation.lm_path` on a language
model trained by fairseq-train on the training transcripts, modality warnings and skipped
utterances in `wer.*` / `metrics.json` / `decode.log` of a real decoding run."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from avhubert.language_model import prepare_lm_text, train_language_model
from tests.finetune.test_finetune_decode import ft_data, infer, pretrained, s2s_ckpt  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_lm_ckpt(ft_data, tmp_path_factory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("lm")
    prepare_lm_text(ft_data / "train.wrd", ft_data / "spm" / "spm.model", out / "text" / "train.txt")
    return train_language_model(out / "text", ft_data / "dict.wrd.txt", out / "model", layers=1, dim=32,
                                max_update=20, max_tokens=64, tokens_per_sample=32)


def _hyps(out: Path):
    return [json.loads(line)["hyp"] for line in (out / "decode.jsonl").read_text().splitlines()]


def test_decoding_with_a_fairseq_language_model(repo, ft_data, s2s_ckpt, tiny_lm_ckpt, tmp_path):  # noqa: F811
    assert (tiny_lm_ckpt.parent / "dict.txt").is_file()
    plain = infer(repo, s2s_ckpt, tmp_path / "plain", ["audio", "video"], ft_data)
    zero = infer(repo, s2s_ckpt, tmp_path / "zero", ["audio", "video"], ft_data,
                 **{"generation.lm_path": str(tiny_lm_ckpt), "generation.lm_weight": 0.0})
    assert _hyps(tmp_path / "zero") == _hyps(tmp_path / "plain") and zero["wer"] == plain["wer"]
    fused = infer(repo, s2s_ckpt, tmp_path / "fused", ["audio", "video"], ft_data,
                  **{"generation.lm_path": str(tiny_lm_ckpt), "generation.lm_weight": 3.0})
    assert fused["num_utts"] == plain["num_utts"] and fused["fid"] != plain["fid"]
    m = json.loads((tmp_path / "fused" / "metrics.json").read_text())
    assert m["lm"] == {"path": str(tiny_lm_ckpt), "weight": 3.0}
    assert "language model" in (tmp_path / "fused" / "decode.log").read_text()
    # a language model over another dictionary is refused with the reason
    bad = tmp_path / "badlm"
    bad.mkdir()
    shutil.copy(tiny_lm_ckpt, bad / "lm.pt")
    lines = (tiny_lm_ckpt.parent / "dict.txt").read_text().splitlines()
    (bad / "dict.txt").write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match="dictionary differs from the model's target dictionary"):
        infer(repo, s2s_ckpt, tmp_path / "bad", ["video"], ft_data, **{"generation.lm_path": str(bad / "lm.pt")})


def test_unseen_modality_and_skipped_utterances_are_recorded(repo, ft_data, s2s_ckpt, tmp_path):  # noqa: F811
    # a model fine-tuned with video only (its stored task config says so), decoded with audio
    state = torch.load(s2s_ckpt, map_location="cpu", weights_only=False)
    state["cfg"]["task"]["modalities"] = ["video"]
    video_only = tmp_path / "video_only.pt"
    torch.save(state, video_only)
    # one test utterance's audio file is missing
    data = tmp_path / "data"
    shutil.copytree(ft_data, data)
    root, *rows = (data / "test.tsv").read_text().splitlines()
    victim_id, _, audio = rows[0].split("\t")[:3]
    gone = Path(audio) if Path(audio).is_absolute() else Path(root) / audio
    hidden = data / "moved_away.wav"
    shutil.copy(gone, hidden)
    (data / "test.tsv").write_text("\n".join([root] + [rows[0].replace(audio, str(data / "missing.wav"))] + rows[1:]) + "\n")
    out = tmp_path / "dec"
    res = infer(repo, video_only, out, ["audio", "video"], data)
    assert res["num_utts"] == len(rows) - 1 and res["num_skipped"] == 1
    wer_lines = (out / f"wer.{res['fid']}").read_text().splitlines()
    assert wer_lines[2].startswith(f"{len(rows) - 1} of {len(rows)} utterances decoded; 1 SKIPPED: {victim_id} (missing audio file")
    assert "not fine-tuned with ['audio']" in wer_lines[3]
    m = json.loads((out / "metrics.json").read_text())
    assert m["num_skipped"] == 1 and m["skipped"][0]["id"] == victim_id and "missing audio file" in m["skipped"][0]["reason"]
    assert m["modalities"] == {"decoded": ["audio", "video"], "fine_tuned": ["video"], "not_fine_tuned_with": ["audio"]}
    assert m["utt_per_s"] > 0 and m["wall_time_s"] >= m["decode_time_s"] > 0
    log = (out / "decode.log").read_text()
    assert "WHICH THIS MODEL WAS NOT FINE-TUNED WITH" in log and f"skipped {victim_id}: missing audio file" in log


def test_ctc_model_refuses_an_lm_path(bin_dir, repo, ft_data, pretrained, tiny_lm_ckpt, tmp_path):  # noqa: F811
    from tests.finetune.test_finetune_decode import finetune

    ckpt = finetune(bin_dir, repo, ft_data, pretrained, tmp_path / "ctc", "tiny_ctc", "optimization.max_update=2",
                    "dataset.validate_interval=2")
    with pytest.raises(ValueError, match="seq2seq models only"):
        infer(repo, ckpt, tmp_path / "dec", ["video"], ft_data, beam=1, **{"generation.lm_path": str(tiny_lm_ckpt)})
