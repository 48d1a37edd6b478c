"""Vectorised rendering of a 96x96 grayscale mouth-region video from per-frame mouth shapes.

All frames are drawn at once on `[T, H, W]` coordinate grids: the mouth is an outer lip
ellipse (upper and lower lip of their own thickness), an inner opening (dark cavity; a thin
seam when closed), upper teeth and tongue inside the opening, a lower-lip highlight and a
shadow below it, nostrils and chin shading, all placed in face coordinates that follow a
smooth random head motion (translation, roll, scale). On top: per-speaker skin texture and
directional light, a light flicker, camera blur and sensor noise. Edges are anti-aliased with
a first-order distance to each ellipse.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter, gaussian_filter1d
from scipy.special import expit

from .speakers import FaceProfile
from .visemes import OPEN, ROUND, SPREAD, TEETH, TONGUE

__all__ = ["FRAME_SIZE", "render_mouth_frames", "skin_albedo", "light_field"]

FRAME_SIZE = 96
EDGE_PX = 0.8  # anti-aliasing width of shape edges
MIN_SEAM_HALF_HEIGHT_PX = 0.35  # a closed mouth still shows the dark line between the lips
HEAD_MOTION_SMOOTHING_FRAMES = 6.0
HEAD_ROLL_JITTER_DEG = 1.5
HEAD_SCALE_JITTER = 0.02
LIGHT_FLICKER = 0.02
NOSTRIL_OFFSET_PX = (10.0, -33.0)  # (horizontal, vertical) from the mouth centre, face units
NOSTRIL_SIGMA_PX = 3.0
CHIN_START_PX = 34.0
LIP_CORNER_POWER = 1.6  # outer lip contour exponent along the mouth width
CUPIDS_BOW_DEPTH = 0.15  # relative dip of the upper lip contour at the middle


@lru_cache(maxsize=64)
def skin_albedo(face: FaceProfile, size: int = FRAME_SIZE) -> np.ndarray:
    """Static skin reflectance with coarse and fine texture, `[size, size]` float32 (read-only)."""
    rng = np.random.default_rng(face.texture_seed)
    coarse = gaussian_filter(rng.standard_normal((size, size)), face.texture_scale_px)
    coarse /= coarse.std() + 1e-8
    pores = gaussian_filter(rng.standard_normal((size, size)), 0.6)
    pores /= pores.std() + 1e-8
    albedo = (face.skin_tone + face.texture_amplitude * (coarse + 0.5 * pores)).astype(np.float32)
    albedo.setflags(write=False)
    return albedo


@lru_cache(maxsize=64)
def light_field(face: FaceProfile, size: int = FRAME_SIZE) -> np.ndarray:
    """Static directional light (a linear gradient around 1), `[size, size]` float32 (read-only)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    angle = np.deg2rad(face.light_angle_deg)
    half = size / 2.0
    light = 1.0 + face.light_gradient * ((xx - half) * np.cos(angle) + (yy - half) * np.sin(angle)) / half
    light = light.astype(np.float32)
    light.setflags(write=False)
    return light


def _smooth_noise(rng: np.random.Generator, rows: int, num_frames: int, sigma: float) -> np.ndarray:
    """Smooth unit-variance Gaussian processes `[rows, T]` (white noise through a Gaussian
    filter of std `sigma` frames, divided by the filter's output std `(2 sqrt(pi) sigma)^-1/2`)."""
    margin = 4 * int(np.ceil(sigma))
    noise = gaussian_filter1d(rng.standard_normal((rows, num_frames + 2 * margin)), sigma, axis=1)
    return noise[:, margin : margin + num_frames] * np.sqrt(2.0 * np.sqrt(np.pi) * sigma)


def _soft_ellipse(u: np.ndarray, v: np.ndarray, a: np.ndarray, b: np.ndarray, power: float = 2.0) -> np.ndarray:
    """Anti-aliased mask in 0-1 of `|u/a|^power + (v/b)^2 <= 1` (half axes `a`, `b`,
    broadcastable); `power < 2` gives pointed corners like the mouth's. The edge uses the
    first-order distance `f / |grad f|`."""
    ua, vb = np.abs(u / a), v / b
    f = ua**power + vb * vb - 1.0
    grad = np.sqrt((power * ua ** (power - 1.0) / a) ** 2 + (2.0 * vb / b) ** 2) + 1e-6
    return np.clip(0.5 - f / grad / EDGE_PX, 0.0, 1.0)


