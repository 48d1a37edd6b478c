"""Merge the LoRA adapters of a fine-tuning checkpoint into full weights.

    python -m avhubert.merge_lora --checkpoint EXP/checkpoints/checkpoint_best.pt --out model.pt \
        [--w2v-path PRETRAINED.pt]

A LoRA checkpoint (`model.lora_r > 0`) stores only adapters, heads and buffers plus the sha256 of its
base, the pre-trained checkpoint `model.w2v_path`. This rebuilds the model from that base (checking the
digest; `--w2v-path` gives the base's new location when it moved), folds every adapter into its layer
(`W + B A * alpha / r`) and writes an ordinary fine-tuned checkpoint: the state-dict keys of a model
trained without LoRA, `model.lora_r = 0`, no optimizer state, no need for the base. Code that knows
nothing of LoRA loads it with `strict=True` (`checkpoint_utils.load_model_ensemble_and_task`,
`infer_s2s.py`, the original AV-HuBERT's loader for the key layout). The write is atomic.
"""

import argparse
import logging
import os
import sys
from typing import Any, Dict, List, Optional

import torch
from fairseq import checkpoint_utils

from avhubert.checkpoint import exit_on_checkpoint_error, load_checkpoint
from avhubert.checkpoint_io import atomic_torch_save
from avhubert.lora import BASE_DIGEST_KEY, parameter_report

logger = logging.getLogger("avhubert.merge_lora")

__all__ = ["merge_checkpoint", "main"]


def merge_checkpoint(path: str, out: str, w2v_path: Optional[str] = None) -> Dict[str, Any]:
    """Write the merged, LoRA-free checkpoint of the LoRA checkpoint `path` to `out`; returns its state."""
    import avhubert  # noqa: F401  (registers the task and models, as common.user_dir does)

    if os.path.abspath(path) == os.path.abspath(out):
        raise ValueError(f"--out {out} is the input checkpoint: write the merged checkpoint to another file")
    with exit_on_checkpoint_error():
        state = load_checkpoint(path)
    model_cfg = (state.get("cfg") or {}).get("model") or {}
    if int(model_cfg.get("lora_r", 0) or 0) <= 0 or BASE_DIGEST_KEY not in state.get("model", {}):
        raise ValueError(f"{path} is not a LoRA checkpoint (model.lora_r={model_cfg.get('lora_r', 0)}, no "
                         f"{BASE_DIGEST_KEY} among its weights): there is nothing to merge")
    overrides = {"w2v_path": w2v_path} if w2v_path else None
    with exit_on_checkpoint_error():
        models, _cfg, _task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides=overrides, strict=True)
    model = models[0]
    base = model.merge_adapters()  # from here on state_dict() is the full, plain one
    logger.info("merged %s: %s", path, parameter_report(model))
    merged = dict(state)
    merged["model"] = model.state_dict()
    merged["cfg"] = dict(state["cfg"], model=dict(model_cfg, lora_r=0))
    merged.pop("last_optimizer_state", None)  # it held the adapters' optimizer state only
    merged["extra_state"] = dict(state.get("extra_state") or {}, lora_merged={
        "checkpoint": os.path.abspath(path), "base": base.path, "base_sha256": base.sha256,
        "lora_r": int(model_cfg["lora_r"]), "lora_alpha": float(model_cfg.get("lora_alpha", 0.0)),
        "lora_targets": list(model_cfg.get("lora_targets") or [])})
    atomic_torch_save(merged, out)
    return merged


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="LoRA fine-tuning checkpoint (model.lora_r > 0)")
    parser.add_argument("--out", required=True, help="merged checkpoint to write")
    parser.add_argument("--w2v-path", default=None,
                        help="the base pre-trained checkpoint, when it is no longer at the checkpoint's model.w2v_path")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    if not os.path.isfile(args.checkpoint):
        raise SystemExit(f"error: --checkpoint {args.checkpoint} not found")
    try:
        merged = merge_checkpoint(args.checkpoint, args.out, args.w2v_path)
    except ValueError as e:  # not a LoRA checkpoint, a moved or changed base (LoraBaseError)
        raise SystemExit(f"error: {e}") from None
    size = os.path.getsize(args.out)
    print(f"wrote {args.out} ({size / 1e6:.1f} MB, {len(merged['model'])} tensors, model.lora_r=0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
