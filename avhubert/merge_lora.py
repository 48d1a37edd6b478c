"""Merge the LoRA adapters of a fine-tuning checkpoint into full weights.

    python -m avhubert.merge_lora --checkpoint EXP/checkpoints/checkpoint_best.pt --out model.pt \
        [--w2v-path PRETRAINED.pt] [--llm-path LM_FOLDER] [--llm-out MERGED_LM_FOLDER]

Seq2seq / CTC / classifier (`model.lora_r > 0`): the checkpoint stores only adapters, heads and buffers
plus the sha256 of its base, the pre-trained checkpoint `model.w2v_path`. This rebuilds the model from
that base (checking the digest; `--w2v-path` gives the base's new location when it moved), folds every
adapter into its layer (`W + B A * alpha / r`) and writes an ordinary fine-tuned checkpoint: the
state-dict keys of a model trained without LoRA, `model.lora_r = 0`, no optimizer state, no need for
the base. Code that knows nothing of LoRA loads it with `strict=True`
(`checkpoint_utils.load_model_ensemble_and_task`, `infer_s2s.py`, the original AV-HuBERT's loader for
the key layout).

`av_hubert_llm` (`model.llm_lora_r > 0` and / or `model.lora_r > 0`): its checkpoints never hold the
frozen LM; they hold the projector, the trained adapters and the encoder (or its adapters), plus the
digest of the LM weights in the folder `model.llm_path` (`--llm-path`: its new location), which they
are loaded from. Merging folds the encoder's adapters into the encoder weights stored in the checkpoint
(`model.lora_r = 0`, no need for `w2v_path`), and the LM's (peft) adapters into the LM's weights, which
are written as a complete Hugging Face model folder (config, tokenizer, `model.safetensors`; `--llm-out`,
by default `<out>_llm/` next to `--out`), loadable by `AutoModelForCausalLM` without peft. The merged
checkpoint refers to that folder as its `model.llm_path` (absolute path and weights digest, like every
av_hubert_llm checkpoint with a frozen LM) with `model.llm_lora_r = 0`: the checkpoint and its merged LM
folder are all it needs (neither the original LM folder nor the pre-trained checkpoint), and it decodes
as the LoRA checkpoint did. Without LM adapters the LM stays the original `llm_path`.

The writes are atomic; an existing `--llm-out` is replaced only when an earlier merge wrote it.
"""

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from typing import Any, Dict, List, Optional

from fairseq import checkpoint_utils

from avhubert.checkpoint import exit_on_checkpoint_error, load_checkpoint
from avhubert.checkpoint_io import atomic_torch_save
from avhubert.lora import BASE_DIGEST_KEY, parameter_report

logger = logging.getLogger("avhubert.merge_lora")

__all__ = ["merge_checkpoint", "default_llm_out", "MERGED_LM_MARKER", "main"]

MERGED_LM_MARKER = "lora_merged.json"  # written into a merged LM folder: where it came from


def default_llm_out(out: str) -> str:
    """Where the merged LM folder of an `av_hubert_llm` checkpoint goes by default: `<out without suffix>_llm`."""
    return os.path.splitext(os.path.abspath(out))[0] + "_llm"


