"""Mouth regions of interest from landmarks: interpolation, temporal smoothing, similarity
alignment to a mean face, and a fixed-size crop centred on the mouth.

Reference (spec 6.1 step 3, `align_mouth.py`, after the Lipreading-TCN `crop_patch`):

1. Missing frames get linearly interpolated landmarks; frames before the first / after the
   last detection copy the nearest one. No landmark at all -> the reference resized whole
   frames to 96x96; here that is an explicit option and the default is to fail the clip.
2. Frame `i` is aligned with the mean of the landmarks of frames `i .. i+11` (a forward window
   of `window_margin` = 12 frames); the last 11 frames reuse the transform of frame `T-12`,
   as the reference's queue did. (Clips shorter than the window use the mean of all frames.)
3. A similarity transform (rotation, uniform scale, translation; least squares, Umeyama)
   maps the smoothed stable points 33 (nose tip), 36, 39, 42, 45 (eye corners) onto the same
   points of the mean face in a 256x256 canvas.
4. The frame's own (unsmoothed) landmarks are mapped into the canvas; the crop is the 96x96
   patch centred on the mean of mouth points 48-67, clamped inside the canvas; a clamp of more
   than 5 px fails the clip (reference threshold).

Implementation: all transforms are computed at once for the clip (NumPy), and each frame is
warped straight into the crop by composing the canvas transform with the crop offset (one
`cv2.warpAffine` to 96x96 per frame instead of a 256x256 warp followed by slicing). Bilinear
interpolation, black outside the frame.

Mean face: `--mean-face` accepts the standard `20words_mean_face.npy` ([68, 2] float, (x, y)
in 256x256 canvas pixels) that users of the original have. The built-in default
`DEFAULT_MEAN_FACE` is this project's own: the mean shape stored in dlib's 68-point predictor
(the average face of its iBUG 300-W training set, in face-detector-box units), scaled to a
160-px box centred in the 256x256 canvas (`mean_face_from_predictor` recomputes it). The
LRW-derived standard file has a slightly different face shape and scale, so crops differ by a
few pixels in scale and position: use the standard file when you need crops matching
released checkpoints' training data as closely as possible.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

__all__ = [
    "CANVAS_SIZE",
    "CROP_SIZE",
    "STABLE_POINT_IDS",
    "MOUTH_START",
    "MOUTH_STOP",
    "WINDOW_MARGIN",
    "MAX_CLAMP_PX",
    "DEFAULT_MEAN_FACE",
    "CropOptions",
    "CropGeometry",
    "load_mean_face",
    "mean_face_from_predictor",
    "interpolate_landmarks",
    "smooth_landmarks",
    "estimate_similarity",
    "apply_affine",
    "crop_geometry",
    "warp_crops",
    "resize_frames",
]

CANVAS_SIZE = 256  # px, side of the mean-face canvas (reference STD_SIZE)
CROP_SIZE = 96  # px, side of the mouth ROI
STABLE_POINT_IDS = (33, 36, 39, 42, 45)  # nose tip and eye corners
MOUTH_START, MOUTH_STOP = 48, 68  # mouth landmarks 48..67
WINDOW_MARGIN = 12  # frames averaged for the alignment transform
MAX_CLAMP_PX = 5.0  # reference: error when the crop centre must move more than this
MEAN_FACE_BOX_PX = 160.0  # side of the face box the dlib mean shape is scaled to

# fmt: off
DEFAULT_MEAN_FACE = np.array([
    (52.71, 99.51), (53.22, 119.43), (55.35, 139.27), (59.49, 158.72),
    (67.24, 176.79), (79.16, 192.46), (93.73, 205.54), (109.81, 216.03),
    (128.00, 219.15), (146.19, 216.03), (162.27, 205.54), (176.84, 192.46),
    (188.76, 176.79), (196.52, 158.72), (200.65, 139.27), (202.78, 119.43),
    (203.29, 99.51), (67.07, 84.95), (76.40, 76.54), (89.57, 74.04),
    (103.21, 75.98), (115.98, 81.29), (140.02, 81.29), (152.79, 75.98),
    (166.43, 74.04), (179.61, 76.54), (188.94, 84.95), (128.00, 96.89),
    (128.00, 109.72), (128.00, 122.44), (128.00, 135.52), (112.72, 144.37),
    (120.06, 147.08), (128.00, 149.39), (135.94, 147.08), (143.28, 144.38),
    (82.22, 98.49), (90.36, 93.81), (100.14, 93.95), (108.70, 100.41),
    (99.53, 102.04), (89.80, 101.92), (147.31, 100.41), (155.87, 93.95),
    (165.65, 93.81), (173.79, 98.49), (166.21, 101.92), (156.47, 102.04),
    (98.74, 168.18), (109.51, 163.87), (120.41, 161.64), (128.00, 163.52),
    (135.60, 161.64), (146.50, 163.87), (157.27, 168.18), (146.84, 178.70),
    (136.25, 183.36), (128.00, 184.24), (119.75, 183.36), (109.16, 178.70),
    (103.23, 168.75), (120.31, 167.99), (128.00, 168.81), (135.69, 167.99),
    (152.77, 168.75), (135.84, 173.71), (128.00, 174.66), (120.16, 173.71),
], dtype=np.float64)
# fmt: on


@dataclass(frozen=True)
class CropOptions:
    """Crop settings; the defaults are the reference's."""

    crop_width: int = CROP_SIZE
    crop_height: int = CROP_SIZE
    start_idx: int = MOUTH_START
    stop_idx: int = MOUTH_STOP
    window_margin: int = WINDOW_MARGIN
    max_clamp_px: float = MAX_CLAMP_PX


