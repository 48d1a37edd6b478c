"""`av_hubert_llm` without fairseq training: the tiny LM builder, the projector path, LoRA, decoding
(greedy == beam 1, KV cache == recomputation, batching == one by one), the loss, and the errors."""

import json
import math
import shutil
from argparse import Namespace

import pytest
import torch

from avhubert.beam_search import BeamSearchConfig
from avhubert.criterion_llm import LlmCriterion
from avhubert.llm_generation import LlmGenerator
from avhubert.model_llm import LlmPathError, load_causal_lm
from avhubert.modules.llm_bridge import dedup_frames, stack_frames
from demo.synthetic_data import WORDS
from tests.llm.helpers import audio_sample, make_tiny_lm, tiny_llm_model


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm") / "tiny_llama"
    stats = make_tiny_lm(out)
    return out, stats


def test_tiny_lm_is_a_trained_causal_lm_folder(lm_dir):
    path, stats = lm_dir
    # random sequences of 12 words: a model that learned the words is below ln 12 nats per token
    # (it starts near ln 300, uniform over the vocabulary)
    assert stats["loss_first"] > 5 and stats["loss_last"] < math.log(len(WORDS)), stats
    model, tok = load_causal_lm(str(path))
    assert type(model).__name__ == "LlamaForCausalLM" and tok.eos_token == "</s>" and tok.pad_token == "<pad>"
    ids = tok("five two zero", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "five two zero"
    # the LM prefers a sentence of corpus words over the same words shuffled into nonsense order at the character level
    def nll(text):
        x = torch.tensor([[tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"], tok.eos_token_id]])
        with torch.no_grad():
            return float(model(input_ids=x, labels=x).loss)
    assert nll("five two zero six") < nll("vfie otw ezor xsi")


def test_qwen2_architecture_builds_loads_and_decodes(tmp_path):
    stats = make_tiny_lm(tmp_path / "qwen", arch="qwen2", steps=5)
    lm, _ = load_causal_lm(str(tmp_path / "qwen"))
    assert type(lm).__name__ == "Qwen2ForCausalLM" and stats["params"] > 0
    model = tiny_llm_model(tmp_path / "qwen", llm_lora_r=2, frame_dedup_threshold=0.5)
    sample = audio_sample()
    _same(_gen(model, sample, 2), _gen(model, sample, 2, cache=False))


def _lora_params(model, r):
    cfg = model.lm.config
    head = cfg.hidden_size // cfg.num_attention_heads
    q = o = cfg.hidden_size + cfg.num_attention_heads * head
    kv = cfg.hidden_size + cfg.num_key_value_heads * head
    return r * (q + o + 2 * kv) * cfg.num_hidden_layers


def test_lora_trainable_parameters(lm_dir):
    model = tiny_llm_model(lm_dir[0], llm_lora_r=4)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    projector = sum(p.numel() for p in model.projector.parameters())
    assert sum(trainable.values()) == _lora_params(model, 4) + projector
    assert all(n.startswith("projector.") or ".lora_" in n for n in trainable), sorted(trainable)
    assert not any(p.requires_grad for p in model.encoder.parameters())  # freeze_encoder=true (default)
    full = tiny_llm_model(lm_dir[0], llm_lora_r=0, llm_freeze=False, freeze_encoder=False)
    assert all(p.requires_grad for p in full.parameters())
    frozen = tiny_llm_model(lm_dir[0], llm_lora_r=0)
    assert sum(p.numel() for p in frozen.parameters() if p.requires_grad) == projector


def test_training_lowers_the_loss_and_decoding_matches_the_training_forward(lm_dir):
    """A few steps on one batch lower the loss (gradients flow through the frozen LM into LoRA and the
    projector); greedy decoding (KV cache, left-padded prefix) then agrees token by token with the
    training forward pass (one call, prefix + transcript) fed its own hypotheses."""
    model = tiny_llm_model(lm_dir[0], llm_lora_r=4)
    texts = ["five two zero six", "one three", "seven four four go"]
    ids = [model.codec(t) for t in texts]
    target = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=model.codec.pad)
    sample = audio_sample(target=(target, torch.tensor([len(i) for i in ids])))
    crit = LlmCriterion(Namespace(), sentence_avg=True)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(15):
        loss, size, log = crit(model, sample)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert log["ntokens"] == sum(len(i) for i in ids) and size == 3
    assert losses[-1] < losses[0] / 2, losses
    model.eval()
    hyps = LlmGenerator(BeamSearchConfig(beam=1, max_len_a=0.0, max_len_b=12)).generate([model], sample)
    hyp_ids = [h[0]["tokens"] for h in hyps]
    assert any(len(h) > 1 for h in hyp_ids)
    tgt = torch.nn.utils.rnn.pad_sequence(hyp_ids, batch_first=True, padding_value=model.codec.pad)
    src = sample["net_input"]
    with torch.no_grad():
        out = model(source=src["source"], padding_mask=src["padding_mask"], target=tgt,
                    target_lengths=torch.tensor([len(h) for h in hyp_ids]))
    for i, h in enumerate(hyp_ids):
        n = len(h) if h[-1] == model.codec.eos else len(h) - 1  # a forced eos at max length is no argmax
        assert out["logits"][i, :n].argmax(-1).tolist() == h[:n].tolist()
        logp = torch.log_softmax(out["logits"][i, : len(h)], -1).gather(1, h[:, None])[:, 0]
        assert torch.allclose(logp[:n], hyps[i][0]["positional_scores"][:n], atol=1e-4)


def _gen(model, sample, beam, cache=True, **kw):
    cfg = BeamSearchConfig(beam=beam, max_len_a=kw.pop("a", 0.0), max_len_b=kw.pop("b", 6), **kw)
    return LlmGenerator(cfg, use_cache=cache).generate([model], sample)


def _same(h1, h2):
    assert len(h1) == len(h2)
    for a, b in zip(h1, h2):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert x["tokens"].tolist() == y["tokens"].tolist()
            assert x["score"] == pytest.approx(y["score"], abs=1e-4)


def test_greedy_equals_beam_one_and_cache_equals_recompute(lm_dir):
    model = tiny_llm_model(lm_dir[0], llm_lora_r=4, frame_stack=2)
    sample = audio_sample()
    greedy = _gen(model, sample, 1)
    gen = LlmGenerator(BeamSearchConfig(beam=1, max_len_a=0.0, max_len_b=6))
    with torch.no_grad():
        beam1 = gen.beam_search(model, sample)
    _same(greedy, beam1)
    assert all(len(h[0]["tokens"]) >= 1 for h in greedy)
    _same(greedy, _gen(model, sample, 1, cache=False))
    beam3 = _gen(model, sample, 3)
    assert all(len(h) == 3 and h[0]["score"] >= h[1]["score"] >= h[2]["score"] for h in beam3)
    _same(beam3, _gen(model, sample, 3, cache=False))
    assert all(h[0]["score"] >= g[0]["score"] - 1e-5 for h, g in zip(beam3, greedy))  # beam never scores worse here


def test_batched_decoding_equals_one_by_one_and_max_len_follows_input(lm_dir):
    model = tiny_llm_model(lm_dir[0], llm_lora_r=4)
    lengths = (20, 13, 17)
    sample = audio_sample(lengths)
    both = _gen(model, sample, 2, b=3, a=0.25)
    for i, n in enumerate(lengths):
        src = sample["net_input"]
        one = {"net_input": {"source": {"audio": src["source"]["audio"][i : i + 1, :, :n], "video": None},
                             "padding_mask": src["padding_mask"][i : i + 1, :n]}}
        _same([both[i]], _gen(model, one, 2, b=3, a=0.25))
        assert all(len(h["tokens"]) <= int(0.25 * n + 3) for h in both[i])


def test_frame_reduction():
    x = torch.tensor([[[1.0, 0], [2, 0], [0, 1], [0, 3], [1, 1]], [[1, 0], [0, 1], [0, 0], [0, 0], [0, 0]]])
    pad = torch.tensor([[False] * 5, [False, False, True, True, True]])
    y, ypad = dedup_frames(x, pad, threshold=0.99)
    assert ypad.tolist() == [[False, False, False], [False, False, True]]
    assert torch.allclose(y[0], torch.tensor([[1.5, 0], [0, 2], [1, 1]])) and torch.allclose(y[1, :2], x[1, :2])
    s, spad = stack_frames(x, pad, 2)
    assert s.shape == (2, 3, 4) and spad.tolist() == [[False, False, False], [False, True, True]]
    assert s[0, 2].tolist() == [1, 1, 0, 0]


def test_merged_lora_gives_the_same_logits(lm_dir):
    model = tiny_llm_model(lm_dir[0], llm_lora_r=4)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)  # adapters that change the output
    ids = torch.tensor([[5, 9, 12, 30]])
    with torch.no_grad():
        before = model.lm(input_ids=ids).logits
        model.merge_lora()
        after = model.lm(input_ids=ids).logits
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert torch.allclose(before, after, atol=1e-5)


def test_bad_llm_path_and_prompt_errors(lm_dir, tmp_path):
    from transformers import ViTConfig

    with pytest.raises(LlmPathError, match="is not a folder"):
        load_causal_lm(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LlmPathError, match="no config.json"):
        load_causal_lm(str(tmp_path / "empty"))
    ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path / "vit")
    with pytest.raises(LlmPathError, match="'vit' model .*not a causal language model"):
        load_causal_lm(str(tmp_path / "vit"))
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(lm_dir[0] / name, no_weights / name)
    with pytest.raises(LlmPathError, match="the model weights cannot be loaded"):
        load_causal_lm(str(no_weights))
    with pytest.raises(LlmPathError, match=r"special token\(s\) \['<\|im_end\|>', '<\|im_start\|>'\] that the tokenizer"):
        tiny_llm_model(lm_dir[0], llm_prompt="<|im_start|>user {speech}<|im_end|>")
    with pytest.raises(ValueError, match="must contain \\{speech\\} exactly once"):
        tiny_llm_model(lm_dir[0], llm_prompt="Transcribe:")
    with pytest.raises(ValueError, match="LoRA target 'qkv': it matches no module.*q_proj"):
        tiny_llm_model(lm_dir[0], llm_lora_targets=["qkv"])
    # a tokenizer without eos: the transcript could never end
    no_eos = tmp_path / "no_eos"
    shutil.copytree(lm_dir[0], no_eos)
    cfg_file = no_eos / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_file.read_text())
    tok_cfg["eos_token"] = None
    cfg_file.write_text(json.dumps(tok_cfg))
    with pytest.raises(LlmPathError, match="has no eos token"):
        tiny_llm_model(no_eos)


