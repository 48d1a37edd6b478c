"""Landmarks on real faces and mouth ROI geometry."""

from __future__ import annotations

import numpy as np
import pytest

from preparation.face import mouth_roi
from preparation.face.landmarks import (
    FaceLandmarker,
    LandmarkOptions,
    default_predictor_path,
    load_landmarks,
    save_landmarks,
)

dlib = pytest.importorskip("dlib")  # safety net only: dlib-bin is part of the setup


@pytest.fixture(scope="module")
def landmarker():
    return FaceLandmarker(options=LandmarkOptions(redetect_every=5))


def test_astronaut_has_68_landmarks_on_the_face(astronaut_path, landmarker):
    import cv2

    gray = cv2.cvtColor(cv2.imread(str(astronaut_path)), cv2.COLOR_BGR2GRAY)
    boxes, kind = landmarker.detect(gray)
    assert kind == "hog" and len(boxes) == 1
    pts = landmarker.predict(gray, boxes[0])
    assert pts.shape == (68, 2) and np.isfinite(pts).all()
    left, top, right, bottom = boxes[0]
    inside = (pts[:, 0] > left - 20) & (pts[:, 0] < right + 20) & (pts[:, 1] > top - 20) & (pts[:, 1] < bottom + 40)
    assert inside.all()
    # anatomy: eyes above nose tip above mouth above chin; left eye left of right eye
    assert pts[36:42, 1].mean() < pts[33, 1] < pts[48:68, 1].mean() < pts[8, 1]
    assert pts[36:42, 0].mean() < pts[42:48, 0].mean()


def test_carphone_landmarks_tracking_matches_per_frame_detection(face25, landmarker):
    _, frames = face25
    clip = frames[:40]
    tracked, stats = landmarker.process(clip)
    assert tracked.shape == (40, 68, 2)
    assert np.isfinite(tracked).all() and stats.missing == 0
    assert stats.tracked > 20  # most frames reuse the face box
    per_frame, ref_stats = FaceLandmarker(options=LandmarkOptions(redetect_every=1)).process(clip)
    assert ref_stats.tracked == 0 and ref_stats.detected_hog + ref_stats.detected_cnn == 40
    assert np.abs(tracked - per_frame).mean() < 1.0  # pixels, on a 176x144 clip


def test_blank_and_faceless_frames_get_nan(face25, landmarker):
    _, frames = face25
    clip = frames[:6].copy()
    clip[2:4] = 0  # black frames inside a tracked run
    lm, stats = landmarker.process(clip)
    assert np.isnan(lm[2:4]).all() and np.isfinite(lm[[0, 1, 4, 5]]).all()
    noise = np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8)
    lm, stats = FaceLandmarker(options=LandmarkOptions(use_cnn=False)).process(noise)
    assert np.isnan(lm).all() and stats.missing == 3


def test_missing_model_error_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="libdlib-data"):
        FaceLandmarker(predictor_path=str(tmp_path / "nope.dat"))


def test_landmark_files_npy_and_reference_pkl(tmp_path):
    import pickle

    lm = np.random.default_rng(0).uniform(0, 100, (4, 68, 2)).astype(np.float32)
    lm[1] = np.nan
    save_landmarks(tmp_path / "a.npy", lm)
    np.testing.assert_array_equal(load_landmarks(tmp_path / "a.npy"), lm)
    ref = [lm[0].astype(np.int32), None, lm[2].astype(np.int32), lm[3].astype(np.int32)]
    with open(tmp_path / "b.pkl", "wb") as f:
        pickle.dump(ref, f)
    back = load_landmarks(tmp_path / "b.pkl")
    assert np.isnan(back[1]).all() and np.array_equal(back[0], lm[0].astype(np.int32))


def test_default_mean_face_is_dlib_mean_shape():
    path = default_predictor_path()
    assert path is not None
    face = mouth_roi.mean_face_from_predictor(path)
    np.testing.assert_allclose(face, mouth_roi.DEFAULT_MEAN_FACE, atol=0.006)
    mouth = face[48:68].mean(axis=0)
    assert 100 < mouth[1] < 256 - 48  # the mouth crop fits inside the canvas


def test_similarity_recovers_known_transform():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(3, 5, 2)) * 30 + 100
    angle, scale, shift = 0.3, 1.7, np.array([5.0, -7.0])
    R = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src[1] @ R.T + shift
    M = mouth_roi.estimate_similarity(src, dst)
    assert M.shape == (3, 2, 3)
    np.testing.assert_allclose(M[1, :, :2], R, atol=1e-9)
    np.testing.assert_allclose(M[1, :, 2], shift, atol=1e-9)


def test_interpolation_and_smoothing():
    lm = np.full((10, 68, 2), np.nan)
    lm[2], lm[6] = 1.0, 5.0
    filled, missing = mouth_roi.interpolate_landmarks(lm)
    np.testing.assert_allclose(filled[:, 0, 0], [1, 1, 1, 2, 3, 4, 5, 5, 5, 5])
    assert missing.sum() == 8
    assert mouth_roi.interpolate_landmarks(np.full((3, 68, 2), np.nan))[0] is None
    ramp = np.arange(20.0)[:, None, None] * np.ones((20, 68, 2))
    smooth = mouth_roi.smooth_landmarks(ramp, 12)
    np.testing.assert_allclose(smooth[:9, 0, 0], np.arange(9) + 5.5)  # mean of i..i+11
    np.testing.assert_allclose(smooth[8:, 0, 0], 13.5)  # tail reuses frame T-12


def test_roi_is_centred_on_the_mouth(face25, landmarker):
    _, frames = face25
    clip = frames[:30]
    lm, _ = landmarker.process(clip)
    lm[5] = np.nan  # one missing frame gets interpolated
    geo = mouth_roi.crop_geometry(lm, mouth_roi.DEFAULT_MEAN_FACE)
    assert geo.interpolated.sum() == 1 and geo.clamp_px.max() == 0
    filled, _ = mouth_roi.interpolate_landmarks(lm)
    mouth_in_crop = mouth_roi.apply_affine(geo.matrices, filled[:, 48:68]).mean(axis=1)
    np.testing.assert_allclose(mouth_in_crop, 48.0, atol=0.6)  # centre of the 96x96 crop
    crops = mouth_roi.warp_crops(clip, geo.matrices)
    assert crops.shape == (30, 96, 96, 3)
    # The lips are redder than the skin around them: the centre row band is the reddest.
    redness = crops[..., 2].astype(float) - crops[..., 1]
    assert redness[:, 40:56, 30:66].mean() > redness[:, :16].mean() + 5


def test_standard_mean_face_file_is_accepted(tmp_path):
    path = tmp_path / "20words_mean_face.npy"
    np.save(path, mouth_roi.DEFAULT_MEAN_FACE * 1.05)
    np.testing.assert_allclose(mouth_roi.load_mean_face(path), mouth_roi.DEFAULT_MEAN_FACE * 1.05)
    np.save(tmp_path / "bad.npy", np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"\[68, 2\]"):
        mouth_roi.load_mean_face(tmp_path / "bad.npy")
