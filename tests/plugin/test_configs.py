"""Every YAML under conf/pretrain composes and builds the task, model and criterion configs."""

from pathlib import Path

import pytest
import torch
from fairseq.data import Dictionary
from fairseq.dataclass.initialize import hydra_init
from fairseq.dataclass.utils import merge_with_parent
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from avhubert.criterion import AVHubertCriterionConfig
from avhubert.model import AVHubertConfig, AVHubertModel
from avhubert.task import AVHubertPretrainingConfig

CONF = Path(__file__).resolve().parents[2] / "conf" / "pretrain"
NAMES = sorted(p.stem for p in CONF.glob("*.yaml"))


def compose_config(name: str, extra=()):
    hydra_init(name)
    overrides = ["task.data=/data", "task.label_dir=/labels", "common.user_dir=/user", *extra]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.1"):
        cfg = compose(config_name=name, overrides=overrides)
    if OmegaConf.is_missing(cfg.model, "label_rate"):
        cfg.model.label_rate = 25
    if "noise_wav" in cfg.task and OmegaConf.is_missing(cfg.task, "noise_wav"):
        cfg.task.noise_wav = "/noise"
    return cfg


def test_all_reference_pretraining_configs_exist():
    expected = {f"base_lrs3_iter{i}" for i in range(1, 6)} | {f"base_vox_iter{i}" for i in range(1, 6)}
    expected |= {"large_lrs3_iter5", "large_vox_iter5", "noise_base_vox_iter5", "noise_large_vox_iter5", "tiny"}
    assert expected <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_config_builds(name):
    cfg = compose_config(name)
    task_cfg = merge_with_parent(AVHubertPretrainingConfig(), cfg.task, remove_missing=False)
    model_cfg = merge_with_parent(AVHubertConfig(), cfg.model, remove_missing=False)
    crit_cfg = merge_with_parent(AVHubertCriterionConfig(), cfg.criterion, remove_missing=False)
    OmegaConf.resolve(task_cfg)
    assert task_cfg.label_rate == model_cfg.label_rate
    assert task_cfg.max_trim_sample_size is not None
    assert crit_cfg.loss_weights == [10]
    d = Dictionary()
    for i in range(20):
        d.add_symbol(str(i))
    with torch.device("meta"):
        model = AVHubertModel(model_cfg, task_cfg, [d] * len(task_cfg.labels))
    if name.startswith("large"):
        assert len(model.encoder.layers) == 24
    assert cfg.distributed_training.ddp_backend in ("legacy_ddp", "no_c10d")


def test_stray_reference_keys_are_accepted():
    cfg = compose_config("base_lrs3_iter5")
    assert cfg.task.input_modality == "image" and cfg.model.wav_input is False