def _write_lm_folder(model: Any, folder: str, provenance: Dict[str, Any]) -> str:
    """Save the (merged) LM of `model` and its tokenizer as a Hugging Face folder at `folder`, atomically
    (written next to it, then renamed); returns the absolute path."""
    folder = os.path.abspath(folder)
    if os.path.lexists(folder) and not os.path.isfile(os.path.join(folder, MERGED_LM_MARKER)):
        raise ValueError(f"--llm-out {folder} exists and was not written by avhubert.merge_lora: give another folder "
                         "for the merged LM (or remove it)")
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.", dir=parent)
    try:
        model.llm.save_pretrained(tmp, safe_serialization=True)
        model.tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, MERGED_LM_MARKER), "w", encoding="utf-8") as f:
            json.dump(provenance, f, indent=2)
        if os.path.lexists(folder):
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def merge_checkpoint(path: str, out: str, w2v_path: Optional[str] = None, llm_path: Optional[str] = None,
                     llm_out: Optional[str] = None) -> Dict[str, Any]:
    """Write the merged, LoRA-free checkpoint of the LoRA checkpoint `path` to `out` (and, for an
    `av_hubert_llm` with LM adapters, the merged LM folder to `llm_out`); returns the checkpoint's state."""
    import avhubert  # noqa: F401  (registers the task and models, as common.user_dir does)

    if os.path.abspath(path) == os.path.abspath(out):
        raise ValueError(f"--out {out} is the input checkpoint: write the merged checkpoint to another file")
    with exit_on_checkpoint_error():
        state = load_checkpoint(path)
    model_cfg = (state.get("cfg") or {}).get("model") or {}
    is_llm = model_cfg.get("_name") == "av_hubert_llm"
    lora_r = int(model_cfg.get("lora_r", 0) or 0)
    llm_lora_r = int(model_cfg.get("llm_lora_r", 0) or 0) if is_llm else 0
    encoder_lora = lora_r > 0 and BASE_DIGEST_KEY in state.get("model", {})
    if not encoder_lora and llm_lora_r <= 0:
        what = f"model.lora_r={lora_r}" + (f", model.llm_lora_r={llm_lora_r}" if is_llm else "")
        raise ValueError(f"{path} is not a LoRA checkpoint ({what}, no {BASE_DIGEST_KEY} among its weights): "
                         "there is nothing to merge")
    if llm_path and not is_llm:
        raise ValueError(f"--llm-path is for av_hubert_llm checkpoints; {path} holds a {model_cfg.get('_name')!r} model")
    overrides = {k: v for k, v in (("w2v_path", w2v_path), ("llm_path", llm_path)) if v}
    with exit_on_checkpoint_error():
        models, _cfg, _task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides=overrides or None,
                                                                            strict=True)
    model = models[0]
    base = model.merge_adapters()  # from here on state_dict() is the full, plain one
    new_model_cfg = dict(model_cfg, lora_r=0)
    info: Dict[str, Any] = {"checkpoint": os.path.abspath(path)}
    if base is not None:
        info.update(base=base.path, base_sha256=base.sha256, lora_r=lora_r,
                    lora_alpha=float(model_cfg.get("lora_alpha", 0.0)), lora_targets=list(model_cfg.get("lora_targets") or []))
    if llm_lora_r > 0:
        info.update(llm_path=os.path.abspath(llm_path or model_cfg["llm_path"]), llm_lora_r=llm_lora_r,
                    llm_lora_alpha=float(model_cfg.get("llm_lora_alpha", 0.0)),
                    llm_lora_targets=list(model_cfg.get("llm_lora_targets") or []))
        folder = _write_lm_folder(model, llm_out or default_llm_out(out), info)
        model.cfg.llm_path = folder
        model.reference_llm_base()  # the checkpoint refers to the merged LM folder (path + weights digest)
        info["llm_out"] = folder
        # the folded LM stays frozen, as it was under LoRA: llm_freeze=true keeps it out of the checkpoint
        new_model_cfg.update(llm_lora_r=0, llm_path=folder, llm_freeze=True)
    elif is_llm and llm_path:
        new_model_cfg.update(llm_path=os.path.abspath(llm_path))
    logger.info("merged %s: %s", path, parameter_report(model))
    merged = dict(state)
    merged["model"] = model.state_dict()
    merged["cfg"] = dict(state["cfg"], model=new_model_cfg)
    merged.pop("last_optimizer_state", None)  # it held the adapters' optimizer state only
    merged["extra_state"] = dict(state.get("extra_state") or {}, lora_merged=info)
    atomic_torch_save(merged, out)
    return merged


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="LoRA fine-tuning checkpoint (model.lora_r > 0, or av_hubert_llm with model.llm_lora_r > 0)")
    parser.add_argument("--out", required=True, help="merged checkpoint to write")
    parser.add_argument("--w2v-path", default=None,
                        help="the base pre-trained checkpoint, when it is no longer at the checkpoint's model.w2v_path")
    parser.add_argument("--llm-path", default=None,
                        help="av_hubert_llm: the LM folder, when it is no longer at the checkpoint's model.llm_path")
    parser.add_argument("--llm-out", default=None,
                        help="av_hubert_llm: folder for the merged LM (default: <out without suffix>_llm)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    if not os.path.isfile(args.checkpoint):
        raise SystemExit(f"error: --checkpoint {args.checkpoint} not found")
    try:
        merged = merge_checkpoint(args.checkpoint, args.out, args.w2v_path, args.llm_path, args.llm_out)
    except ValueError as e:  # not a LoRA checkpoint, a moved or changed base (LoraBaseError, LlmPathError)
        raise SystemExit(f"error: {e}") from None
    size = os.path.getsize(args.out)
    model_cfg = merged["cfg"]["model"]
    lm = f", model.llm_lora_r=0, merged LM in {model_cfg['llm_path']}" if "llm_out" in merged["extra_state"]["lora_merged"] else ""
    print(f"wrote {args.out} ({size / 1e6:.1f} MB, {len(merged['model'])} tensors, model.lora_r=0{lm})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
