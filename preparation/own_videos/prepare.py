"""Prepare your own videos for fine-tuning or decoding: any frame rate and sample rate in,
25 fps mouth ROIs, 16 kHz mono wavs, a manifest, labels and a dictionary out.

Input, either
- `--in-dir DIR`: every video under DIR (`.mp4 .avi .mov .mkv .webm .m4v .mpg .mpeg .flv`,
  searched recursively, sorted); an optional transcript `{name}.txt` beside each video
  (plain text, or LRS3's `Text: ...` format); the id is the path relative to DIR without
  extension; or
- `--transcripts FILE`: a CSV (header `id,video,transcript`) or JSONL (objects with those
  keys) listing the clips; `video` paths are relative to the file's folder unless absolute.

Output, under `--out-dir OUT`:
- `OUT/video25/{id}.mp4` (25 fps copy), `OUT/audio/{id}.wav` (16 kHz mono int16),
  `OUT/landmark/{id}.npy`, `OUT/video/{id}.mp4` (96x96 mouth ROIs)
- `OUT/file.list`, `OUT/label.list` (when transcripts exist), `OUT/nframes.tsv`
- `OUT/{split}.tsv` (root OUT, relative paths), `OUT/{split}.wrd` when every kept clip has a
  transcript, and `OUT/dict.wrd.txt`: from `--spm-model` (e.g. the sentencepiece model of the
  checkpoint you fine-tune or decode with), else a new unigram model `OUT/spm{V}/` trained on
  the transcripts with `--vocab-size V`
- `OUT/qa/` (see `preparation.own_videos.qa_report`); failures of each stage in
  `OUT/failures.own_{stage}.{rank}_{nshard}.tsv`.

Stages (`--stages`, default all): convert, audio, landmarks, crop (per clip, sharded with
`--rank/--nshard`, resumable), then manifest and qa (whole run; with several shards, run them
once after all shards with `--stages manifest qa`).

Example:

    python -m preparation.own_videos.prepare --in-dir my_videos --out-dir my_data \
        --spm-model lrs3/spm1000/spm_unigram1000.model --split test
"""

from __future__ import annotations

import argparse
import functools
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from avdata import atomic, procs, sharding
from avdata.ffmpeg import find_ffmpeg

from preparation import common
from preparation.records import read_records, record_path

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv")
CLIP_STAGES = ("convert", "audio", "landmarks", "crop")
RUN_STAGES = ("manifest", "qa")
ALL_STAGES = CLIP_STAGES + RUN_STAGES


@dataclass(frozen=True)
class Clip:
    id: str
    video: str  # source path
    transcript: Optional[str]


def _read_transcript(path: Path) -> Optional[str]:
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8").strip()
    if text.startswith("Text:"):
        text = text.splitlines()[0][len("Text:") :]
    return " ".join(text.split()) or None


def _check_id(item_id: str, where: str) -> str:
    if not item_id or any(c in item_id for c in "\t\n\r"):
        raise ValueError(f"{where}: id {item_id!r} is empty or contains a tab/newline")
    return item_id


