"""`avhubert.load` and the `AVHubert` object: features from paths, arrays and tensors, text from
fine-tuned models, released-format fixtures and exported safetensors folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import avhubert
from avhubert.api import InputError
from avdata.media import decode_audio
from avdata.video import write_video
from tests.conftest import shared_fixture
from tests.library.conftest import TEXTS


@pytest.fixture(scope="module")
def s2s(s2s_ckpt):
    return avhubert.load(s2s_ckpt)


def test_settings_and_task_config(s2s, s2s_ckpt):
    s = s2s.settings
    assert s["kind"] == "seq2seq" and s["modality"] == "audio-visual" and s["embed_dim"] == 32
    assert s["image_crop_size"] == 88 and s["stack_order_audio"] == 4 and s["vocabulary"] == 100
    assert s2s.task_cfg["modalities"] == ["audio", "video"] and s2s.task_cfg["fine_tuning"] is True
    assert "seq2seq" in repr(s2s)


def test_transcribe_gives_the_fine_tuned_texts(s2s, clips):
    for key in ("car", "ast"):
        result = s2s.transcribe(clips[key])
        assert result["text"] == TEXTS[key]
        assert result["modality"] == "audio-visual" and result["face"]["face_fraction"] > 0.9
        assert result["segments"][0]["start"] == 0.0 and result["segments"][-1]["end"] == result["duration_s"]
        assert {"face_tracking", "cropping", "audio", "encoder", "decoding"} <= set(result["timings"])


def test_features_from_paths_arrays_and_tensors_agree(s2s, clips, tmp_path):
    path_feats = s2s.extract_features(video=clips["car"], audio=clips["car"])
    assert path_feats.shape == (100, 32)
    prep = s2s.prepare(video=clips["car"], audio=clips["car"])
    wav = decode_audio(clips["car"])
    # ROIs (96x96) as a uint8 array, a tensor, and an mp4 file: used as they are, no face tracking
    for video in (prep.rois, torch.from_numpy(prep.rois)):
        for audio in (wav, torch.from_numpy(wav.astype(np.float32) / 32768.0)):
            torch.testing.assert_close(s2s.extract_features(video=video, audio=audio), path_feats, atol=1e-4, rtol=0)
    roi_file = tmp_path / "roi.mp4"
    write_video(roi_file, prep.rois)
    roi_prep = s2s.prepare(video=roi_file)
    assert roi_prep.face is None and roi_prep.rois.shape == (100, 96, 96)
    assert np.abs(roi_prep.rois.astype(int) - prep.rois).mean() < 3  # H.264 round trip
    layer1 = s2s.extract_features(video=prep.rois, layer=1)
    assert layer1.shape == (100, 32) and not torch.allclose(layer1, s2s.extract_features(video=prep.rois))
    audio_only = s2s.extract_features(audio=wav)
    assert audio_only.shape == (int(np.ceil(len(wav) / 640)), 32)  # audio alone: its own length


def test_raw_rgb_frames_are_cropped_on_the_fly(s2s, clips):
    from avdata.media import decode_video

    gray = decode_video(clips["ast"])
    rgb = np.repeat(gray[..., None], 3, axis=3)
    prep = s2s.prepare(video=rgb)
    assert prep.rois.shape == (len(gray), 96, 96) and prep.face.face_fraction == 1.0


def test_bad_inputs_are_named(s2s, tmp_path):
    with pytest.raises(InputError, match="no face on most frames"):
        s2s.prepare(video=np.random.default_rng(0).integers(0, 255, (5, 60, 80), dtype=np.uint8))
    with pytest.raises(InputError, match="float audio must lie in"):
        s2s.prepare(audio=np.full(16000, 3.0, np.float32))
    with pytest.raises(InputError, match="audio array must be"):
        s2s.prepare(audio=np.zeros((2, 16000), np.int16))
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        avhubert.load(tmp_path / "missing.pt")


def test_ctc_checkpoint_transcribes(ctc_ckpt, clips):
    model = avhubert.load(ctc_ckpt)
    assert model.kind == "ctc" and model.can_transcribe
    result = model.transcribe(clips["car"], beam=1)
    assert isinstance(result["text"], str) and result["text"]
    assert result["text"] == TEXTS["car"]


@pytest.mark.slow  # the fixtures' full ResNet-18 front-end: ~20 s on one loaded core
def test_released_format_checkpoints(clips):
    pre = avhubert.load(shared_fixture("avhubert_tiny_pretrain.pt"))
    assert pre.kind == "pretrain" and not pre.can_transcribe
    feats = pre.extract_features(video=clips["car"], audio=clips["car"], layer=2)
    assert feats.shape == (100, 256) and torch.isfinite(feats).all()
    with pytest.raises(ValueError, match="gives features, not text"):
        pre.transcribe(clips["car"])
    s2s = avhubert.load(shared_fixture("avhubert_tiny_s2s.pt"))
    assert s2s.default_modality == "video"  # what the fixture was fine-tuned with
    result = s2s.transcribe(clips["car"], beam=1)
    assert result["modality"] == "video" and isinstance(result["text"], str)


def test_exported_safetensors_folder_loads(s2s, s2s_ckpt, clips, tmp_path):
    from avhubert.safetensors_io import save_safetensors

    folder = save_safetensors(s2s.model, s2s.cfg, tmp_path / "export", task=s2s.task)
    exported = avhubert.load(folder)
    assert exported.kind == "seq2seq"
    prep = s2s.prepare(video=clips["car"], audio=clips["car"])
    ref = s2s.extract_features(video=prep.rois, audio=prep.wav)
    torch.testing.assert_close(exported.extract_features(video=prep.rois, audio=prep.wav), ref, atol=1e-5, rtol=0)
    assert exported.transcribe(clips["car"])["text"] == TEXTS["car"]
