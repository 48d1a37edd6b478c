"""Model behaviour: modality dropout, label decimation, logits, layer semantics, batching."""

import copy

import pytest
import torch

from tests.plugin.tiny_model import random_batch, tiny_model


def test_forward_outputs_and_masked_frames_are_or_of_streams():
    model = tiny_model().train()
    audio, video, pad = random_batch(lengths=[20, 16, 12])
    targets = [torch.randint(4, 12, (3, 20))]
    ma = torch.zeros(3, 20, dtype=torch.bool)
    ma[:, 2:6] = True
    mv = torch.zeros(3, 20, dtype=torch.bool)
    mv[:, 8:10] = True
    out = model({"audio": audio, "video": video}, targets, pad, mask_audio=ma, mask_video=mv, modality_drop="none")
    n_masked = int(((ma | mv) & ~pad).sum())
    assert out["logit_m_list"][0].shape == (n_masked, 12)
    assert out["logit_u_list"][0].shape[0] == int((~pad).sum()) - n_masked
    assert out["target_m_list"][0].shape == (n_masked,)
    assert torch.isfinite(out["features_pen"])
    # cosine similarity / 0.1 is bounded by 10
    assert out["logit_m_list"][0].abs().max() <= 10 + 1e-4


@pytest.mark.parametrize("which", ["audio", "video"])
def test_modality_dropout_zeroes_exactly_one_stream(which):
    model = tiny_model(modality_dropout=1.0, audio_dropout=1.0 if which == "audio" else 0.0).train()
    audio, video, _ = random_batch()
    feats = model.encode_modalities(audio, video)
    dropped = model.drop_modality(feats)
    assert dropped[which].abs().sum() == 0
    other = "video" if which == "audio" else "audio"
    assert torch.equal(dropped[other], feats[other])
    assert model.eval().drop_modality(feats) is feats  # never in eval mode


def test_modality_dropout_rate_is_per_batch():
    model = tiny_model(modality_dropout=0.5, audio_dropout=0.5).train()
    feats = {"audio": torch.ones(2, 3, 4), "video": torch.ones(2, 3, 4)}
    torch.manual_seed(0)
    drops = {"none": 0, "audio": 0, "video": 0}
    for _ in range(400):
        out = model.drop_modality(feats)
        key = "audio" if out["audio"].sum() == 0 else "video" if out["video"].sum() == 0 else "none"
        drops[key] += 1
    assert 150 < drops["none"] < 250 and 60 < drops["audio"] < 140 and 60 < drops["video"] < 140


def test_100hz_labels_are_decimated_by_four():
    model = tiny_model(label_rate=100)
    feats = torch.zeros(2, 5, 10)
    labels = torch.arange(38).repeat(2, 1)  # 38 < 4 * 10: features are trimmed to 9 steps
    trimmed, (picked,) = model.align_targets(feats, [labels])
    assert trimmed.shape[-1] == 9
    assert picked[0].tolist() == [0, 4, 8, 12, 16, 20, 24, 28, 32]


def test_extract_features_layer_k_equals_kth_layer_of_full_forward():
    model = tiny_model(encoder_layers=3).eval()
    audio, video, pad = random_batch(lengths=[20, 15, 10])
    src = {"audio": audio, "video": video}
    with torch.no_grad():
        x0, _ = model.extract_features(src, pad, ret_conv=True)
        _, hidden = model.encoder(x0, pad)
        for k in (1, 2, 3):
            xk, _ = model.extract_features(src, pad, output_layer=k)
            torch.testing.assert_close(xk, hidden[k - 1])
        full, _ = model.extract_features(src, pad)
        torch.testing.assert_close(full, model.encoder.layer_norm(hidden[-1]))