@dataclass
class CropGeometry:
    """Per-frame crop geometry of a clip.

    `matrices`: `[T, 2, 3]` affine maps from source-frame pixels to crop pixels.
    `mouth_centres`: `[T, 2]` mouth centre in canvas pixels before clamping.
    `clamp_px`: `[T]` distance the crop centre was moved to stay inside the canvas.
    `interpolated`: `[T]` bool, True where landmarks were interpolated (no detection).
    """

    matrices: np.ndarray
    mouth_centres: np.ndarray
    clamp_px: np.ndarray
    interpolated: np.ndarray


def load_mean_face(path: Optional[str | os.PathLike] = None) -> np.ndarray:
    """The mean face `[68, 2]` (x, y) in 256x256 canvas pixels: the file (e.g. the standard
    `20words_mean_face.npy`) or `DEFAULT_MEAN_FACE`."""
    if path is None:
        return DEFAULT_MEAN_FACE.copy()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mean face file not found: {path}")
    face = np.load(path, allow_pickle=False)
    if face.shape != (68, 2):
        raise ValueError(f"{path}: mean face must be a [68, 2] array of (x, y), got shape {face.shape}")
    return face.astype(np.float64)


def mean_face_from_predictor(
    predictor_path: str | os.PathLike, box_px: float = MEAN_FACE_BOX_PX, canvas: int = CANVAS_SIZE
) -> np.ndarray:
    """Read the mean shape (`initial_shape`) stored in a dlib shape-predictor file and place it
    in the canvas: unit face box -> `box_px` square centred in the canvas. Returns `[68, 2]`.

    dlib's serialisation: a version int, then the shape as a column matrix (`-rows`, `-cols`,
    values), where ints are a length/sign byte plus little-endian bytes and a float is an
    integer mantissa and exponent (value = mantissa * 2**exponent)."""
    with open(predictor_path, "rb") as f:
        buf = f.read(1 << 16)
    pos = 0

    def read_int() -> int:
        nonlocal pos
        head = buf[pos]
        nbytes = head & 0x0F
        value = int.from_bytes(buf[pos + 1 : pos + 1 + nbytes], "little")
        pos += 1 + nbytes
        return -value if head & 0x80 else value

    version = read_int()
    rows, cols = abs(read_int()), abs(read_int())
    if version != 1 or rows * cols != 136:
        raise ValueError(f"{predictor_path}: not a 68-point dlib shape predictor (version {version}, {rows}x{cols})")
    values = []
    for _ in range(rows * cols):
        mantissa = read_int()
        exponent = read_int()
        values.append(mantissa * 2.0**exponent)
    unit = np.asarray(values, dtype=np.float64).reshape(68, 2)
    return (unit - 0.5) * box_px + canvas / 2


def interpolate_landmarks(landmarks: np.ndarray) -> Tuple[Optional[np.ndarray], np.ndarray]:
    """Fill missing frames of `[T, 68, 2]` (NaN = missing) by linear interpolation in time,
    copying the nearest detection before the first / after the last one.

    Returns `(filled [T, 68, 2] or None when no frame has landmarks, missing [T] bool)`."""
    T = landmarks.shape[0]
    missing = np.isnan(landmarks).any(axis=(1, 2))
    if missing.all():
        return None, missing
    if not missing.any():
        return landmarks.astype(np.float64), missing
    valid_t = np.flatnonzero(~missing)
    flat = landmarks.reshape(T, -1).astype(np.float64)
    t = np.arange(T)
    # Interpolation weights shared by all 136 coordinates: neighbours valid_t[j-1], valid_t[j].
    j = np.clip(np.searchsorted(valid_t, t), 1, len(valid_t) - 1) if len(valid_t) > 1 else np.zeros(T, int)
    if len(valid_t) == 1:
        filled = np.repeat(flat[valid_t], T, axis=0)
    else:
        t0, t1 = valid_t[j - 1], valid_t[j]
        w = np.clip((t - t0) / (t1 - t0), 0.0, 1.0)[:, None]  # clip = edge replication
        filled = (1 - w) * flat[t0] + w * flat[t1]
    filled[valid_t] = flat[valid_t]
    return filled.reshape(T, 68, 2), missing


