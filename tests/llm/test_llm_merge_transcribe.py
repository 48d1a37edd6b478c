"""`av_hubert_llm` checkpoints after training: `python -m avhubert.merge_lora` folds the LM's and the
encoder's LoRA adapters (a merged LM folder + a plain checkpoint that decodes as before, without the
original LM folder or the pre-trained checkpoint), `avhubert.load(...).transcribe` and
`python -m avhubert.transcribe` give text, and LM shallow fusion is refused with the reason."""

import json
import os
from argparse import Namespace

import numpy as np
import pytest
import torch
from fairseq import checkpoint_utils

from avhubert.lora import BASE_DIGEST_KEY
from avhubert.merge_lora import MERGED_LM_MARKER, main as merge_main
from avhubert.model_llm import LLM_DIGEST_KEY
from tests.llm.helpers import audio_sample, llm_checkpoint, make_tiny_lm

Q_PROJ = "llm.model.layers.0.self_attn.q_proj"
ENC_Q_PROJ = "encoder.w2v_model.encoder.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def lora_ckpt(tmp_path_factory):
    """(checkpoint with LoRA on the LM (r=4) and on the encoder (r=2), its LM folder, its pre-trained base)."""
    root = tmp_path_factory.mktemp("llm_merge")
    make_tiny_lm(root / "lm", steps=60)
    ckpt = llm_checkpoint(root / "exp", root / "lm", llm_lora_r=4, lora_r=2)
    return ckpt, root / "lm", root / "exp" / "pretrain" / "tiny.pt"


def _load(path, **overrides):
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(path)], arg_overrides=overrides or None,
                                                                      strict=True)
    return models[0].eval(), task


def _target(model, texts=("five two zero", "one three", "go stop six")):
    ids = [model.codec(t) for t in texts]
    target = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=model.codec.pad)
    return target, torch.tensor([len(i) for i in ids])


def _hypos(model, task, sample, beam):
    gen = Namespace(beam=beam, max_len_a=0.0, max_len_b=8, min_len=1, lenpen=1.0, unkpen=0.0, temperature=1.0,
                    no_repeat_ngram_size=0, unnormalized=False)
    with torch.no_grad():
        return [[h["tokens"].tolist() for h in hyps] for hyps in task.build_generator([model], gen).generate([model], sample)]


def test_merge_folds_lm_and_encoder_adapters_and_decodes_the_same(lora_ckpt, tmp_path):
    ckpt, lm_dir, base = lora_ckpt
    merged, folder = tmp_path / "merged.pt", tmp_path / "merged_llm"
    assert merge_main(["--checkpoint", str(ckpt), "--out", str(merged)]) == 0  # --llm-out defaults to merged_llm/

    raw = torch.load(merged, map_location="cpu", weights_only=True)
    cfg = raw["cfg"]["model"]
    assert cfg["lora_r"] == 0 and cfg["llm_lora_r"] == 0 and cfg["llm_path"] == str(folder) and cfg["llm_freeze"]
    assert not any(".lora_" in k or "base_layer" in k for k in raw["model"]) and BASE_DIGEST_KEY not in raw["model"]
    assert LLM_DIGEST_KEY in raw["model"] and not any(k.startswith("llm.") for k in raw["model"])
    assert f"{ENC_Q_PROJ}.weight" in raw["model"] and "last_optimizer_state" not in raw
    info = raw["extra_state"]["lora_merged"]
    assert info["llm_lora_r"] == 4 and info["lora_r"] == 2 and info["llm_out"] == str(folder)
    # the merged LM folder: a plain transformers model (no peft), its attention weights W + B A * alpha / r
    from transformers import AutoModelForCausalLM

    plain_lm = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    original = AutoModelForCausalLM.from_pretrained(lm_dir, local_files_only=True)
    names = dict(plain_lm.named_parameters())
    assert not any("lora" in n for n in names) and (folder / MERGED_LM_MARKER).is_file()
    w = Q_PROJ[len("llm."):] + ".weight"
    assert not torch.allclose(names[w], dict(original.named_parameters())[w])

    lora_model, lora_task = _load(ckpt)  # the adapters, as trained
    target = _target(lora_model)
    sample = audio_sample(target=target)
    # the merged checkpoint needs neither the original LM folder nor the pre-trained base
    lm_dir.rename(lm_dir.with_name("lm_away"))
    base.rename(base.with_name("base_away.pt"))
    try:
        merged_model, merged_task = _load(merged)
    finally:
        lm_dir.with_name("lm_away").rename(lm_dir)
        base.with_name("base_away.pt").rename(base)
    assert not any(".lora_" in n for n, _ in merged_model.named_parameters())
    with torch.no_grad():
        want = lora_model(**sample["net_input"], target=target[0], target_lengths=target[1])["logits"]
        got = merged_model(**sample["net_input"], target=target[0], target_lengths=target[1])["logits"]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    for beam in (1, 3):
        lora_hyps = _hypos(lora_model, lora_task, sample, beam)
        assert _hypos(merged_model, merged_task, sample, beam) == lora_hyps
        assert any(len(h[0]) > 1 for h in lora_hyps)  # words, not just eos

    # a second merge replaces the folder it wrote; a folder it did not write is refused
    assert merge_main(["--checkpoint", str(ckpt), "--out", str(merged)]) == 0
    with pytest.raises(SystemExit, match="exists and was not written by avhubert.merge_lora"):
        merge_main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "m2.pt"), "--llm-out", str(lm_dir)])
    with pytest.raises(SystemExit, match="not a LoRA checkpoint .*model.llm_lora_r=0"):
        merge_main(["--checkpoint", str(merged), "--out", str(tmp_path / "m3.pt")])