def test_task_hook_uses_the_lm_tokenizer(lm_dir, tmp_path):
    """The model hands the task its codec: labels are the LM's ids (+ eos), references decode back exactly,
    the task builds the LLM generator and refuses shallow fusion for it."""
    from avhubert.task import AVHubertPretrainingConfig, AVHubertPretrainingTask

    task = AVHubertPretrainingTask(AVHubertPretrainingConfig(data=str(tmp_path), fine_tuning=True, labels=["wrd"],
                                                             single_target=True))
    model = tiny_llm_model(lm_dir[0])
    task.set_text_codec(model.codec)
    ids = model.codec("seven go stop")
    assert ids[-1] == model.codec.eos and model.codec.eos not in ids[:-1].tolist()
    padded = torch.cat([ids, torch.full((3,), model.codec.pad)])
    assert task.target_text(padded) == "seven go stop" == task.decode_tokens(ids)
    gen = Namespace(beam=2, max_len_a=0.0, max_len_b=5, min_len=1, lenpen=1.0, unkpen=0.0, temperature=1.0,
                    no_repeat_ngram_size=0, unnormalized=False)
    assert isinstance(task.build_generator([model], gen), LlmGenerator)
    with pytest.raises(ValueError, match="does not apply to av_hubert_llm"):
        task.build_generator([model], gen, extra_gen_cls_kwargs={"lm_model": object()})


