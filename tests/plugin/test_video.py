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


def _reference_decode(path: str) -> np.ndarray:
    """The reference's decode: default `VideoCapture`, frame list, stack, one BGR -> gray."""
    import cv2

    cap = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    clip = np.stack(frames)
    t, h, w, _ = clip.shape
    return cv2.cvtColor(clip.reshape(t * h, w, 3), cv2.COLOR_BGR2GRAY).reshape(t, h, w)


@pytest.mark.parametrize("codec", ["h264", "mp4v"])
def test_load_video_is_pixel_identical_to_the_reference_decode(tmp_path, codec):
    rng = np.random.default_rng(3)
    colour = np.clip(rng.normal(128, 40, (14, 96, 96, 3)), 0, 255).astype(np.uint8)  # chroma matters
    write_video(tmp_path / "c.mp4", colour, codec=codec)
    ours = load_video(str(tmp_path / "c.mp4"))
    assert ours.dtype == np.uint8 and ours.flags.c_contiguous
    np.testing.assert_array_equal(ours, _reference_decode(str(tmp_path / "c.mp4")))


def test_load_video_grows_its_buffer_past_a_wrong_frame_count(tmp_path, monkeypatch):
    """The container's frame count only sizes the first buffer: a short count loses no frame."""
    import cv2

    import avdata.video as video

    frames = np.random.default_rng(4).integers(0, 256, (11, 96, 96), dtype=np.uint8)
    write_video(tmp_path / "c.mp4", frames, codec="mp4v")
    expected = _reference_decode(str(tmp_path / "c.mp4"))
    real_capture = cv2.VideoCapture

    class CountsOne:  # a capture whose metadata claims one frame
        def __init__(self, *args):
            self._cap = real_capture(*args)

        def get(self, prop):
            return 1.0 if prop == cv2.CAP_PROP_FRAME_COUNT else self._cap.get(prop)

        def __getattr__(self, name):
            return getattr(self._cap, name)

    monkeypatch.setattr(video.cv2, "VideoCapture", CountsOne)
    np.testing.assert_array_equal(video.load_video(str(tmp_path / "c.mp4")), expected)


@pytest.mark.parametrize("train", [True, False])
def test_transform_is_bit_identical_to_float_normalisation(train):
    """The lookup table gives the float32 values of `(x / 255 - mean) / std` exactly."""
    frames = np.random.default_rng(5).integers(0, 256, (6, 96, 100), dtype=np.uint8)
    frames[0, :16, :16] = np.arange(256, dtype=np.uint8).reshape(16, 16)  # every value once
    for seed in range(8):
        for mean, std in ((0.421, 0.165), (0.5, 0.25)):
            rng = np.random.default_rng(seed)
            if train:
                top, left = int(rng.integers(0, 9)), int(rng.integers(0, 13))
                flip = bool(rng.random() < 0.5)
            else:
                top, left, flip = 4, 6, False
            crop = frames[:, top : top + 88, left : left + 88]
            crop = crop[:, :, ::-1] if flip else crop
            expected = (crop.astype(np.float32) / 255.0 - mean) / std
            out = transform_video(frames, train, mean=mean, std=std, rng=np.random.default_rng(seed))
            assert out.dtype == np.float32 and out.flags.c_contiguous
            np.testing.assert_array_equal(out, expected)


def test_transform_rejects_non_uint8_frames():
    with pytest.raises(TypeError, match="uint8"):
        transform_video(np.zeros((2, 96, 96), np.float32), train=False)
