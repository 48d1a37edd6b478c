"""`ret_conv=True` on a padded batch: the fused front-end features of each utterance on its valid
frames and zeros on padded frames (the reference's values), for `extract_features` and
`extract_finetune`; expected values come from unpadded one-utterance runs."""

from typing import Callable, List

import pytest
import torch

from tests.plugin.tiny_model import random_batch, tiny_model

LENGTHS = [20, 13, 9]


def _expected(run: Callable[..., torch.Tensor], audio, video, lengths: List[int]) -> torch.Tensor:
    """Unpadded single-utterance runs, written into a zero `[B, T, D]` tensor."""
    rows = []
    for b, n in enumerate(lengths):
        a = None if audio is None else audio[b : b + 1, :, :n]
        v = None if video is None else video[b : b + 1, :, :n]
        rows.append(run({"audio": a, "video": v}, None)[0])  # [n, D]
    out = torch.zeros(len(lengths), max(lengths), rows[0].shape[-1])
    for b, row in enumerate(rows):
        out[b, : len(row)] = row
    return out


@pytest.mark.parametrize("method,modalities", [
    ("extract_features", ("audio", "video")),
    ("extract_finetune", ("audio", "video")),
    ("extract_finetune", ("video",)),  # missing audio: zeros after its front-end
])
def test_ret_conv_is_zero_at_padded_frames(method, modalities):
    model = tiny_model().eval()
    audio, video, pad = random_batch(lengths=LENGTHS)
    audio = audio if "audio" in modalities else None
    fn = getattr(model, method)
    with torch.no_grad():
        got, got_pad = fn({"audio": audio, "video": video}, pad, ret_conv=True)
        want = _expected(lambda src, p: fn(src, p, ret_conv=True)[0], audio, video, LENGTHS)
        transformer_out, _ = fn({"audio": audio, "video": video}, pad)
    assert torch.equal(got_pad, pad)
    assert got.shape == want.shape == (3, 20, model.cfg.encoder_embed_dim)
    assert torch.equal(got[pad], torch.zeros_like(got[pad]))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # the fused front-end, not the transformer output
    assert not torch.allclose(got[~pad], transformer_out[~pad], atol=1e-2)


def test_ret_conv_without_padding_is_unchanged_and_differentiable():
    model = tiny_model().train()
    audio, video, pad = random_batch(lengths=LENGTHS)
    feats, _ = model.extract_features({"audio": audio, "video": video}, pad, ret_conv=True)
    feats.pow(2).sum().backward()  # no in-place aliasing: autograd works through the zeroing
    grad = model.feature_extractor_audio.proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        full, _ = model.extract_features({"audio": audio[:1], "video": video[:1]}, None, ret_conv=True)
        fused = model.post_extract_proj(model.layer_norm(model.fuse(model.encode_modalities(audio[:1], video[:1])).transpose(1, 2)))
    torch.testing.assert_close(full, fused, atol=0, rtol=0)