def test_encoder_lora_trains_and_checkpoints_hold_only_what_trained(lm_dir, tmp_path):
    """model.lora_r > 0 (avhubert/lora.py) on top of a frozen encoder: the encoder's adapters get gradients,
    the state dict leaves out every frozen weight (encoder and LM) and loads back into a rebuilt model."""
    from avhubert.lora import BASE_DIGEST_KEY
    from avhubert.model_asr import setup_lora

    base = tmp_path / "base.pt"
    base.write_bytes(b"stand-in for the pre-trained checkpoint (only its sha256 is read)")

    def build():
        model = tiny_llm_model(lm_dir[0], llm_lora_r=4, lora_r=2, w2v_path=str(base))
        setup_lora(model, model.encoder.w2v_model, model.cfg)
        return model

    model = build()
    enc_lora = [n for n, p in model.encoder.named_parameters() if p.requires_grad and ".lora_" in n]
    assert enc_lora and "trainable of" in model.describe() and "encoder LoRA r=2" in model.describe()
    texts = ["five two", "one", "go stop six"]
    ids = [model.codec(t) for t in texts]
    target = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=model.codec.pad)
    sample = audio_sample(target=(target, torch.tensor([len(i) for i in ids])))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)  # nonzero B: gradients reach the A matrices too
    model.train()
    loss, _, _ = LlmCriterion(Namespace(), sentence_avg=True)(model, sample)
    loss.backward()
    grads = dict(model.encoder.named_parameters())
    assert all(grads[n].grad is not None and grads[n].grad.abs().sum() > 0 for n in enc_lora)
    state = model.state_dict()
    frozen_llm = [k for k in state if k.startswith("llm.") and ".lora_" not in k]
    # the frozen LM is left out under every name, the tied output projection (the embeddings' second name)
    # too: avhubert.lora's frozen_parameter_names lists each name of a shared parameter
    assert BASE_DIGEST_KEY in state and frozen_llm == []
    assert model.lm.config.tie_word_embeddings
    assert set(k for k in state if k.startswith("projector.")) == {f"projector.{k}" for k in model.projector.state_dict()}
    model.eval()
    again = build()
    again.load_state_dict(state, strict=True)
    with torch.no_grad():
        a = _gen(model, sample, 2)
        b = _gen(again, sample, 2)
    _same(a, b)


