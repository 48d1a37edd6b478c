"""Model `av_hubert_llm`: AV-HuBERT encoder -> frame reduction -> projector -> a causal LM (NEW).

The recipe of VSP-LLM (AV-HuBERT + LLaMA with LoRA) and of "Whisper encoder + SmolLM2/Qwen decoder":

    source -> AV-HuBERT (frozen or trained) [B, T, D] -> optional de-duplication of consecutive
    near-identical frames (`frame_dedup_threshold`) -> optional stacking of `frame_stack` frames
    -> projector (Linear, GELU, Linear, RMSNorm) [B, T', H] -> the LM's input, between the
    prompt's text parts: `<bos>? prompt-before {speech} prompt-after` + transcript + `<eos>`.

The LM is any `AutoModelForCausalLM` folder (`model.llm_path`: Llama, Qwen2, SmolLM, ...), read
locally, never downloaded. Its own tokenizer encodes the transcripts: the model hands the task a
`LlmTextCodec` at build time (`task.set_text_codec`) and the dataset then carries the LM's token
ids. LoRA on the LM through `peft` (`llm_lora_r > 0`, `avhubert.lora.apply_lora`); with `llm_lora_r = 0` the LM is frozen
(`llm_freeze=true`) or fully trained. Loss: criterion `av_hubert_llm` (cross-entropy on the
transcript tokens). Decoding: `avhubert.llm_generation` (greedy / beam search, KV cache).

Batches are laid out with the prefix LEFT-padded and the transcript right-padded, so that every
row's transcript starts at the same position; positions count only real tokens
(`cumsum(attention_mask) - 1`), so padding and batch composition do not change any row.
Checkpoints leave out the LM's frozen weights (LoRA on the LM, or a frozen LM) and store a digest of
the weights files in `llm_path` instead, checked when they load (`llm_path` must stay where it was).
LoRA on the encoder as well (`model.lora_r > 0`, `avhubert.lora`, as for the seq2seq and CTC models):
then the frozen encoder weights are left out too, with the sha256 of `w2v_path`.
`python -m avhubert.merge_lora` folds both (`merge_adapters`): the encoder's into the weights the merged
checkpoint stores, the LM's into a complete Hugging Face folder written next to it, which becomes the
merged checkpoint's `llm_path` (`llm_lora_r = 0`, `lora_r = 0`; no peft, no original LM folder needed).
"""

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
from fairseq.models import BaseFairseqModel, register_model
from omegaconf import MISSING
from torch import Tensor, nn

from .config_fields import config_field as _f
from .lora import (AdapterCheckpointMixin, BaseReference, _digest_hex, _digest_tensor, apply_lora, file_sha256,
                   frozen_parameter_names, merge_lora, unique_parameters)
from .model_asr import AVHubertAsrConfig, HubertEncoderWrapper, _freeze_context, build_pretrained_encoder, setup_lora
from .modules.llm_bridge import Projector, dedup_frames, lengths_to_padding_mask, stack_frames

logger = logging.getLogger(__name__)

__all__ = ["AVHubertLlmConfig", "AVHubertLlm", "LlmTextCodec", "LlmPathError", "load_causal_lm",
           "llm_weights_sha256", "SPEECH_PLACEHOLDER", "IGNORE_INDEX", "LLM_DIGEST_KEY"]

SPEECH_PLACEHOLDER = "{speech}"
IGNORE_INDEX = -100  # target positions without a token (padding)
LLM_DIGEST_KEY = "llm_base_sha256"  # state-dict entry: digest of the LM weights a checkpoint left out
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_SPECIAL_IN_PROMPT = re.compile(r"<\|[^|<>]+\|>|</?s>|<unk>|<pad>|<bos>|<eos>|\[[A-Z_]+\]")


class LlmPathError(ValueError):
    """`model.llm_path` is not a usable causal-LM folder, or its tokenizer cannot serve the prompt."""