def discover_clips(in_dir: str | Path) -> List[Clip]:
    """Videos under `in_dir` (recursive, sorted) with `.txt` transcripts beside them."""
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise FileNotFoundError(f"input folder not found: {in_dir}")
    videos = sorted(p for p in in_dir.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    if not videos:
        raise FileNotFoundError(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) under {in_dir}")
    clips, seen = [], {}
    for v in videos:
        item_id = _check_id(v.relative_to(in_dir).with_suffix("").as_posix(), str(v))
        if item_id in seen:
            raise ValueError(f"{v} and {seen[item_id]} give the same id {item_id!r}; rename one")
        seen[item_id] = v
        clips.append(Clip(item_id, str(v.resolve()), _read_transcript(v.with_suffix(".txt"))))
    return clips


def read_clip_list(path: str | Path) -> List[Clip]:
    """Clips from a CSV (`id,video,transcript` header) or JSONL file (`preparation.records`)."""
    clips, seen = [], set()
    for rec in read_records(path):
        if not rec.fields.get("id") or not rec.fields.get("video"):
            raise ValueError(f"{rec.where}: each clip needs 'id' and 'video' (and optionally 'transcript')")
        item_id = _check_id(str(rec.fields["id"]), rec.where)
        if item_id in seen:
            raise ValueError(f"{rec.where}: duplicate id {item_id!r}")
        seen.add(item_id)
        video = record_path(rec, str(rec.fields["video"]))
        clips.append(Clip(item_id, str(video.resolve()), rec.text("transcript")))
    return clips


# --------------------------------------------------------------------------------------------
# per-clip stages
# --------------------------------------------------------------------------------------------


def _convert(item_id: str, sources: Dict[str, str], out: str, ffmpeg: Optional[str]) -> None:
    from preparation.media import convert_fps

    convert_fps(sources[item_id], Path(out) / "video25" / f"{item_id}.mp4", ffmpeg=ffmpeg)


def _audio(item_id: str, sources: Dict[str, str], out: str, ffmpeg: Optional[str]) -> None:
    from preparation.media import extract_wav

    extract_wav(sources[item_id], Path(out) / "audio" / f"{item_id}.wav", ffmpeg=ffmpeg)


def _exists(item_id: str, folder: str, ext: str) -> bool:
    path = Path(folder) / f"{item_id}{ext}"
    return path.is_file() and path.stat().st_size > 0


def run_clip_stage(stage: str, clips: List[Clip], out_dir: Path, args: argparse.Namespace) -> common.StepResult:
    """Run one per-clip stage on `clips` (already sharded)."""
    from preparation.face.crop_mouth_rois import CropConfig, crop_mouth_rois
    from preparation.face.detect_landmarks import DetectConfig, detect_landmarks
    from preparation.face.landmarks import LandmarkOptions
    from preparation.face.mouth_roi import load_mean_face

    ids = [c.id for c in clips]
    sources = {c.id: c.video for c in clips}
    progress = not args.no_progress
    out = str(out_dir)
    if stage in ("convert", "audio"):
        worker = _convert if stage == "convert" else _audio
        folder, ext = (out_dir / "video25", ".mp4") if stage == "convert" else (out_dir / "audio", ".wav")
        find_ffmpeg(args.ffmpeg)
        result, _ = common.run_items(
            ids,
            functools.partial(worker, sources=sources, out=out, ffmpeg=args.ffmpeg),
            is_finished=None if args.overwrite else functools.partial(_exists, folder=str(folder), ext=ext),
            num_workers=args.num_workers,
            desc=stage,
            progress=progress,
        )
        return result
    if stage == "landmarks":
        options = LandmarkOptions(redetect_every=max(1, args.redetect_every), use_cnn=not args.no_cnn)
        cfg = DetectConfig(
            str(out_dir / "video25"), str(out_dir / "landmark"), args.face_predictor, args.cnn_detector, options
        )
        return detect_landmarks(ids, cfg, args.num_workers, args.overwrite, progress)
    if stage == "crop":
        cfg = CropConfig(
            str(out_dir / "video25"),
            str(out_dir / "landmark"),
            str(out_dir / "video"),
            load_mean_face(args.mean_face),
            no_face=args.no_face,
            ffmpeg=args.ffmpeg,
        )
        return crop_mouth_rois(ids, cfg, args.num_workers, args.overwrite, progress)
    raise ValueError(f"unknown stage {stage!r}; expected one of {CLIP_STAGES}")


# --------------------------------------------------------------------------------------------
# run stages
# --------------------------------------------------------------------------------------------


def make_manifest(
    clips: List[Clip],
    out_dir: Path,
    split: str,
    spm_model: Optional[str],
    vocab_size: int,
    num_workers: int = 1,
    progress: bool = True,
) -> Path:
    """Count frames, write `{split}.tsv`, `.wrd` and `dict.wrd.txt`. Returns the tsv path."""
    from preparation.count_frames import count_frames
    from preparation.manifests import log_missing, make_rows, write_split
    from preparation.tokenizer import export_fairseq_dict, train_sentencepiece

    ids = [c.id for c in clips]
    _, counts, _ = count_frames(ids, out_dir / "video", out_dir / "audio", num_workers, progress)
    atomic.write_lines(out_dir / "nframes.tsv", (f"{i}\t{v}\t{a}" for i, (v, a) in counts.items()))
    rows, missing = make_rows(ids, counts, out_dir, out_dir / "video", out_dir / "audio")
    log_missing(missing, f"{split}.tsv")
    if not rows:
        raise RuntimeError(f"no clip of {out_dir} has both a mouth ROI and audio; see the failures files")
    transcripts = {c.id: c.transcript for c in clips if c.transcript}
    kept_have_text = all(r.id in transcripts for r in rows)
    if transcripts and not kept_have_text:
        logger.warning(
            "%d kept clips have no transcript: no %s.wrd written", sum(r.id not in transcripts for r in rows), split
        )
    tsv = write_split(out_dir, split, out_dir, rows, transcripts if kept_have_text else None)
    if spm_model:
        export_fairseq_dict(spm_model, out_dir / "dict.wrd.txt")
    elif transcripts:
        _, dict_path = train_sentencepiece(
            transcripts.values(), out_dir / f"spm{vocab_size}" / f"spm_unigram{vocab_size}", vocab_size
        )
        shutil.copyfile(dict_path, out_dir / "dict.wrd.txt")
    return tsv


def prepare_own_videos(clips: List[Clip], out_dir: str | Path, args: argparse.Namespace) -> int:
    """Run the selected stages; returns the exit code (1 when any clip failed)."""
    from preparation.own_videos.qa_report import QAPaths, qa_report
    from preparation.face.mouth_roi import load_mean_face

    out_dir = Path(out_dir)
    all_ids = [c.id for c in clips]
    atomic.write_lines(out_dir / "file.list", all_ids)
    if any(c.transcript for c in clips):
        atomic.write_lines(out_dir / "label.list", (c.transcript or "" for c in clips))
    shard = sharding.shard_items(clips, args.nshard, args.rank)
    num_clips = len(shard)
    exit_code = 0
    failed_by_stage: List[Tuple[str, int, Path]] = []
    for stage in [s for s in CLIP_STAGES if s in args.stages]:
        result = run_clip_stage(stage, shard, out_dir, args)
        exit_code |= common.finish_shard(result, out_dir, f"own_{stage}", args.rank, args.nshard)
        # Later stages only see clips that made it through this one.
        failed = {i for i, _ in result.failures.entries}
        if failed:
            failed_by_stage.append((stage, len(failed), out_dir / f"failures.own_{stage}.{args.rank}_{args.nshard}.tsv"))
        shard = [c for c in shard if c.id not in failed]
    if "manifest" in args.stages:
        make_manifest(
            clips, out_dir, args.split, args.spm_model, args.vocab_size, args.num_workers, not args.no_progress
        )
    if "qa" in args.stages:
        paths = QAPaths(
            str(out_dir / "landmark"), str(out_dir / "video"), str(out_dir / "audio"), str(out_dir / "video25")
        )
        qa = qa_report(
            all_ids,
            paths,
            out_dir / "qa",
            load_mean_face(args.mean_face),
            num_workers=args.num_workers,
            progress=not args.no_progress,
        )
        flagged = sum(bool(c.flags) for c in qa)
        if args.fail_on_flags and flagged:
            exit_code = 1
            logger.error("%d of %d clips flagged by the quality report (--fail-on-flags): see %s",
                         flagged, len(qa), out_dir / "qa")
    if failed_by_stage:  # the last line of a failed run says how many clips failed and where they are listed
        total = sum(n for _, n, _ in failed_by_stage)
        logger.error(
            "%d of %d clips failed (%s) and are left out; each one and why: %s",
            total, num_clips, ", ".join(f"{stage}: {n}" for stage, n, _ in failed_by_stage),
            " ".join(str(p) for _, _, p in failed_by_stage),
        )
    return exit_code


def build_parser() -> argparse.ArgumentParser:
    from preparation.face.crop_mouth_rois import NO_FACE_CHOICES
    from preparation.face.landmarks import LandmarkOptions

    p = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--in-dir", help="folder of videos (with optional {name}.txt transcripts)")
    src.add_argument("--transcripts", help="CSV or JSONL list of clips: id, video, transcript")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--split", default="test", help="manifest name: {split}.tsv / {split}.wrd")
    p.add_argument("--stages", nargs="+", choices=ALL_STAGES, default=list(ALL_STAGES))
    p.add_argument("--spm-model", default=None, help="existing sentencepiece model for dict.wrd.txt")
    p.add_argument("--vocab-size", type=int, default=1000, help="size of a new vocabulary (no --spm-model)")
    p.add_argument("--mean-face", default=None, help="[68,2] mean face .npy (default: built-in)")
    p.add_argument("--no-face", choices=NO_FACE_CHOICES, default="fail")
    p.add_argument("--face-predictor", default=None)
    p.add_argument("--cnn-detector", default=None)
    p.add_argument("--no-cnn", action="store_true")
    p.add_argument("--redetect-every", type=int, default=LandmarkOptions.redetect_every)
    p.add_argument("--fail-on-flags", action="store_true", help="exit 1 when QA flags a clip")
    p.add_argument("--ffmpeg", default=None)
    common.add_common_args(p)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = common.parse_args(build_parser(), argv)
    submitted = sharding.maybe_submit_slurm(args, main, argv, "own_videos")
    if submitted is not None:
        return submitted
    if args.nshard > 1 and any(s in CLIP_STAGES for s in args.stages):
        skipped = [s for s in args.stages if s in RUN_STAGES]
        if skipped:
            logger.info("sharded run: stages %s skipped; run them once after all shards", skipped)
        args.stages = [s for s in args.stages if s in CLIP_STAGES]
    clips = discover_clips(args.in_dir) if args.in_dir else read_clip_list(args.transcripts)
    logger.info("%d clips, %d with transcripts", len(clips), sum(bool(c.transcript) for c in clips))
    return prepare_own_videos(clips, args.out_dir, args)


if __name__ == "__main__":
    procs.run_main(main)
