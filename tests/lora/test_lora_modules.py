"""`avhubert.lora` on the AV-HuBERT encoder (tiny, in memory) and on the Base seq2seq model (meta tensors):
only adapters train, the untrained adapter leaves the output unchanged, merging gives the same output and
the plain keys (the released Base listing), and a target that matches nothing is named with module names."""

import pytest
import torch

from avhubert.lora import (BASE_DIGEST_KEY, BaseReference, LoraTargetError, apply_lora, has_lora, lora_state_dict,
                           match_targets, merge_lora, parameter_counts)
from avhubert.model import AVHubertModel
from avhubert.model_asr import NO_ADAPTER
from tests.finetune.test_seq2seq_keys import seq2seq_on_meta
from tests.plugin.test_state_dict_keys import assert_same_layout
from tests.plugin.tiny_model import random_batch, tiny_model

# attention + feed-forward of every layer, and the ResNet trunk's first-stage convolutions (peft's Conv2d)
TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", r"feature_extractor_video\.resnet\.trunk\.layer1\..*conv\d"]


def _encoder() -> AVHubertModel:
    model = tiny_model(seed=3)
    model.remove_pretraining_modules()
    return model.eval()


def _features(model: AVHubertModel) -> torch.Tensor:
    audio, video, padding_mask = random_batch(bsz=2, tsz=10, lengths=[10, 7])
    x, _ = model.extract_finetune({"audio": audio, "video": video}, padding_mask)
    return x  # [B, T, D]


def test_only_adapters_train_and_the_fresh_adapter_changes_nothing():
    model = _encoder()
    with torch.no_grad():
        before = _features(model)
    names = match_targets(model, TARGETS)
    assert len(names) == 2 * 6 + 4 and "feature_extractor_video.resnet.trunk.layer1.1.conv2" in names
    assert apply_lora(model, r=2, alpha=4.0, dropout=0.0, targets=TARGETS) is model and has_lora(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * len(names) and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    with torch.no_grad():
        assert torch.equal(_features(model), before)  # lora_B starts at zero
    with torch.no_grad():  # as after some training
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0.0, 0.05)
    _features(model).square().sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == set(trainable)
    counts = parameter_counts(model)
    assert sum(t for t, _ in counts.values()) == sum(p.numel() for n, p in model.named_parameters() if n in trainable)


def test_merge_gives_the_same_output_and_the_plain_keys():
    model = _encoder()
    plain_keys = list(model.state_dict())
    apply_lora(model, r=4, alpha=8.0, dropout=0.1, targets=TARGETS)
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0.0, 0.05)
        adapted = _features(model)
        saved = lora_state_dict(model)
        assert saved and all(".lora_" in k or "running_" in k or "num_batches" in k for k in saved)
        assert not any("base_layer" in k for k in saved)
        merge_lora(model)
        merged = _features(model)
    assert not has_lora(model) and list(model.state_dict()) == plain_keys
    assert not torch.equal(adapted, _features(_encoder()))  # the adapters did change the output
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=0)


def test_targets_that_match_nothing_are_named_with_module_names():
    model = _encoder()
    with pytest.raises(LoraTargetError, match=r"'qproj': it matches no module.*encoder\.layers\.N\.self_attn\.q_proj"):
        apply_lora(model, 4, 8.0, 0.0, ["q_proj", "qproj"])
    with pytest.raises(LoraTargetError, match=r"'final_layer_norm': it matches only modules LoRA cannot wrap.*LayerNorm"):
        apply_lora(model, 4, 8.0, 0.0, ["final_layer_norm"])
    with pytest.raises(LoraTargetError, match="CPU stem convolution"):
        apply_lora(model, 4, 8.0, 0.0, [r"feature_extractor_video\.resnet\.frontend3D\.0"], exclude=NO_ADAPTER)
    with pytest.raises(LoraTargetError, match="at least one target"):
        apply_lora(model, 4, 8.0, 0.0, [])
    assert not has_lora(model) and all(p.requires_grad for p in model.parameters())  # nothing was changed


def _base_seq2seq(spec_keys, lora_targets):
    """The Base seq2seq model (meta tensors) with LoRA on `lora_targets`, as `setup_lora` makes it."""
    model, listing = seq2seq_on_meta(spec_keys, "base")
    w2v = model.encoder.w2v_model
    with torch.device("meta"):
        apply_lora(w2v, 16, 32.0, 0.0, lora_targets, exclude=NO_ADAPTER)
    w2v.mask_emb.requires_grad_(True)
    model.lora_base = BaseReference("base.pt", "ab" * 32)
    return model, listing


def _mb(state) -> float:
    return sum(v.numel() * v.element_size() for v in state.values()) / 1e6


def test_base_model_adapter_checkpoint_is_small_and_merges_to_the_released_keys(spec_keys):
    model, listing = _base_seq2seq(spec_keys, ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"])
    counts = parameter_counts(model)
    (enc_t, enc_n), (dec_t, dec_n) = counts["encoder"], counts["decoder"]
    # 12 layers x (4 x 16 x (768 + 768) + 16 x (768 + 3072) + 16 x (3072 + 768)) adapters, + mask_emb (104-d input)
    assert enc_t == 12 * (4 * 16 * 1536 + 2 * 16 * 3840) + 104 and enc_n > 100e6 and dec_t == dec_n
    saved = model.state_dict()  # what a LoRA checkpoint holds
    assert BASE_DIGEST_KEY in saved and not any("base_layer" in k for k in saved)
    assert all(k.startswith("decoder.") or ".lora_" in k or k.endswith(("running_mean", "running_var", "num_batches_tracked", "mask_emb"))
               or k == BASE_DIGEST_KEY for k in saved)
    adapters_mb, full_mb = _mb(saved), _mb({k: v for k, v in torch.nn.Module.state_dict(model).items()})
    assert adapters_mb < 0.4 * full_mb, (adapters_mb, full_mb)
    merge_lora(model)
    model.lora_base = None
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == listing["state_dict"]
    assert_same_layout(model, listing)