def smooth_landmarks(landmarks: np.ndarray, window: int = WINDOW_MARGIN) -> np.ndarray:
    """Forward moving average: frame `i` gets the mean of frames `i .. i+window-1`; the last
    `window-1` frames repeat frame `T-window`'s value (reference behaviour). `[T,68,2]`."""
    T = landmarks.shape[0]
    if T <= window:
        return np.broadcast_to(landmarks.mean(axis=0), landmarks.shape).copy()
    csum = np.concatenate([np.zeros((1,) + landmarks.shape[1:]), np.cumsum(landmarks, axis=0)])
    means = (csum[window:] - csum[:-window]) / window  # [T-window+1, 68, 2], means[i] = mean(i..i+w-1)
    tail = np.repeat(means[-1:], window - 1, axis=0)
    return np.concatenate([means, tail])


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transforms (Umeyama 1991) mapping `src [T, K, 2]` onto
    `dst [K, 2]`, for all T at once. Returns `[T, 2, 3]` affine matrices."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s = src.mean(axis=1, keepdims=True)  # [T, 1, 2]
    mu_d = dst.mean(axis=0)  # [2]
    s0 = src - mu_s
    d0 = dst - mu_d
    cov = np.einsum("kd,tke->tde", d0, s0) / src.shape[1]  # [T, 2, 2] = dst^T src / K
    U, S, Vt = np.linalg.svd(cov)
    det = np.linalg.det(U) * np.linalg.det(Vt)
    D = np.ones((src.shape[0], 2))
    D[det < 0, 1] = -1  # no reflections
    R = np.einsum("tij,tj,tjk->tik", U, D, Vt)  # [T, 2, 2]
    var_s = (s0**2).sum(axis=(1, 2)) / src.shape[1]  # [T]
    scale = (S * D).sum(axis=1) / np.maximum(var_s, 1e-12)  # [T]
    A = R * scale[:, None, None]
    t = mu_d - np.einsum("tij,tj->ti", A, mu_s[:, 0])
    return np.concatenate([A, t[:, :, None]], axis=2)


def apply_affine(M: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply `[T, 2, 3]` affine maps to `[T, K, 2]` points."""
    return np.einsum("tij,tkj->tki", M[:, :, :2], pts) + M[:, None, :, 2]


def crop_geometry(
    landmarks: np.ndarray, mean_face: np.ndarray, options: Optional[CropOptions] = None
) -> Optional[CropGeometry]:
    """Per-frame source->crop affine maps for a clip's raw landmarks `[T, 68, 2]` (NaN =
    missing). Returns None when no frame has landmarks."""
    opts = options or CropOptions()
    filled, missing = interpolate_landmarks(landmarks)
    if filled is None:
        return None
    stable = list(STABLE_POINT_IDS)
    smoothed = smooth_landmarks(filled, opts.window_margin)
    to_canvas = estimate_similarity(smoothed[:, stable], mean_face[stable])  # [T, 2, 3]
    mouth = apply_affine(to_canvas, filled[:, opts.start_idx : opts.stop_idx])  # [T, 20, 2]
    centres = mouth.mean(axis=1)  # [T, 2] (x, y)
    half = np.array([opts.crop_width / 2, opts.crop_height / 2])
    clamped = np.clip(centres, half, CANVAS_SIZE - half)
    clamp_px = np.abs(clamped - centres).max(axis=1)
    top_left = np.round(clamped - half)  # integer crop origin, like slicing the canvas
    to_crop = to_canvas.copy()
    to_crop[:, :, 2] -= top_left
    return CropGeometry(matrices=to_crop, mouth_centres=centres, clamp_px=clamp_px, interpolated=missing)


def warp_crops(frames: np.ndarray, matrices: np.ndarray, width: int = CROP_SIZE, height: int = CROP_SIZE) -> np.ndarray:
    """Warp each frame `[T, H, W(, 3)]` with its `[T, 2, 3]` map into a `height x width` crop
    (bilinear, black outside). Returns `[T, height, width(, 3)]` uint8."""
    import cv2

    if len(frames) != len(matrices):
        raise ValueError(f"{len(frames)} frames but {len(matrices)} transforms")
    out = np.empty((len(frames), height, width) + frames.shape[3:], dtype=np.uint8)
    for i in range(len(frames)):
        out[i] = cv2.warpAffine(
            frames[i],
            matrices[i],
            (width, height),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
    return out


def resize_frames(frames: np.ndarray, width: int = CROP_SIZE, height: int = CROP_SIZE) -> np.ndarray:
    """Reference fallback for clips without any landmark: resize whole frames."""
    import cv2

    return np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames])
