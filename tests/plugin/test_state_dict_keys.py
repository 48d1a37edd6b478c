"""Base/Large models have exactly the released checkpoints' state-dict keys and shapes."""

import json

import pytest
import torch
from fairseq.data import Dictionary
from omegaconf import OmegaConf

from avhubert.model import AVHubertConfig, AVHubertModel
from avhubert.task import AVHubertPretrainingConfig


def build_from_listing(listing: dict) -> AVHubertModel:
    model_cfg = {k: v for k, v in listing["model_cfg"].items() if k != "_name"}
    cfg = OmegaConf.merge(OmegaConf.structured(AVHubertConfig), model_cfg)
    task_cfg = AVHubertPretrainingConfig(data="unused", sample_rate=25, label_rate=25)
    dictionary = Dictionary()
    for i in range(listing["dictionary"]["n_symbols_in_file"]):
        dictionary.add_symbol(str(i))
    with torch.device("meta"):
        return AVHubertModel(cfg, task_cfg, [dictionary])


@pytest.mark.parametrize("name", ["base_lrs3_iter5", "large_lrs3_iter5"])
def test_keys_and_shapes_match_listing(name, spec_keys):
    path = spec_keys / f"keys_shapes_pretrain_{name}.json"
    listing = json.loads(path.read_text())
    model = build_from_listing(listing)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == listing["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == listing["num_params"]
    assert_same_layout(model, listing)


def assert_same_layout(model: torch.nn.Module, listing: dict) -> None:
    """Buffers (not parameters), dtypes and parameter counts per module equal the released listing."""
    state = model.state_dict()
    assert sorted(n for n, _ in model.named_buffers() if n in state) == sorted(listing["buffers"])  # persistent ones
    assert {k: str(v.dtype).replace("torch.", "") for k, v in state.items()} == listing["dtypes"]
    for prefix, count in listing["num_params_by_module"].items():
        ours = sum(p.numel() for n, p in model.named_parameters() if n == prefix or n.startswith(prefix + "."))
        assert ours == count, prefix
