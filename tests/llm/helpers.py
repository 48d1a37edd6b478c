"""Shared by the `av_hubert_llm` tests (not a test module): a tiny LM folder and a tiny model over it."""

from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from avhubert.model_asr import HubertEncoderWrapper
from avhubert.model_llm import AVHubertLlm, AVHubertLlmConfig, load_causal_lm
from demo.synthetic_data import WORDS
from demo.tiny_llm import TinyLlmConfig, build_tiny_llm
from tests.plugin.tiny_model import tiny_model


def word_lines(n: int = 200, seed: int = 0) -> list:
    """`n` sentences of 3-6 of the synthetic corpus's class words (the text the corpus's transcripts use)."""
    g = torch.Generator().manual_seed(seed)
    lines = []
    for _ in range(n):
        k = int(torch.randint(3, 7, (1,), generator=g))
        lines.append(" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (k,), generator=g)))
    return lines


def make_tiny_lm(out: Path, arch: str = "llama", steps: int = 120) -> dict:
    """A tiny LM folder at `out` trained on `word_lines()`; returns build_tiny_llm's numbers."""
    return build_tiny_llm(word_lines(), out, TinyLlmConfig(arch=arch, steps=steps, vocab_size=300))


def llm_cfg(llm_path: Path, **overrides: Any) -> Any:
    cfg = OmegaConf.structured(AVHubertLlmConfig(w2v_path="unused", llm_path=str(llm_path), normalize=True, data="unused"))
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def tiny_llm_model(llm_path: Path, seed: int = 0, **overrides: Any) -> AVHubertLlm:
    """A tiny AV-HuBERT encoder (32-d) + projector + the LM at `llm_path`, eval mode."""
    cfg = llm_cfg(llm_path, **overrides)
    llm, tok = load_causal_lm(str(llm_path))
    torch.manual_seed(seed)
    return AVHubertLlm(cfg, HubertEncoderWrapper(tiny_model(seed=seed), cfg), llm, tok).eval()


def audio_sample(lengths=(20, 13, 17), seed: int = 0, target=None) -> dict:
    """An audio-only batch `{"net_input": {"source", "padding_mask"}}` (zero-padded, like the collater)."""
    g = torch.Generator().manual_seed(seed)
    tsz = max(lengths)
    audio = torch.randn(len(lengths), 104, tsz, generator=g)
    pad = torch.arange(tsz)[None] >= torch.tensor(lengths)[:, None]
    audio = audio.masked_fill(pad[:, None, :], 0.0)
    sample = {"net_input": {"source": {"audio": audio, "video": None}, "padding_mask": pad}}
    if target is not None:
        sample["target"], sample["target_lengths"] = target
    return sample


def llm_checkpoint(out_dir: Path, llm_path: Path, seed: int = 0, **overrides: Any) -> Path:
    """`out_dir/llm.pt`: an `av_hubert_llm` built through the task as fairseq builds it (over a tiny
    pre-trained checkpoint written there, audio only), its LoRA B matrices made nonzero (adapters that
    change the output), saved in fairseq's checkpoint layout (`tests.library.helpers.save_checkpoint`)."""
    from avhubert.task import AVHubertPretrainingConfig, AVHubertPretrainingTask
    from tests.clustering.tiny_checkpoint import _as_dict, write_tiny_checkpoint
    from tests.library.helpers import save_checkpoint

    out_dir.mkdir(parents=True, exist_ok=True)
    pre = write_tiny_checkpoint(out_dir / "pretrain", seed=seed)
    task_cfg = AVHubertPretrainingConfig(
        data=str(out_dir), label_dir=str(out_dir), labels=["wrd"], label_rate=-1, sample_rate=16000, normalize=True,
        stack_order_audio=4, fine_tuning=True, is_s2s=False, modalities=["audio"], single_target=True)
    task = AVHubertPretrainingTask.setup_task(task_cfg)
    model_cfg = OmegaConf.create(_as_dict(AVHubertLlmConfig(w2v_path=str(pre), llm_path=str(llm_path), normalize=True,
                                                            data=str(out_dir)), "av_hubert_llm"))
    for key, value in overrides.items():
        OmegaConf.update(model_cfg, key, value)
    torch.manual_seed(seed)
    model = task.build_model(model_cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(std=0.1)
    cfg = {"common": {"user_dir": None}, "task": _as_dict(task_cfg, "av_hubert_pretraining"),
           "model": OmegaConf.to_container(model_cfg, resolve=False)}
    return save_checkpoint(out_dir / "llm.pt", model, task, cfg)