@dataclass
class AVHubertLlmConfig(AVHubertAsrConfig):
    llm_path: str = field(default=MISSING, metadata={"help": "local folder of a Hugging Face causal LM (config.json, weights, tokenizer)"})
    llm_prompt: str = _f("{speech} Transcript:", "prompt around the projected frames; must contain {speech} once; "
                         "special tokens written in it (e.g. <|im_start|>) must be the tokenizer's")
    llm_add_bos: bool = _f(True, "start with the tokenizer's bos token when it has one")
    llm_lora_r: int = _f(8, "LoRA rank on the LM (0: no LoRA)")
    llm_lora_alpha: float = _f(16.0, "LoRA alpha (scale alpha / r)")
    llm_lora_dropout: float = _f(0.05, "LoRA dropout")
    llm_lora_targets: List[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                                        metadata={"help": "LM module names (last name parts) that get LoRA adapters"})
    llm_freeze: bool = _f(True, "with llm_lora_r=0: keep the LM frozen (only the projector, and the encoder if not frozen, train)")
    freeze_encoder: bool = _f(True, "keep the AV-HuBERT encoder frozen (no gradients, not in the optimizer)")
    frame_dedup_threshold: float = _f(0.0, "merge consecutive encoder frames with cosine similarity >= this (0: off)")
    frame_stack: int = _f(1, "concatenate this many consecutive frames before the projector (temporal down-sampling)")
    projector_hidden_dim: int = _f(0, "projector hidden size (0: the LM's hidden size)")


