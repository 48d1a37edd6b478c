"""dlib 68-point facial landmarks for a sequence of frames, with face-box tracking.

Reference (spec 6.1 step 2, `detect_landmark.py`): per frame, the HOG frontal face detector
with one upsample, the CNN (mmod) detector as fallback when HOG finds nothing, and the 68-point
shape predictor on the last detected face. That costs one full detection per frame.

Here detection runs on the first frame and then every `redetect_every` frames; in between, the
face box of the last detection is carried along by the landmark motion (similarity of the
previous frame's landmarks to the landmarks found at detection time), and the shape predictor
runs in that box. A frame is re-detected at once when its landmarks drift from the previous
frame's by more than `max_drift` of the face size (a fast move, a cut, a lost face), and a
blank frame (black or flat) never gets landmarks. `redetect_every=1` reproduces the
reference's per-frame detection. Where several faces are found, the one nearest the tracked
face is kept, else the largest (the reference kept the last one dlib returned).

Output: float32 `[T, 68, 2]` (x, y) pixel coordinates, NaN for frames without a face.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from avdata.atomic import atomic_path

logger = logging.getLogger(__name__)

__all__ = [
    "NUM_LANDMARKS",
    "LandmarkOptions",
    "LandmarkStats",
    "FaceLandmarker",
    "default_predictor_path",
    "default_cnn_detector_path",
    "save_landmarks",
    "load_landmarks",
]

NUM_LANDMARKS = 68
DEBIAN_PREDICTOR = "/usr/share/dlib/shape_predictor_68_face_landmarks.dat"
PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
CNN_DETECTOR_FILE = "mmod_human_face_detector.dat"
BLANK_FRAME_STD = 2.0  # grey levels: a frame flatter than this cannot contain a face
INSTALL_HINT = (
    "install the dlib models with `apt-get install libdlib-data` (68-point predictor in "
    "/usr/share/dlib) or `pip install face-recognition-models` (predictor and mmod detector), "
    "or pass the file path"
)


def _face_recognition_models_file(name: str) -> Optional[str]:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name
    return str(path) if path.is_file() else None


def default_predictor_path() -> Optional[str]:
    """Debian `libdlib-data` file if present, else the `face-recognition-models` copy."""
    if os.path.isfile(DEBIAN_PREDICTOR):
        return DEBIAN_PREDICTOR
    return _face_recognition_models_file(PREDICTOR_FILE)


def default_cnn_detector_path() -> Optional[str]:
    """`mmod_human_face_detector.dat` from `face-recognition-models`, if installed."""
    return _face_recognition_models_file(CNN_DETECTOR_FILE)


@dataclass(frozen=True)
class LandmarkOptions:
    """Detection/tracking settings (see module docstring)."""

    upsample: int = 1  # HOG/CNN detector upsampling, as the reference
    redetect_every: int = 5  # frames between full detections while tracking; 1 = every frame
    max_drift: float = 0.3  # centroid shift between frames, in RMS landmark radii (~1/3 face width)
    max_scale_change: float = 0.2  # relative change of the RMS landmark radius between frames
    use_cnn: bool = True  # CNN (mmod) fallback when HOG finds no face
    detect_max_side: int = 640  # frames larger than this are downscaled for detection only


@dataclass
class LandmarkStats:
    """What happened per clip: frame counts by how their landmarks were obtained."""

    num_frames: int = 0
    detected_hog: int = 0
    detected_cnn: int = 0
    tracked: int = 0
    missing: int = 0
    redetect_on_drift: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class _Track:
    ref_box: np.ndarray  # [4] left, top, right, bottom of the last detection
    ref_pts: np.ndarray  # [68, 2] landmarks at detection time
    prev_pts: np.ndarray  # [68, 2] landmarks of the previous frame
    detected_at: int


def _centroid_scale(pts: np.ndarray) -> Tuple[np.ndarray, float]:
    c = pts.mean(axis=0)
    return c, float(np.sqrt(((pts - c) ** 2).sum(axis=1).mean()))


class FaceLandmarker:
    """Stateful per-clip landmark extractor; `process(frames)` handles one clip."""

    def __init__(
        self,
        predictor_path: Optional[str] = None,
        cnn_detector_path: Optional[str] = None,
        options: Optional[LandmarkOptions] = None,
    ) -> None:
        import dlib

        self.options = options or LandmarkOptions()
        predictor_path = predictor_path or default_predictor_path()
        if not predictor_path or not os.path.isfile(predictor_path):
            raise FileNotFoundError(f"68-point shape predictor not found ({predictor_path}); {INSTALL_HINT}")
        self._predictor = dlib.shape_predictor(predictor_path)
        self._hog = dlib.get_frontal_face_detector()
        self._cnn = None
        if self.options.use_cnn:
            cnn_detector_path = cnn_detector_path or default_cnn_detector_path()
            if not cnn_detector_path or not os.path.isfile(cnn_detector_path):
                raise FileNotFoundError(
                    f"CNN face detector not found ({cnn_detector_path}); {INSTALL_HINT}; "
                    "or disable the fallback (--no-cnn)"
                )
            self._cnn = dlib.cnn_face_detection_model_v1(cnn_detector_path)
        self._dlib = dlib

    # -- single-frame primitives ------------------------------------------------------------

    def detect(self, gray: np.ndarray) -> Tuple[List[np.ndarray], str]:
        """Face boxes `[left, top, right, bottom]` in `gray` ([H, W] uint8): HOG, then CNN.
        Returns `(boxes, detector)` with detector 'hog', 'cnn' or 'none'."""
        import cv2

        scale = 1.0
        img = gray
        longest = max(gray.shape)
        if self.options.detect_max_side and longest > self.options.detect_max_side:
            scale = self.options.detect_max_side / longest
            img = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        rects = list(self._hog(img, self.options.upsample))
        kind = "hog"
        if not rects and self._cnn is not None:
            rgb = np.repeat(img[:, :, None], 3, axis=2)
            rects = [d.rect for d in self._cnn(rgb, self.options.upsample)]
            kind = "cnn"
        if not rects:
            return [], "none"
        boxes = [np.array([r.left(), r.top(), r.right(), r.bottom()], dtype=np.float64) / scale for r in rects]
        return boxes, kind

    def predict(self, gray: np.ndarray, box: np.ndarray) -> np.ndarray:
        """68 landmarks `[68, 2]` (x, y) inside `box` ([left, top, right, bottom])."""
        left, top, right, bottom = (int(round(v)) for v in box)
        shape = self._predictor(gray, self._dlib.rectangle(left, top, right, bottom))
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)

    # -- clip -------------------------------------------------------------------------------

    def process(self, frames: np.ndarray) -> Tuple[np.ndarray, LandmarkStats]:
        """Landmarks for a clip. `frames`: `[T, H, W]` gray or `[T, H, W, 3]` BGR uint8.

        Returns `(landmarks [T, 68, 2] float32 with NaN for missing frames, stats)`."""
        import cv2

        if frames.ndim == 4:
            frames = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames])
        if frames.ndim != 3:
            raise ValueError(f"expected [T,H,W] or [T,H,W,3] frames, got {frames.shape}")
        opts = self.options
        T = frames.shape[0]
        out = np.full((T, NUM_LANDMARKS, 2), np.nan, dtype=np.float32)
        stats = LandmarkStats(num_frames=T)
        # Flat frames first, vectorised: no face can be there.
        blank = frames.reshape(T, -1).std(axis=1) < BLANK_FRAME_STD
        track: Optional[_Track] = None
        for t in range(T):
            gray = frames[t]
            if blank[t]:
                track = None
                stats.missing += 1
                continue
            pts = None
            if track is not None and t - track.detected_at < opts.redetect_every:
                pts = self._track_step(gray, track)
                if pts is None:
                    stats.redetect_on_drift += 1
                else:
                    stats.tracked += 1
            if pts is None:
                boxes, kind = self.detect(gray)
                if not boxes:
                    track = None
                    stats.missing += 1
                    continue
                box = self._choose(boxes, track)
                pts = self.predict(gray, box)
                track = _Track(ref_box=box, ref_pts=pts, prev_pts=pts, detected_at=t)
                if kind == "hog":
                    stats.detected_hog += 1
                else:
                    stats.detected_cnn += 1
            else:
                track.prev_pts = pts
            out[t] = pts
        return out, stats

    def _track_step(self, gray: np.ndarray, track: _Track) -> Optional[np.ndarray]:
        """Predict inside the carried-along box; None when the result drifted too far."""
        c_ref, s_ref = _centroid_scale(track.ref_pts)
        c_prev, s_prev = _centroid_scale(track.prev_pts)
        scale = s_prev / max(s_ref, 1e-6)
        box_c = (track.ref_box[:2] + track.ref_box[2:]) / 2
        half = (track.ref_box[2:] - track.ref_box[:2]) / 2 * scale
        new_c = c_prev + (box_c - c_ref) * scale
        box = np.concatenate([new_c - half, new_c + half])
        pts = self.predict(gray, box)
        c_new, s_new = _centroid_scale(pts)
        drift = float(np.linalg.norm(c_new - c_prev)) / max(s_prev, 1e-6)
        scale_change = abs(np.log(max(s_new, 1e-6) / max(s_prev, 1e-6)))
        if drift > self.options.max_drift or scale_change > np.log1p(self.options.max_scale_change):
            return None
        return pts

    @staticmethod
    def _choose(boxes: List[np.ndarray], track: Optional[_Track]) -> np.ndarray:
        if len(boxes) == 1:
            return boxes[0]
        if track is not None:
            c_prev, _ = _centroid_scale(track.prev_pts)
            return min(boxes, key=lambda b: float(np.linalg.norm((b[:2] + b[2:]) / 2 - c_prev)))
        return max(boxes, key=lambda b: float((b[2] - b[0]) * (b[3] - b[1])))


# --------------------------------------------------------------------------------------------
# landmark files
# --------------------------------------------------------------------------------------------


def save_landmarks(path: str | os.PathLike, landmarks: np.ndarray) -> None:
    """Write `[T, 68, 2]` float32 landmarks (NaN = missing) as `.npy`, atomically."""
    landmarks = np.asarray(landmarks, dtype=np.float32)
    if landmarks.ndim != 3 or landmarks.shape[1:] != (NUM_LANDMARKS, 2):
        raise ValueError(f"landmarks must be [T, 68, 2], got {landmarks.shape}")
    with atomic_path(path) as tmp:
        np.save(tmp, landmarks, allow_pickle=False)


def load_landmarks(path: str | os.PathLike) -> np.ndarray:
    """Read landmarks as float32 `[T, 68, 2]`, NaN for missing frames.

    Accepts this project's `.npy` and the reference's `.pkl` (a list with an int [68, 2] array
    or None per frame). Only load `.pkl` files you made: unpickling can run code."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"landmarks not found: {path}")
    if path.endswith(".pkl"):
        import pickle

        with open(path, "rb") as f:
            frames = pickle.load(f)
        out = np.full((len(frames), NUM_LANDMARKS, 2), np.nan, dtype=np.float32)
        for i, pts in enumerate(frames):
            if pts is not None:
                out[i] = np.asarray(pts, dtype=np.float32).reshape(NUM_LANDMARKS, 2)
        return out
    arr = np.load(path, allow_pickle=False)
    if arr.ndim != 3 or arr.shape[1:] != (NUM_LANDMARKS, 2):
        raise ValueError(f"{path}: landmarks must be [T, 68, 2], got {arr.shape}")
    return arr.astype(np.float32, copy=False)