def test_checkpoints_leave_out_the_frozen_lm_and_check_its_digest(lm_dir, tmp_path):
    from avhubert.model_llm import LLM_DIGEST_KEY

    model = tiny_llm_model(lm_dir[0], llm_lora_r=4)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    full = model.state_dict()
    model.reference_llm_base()
    state = model.state_dict()
    kept = {k for k in state if k.startswith("llm.")}
    assert LLM_DIGEST_KEY in state and kept and all(".lora_" in k for k in kept)  # tied lm_head left out too
    assert sum(v.numel() for k, v in state.items() if k.startswith("llm.")) == _lora_params(model, 4)
    sample = audio_sample()
    want = _gen(model, sample, 2)
    for saved in (state, full):  # adapter-only, and a full state dict (as saved before)
        again = tiny_llm_model(lm_dir[0], llm_lora_r=4, seed=1)
        again.reference_llm_base()
        again.load_state_dict(saved, strict=True)
        _same(want, _gen(again, sample, 2))
    changed = tmp_path / "changed_lm"
    shutil.copytree(lm_dir[0], changed)
    lm, tok = load_causal_lm(str(changed))
    with torch.no_grad():
        lm.get_input_embeddings().weight[0, 0] += 1.0
    lm.save_pretrained(changed)
    other = tiny_llm_model(changed, llm_lora_r=4)
    with pytest.raises(LlmPathError, match="are not the ones this checkpoint was trained on"):
        other.load_state_dict(state, strict=True)


def test_llm_task_needs_no_label_dictionary(lm_dir, tmp_path):
    """Transcripts of an av_hubert_llm run are tokenised by the LM: the task must not ask for a
    dict.wrd.txt (the criterion's base class reads task.target_dictionary), while a seq2seq task does."""
    from avhubert.model_llm import LlmTextCodec
    from avhubert.task import AVHubertPretrainingConfig, AVHubertPretrainingTask

    cfg = AVHubertPretrainingConfig(data=str(tmp_path), label_dir=str(tmp_path), labels=["wrd"], fine_tuning=True)
    seq2seq = AVHubertPretrainingTask(cfg)
    with pytest.raises(FileNotFoundError, match="dict.wrd.txt"):
        seq2seq.target_dictionary
    task = AVHubertPretrainingTask(cfg)
    _, tokenizer = load_causal_lm(str(lm_dir[0]))
    task.set_text_codec(LlmTextCodec(tokenizer))
    assert task.target_dictionary is None
    assert LlmCriterion(task).padding_idx == -100
