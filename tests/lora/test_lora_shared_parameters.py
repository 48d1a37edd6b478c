"""`avhubert.lora` with shared (tied) parameters, as a causal LM's output projection shares its token
embeddings: the parameter report counts each tensor once, and the frozen names (what an adapter
checkpoint leaves out) cover every name the state dict holds a frozen shared tensor under."""

import torch
from torch import nn

from avhubert.lora import (AdapterCheckpointMixin, BaseReference, apply_lora, frozen_parameter_names, lora_state_dict,
                           parameter_counts, parameter_report, unique_parameters)


class TiedLm(AdapterCheckpointMixin, nn.Module):
    """Embedding 10x4, one 4x4 block, an output head tied to the embedding (the HF `tie_word_embeddings` way)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.block = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(ids)))


def test_tied_parameters_count_once_and_every_frozen_name_is_left_out():
    torch.manual_seed(0)
    model = TiedLm()
    apply_lora(model, r=2, alpha=4.0, dropout=0.0, targets=["block"])
    adapters = 2 * 4 + 4 * 2
    counts = parameter_counts(model)
    # embed/head 40 once, block 16 + 4, adapters 16; trainable: the adapters only
    assert counts == {"embed": (0, 40), "block": (adapters, 20 + adapters)}, counts
    assert "trainable parameters: 16 of 76 (21.05%)" in parameter_report(model)
    frozen = frozen_parameter_names(model)
    assert sorted(frozen) == ["block.base_layer.bias", "block.base_layer.weight", "embed.weight", "head.weight"]
    assert len(frozen) == len(set(frozen))
    kept = lora_state_dict(model)
    assert sorted(kept) == ["block.lora_A.default.weight", "block.lora_B.default.weight"]
    # an adapter checkpoint holds neither name of the tied tensor and loads back strictly
    with torch.no_grad():
        model.block.lora_B.default.weight.normal_()
    model.lora_base = BaseReference("base.pt", "00" * 32)
    state = model.state_dict()
    assert "head.weight" not in state and "embed.weight" not in state
    torch.manual_seed(0)
    fresh = TiedLm()
    apply_lora(fresh, r=2, alpha=4.0, dropout=0.0, targets=["block"])
    fresh.lora_base = model.lora_base
    fresh.load_state_dict(state, strict=True)
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(fresh(ids), model(ids))


def test_parameters_viewing_the_same_memory_count_once():
    a = nn.Linear(3, 3)
    b = nn.Linear(3, 3)
    b.weight = nn.Parameter(a.weight.data)  # another Parameter object, the same storage
    model = nn.ModuleDict({"a": a, "b": b})
    assert [n for n, _ in unique_parameters(model)] == ["a.weight", "a.bias", "b.bias"]
    assert parameter_counts(model) == {"a": (12, 12), "b": (3, 3)}