class LlmTextCodec:
    """Transcripts <-> the LM tokenizer's ids: `codec(text)` -> `[U + 1]` ids ending with eos;
    `decode(ids)` -> text (stops at the first eos, special tokens dropped); `pad`, `eos` ids."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.eos = int(tokenizer.eos_token_id)
        self.pad = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else self.eos

    def __call__(self, text: str) -> Tensor:
        ids = self.tokenizer(text.strip(), add_special_tokens=False)["input_ids"]
        return torch.tensor([*ids, self.eos], dtype=torch.long)

    def decode(self, tokens: Tensor) -> str:
        ids = [int(t) for t in tokens.tolist()]
        if self.eos in ids:
            ids = ids[: ids.index(self.eos)]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()


def _require_folder(path: str) -> None:
    if not path or not os.path.isdir(path):
        raise LlmPathError(f"model.llm_path={path!r} is not a folder; give a local Hugging Face model folder "
                           "(config.json, model weights, tokenizer files), e.g. one saved by save_pretrained")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise LlmPathError(f"model.llm_path={path!r} has no config.json: not a Hugging Face model folder")


def load_causal_lm(path: str, weights: bool = True) -> Tuple[nn.Module, Any]:
    """(model, tokenizer) from a local folder; `weights=False` builds the model from its config only
    (its weights then come from a checkpoint). Raises LlmPathError naming what is wrong."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    _require_folder(path)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as e:
        raise LlmPathError(f"model.llm_path={path!r}: config.json cannot be read as a transformers config: {e}") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise LlmPathError(f"model.llm_path={path!r} holds a {config.model_type!r} model "
                           f"({', '.join(config.architectures or [])}), not a causal language model "
                           "(AutoModelForCausalLM: llama, qwen2, smollm3, mistral, gpt2, ...)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:
        raise LlmPathError(f"model.llm_path={path!r}: no usable tokenizer in the folder ({e})") from None
    if weights:
        try:
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        except OSError as e:
            raise LlmPathError(f"model.llm_path={path!r}: the model weights cannot be loaded ({e})") from None
    else:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model, tokenizer


def llm_weights_sha256(path: str) -> str:
    """sha256 over the sha256 of every weights file of the LM folder (sorted by name)."""
    names = sorted(n for n in os.listdir(path) if n.endswith(_WEIGHT_SUFFIXES))
    if not names:
        raise LlmPathError(f"model.llm_path={path!r} holds no weights file (*.safetensors, *.bin)")
    return hashlib.sha256("".join(f"{n}:{file_sha256(os.path.join(path, n))};" for n in names).encode()).hexdigest()


def split_prompt(prompt: str, tokenizer: Any, path: str = "") -> Tuple[str, str]:
    """(text before, text after) the `{speech}` placeholder; checks the tokenizer has an eos token
    and every special token the prompt spells out. Raises LlmPathError."""
    if prompt.count(SPEECH_PLACEHOLDER) != 1:
        raise ValueError(f"model.llm_prompt must contain {SPEECH_PLACEHOLDER} exactly once, got {prompt!r}")
    if tokenizer.eos_token is None or tokenizer.eos_token_id is None:
        raise LlmPathError(f"the tokenizer of {path!r} has no eos token: the transcript needs one to end "
                           "(set eos_token in tokenizer_config.json)")
    known = set(tokenizer.all_special_tokens) | set(getattr(tokenizer, "get_added_vocab", dict)().keys())
    missing = sorted({m for m in _SPECIAL_IN_PROMPT.findall(prompt) if m not in known})
    if missing:
        raise LlmPathError(f"model.llm_prompt uses special token(s) {missing} that the tokenizer of {path!r} lacks "
                           f"(its special tokens: {sorted(known)[:20]})")
    before, after = prompt.split(SPEECH_PLACEHOLDER)
    return before, after


@register_model("av_hubert_llm", dataclass=AVHubertLlmConfig)
class AVHubertLlm(AdapterCheckpointMixin, BaseFairseqModel):
    """AV-HuBERT encoder + projector + causal LM. `forward(source, padding_mask, target,
    target_lengths)` -> {"logits" [B, U, V] for each target position, "target" [B, U] (IGNORE_INDEX
    at padding)}."""

    generator_kind = "llm"  # read by the task's build_generator: avhubert.llm_generation

    def __init__(self, cfg: AVHubertLlmConfig, encoder: HubertEncoderWrapper, llm: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        if cfg.frame_stack < 1:
            raise ValueError(f"model.frame_stack must be >= 1, got {cfg.frame_stack}")
        if not 0.0 <= cfg.frame_dedup_threshold <= 1.0:
            raise ValueError(f"model.frame_dedup_threshold must be in [0, 1] (0: off), got {cfg.frame_dedup_threshold}")
        self.cfg = cfg
        self.encoder = encoder
        self.tokenizer = tokenizer
        before, after = split_prompt(cfg.llm_prompt, tokenizer, cfg.llm_path)  # checks the tokenizer first
        self.codec = LlmTextCodec(tokenizer)
        self.num_updates = 0
        self.freeze_finetune_updates = cfg.freeze_finetune_updates
        pre = tokenizer(before, add_special_tokens=False)["input_ids"] if before else []
        if cfg.llm_add_bos and tokenizer.bos_token_id is not None:
            pre = [tokenizer.bos_token_id, *pre]
        post = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
        self.register_buffer("prompt_pre", torch.tensor(pre, dtype=torch.long), persistent=False)
        self.register_buffer("prompt_post", torch.tensor(post, dtype=torch.long), persistent=False)
        hidden = llm.config.hidden_size
        emb = llm.get_input_embeddings().weight
        scale = float(emb.detach().float().pow(2).mean().sqrt())
        enc_dim = encoder.w2v_model.cfg.encoder_embed_dim * cfg.frame_stack
        self.projector = Projector(enc_dim, cfg.projector_hidden_dim or hidden, hidden, out_scale=scale)
        if cfg.freeze_encoder:
            for p in encoder.parameters():
                p.requires_grad_(False)
        if cfg.llm_lora_r > 0:  # peft adapters in place (avhubert.lora); the LM's own weights freeze
            apply_lora(llm, cfg.llm_lora_r, cfg.llm_lora_alpha, cfg.llm_lora_dropout, list(cfg.llm_lora_targets))
        elif cfg.llm_freeze:
            for p in llm.parameters():
                p.requires_grad_(False)
        self.llm = llm
        self.max_positions_llm = int(getattr(llm.config, "max_position_embeddings", 0) or 0)
        self.llm_base: Optional[BaseReference] = None  # set: checkpoints leave out the frozen LM weights

    # ------------------------------------------------------------- checkpoints without the frozen LM
    def reference_llm_base(self) -> None:
        """Leave the frozen LM weights out of `state_dict()` from now on (they load from `llm_path`, whose
        weights digest is saved instead and checked on load). For LoRA on the LM or a frozen LM."""
        self.llm_base = BaseReference(self.cfg.llm_path, llm_weights_sha256(self.cfg.llm_path))

    def _frozen_llm_keys(self, prefix: str = "") -> List[str]:
        """State-dict keys of the LM's frozen parameters, every name of a shared (tied) one included."""
        return [f"{prefix}llm.{k}" for k in frozen_parameter_names(self.llm)]

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        out = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        if self.llm_base is not None:
            for key in self._frozen_llm_keys(prefix):
                out.pop(key, None)
            out[prefix + LLM_DIGEST_KEY] = _digest_tensor(self.llm_base.sha256)
        return out

    def load_state_dict(self, state_dict: Any, strict: bool = True, *args: Any, **kwargs: Any) -> Any:
        given = dict(state_dict)
        if LLM_DIGEST_KEY in given:
            saved = _digest_hex(given.pop(LLM_DIGEST_KEY))
            current = self.llm_base.sha256 if self.llm_base is not None else llm_weights_sha256(self.cfg.llm_path)
            if saved != current:
                raise LlmPathError(
                    f"the LM weights in model.llm_path={self.cfg.llm_path!r} are not the ones this checkpoint was "
                    f"trained on (weights digest {current}, the checkpoint's {saved}): the checkpoint holds only the "
                    "trained LM parameters; point model.llm_path at the original LM folder")
            own = self.llm.state_dict()
            for key in self._frozen_llm_keys():
                given.setdefault(key, own[key[len("llm."):]])
        return super().load_state_dict(given, strict, *args, **kwargs)

    def describe(self) -> str:
        """Trainable / total parameters and what trains, for the log."""
        cfg = self.cfg
        params = [p for _, p in unique_parameters(self)]  # a tied LM head counts once
        trainable = sum(p.numel() for p in params if p.requires_grad)
        total = sum(p.numel() for p in params)
        encoder = f"LoRA r={cfg.lora_r}" if getattr(cfg, "lora_r", 0) > 0 else "frozen" if cfg.freeze_encoder else "trained"
        lm = f"LoRA r={cfg.llm_lora_r}" if cfg.llm_lora_r > 0 else "frozen" if cfg.llm_freeze else "trained"
        return (f"av_hubert_llm: {trainable:,} trainable of {total:,} parameters ({100.0 * trainable / max(total, 1):.2f} %): "
                f"encoder {encoder}, LM {lm}")

    @classmethod
    def build_model(cls, cfg: AVHubertLlmConfig, task: Any) -> "AVHubertLlm":
        if not getattr(task.cfg, "fine_tuning", False):
            raise ValueError("av_hubert_llm needs a fine-tuning task (task.fine_tuning=true, labels=[wrd])")
        llm, tokenizer = load_causal_lm(cfg.llm_path)
        w2v = build_pretrained_encoder(cfg, task)
        model = cls(cfg, HubertEncoderWrapper(w2v, cfg), llm, tokenizer)
        setup_lora(model, w2v, cfg)  # model.lora_r > 0: LoRA on the encoder too (avhubert/lora.py)
        if cfg.llm_lora_r > 0 or cfg.llm_freeze:
            model.reference_llm_base()
        logger.info("%s", model.describe())
        if hasattr(task, "set_text_codec"):
            task.set_text_codec(model.codec)
        return model

    # ------------------------------------------------------------- parts
    @property
    def lm(self) -> nn.Module:
        """The causal LM (with its LoRA layers, if any)."""
        return self.llm

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        return self.lm.get_input_embeddings()(tokens)

    def encode(self, source: Dict[str, Optional[Tensor]], padding_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """-> projected frames `[B, T', H]`, their padding mask `[B, T']`, encoder steps per row `[B]`."""
        # frozen: no graph at all (adapters on the encoder, if any, keep it: they train)
        frozen = not any(p.requires_grad for p in self.encoder.parameters())
        ctx = torch.no_grad() if frozen else _freeze_context(self)
        with ctx:
            out = self.encoder(source=source, padding_mask=padding_mask)
        x = out["encoder_out"].transpose(0, 1)  # [B, T, D]
        pad = out["encoder_padding_mask"]
        if pad is None:
            pad = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        steps = (~pad).sum(1)
        if self.cfg.frame_dedup_threshold > 0:
            x, pad = dedup_frames(x, pad, self.cfg.frame_dedup_threshold)
        x, pad = stack_frames(x, pad, self.cfg.frame_stack)
        dtype = self.lm.get_input_embeddings().weight.dtype
        x = self.projector(x.to(self.projector.fc1.weight.dtype)).to(dtype)
        return x.masked_fill(pad[..., None], 0.0), pad, steps

    def build_prefix(self, frames: Tensor, frame_pad: Tensor) -> Tuple[Tensor, Tensor]:
        """Left-padded prefix embeddings `[B, L, H]` and attention mask `[B, L]` (1 = real) of
        `prompt-before + frames + prompt-after`."""
        bsz = frames.size(0)
        pre = self.embed_tokens(self.prompt_pre)[None].expand(bsz, -1, -1)
        post = self.embed_tokens(self.prompt_post)[None].expand(bsz, -1, -1)
        n_frames = (~frame_pad).sum(1)
        lengths = n_frames + pre.size(1) + post.size(1)
        width = int(lengths.max())
        hidden = frames.size(-1)
        out = frames.new_zeros(bsz, width, hidden)
        mask = lengths_to_padding_mask(lengths, width).flip(1)  # True at (left) padding
        # real frames are each row's prefix (right padding): place them right-aligned
        for i in range(bsz):
            n, start = int(n_frames[i]), width - int(lengths[i])
            row = torch.cat([pre[i], frames[i, :n], post[i]], dim=0)
            out[i, start:] = row
        return out, (~mask).long()

    @staticmethod
    def positions(attention_mask: Tensor) -> Tensor:
        """Position ids counting real tokens only (0 at left padding)."""
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def run_lm(self, embeds: Tensor, attention_mask: Tensor, cache: Any = None, logits_to_keep: int = 0,
               position_ids: Optional[Tensor] = None) -> Any:
        """One LM call on input embeddings (positions from the mask unless given)."""
        if position_ids is None:
            position_ids = self.positions(attention_mask)[:, -embeds.size(1):]
        return self.lm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                       use_cache=cache is not None, logits_to_keep=logits_to_keep)

    # ------------------------------------------------------------- training
    def forward(self, source: Dict[str, Optional[Tensor]], padding_mask: Optional[Tensor] = None,
                target: Optional[Tensor] = None, target_lengths: Optional[Tensor] = None, **kwargs: Any) -> Dict[str, Tensor]:
        if target is None:
            raise ValueError("av_hubert_llm.forward needs the target token ids (train with criterion._name=av_hubert_llm)")
        frames, frame_pad, _ = self.encode(source, padding_mask)
        prefix, prefix_mask = self.build_prefix(frames, frame_pad)
        if target_lengths is None:
            target_lengths = (target != self.codec.pad).sum(1)
        tgt_pad = lengths_to_padding_mask(target_lengths.to(target.device), target.size(1))
        tokens = target.masked_fill(tgt_pad, self.codec.pad)
        embeds = torch.cat([prefix, self.embed_tokens(tokens)], dim=1)
        mask = torch.cat([prefix_mask, (~tgt_pad).long()], dim=1)
        # logits at the last prefix position and every target position but the last predict the targets
        out = self.run_lm(embeds, mask, logits_to_keep=target.size(1) + 1)
        logits = out.logits[:, :-1]
        return {"logits": logits, "target": target.masked_fill(tgt_pad, IGNORE_INDEX)}

    def set_num_updates(self, num_updates: int) -> None:
        super().set_num_updates(num_updates)
        self.num_updates = num_updates

    def max_positions(self) -> Any:
        return None

    def merge_lora(self) -> None:
        """Fold the LM's LoRA adapters into its weights (export; the state-dict keys become the plain LM's,
        and it holds every LM weight again)."""
        merge_lora(self.llm)
        self.llm_base = None

    def merge_adapters(self) -> Optional[BaseReference]:
        """Fold every adapter into full weights: the encoder's (`model.lora_r`; its weights then train as
        `freeze_encoder` says) and the LM's (`merge_lora`). From then on `state_dict()` holds every weight
        under the plain keys (the LM's too, until `reference_llm_base` is called again). Returns the encoder's
        old base reference (None without encoder LoRA). `avhubert.merge_lora` writes the folded LM as a
        folder of its own."""
        base, self.lora_base = self.lora_base, None
        if base is not None:
            merge_lora(self.encoder)
            for param in self.encoder.parameters():
                param.requires_grad_(not self.cfg.freeze_encoder)
        if self.cfg.llm_lora_r > 0:
            self.merge_lora()
        return base