def render_mouth_frames(
    shapes: np.ndarray, face: FaceProfile, rng: np.random.Generator, size: int = FRAME_SIZE
) -> np.ndarray:
    """Render `[T, 5]` mouth shapes (see `visemes.SHAPE_FIELDS`) to uint8 frames `[T, size, size]`."""
    shapes = np.asarray(shapes, dtype=np.float32)
    if shapes.ndim != 2 or shapes.shape[1] != 5:
        raise ValueError(f"shapes must be [T, 5], got {shapes.shape}")
    num_frames = shapes.shape[0]

    def col(i: int) -> np.ndarray:  # [T] -> [T, 1, 1] for broadcasting over the image
        return np.clip(shapes[:, i], 0.0, 1.0)[:, None, None]

    opening, spread, rnd, teeth, tongue = col(OPEN), col(SPREAD), col(ROUND), col(TEETH), col(TONGUE)

    # head pose per frame: speaker pose + per-utterance offset + smooth motion
    motion = _smooth_noise(rng, 5, num_frames, HEAD_MOTION_SMOOTHING_FRAMES)
    offset = rng.uniform(-1.0, 1.0, size=4)
    cx = face.center_x + 1.5 * offset[0] + face.head_motion_px * motion[0]
    cy = face.center_y + 1.5 * offset[1] + face.head_motion_px * motion[1]
    roll = np.deg2rad(face.roll_deg + 2.0 * offset[2] + HEAD_ROLL_JITTER_DEG * motion[2])
    scale = face.scale * (1.0 + 0.03 * offset[3] + HEAD_SCALE_JITTER * motion[3])
    flicker = 1.0 + LIGHT_FLICKER * motion[4]

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx = xx[None] - cx[:, None, None].astype(np.float32)
    dy = yy[None] - cy[:, None, None].astype(np.float32)
    cos, sin = np.cos(roll)[:, None, None], np.sin(roll)[:, None, None]
    s = scale[:, None, None]
    u = ((dx * cos + dy * sin) / s).astype(np.float32)  # face coordinates [T, H, W]
    v = ((-dx * sin + dy * cos) / s).astype(np.float32)

    # mouth geometry [T, 1, 1]
    half_width = face.mouth_half_width * (1.0 + 0.15 * spread - 0.25 * rnd - 0.06 * opening)
    inner_half_height = face.max_open_half_height * opening
    inner_half_width = half_width * (0.82 - 0.3 * rnd)
    upper_lip = face.upper_lip * (1.0 + 0.6 * rnd - 0.25 * spread)
    lower_lip = face.lower_lip * (1.0 + 0.5 * rnd - 0.25 * spread)
    bow = 1.0 - CUPIDS_BOW_DEPTH * np.exp(-((u / (0.12 * half_width)) ** 2))
    outer_half_height = np.where(v < 0, inner_half_height + upper_lip * bow, inner_half_height + lower_lip)

    lips = _soft_ellipse(u, v, half_width, outer_half_height, LIP_CORNER_POWER)
    cavity = _soft_ellipse(u, v, inner_half_width, np.maximum(inner_half_height, MIN_SEAM_HALF_HEIGHT_PX))
    teeth_edge = -inner_half_height + teeth * np.minimum(inner_half_height, face.teeth_height)
    teeth_mask = cavity * np.clip(0.5 - (v - teeth_edge) / EDGE_PX, 0.0, 1.0)
    tongue_shape = _soft_ellipse(
        u, v - 0.45 * inner_half_height, 0.6 * inner_half_width, np.maximum(0.5 * inner_half_height, 0.3)
    )
    tongue_mask = cavity * tongue * tongue_shape
    lower_lip_centre = inner_half_height + 0.45 * lower_lip
    highlight = 0.08 * np.exp(-(((v - lower_lip_centre) / (0.3 * lower_lip)) ** 2)) * lips * (1.0 - cavity) * (v > 0)
    below_lip = inner_half_height + lower_lip + 2.5
    lip_shadow = 1.0 - 0.15 * np.exp(-(((v - below_lip) / 2.5) ** 2) - 2.0 * (u / half_width) ** 2)
    nx, ny = NOSTRIL_OFFSET_PX
    nostrils = 1.0 - face.nostril_depth * (
        np.exp(-((u - nx) ** 2 + (v - ny) ** 2) / (2 * NOSTRIL_SIGMA_PX**2))
        + np.exp(-((u + nx) ** 2 + (v - ny) ** 2) / (2 * NOSTRIL_SIGMA_PX**2))
    )
    chin = 1.0 - face.chin_shadow * expit((v - CHIN_START_PX) / 4.0)

    # compositing (reflectance), then light, blur and sensor noise
    skin = skin_albedo(face, size)[None]
    img = skin * (1.0 - (1.0 - face.lip_ratio) * lips)
    img = img + (face.cavity_level - img) * cavity
    img = img + (face.teeth_level - img) * teeth_mask
    img = img + (face.tongue_level - img) * tongue_mask
    img = img * lip_shadow * nostrils * chin + highlight
    img = img * light_field(face, size)[None] * flicker[:, None, None]
    img = gaussian_filter(img.astype(np.float32), sigma=(0.0, face.blur_px, face.blur_px))
    img = img + face.sensor_noise * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
