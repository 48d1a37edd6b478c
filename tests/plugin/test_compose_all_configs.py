"""Every YAML under conf/ composes as its entry point composes it.

Training YAMLs (conf/pretrain, conf/finetune, conf/av-finetune, conf/demo) go the way of
`fairseq-hydra-train`: fairseq's config store (`hydra_init`), hydra `compose`, the plugin's
registrations, `add_defaults` (each `_name` merged into its registered dataclass: unknown field names
are errors), then full interpolation. The decoding YAML goes through `infer_s2s.prepare_config`.
Only the fields a user must give on the command line may be left `???`.
"""

from pathlib import Path
from typing import List

import pytest
from fairseq.dataclass.configs import FairseqConfig
from fairseq.dataclass.initialize import add_defaults, hydra_init
from fairseq.dataclass.utils import omegaconf_no_object_check
from fairseq.models import MODEL_DATACLASS_REGISTRY
from fairseq.registry import REGISTRIES
from fairseq.tasks import TASK_DATACLASS_REGISTRY
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

import avhubert  # noqa: F401  (the plugin's registrations, as common.user_dir imports them)
from avhubert.infer_s2s import InferConfig, prepare_config

CONF = Path(__file__).resolve().parents[2] / "conf"
YAMLS = sorted(str(p.relative_to(CONF)) for p in CONF.rglob("*.yaml"))

# What the command lines in README.md supply; any other `???` is a broken config.
USER_SUPPLIED = {
    "common.user_dir": "/user_dir", "task.data": "/data", "task.label_dir": "/labels",
    "task.tokenizer_bpe_model": "/spm.model", "task.noise_wav": "/noise", "model.w2v_path": "/pt.pt",
    "model.label_rate": "25", "common_eval.path": "/ckpt.pt", "common_eval.results_path": "/out",
    "override.modalities": "[video]", "model.llm_path": "/llm",
}


def missing_keys(cfg: DictConfig, prefix: str = "") -> List[str]:
    """Dotted keys whose value is `???`."""
    out = []
    for key, value in cfg.items_ex(resolve=False):  # interpolations to a ??? field are not resolved here
        path = f"{prefix}{key}"
        if OmegaConf.is_missing(cfg, key):
            out.append(path)
        elif isinstance(value, DictConfig):
            out += missing_keys(value, path + ".")
    return out


def compose_file(rel: str, overrides: List[str]) -> DictConfig:
    path = CONF / rel
    with initialize_config_dir(config_dir=str(path.parent), version_base="1.1"):
        return compose(config_name=path.stem, overrides=overrides)


def test_every_yaml_is_collected():
    assert len(YAMLS) >= 34 and "s2s_decode.yaml" in YAMLS and "demo/finetune.yaml" in YAMLS
    assert {Path(y).parts[0] for y in YAMLS} == {"pretrain", "finetune", "av-finetune", "demo", "classify", "llm", "s2s_decode.yaml"}


@pytest.mark.parametrize("rel", YAMLS)
def test_yaml_composes_like_its_entry_point(rel):
    if rel == "s2s_decode.yaml":
        raw = compose_file(rel, [])
        fills = [f"{k}={USER_SUPPLIED[k]}" for k in missing_keys(raw) if k in USER_SUPPLIED]
        assert len(fills) == len(missing_keys(raw)), f"{rel}: required fields not on README command lines: {missing_keys(raw)}"
        cfg = prepare_config(compose_file(rel, fills))
        assert isinstance(OmegaConf.to_object(cfg), InferConfig) and not missing_keys(cfg)
        return
    hydra_init(Path(rel).stem)  # what fairseq-hydra-train does before hydra.main
    raw = compose_file(rel, [])
    unexpected = [k for k in missing_keys(raw) if k not in USER_SUPPLIED]
    assert not unexpected, f"{rel}: fields left ??? that no README command line supplies: {unexpected}"
    cfg = compose_file(rel, [f"{k}={USER_SUPPLIED[k]}" for k in missing_keys(raw)])
    names = {k: cfg[k]._name for k in ("task", "model", "criterion", "optimizer", "lr_scheduler")}
    assert names["task"] in TASK_DATACLASS_REGISTRY and names["model"] in MODEL_DATACLASS_REGISTRY, names
    for group in ("criterion", "optimizer", "lr_scheduler"):  # add_defaults skips unknown names silently
        assert names[group] in REGISTRIES[group]["dataclass_registry"], (group, names[group])
    add_defaults(cfg)  # raises on a field its dataclass does not have
    with omegaconf_no_object_check():
        resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    assert not missing_keys(resolved)
    assert set(FairseqConfig.__dataclass_fields__) <= set(resolved)
    assert resolved.task._name == "av_hubert_pretraining"
    assert resolved.model._name in ("av_hubert", "av_hubert_seq2seq", "av_hubert_ctc", "av_hubert_classifier", "av_hubert_llm")
    if resolved.model._name == "av_hubert":
        assert resolved.task.label_rate == resolved.model.label_rate  # the interpolation resolved
    else:
        assert resolved.task.fine_tuning and resolved.model.normalize == resolved.task.normalize
        assert resolved.task.is_s2s == (resolved.model._name == "av_hubert_seq2seq")
