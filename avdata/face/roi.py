"""Mouth regions of interest for frames in memory: landmarks (tracked), alignment, crop, and
figures on how well the face was tracked. Used by `avhubert.transcribe` and `avhubert.api`;
the corpus steps (`preparation/face`) run the same two stages through landmark files."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from avdata.face.landmarks import FaceLandmarker, LandmarkOptions, LandmarkStats
from avdata.face.mouth_roi import CROP_SIZE, CropOptions, crop_geometry, load_mean_face, warp_crops

__all__ = ["FaceQuality", "NoFaceError", "MouthRoiExtractor", "is_mouth_roi"]


class NoFaceError(ValueError):
    """Too few frames with a face to crop the mouth; the message says how many had one."""


@dataclass
class FaceQuality:
    """How the mouth ROI of a clip was obtained.

    `face_fraction`: frames with landmarks (detected or tracked) / all frames; `longest_gap_s`:
    the longest run of frames without a face (their landmarks were interpolated);
    `max_clamp_px`: the most a crop had to be moved to stay inside the aligned face canvas
    (large values mean implausible landmarks)."""

    num_frames: int
    face_fraction: float
    detected: int
    tracked: int
    missing: int
    longest_gap_s: float
    max_clamp_px: float

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def is_mouth_roi(frames: np.ndarray, size: int = CROP_SIZE) -> bool:
    """True for frames that already are mouth ROIs (`[T, size, size(, C)]`, the crop size)."""
    return frames.ndim >= 3 and frames.shape[1] == size and frames.shape[2] == size


def _longest_run(mask: np.ndarray) -> int:
    best = run = 0
    for m in mask:
        run = run + 1 if m else 0
        best = max(best, run)
    return best


class MouthRoiExtractor:
    """`extract(frames)` -> `(rois [T, 96, 96] uint8, FaceQuality)` for grayscale `[T, H, W]`
    (or BGR `[T, H, W, 3]`) frames at 25 fps. The dlib models load once, on first use."""

    def __init__(
        self,
        landmark_options: Optional[LandmarkOptions] = None,
        crop_options: Optional[CropOptions] = None,
        mean_face: Optional[str] = None,
        min_face_fraction: float = 0.5,
        fps: float = 25.0,
    ) -> None:
        self.landmark_options = landmark_options or LandmarkOptions()
        self.crop_options = crop_options or CropOptions()
        self.mean_face = load_mean_face(mean_face)
        self.min_face_fraction = min_face_fraction
        self.fps = fps
        self._landmarker: Optional[FaceLandmarker] = None

    @property
    def landmarker(self) -> FaceLandmarker:
        if self._landmarker is None:
            self._landmarker = FaceLandmarker(options=self.landmark_options)
        return self._landmarker

    def landmarks(self, frames: np.ndarray) -> Tuple[np.ndarray, LandmarkStats]:
        """`[T, 68, 2]` landmarks (NaN where no face) and the detector's counts."""
        return self.landmarker.process(frames)

    def crop(self, frames: np.ndarray, landmarks: np.ndarray) -> Tuple[np.ndarray, float]:
        """Mouth crops `[T, 96, 96]` of `frames` given their `landmarks` (NaN = no face; gaps are
        interpolated) and the largest clamp in px; black frames when no frame has a face."""
        geometry = crop_geometry(landmarks, self.mean_face, self.crop_options)
        if frames.ndim == 4:
            import cv2

            frames = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames])
        w, h = self.crop_options.crop_width, self.crop_options.crop_height
        if geometry is None:
            return np.zeros((len(frames), h, w), np.uint8), 0.0
        return warp_crops(frames, geometry.matrices, w, h), float(geometry.clamp_px.max())

    def extract_chunks(
        self, chunks: Iterable[np.ndarray], timings: Optional[Dict[str, float]] = None
    ) -> Tuple[np.ndarray, Optional[FaceQuality]]:
        """ROIs of a video given as consecutive chunks of frames (each tracked and cropped on
        its own, so memory stays bounded). Chunks already of the ROI size are used as they are.

        Returns `(rois [T, 96, 96] uint8, quality or None when no chunk needed face tracking)`;
        raises `NoFaceError` when fewer than `min_face_fraction` of the tracked frames have a
        face. `timings` gets the seconds of `face_tracking` and `cropping` added."""
        timings = timings if timings is not None else {}
        rois: List[np.ndarray] = []
        missing: List[np.ndarray] = []
        totals = LandmarkStats()
        clamp = 0.0
        for chunk in chunks:
            if is_mouth_roi(chunk):
                rois.append(chunk if chunk.ndim == 3 else np.stack([cv2_gray(f) for f in chunk]))
                continue
            t0 = time.perf_counter()
            marks, stats = self.landmarks(chunk)
            t1 = time.perf_counter()
            crop, chunk_clamp = self.crop(chunk, marks)
            timings["face_tracking"] = timings.get("face_tracking", 0.0) + t1 - t0
            timings["cropping"] = timings.get("cropping", 0.0) + time.perf_counter() - t1
            for k, v in stats.as_dict().items():
                setattr(totals, k, getattr(totals, k) + v)
            rois.append(crop)
            missing.append(np.isnan(marks).any(axis=(1, 2)))
            clamp = max(clamp, chunk_clamp)
        if not rois:
            raise ValueError("no video frame to crop")
        out = np.concatenate(rois)
        if not missing:
            return out, None
        miss = np.concatenate(missing)
        quality = FaceQuality(
            num_frames=len(miss),
            face_fraction=float(1.0 - miss.mean()),
            detected=totals.detected_hog + totals.detected_cnn,
            tracked=totals.tracked,
            missing=int(miss.sum()),
            longest_gap_s=_longest_run(miss) / self.fps,
            max_clamp_px=clamp,
        )
        if quality.face_fraction < self.min_face_fraction:
            raise NoFaceError(
                f"no face on most frames: a face was found on {len(miss) - quality.missing} of {len(miss)} "
                f"frames ({quality.face_fraction:.0%}, need {self.min_face_fraction:.0%}); is the speaker's "
                "face visible and frontal?"
            )
        return out, quality

    def extract(self, frames: np.ndarray) -> Tuple[np.ndarray, Optional[FaceQuality]]:
        """ROIs of frames in memory (see `extract_chunks`)."""
        return self.extract_chunks([frames])


def cv2_gray(frame: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
