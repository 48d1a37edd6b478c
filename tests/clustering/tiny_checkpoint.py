"""Write a tiny, randomly initialised AV-HuBERT pre-training checkpoint in fairseq's format."""

from pathlib import Path

import torch
from omegaconf import OmegaConf


def _as_dict(cfg, name: str) -> dict:
    d = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=False, enum_to_str=True)
    d["_name"] = name
    return d


def write_tiny_checkpoint(out_dir: Path, num_clusters: int = 8, layers: int = 2, seed: int = 0) -> Path:
    """`{out_dir}/tiny.pt`: model `av_hubert` (2 layers, D=32, ResNet width 8), task with `km` labels."""
    from avhubert.model import AVHubertConfig
    from avhubert.task import AVHubertPretrainingConfig, AVHubertPretrainingTask

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dict.km.txt").write_text("".join(f"{c} 10000\n" for c in range(num_clusters)))
    task_cfg = AVHubertPretrainingConfig(
        data=str(out_dir), label_dir=str(out_dir), labels=["km"], label_rate=25, sample_rate=25,
        stack_order_audio=4, normalize=True,
    )
    model_cfg = AVHubertConfig(
        label_rate=25, encoder_layers=layers, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
        encoder_attention_heads=4, conv_pos=16, conv_pos_groups=4, resnet_width=8, final_dim=16,
        audio_feat_dim=104, layer_norm_first=True,
    )
    torch.manual_seed(seed)
    task = AVHubertPretrainingTask.setup_task(task_cfg)
    model = task.build_model(OmegaConf.create(_as_dict(model_cfg, "av_hubert")))
    state = {
        "cfg": {"common": {"user_dir": None}, "task": _as_dict(task_cfg, "av_hubert_pretraining"),
                "model": _as_dict(model_cfg, "av_hubert")},
        "model": model.state_dict(),
        "task_state": task.state_dict(),
        "optimizer_history": [{"criterion_name": "av_hubert", "optimizer_name": "adam", "lr_scheduler_state": {}, "num_updates": 0}],
        "extra_state": {},
    }
    path = out_dir / "tiny.pt"
    torch.save(state, path)
    return path
