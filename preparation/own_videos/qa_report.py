"""Quality report of prepared clips: flags bad crops instead of letting them pass silently.

Reads, for each id of `--file-list` (any of these may be missing for a clip):
       `{landmark_dir}/{id}.npy|.pkl`, `{roi_dir}/{id}.mp4` (mouth ROIs), `{audio_dir}/{id}.wav`,
       and `{video_dir}/{id}.mp4` (the source, used when the ROI does not exist).
Writes `{out_dir}/clips.tsv`: one row per clip with the metrics below and its flags;
       `{out_dir}/flagged.tsv`: `id<TAB>flag,flag,...` for flagged clips (the failures file);
       `{out_dir}/summary.json`: per-run totals; `{out_dir}/contact_sheet.png`: sampled crops.

Metrics per clip:
- `face_rate`: share of frames with detected landmarks; `interpolated`: frames without
  (filled by interpolation in the crop step); `longest_gap`: longest run of them.
- `black_rate`: share of frames whose mean grey level is below `--black-level`;
  `frozen_rate`: share of frames (nearly) identical to the previous one.
- `drift_px`: largest distance, in 256x256 canvas pixels, between a frame's mouth centre
  aligned on that frame's own stable points and the mean face's mouth centre (landmarks that
  do not fit a face); `jump_px`: largest frame-to-frame move of the crop centre.
- `av_mismatch_sec`: |audio duration - video duration|.

Flags: `missing_video`, `missing_audio`, `no_face`, `low_face_rate`, `black`, `frozen`,
`roi_drift`, `av_mismatch`; thresholds are flags of this script. `--fail-on-flags` makes the
exit code non-zero when any clip is flagged.

Example:

    python -m preparation.own_videos.qa_report --file-list $LRS3/file.list --video-dir $LRS3 \
        --landmark-dir $LRS3/landmark --roi-dir $LRS3/video --audio-dir $LRS3/audio \
        --out-dir $LRS3/qa --fail-on-flags
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from avdata import atomic, constants, procs

from preparation import common

logger = logging.getLogger(__name__)

STEP = "qa_report"


@dataclass(frozen=True)
class QAThresholds:
    """A clip is flagged when a metric crosses its threshold."""

    min_face_rate: float = 0.5
    black_level: float = 10.0  # mean grey level (0-255) under which a frame counts as black
    max_black_rate: float = 0.2
    frozen_diff: float = 0.5  # mean absolute grey-level change under which a frame is frozen
    max_frozen_rate: float = 0.5
    max_drift_px: float = 24.0
    max_av_mismatch_sec: float = 0.2


@dataclass
class ClipQA:
    """Metrics and flags of one clip (NaN = not measurable)."""

    id: str
    num_frames: int = 0
    face_rate: float = float("nan")
    interpolated: int = 0
    longest_gap: int = 0
    black_rate: float = float("nan")
    frozen_rate: float = float("nan")
    drift_px: float = float("nan")
    jump_px: float = float("nan")
    av_mismatch_sec: float = float("nan")
    flags: List[str] = field(default_factory=list)


@dataclass(frozen=True)
class QAPaths:
    landmark_dir: Optional[str] = None
    roi_dir: Optional[str] = None
    audio_dir: Optional[str] = None
    video_dir: Optional[str] = None


def _longest_run(mask: np.ndarray) -> int:
    if not mask.any():
        return 0
    padded = np.concatenate([[0], mask.astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return int((edges[1::2] - edges[::2]).max())


def frame_levels(video_path: str | Path) -> tuple:
    """Per-frame mean grey level `[T]` and mean absolute change from the previous frame `[T-1]`."""
    from preparation.media import read_video

    frames, _ = read_video(video_path, gray=True)
    flat = frames.reshape(len(frames), -1).astype(np.float32)
    means = flat.mean(axis=1)
    diffs = np.abs(np.diff(flat, axis=0)).mean(axis=1) if len(frames) > 1 else np.zeros(0)
    return means, diffs


def landmark_metrics(landmarks: np.ndarray, mean_face: np.ndarray) -> dict:
    """Face rate, interpolation and drift metrics of `[T, 68, 2]` landmarks (NaN = missing).

    `drift_px` aligns each detected frame on its own stable points (no smoothing, so head
    motion does not count) and measures how far its mouth centre lands from the mean face's:
    a few pixels for real faces while talking, tens of pixels for landmarks on a non-face or
    a wrong face. `jump_px` is the largest frame-to-frame move of the crop centre."""
    from preparation.face.mouth_roi import (
        CANVAS_SIZE,
        MOUTH_START,
        MOUTH_STOP,
        STABLE_POINT_IDS,
        CropOptions,
        apply_affine,
        crop_geometry,
        estimate_similarity,
    )

    missing = np.isnan(landmarks).any(axis=(1, 2))
    out = {
        "num_frames": int(len(landmarks)),
        "face_rate": float(1 - missing.mean()) if len(landmarks) else 0.0,
        "interpolated": int(missing.sum()),
        "longest_gap": _longest_run(missing),
    }
    if missing.all():
        return out
    stable = list(STABLE_POINT_IDS)
    detected = landmarks[~missing].astype(np.float64)
    to_canvas = estimate_similarity(detected[:, stable], mean_face[stable])
    mouth = apply_affine(to_canvas, detected[:, MOUTH_START:MOUTH_STOP]).mean(axis=1)
    target = mean_face[MOUTH_START:MOUTH_STOP].mean(axis=0)
    out["drift_px"] = float(np.linalg.norm(mouth - target, axis=1).max())
    # A canvas-sized clamp limit: measure the crop path without failing anything.
    geometry = crop_geometry(landmarks, mean_face, CropOptions(max_clamp_px=float(CANVAS_SIZE)))
    moves = np.linalg.norm(np.diff(geometry.mouth_centres, axis=0), axis=1)
    out["jump_px"] = float(moves.max()) if len(moves) else 0.0
    return out


def qa_clip(item_id: str, paths: QAPaths, mean_face: np.ndarray, thresholds: QAThresholds) -> ClipQA:
    """Measure and flag one clip."""
    from preparation.face.crop_mouth_rois import find_landmarks
    from preparation.face.landmarks import load_landmarks
    from preparation.media import count_wav_samples

    qa = ClipQA(item_id)
    th = thresholds
    if paths.landmark_dir:
        try:
            lm_path = find_landmarks(paths.landmark_dir, item_id)
        except FileNotFoundError:
            qa.flags.append("no_landmarks")
        else:
            for k, v in landmark_metrics(load_landmarks(lm_path), mean_face).items():
                setattr(qa, k, v)
            if qa.face_rate == 0:
                qa.flags.append("no_face")
            elif qa.face_rate < th.min_face_rate:
                qa.flags.append("low_face_rate")
            if qa.drift_px > th.max_drift_px:
                qa.flags.append("roi_drift")
    video = None
    if paths.roi_dir and (Path(paths.roi_dir) / f"{item_id}.mp4").is_file():
        video = Path(paths.roi_dir) / f"{item_id}.mp4"
    elif paths.video_dir and (Path(paths.video_dir) / f"{item_id}.mp4").is_file():
        video = Path(paths.video_dir) / f"{item_id}.mp4"
    if paths.roi_dir and not (Path(paths.roi_dir) / f"{item_id}.mp4").is_file():
        qa.flags.append("missing_video")
    n_video = None
    if video is not None:
        means, diffs = frame_levels(video)
        n_video = len(means)
        qa.num_frames = qa.num_frames or n_video
        qa.black_rate = float((means < th.black_level).mean())
        qa.frozen_rate = float((diffs < th.frozen_diff).sum() / max(len(means) - 1, 1))
        if qa.black_rate > th.max_black_rate:
            qa.flags.append("black")
        if qa.frozen_rate > th.max_frozen_rate:
            qa.flags.append("frozen")
    if paths.audio_dir:
        wav = Path(paths.audio_dir) / f"{item_id}.wav"
        if not wav.is_file():
            qa.flags.append("missing_audio")
        elif n_video is not None:
            qa.av_mismatch_sec = abs(count_wav_samples(wav) / constants.AUDIO_SAMPLE_RATE_HZ - n_video / constants.VIDEO_FPS)
            if qa.av_mismatch_sec > th.max_av_mismatch_sec:
                qa.flags.append("av_mismatch")
    return qa


def contact_sheet(
    items: Sequence[tuple], out_path: str | Path, frames_per_clip: int = 6, tile: int = 96
) -> Optional[Path]:
    """Grid PNG: one row per `(id, video path)`, `frames_per_clip` evenly spaced frames, with
    the id written on the first tile. Returns the path, or None when there is nothing to show."""
    import cv2

    from preparation.media import read_video

    rows = []
    for item_id, path in items:
        frames, _ = read_video(path)
        picks = np.linspace(0, len(frames) - 1, frames_per_clip).round().astype(int)
        tiles = [cv2.resize(frames[i], (tile, tile), interpolation=cv2.INTER_AREA) for i in picks]
        row = np.concatenate(tiles, axis=1)
        cv2.putText(row, item_id[-24:], (2, 10), cv2.FONT_HERSHEY_PLAIN, 0.7, (0, 255, 255), 1, cv2.LINE_AA)
        rows.append(row)
    if not rows:
        return None
    sheet = np.concatenate(rows, axis=0)
    with atomic.atomic_path(out_path) as tmp:
        if not cv2.imwrite(str(tmp), sheet):
            raise OSError(f"could not write {out_path}")
    return Path(out_path)


def qa_report(
    ids: Sequence[str],
    paths: QAPaths,
    out_dir: str | Path,
    mean_face: Optional[np.ndarray] = None,
    thresholds: Optional[QAThresholds] = None,
    sheet_clips: int = 16,
    num_workers: int = 1,
    progress: bool = True,
) -> List[ClipQA]:
    """Write the report files (see module docstring); returns the per-clip results."""
    from preparation.face.mouth_roi import load_mean_face

    mean_face = load_mean_face() if mean_face is None else mean_face
    thresholds = thresholds or QAThresholds()
    out_dir = Path(out_dir)
    result, outputs = common.run_items(
        list(ids),
        functools.partial(qa_clip, paths=paths, mean_face=mean_face, thresholds=thresholds),
        num_workers=num_workers,
        desc="QA",
        progress=progress,
    )
    clips = [outputs[i] for i in ids if i in outputs]
    for item_id, error in result.failures.entries:
        clips.append(ClipQA(item_id, flags=[f"unreadable: {error}"]))
    names = [f.name for f in fields(ClipQA)]
    atomic.write_lines(
        out_dir / "clips.tsv",
        ["\t".join(names)] + ["\t".join(_fmt(getattr(c, n)) for n in names) for c in clips],
    )
    flagged = [c for c in clips if c.flags]
    atomic.write_lines(out_dir / "flagged.tsv", (f"{c.id}\t{','.join(c.flags)}" for c in flagged))
    summary = _summary(clips, thresholds)
    with atomic.atomic_path(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    if paths.roi_dir:
        rois = [(c.id, Path(paths.roi_dir) / f"{c.id}.mp4") for c in clips]
        rois = [r for r in rois if r[1].is_file()]
        step = max(1, len(rois) // max(sheet_clips, 1))
        contact_sheet(rois[::step][:sheet_clips], out_dir / "contact_sheet.png")
    logger.info("QA: %d clips, %d flagged (%s)", len(clips), len(flagged), summary["flag_counts"])
    return clips


def _fmt(value) -> str:
    if isinstance(value, list):
        return ",".join(value)
    if isinstance(value, float):
        return "nan" if np.isnan(value) else f"{value:.4g}"
    return str(value)


def _summary(clips: List[ClipQA], thresholds: QAThresholds) -> dict:
    counts: Dict[str, int] = {}
    for c in clips:
        for flag in c.flags:
            key = flag.split(":")[0]
            counts[key] = counts.get(key, 0) + 1

    def mean(name: str) -> Optional[float]:
        vals = [getattr(c, name) for c in clips if not np.isnan(getattr(c, name))]
        return float(np.mean(vals)) if vals else None

    return {
        "clips": len(clips),
        "flagged": sum(bool(c.flags) for c in clips),
        "flag_counts": counts,
        "frames": int(sum(c.num_frames for c in clips)),
        "interpolated_frames": int(sum(c.interpolated for c in clips)),
        "mean_face_rate": mean("face_rate"),
        "mean_black_rate": mean("black_rate"),
        "mean_frozen_rate": mean("frozen_rate"),
        "max_drift_px": max((c.drift_px for c in clips if not np.isnan(c.drift_px)), default=None),
        "mean_av_mismatch_sec": mean("av_mismatch_sec"),
        "thresholds": asdict(thresholds),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    d = QAThresholds()
    p.add_argument("--file-list", required=True, help="ids, one per line")
    p.add_argument("--out-dir", required=True, help="report folder")
    p.add_argument("--landmark-dir", default=None)
    p.add_argument("--roi-dir", default=None, help="mouth ROI folder ({id}.mp4)")
    p.add_argument("--audio-dir", default=None)
    p.add_argument("--video-dir", default=None, help="source videos, checked when an ROI is missing")
    p.add_argument("--mean-face", default=None, help="mean face used for the crops (default: built-in)")
    for f in fields(QAThresholds):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=float, default=getattr(d, f.name))
    p.add_argument("--sheet-clips", type=int, default=16, help="clips on the contact sheet")
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--fail-on-flags", action="store_true", help="exit 1 when any clip is flagged")
    common.add_common_args(p, sharded=False)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    from preparation.face.mouth_roi import load_mean_face

    args = common.parse_args(build_parser(), argv)
    thresholds = QAThresholds(**{f.name: getattr(args, f.name) for f in fields(QAThresholds)})
    paths = QAPaths(args.landmark_dir, args.roi_dir, args.audio_dir, args.video_dir)
    clips = qa_report(
        common.read_list(args.file_list),
        paths,
        args.out_dir,
        load_mean_face(args.mean_face),
        thresholds,
        args.sheet_clips,
        args.num_workers,
        not args.no_progress,
    )
    flagged = sum(bool(c.flags) for c in clips)
    if flagged and args.fail_on_flags:
        logger.error("%d flagged clips listed in %s", flagged, Path(args.out_dir) / "flagged.tsv")
        return 1
    return 0


if __name__ == "__main__":
    procs.run_main(main)