def test_encoder_only_lora_merges_and_keeps_the_lm_folder(tmp_path):
    """LoRA on the encoder only (the LM frozen, no LM adapters): the encoder folds, the LM stays the original folder."""
    make_tiny_lm(tmp_path / "lm", steps=2)
    ckpt = llm_checkpoint(tmp_path / "exp", tmp_path / "lm", llm_lora_r=0, lora_r=2)
    merged = tmp_path / "merged.pt"
    assert merge_main(["--checkpoint", str(ckpt), "--out", str(merged)]) == 0
    raw = torch.load(merged, map_location="cpu", weights_only=True)
    assert raw["cfg"]["model"]["llm_path"] == str(tmp_path / "lm") and not (tmp_path / "merged_llm").exists()
    assert not any(".lora_" in k for k in raw["model"]) and f"{ENC_Q_PROJ}.weight" in raw["model"]
    a, task = _load(ckpt)
    b, _ = _load(merged)
    sample = audio_sample()
    assert _hypos(a, task, sample, 2) == _hypos(b, task, sample, 2)


def test_load_transcribe_and_the_cli(lora_ckpt, tmp_path):
    import scipy.io.wavfile

    import avhubert
    from avhubert.transcribe import main as transcribe_main

    ckpt = lora_ckpt[0]
    model = avhubert.load(ckpt)
    assert model.kind == "llm" and model.can_transcribe and model.settings["vocabulary"] == len(model.model.tokenizer)
    wav = (np.random.default_rng(0).standard_normal(16000 * 2) * 3000).astype(np.int16)
    greedy = model.transcribe(audio=wav, beam=1)
    assert greedy["modality"] == "audio" and greedy["text"] and greedy["segments"][0]["text"] == greedy["text"]
    # the text is the model's own greedy hypothesis of the whole clip, decoded by the LM's tokenizer
    prep = model.prepare(audio=wav)
    hyp = model.build_generator(beam=1).generate([model.model], model._batch(prep, [(0, prep.num_frames)]))[0][0]
    assert greedy["text"] == model.model.codec.decode(hyp["tokens"])
    assert isinstance(model.transcribe(audio=wav, beam=3)["text"], str)
    with pytest.raises(ValueError, match="shallow fusion is for seq2seq models; its decoder already is a language model"):
        model.build_generator(lm=str(tmp_path / "lm.pt"))

    scipy.io.wavfile.write(tmp_path / "clip.wav", 16000, wav)
    out = tmp_path / "out.json"
    assert transcribe_main([str(tmp_path / "clip.wav"), "--checkpoint", str(ckpt), "--beam", "1", "--device", "cpu",
                            "--output", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["text"] == greedy["text"]
    with pytest.raises(SystemExit, match="already is a language model"):
        transcribe_main([str(tmp_path / "clip.wav"), "--checkpoint", str(ckpt), "--lm", str(tmp_path / "lm.pt"),
                         "--device", "cpu", "--overwrite", "--output", str(out)])


def test_infer_s2s_refuses_lm_fusion_for_the_llm_decoder(lora_ckpt, tmp_path):
    from omegaconf import OmegaConf

    from avhubert.infer_s2s import InferConfig, decode

    lm = tmp_path / "lm.pt"
    lm.write_bytes(b"not read: the model kind is checked first")
    cfg = OmegaConf.structured(InferConfig)
    cfg.common_eval.path, cfg.common_eval.results_path = str(lora_ckpt[0]), str(tmp_path / "out")
    cfg.override.modalities, cfg.override.data = ["audio"], str(tmp_path)
    cfg.generation.lm_path, cfg.generation.lm_weight = str(lm), 0.5
    with pytest.raises(ValueError, match="shallow fusion is for seq2seq models .*av_hubert_llm's decoder already is a "
                                         "language model"):
        decode(cfg)
    assert os.path.isdir(tmp_path / "out")