def test_batched_equals_single_for_valid_frames():
    model = tiny_model().eval()
    audio, video, pad = random_batch(bsz=2, lengths=[20, 13])
    with torch.no_grad():
        batched, _ = model.extract_features({"audio": audio, "video": video}, pad)
        single, _ = model.extract_features({"audio": audio[1:, :, :13], "video": video[1:, :, :13]}, None)
    torch.testing.assert_close(batched[1, :13], single[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("missing", ["audio", "video"])
def test_missing_modality_is_zeros_after_front_end(missing):
    """A missing stream equals a present one whose front-end outputs zeros (its `proj` zeroed), and
    differs from feeding zeros into that front-end (its bias would survive)."""
    model = tiny_model().eval()
    audio, video, pad = random_batch()
    source = {"audio": audio, "video": video}
    silenced = copy.deepcopy(model)
    proj = getattr(silenced, f"feature_extractor_{missing}").proj
    with torch.no_grad():
        proj.weight.zero_()
        proj.bias.zero_()
        assert getattr(model, f"feature_extractor_{missing}").proj.bias.abs().min() > 0
        without, _ = model.extract_finetune({**source, missing: None}, pad)
        expected, _ = silenced.extract_finetune(source, pad)
        zero_input, _ = model.extract_finetune({**source, missing: torch.zeros_like(source[missing])}, pad)
    torch.testing.assert_close(without, expected)
    assert (without - zero_input).abs().max() > 1e-3, "zeros must replace the front-end output, not its input"
    with pytest.raises(ValueError, match="neither audio nor video"):
        model.extract_finetune({"audio": None, "video": None})


def test_feature_masking_uses_mask_emb_and_gradients_flow():
    model = tiny_model(masking_type="feature", mask_prob_audio=0.5, mask_prob_image=0.5, mask_length_audio=3, mask_length_image=3).train()
    audio, video, pad = random_batch()
    out = model({"audio": audio, "video": video}, [torch.randint(4, 12, (3, 20))], pad)
    loss = sum(torch.nn.functional.cross_entropy(l, t) for l, t in zip(out["logit_m_list"], out["target_m_list"]))
    loss.backward()
    assert model.mask_emb.shape == (32,) and model.mask_emb.grad is not None
    assert model.feature_extractor_video.resnet.frontend3D[0].weight.grad.abs().sum() > 0


def test_feature_grad_mult_zero_freezes_front_ends():
    model = tiny_model(feature_grad_mult=0.0).train()
    audio, video, pad = random_batch()
    out = model({"audio": audio, "video": video}, [torch.randint(4, 12, (3, 20))], pad)
    out["logit_m_list"][0].sum().backward()
    assert model.feature_extractor_audio.proj.weight.grad is None
    assert model.post_extract_proj.weight.grad is not None


def test_fine_tuning_path_has_no_pretraining_modality_dropout():
    model = tiny_model(modality_dropout=1.0, audio_dropout=1.0).train()
    audio, video, pad = random_batch()
    torch.manual_seed(0)
    a, _ = model.extract_finetune({"audio": audio, "video": video}, pad)
    torch.manual_seed(0)
    b, _ = model.extract_finetune({"audio": torch.zeros_like(audio), "video": video}, pad)
    assert not torch.allclose(a, b), "audio must not be dropped by extract_finetune (reference parity)"


def test_finetune_modality_dropout_option():
    from types import SimpleNamespace

    from avhubert.model_asr import sample_modality_drop

    module = torch.nn.Linear(1, 1).train()
    src = {"audio": torch.zeros(1), "video": torch.zeros(1)}
    cfg = SimpleNamespace(finetune_modality_dropout=1.0, finetune_audio_dropout=1.0)
    assert sample_modality_drop(module, cfg, src) == "audio"
    cfg.finetune_audio_dropout = 0.0
    assert sample_modality_drop(module, cfg, src) == "video"
    assert sample_modality_drop(module.eval(), cfg, src) == "none"
    assert sample_modality_drop(module.train(), cfg, {"audio": None, "video": torch.zeros(1)}) == "none"
    assert sample_modality_drop(module, None, src) == "none"


def _front_end_as_modules(enc, x):
    """The reference composition: Conv3d stem, BatchNorm3d, PReLU, MaxPool3d on `[B, C, T, H, W]`,
    then the trunk on NCHW frames."""
    y = enc.frontend3D(x)
    y = y.transpose(1, 2).flatten(0, 1)
    return enc.trunk(y).view(x.shape[0], x.shape[2], -1).transpose(1, 2)


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_front_end_equals_conv3d_composition_in_training(memory_format):
    """The per-frame channels-last front-end (2-D stem, BatchNorm3d on a free view, 2-D max-pool)
    gives the original module composition's output (fp32), and in float64, where rounding cannot
    hide a difference, the same gradients and BatchNorm running statistics."""
    from avhubert.modules.resnet import ResEncoder

    torch.manual_seed(0)
    enc = ResEncoder(width=4).train()
    enc.memory_format = memory_format
    init, ref = copy.deepcopy(enc), copy.deepcopy(enc)
    x = torch.randn(2, 1, 9, 40, 40)
    torch.testing.assert_close(enc(x), _front_end_as_modules(ref, x), atol=1e-4, rtol=1e-4)
    enc, ref, x = copy.deepcopy(init).double(), copy.deepcopy(init).double(), x.double()
    out, want = enc(x), _front_end_as_modules(ref, x)
    torch.testing.assert_close(out, want, atol=1e-10, rtol=1e-10)
    g = torch.randn_like(out)
    out.backward(g)
    want.backward(g)
    for (name, p), q in zip(enc.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-9, rtol=1e-9, msg=name)
    for (name, b), c in zip(enc.named_buffers(), ref.buffers()):
        torch.testing.assert_close(b, c, atol=1e-10, rtol=1e-10, msg=name)


def test_resnet_input_pool_runs_the_front_end_on_averaged_frames():
    """`resnet_input_pool=k` equals the unpooled front-end fed k x k block means (same weights), and
    the model config field reaches the ResNet; k=1 is the reference front-end."""
    from avhubert.modules.resnet import ResEncoder

    torch.manual_seed(0)
    pooled = ResEncoder(width=4, input_pool=2).eval()
    plain = ResEncoder(width=4).eval()
    plain.load_state_dict(pooled.state_dict())
    x = torch.randn(2, 1, 5, 40, 40)
    blocks = x.reshape(2, 1, 5, 20, 2, 20, 2).mean((4, 6))
    torch.testing.assert_close(pooled(x), plain(blocks), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(pooled(x), plain(x[..., :20, :20]))
    with pytest.raises(ValueError, match="input_pool"):
        ResEncoder(width=4, input_pool=0)
    model = tiny_model(resnet_input_pool=2)
    assert model.feature_extractor_video.resnet.input_pool == 2


def test_modality_drop_has_one_spelling_per_meaning():
    """"sample" draws from the config (the forward default), "none" drops nothing; None, which once
    meant "sample" beside "none", is refused with both meanings named."""
    from avhubert.model import MODALITY_DROP_CHOICES

    assert MODALITY_DROP_CHOICES == ("sample", "none", "audio", "video")
    model = tiny_model(modality_dropout=1.0, audio_dropout=1.0).train()
    audio, video, pad = random_batch()
    feats = model.encode_modalities(audio, video)
    assert model.drop_modality(feats, "none") is feats
    assert model.drop_modality(feats, "sample")["audio"].abs().sum() == 0
    with pytest.raises(ValueError, match=r"None is not accepted: 'sample' draws from the config, 'none' drops nothing"):
        model.drop_modality(feats, None)
    with pytest.raises(ValueError, match=r"modality_drop must be one of sample, none, audio, video, got 'both'"):
        model({"audio": audio, "video": video}, None, pad, features_only=True, modality_drop="both")
    torch.manual_seed(0)
    x = model({"audio": audio, "video": video}, None, pad, mask=False, features_only=True)["x"]
    torch.manual_seed(0)
    x_sample = model({"audio": audio, "video": video}, None, pad, mask=False, features_only=True, modality_drop="sample")["x"]
    assert torch.equal(x, x_sample)  # the default is the reference's per-batch draw


def test_bf16_autocast_option_returns_fp32_outputs_close_to_fp32():
    """`model.bf16_autocast`: the forward runs under torch.autocast(bfloat16) (weights stay fp32),
    logits and features come back in fp32, within bf16 rounding of the fp32 model's, and train."""
    torch.manual_seed(0)
    model = tiny_model().train()
    audio, video, pad = random_batch(lengths=[20, 14, 9])
    targets = [torch.randint(0, 8, (3, 20))]
    masks = {"mask_audio": torch.rand(3, 20) < 0.3, "mask_video": torch.rand(3, 20) < 0.3}
    torch.manual_seed(1)  # the same video substitution draws in both forwards
    want = model({"audio": audio, "video": video}, targets, pad, modality_drop="none", **masks)
    model.bf16_autocast = True
    torch.manual_seed(1)
    got = model({"audio": audio, "video": video}, targets, pad, modality_drop="none", **masks)
    for key in ("logit_m_list", "logit_u_list"):
        for g, w in zip(got[key], want[key]):
            assert g.dtype == torch.float32
            torch.testing.assert_close(g, w, atol=0.5, rtol=0.05)
    assert not torch.equal(got["logit_m_list"][0], want["logit_m_list"][0])  # bf16 rounding: autocast ran
    assert got["features_pen"].dtype == torch.float32
    loss = sum(torch.nn.functional.cross_entropy(lg, t) for lg, t in zip(got["logit_m_list"], got["target_m_list"]))
    loss.backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
    feats, _ = model.extract_features({"audio": audio, "video": video}, pad)
    assert feats.dtype == torch.float32


@pytest.mark.parametrize("which", ["audio", "video"])
def test_dropped_stream_front_end_is_not_run(which):
    """A dropped stream is zeros, as the reference's `0 * features`, without running its front-end
    (the ResNet is most of a small model's step)."""
    model = tiny_model(modality_dropout=1.0, audio_dropout=1.0 if which == "audio" else 0.0).eval()
    audio, video, pad = random_batch()
    source = {"audio": audio, "video": video}
    extractor = model.front_end(which)
    calls = []
    handle = extractor.register_forward_hook(lambda *args: calls.append(1))
    dropped = model(source, None, pad, mask=False, features_only=True, modality_drop=which)["x"]
    assert not calls
    handle.remove()
    # the same as running the front-end and zeroing its output (the reference's order)
    feats = model.encode_modalities(audio, video)
    fused = model.fuse({**feats, which: feats[which] * 0})
    features = model.post_extract_proj(model.layer_norm(fused.transpose(1, 2)))
    expected, _ = model.encoder(features, pad)
    torch.testing.assert_close(dropped, expected)
    # sampled in training mode (modality_dropout=1): the dropped front-end's gradients are zeros,
    # as under the reference's 0 * features (not None: Adam and DDP see every parameter)
    model.train()
    model(source, None, pad, mask=False, features_only=True)["x"].sum().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape and not p.grad.any() for p in extractor.parameters())
    kept = model.feature_extractor_video if which == "audio" else model.feature_extractor_audio
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in kept.parameters())


def test_dropped_front_end_frozen_by_feature_grad_mult_gets_no_gradient():
    """With `feature_grad_mult=0` the reference runs the front-ends under no_grad: their parameters
    never get gradients (so the optimizer never moves them), dropped or not."""
    model = tiny_model(modality_dropout=1.0, audio_dropout=0.0, feature_grad_mult=0.0).train()
    audio, video, pad = random_batch()
    model({"audio": audio, "video": video}, None, pad, mask=False, features_only=True)["x"].sum().backward()
    assert all(p.grad is None for p in model.front_end("video").parameters())
    assert all(p.grad is None for p in model.front_end("audio").parameters())
