"""Video decode and transforms: crop offsets, flip, normalisation; bad files fail clearly."""

import numpy as np
import pytest

from avdata.video import VideoReadError, load_video, transform_video, write_video


def test_eval_transform_is_center_crop_and_normalised():
    frames = np.random.default_rng(0).integers(0, 256, (5, 96, 96), dtype=np.uint8)
    out = transform_video(frames, train=False)
    assert out.shape == (5, 88, 88) and out.dtype == np.float32
    expected = (frames[:, 4:92, 4:92] / 255.0 - 0.421) / 0.165
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_train_transform_random_crop_and_flip_per_clip():
    frames = np.random.default_rng(1).integers(0, 256, (3, 96, 96), dtype=np.uint8)
    seen_flip, offsets = set(), set()
    for seed in range(40):
        out = transform_video(frames, train=True, rng=np.random.default_rng(seed))
        raw = out * 0.165 + 0.421
        found = None
        for top in range(9):
            for left in range(9):
                crop = frames[:, top : top + 88, left : left + 88] / 255.0
                if np.allclose(raw, crop, atol=1e-5):
                    found = (top, left, False)
                elif np.allclose(raw, crop[:, :, ::-1], atol=1e-5):
                    found = (top, left, True)
        assert found is not None, "output is not a (flipped) 88x88 crop of the whole clip"
        offsets.add(found[:2])
        seen_flip.add(found[2])
    assert seen_flip == {True, False}
    assert len(offsets) > 5


def test_load_video_roundtrip_and_errors(tmp_path):
    frames = np.tile(np.linspace(0, 255, 96, dtype=np.uint8)[None, None], (12, 96, 1))
    write_video(tmp_path / "clip.mp4", frames, codec="mp4v")
    clip = load_video(str(tmp_path / "clip.mp4"))
    assert clip.shape == (12, 96, 96) and clip.dtype == np.uint8
    assert np.abs(clip.astype(int) - frames).mean() < 4
    with pytest.raises(VideoReadError, match="missing.mp4"):
        load_video(str(tmp_path / "missing.mp4"))
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x01not a video" * 50)
    with pytest.raises(VideoReadError, match="corrupt.mp4"):
        load_video(str(tmp_path / "corrupt.mp4"))
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoReadError, match="empty.mp4"):
        load_video(str(tmp_path / "empty.mp4"))
