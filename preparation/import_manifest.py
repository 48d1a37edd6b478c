"""Import CSV / JSONL lists of mouth-ROI clips as a dataset: manifests, labels, dictionary.

For datasets that arrive as rows of `id, video, audio (or wav), duration, transcript (or text)` whose
videos are already 96x96 mouth ROIs at 25 fps (for raw videos use `preparation.own_videos.prepare`,
which crops them first and reads the same lists: `preparation.records`).

    python -m preparation.import_manifest --train train.csv --valid valid.jsonl --test test.csv \\
        --out DATA [--text-norm lower --punctuation drop] [--vocab-size 1000 | --spm-model M | --no-spm]

Each row is checked: the video exists, decodes, is 25 fps and 96x96 (frames counted by decoding, as
`count_frames` does); the audio (column `audio` or `wav`) exists and is read from its header (a wav
that is not 16 kHz mono is converted into `DATA/audio/{id}.wav`); without an audio column the audio
is extracted from the video as 16 kHz mono into `DATA/audio/{id}.wav` (skipped when already there,
so a rerun resumes); a `duration` (seconds) must match the video within 0.1 s; a transcript must be
non-empty after normalisation when the split has transcripts. Paths in a list are relative to the
list's folder unless absolute. Ids must be unique over all splits.

Writes `DATA/{split}.tsv` (root DATA, relative paths), `DATA/{split}.wrd` (normalised transcripts,
when the split has them), `DATA/text_norm.json` (the normalisation, read back by `infer_s2s.py` so
that WER scores hypotheses and references normalised alike), the sentencepiece model
`DATA/spm{V}/spm_unigram{V}.model` trained on the train split's text (or `--spm-model`), and
`DATA/dict.wrd.txt`; `DATA/import_report.tsv` lists every bad row (`split, file:line, id, reason`).
Bad rows are left out and counted (exit 0), or stop the import before any manifest is written with
`--fail-on-bad` (exit 1); a split without a single good row is an error (exit 1).
"""

from __future__ import annotations

import argparse
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from avdata import atomic, procs
from avdata.constants import AUDIO_SAMPLE_RATE_HZ, VIDEO_FPS
from avdata.manifest import ManifestRow, write_manifest
from avdata.text_norm import CASES, TEXT_NORM_FILE, TextNorm

from preparation import common
from preparation.records import Record, read_records, record_path

logger = logging.getLogger(__name__)

__all__ = ["ImportedRow", "BadRow", "check_row", "import_lists", "main"]

SPLITS = ("train", "valid", "test")
ROI_SIZE = 96
DURATION_TOLERANCE_S = 0.1
AUDIO_COLUMNS = ("audio", "wav")
TEXT_COLUMNS = ("transcript", "text")


class BadRow(ValueError):
    """A row that cannot be imported; the message is the reason."""


@dataclass(frozen=True)
class ImportedRow:
    id: str
    video: str  # absolute path
    audio: str  # absolute path (the given wav, or the one extracted / converted under DATA/audio)
    n_video: int
    n_audio: int
    text: Optional[str]  # normalised transcript


def _probe_video(path: Path) -> Tuple[int, float, int, int]:
    """(decoded frames, fps, width, height) of a video; BadRow when it cannot be read."""
    import cv2

    from avdata.video import count_video_frames

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise BadRow(f"video {path} cannot be opened (not a video, or a codec OpenCV lacks)")
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        cap.release()
    try:
        frames = count_video_frames(path)
    except (OSError, ValueError) as exc:
        raise BadRow(f"video {path} cannot be decoded ({exc})") from None
    if frames == 0:
        raise BadRow(f"video {path} has no decodable frame")
    return frames, fps, width, height


def _wav_info(path: Path) -> Tuple[int, int, int]:
    """(samples, rate, channels) from a wav header; BadRow when unreadable."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as exc:  # noqa: BLE001 - soundfile raises several types; all mean "unreadable"
        raise BadRow(f"audio {path} cannot be read ({type(exc).__name__}: {exc})") from None
    return int(info.frames), int(info.samplerate), int(info.channels)


def check_row(rec: Record, out_dir: str, norm: TextNorm, ffmpeg: Optional[str] = None) -> ImportedRow:
    """Check one row and return what the manifest needs; raises `BadRow` with the reason."""
    from avdata.ffmpeg import FFmpegError

    from preparation.media import NoAudioTrackError, extract_wav

    item_id = rec.text("id")
    if not item_id:
        raise BadRow("no 'id'")
    if any(c in str(rec.fields["id"]) for c in "\t\n\r/\\") or item_id.startswith("."):
        raise BadRow(f"id {rec.fields['id']!r} contains a tab, newline or path separator, or starts with '.'")
    video_field = rec.text("video")
    if not video_field:
        raise BadRow("no 'video'")
    video = record_path(rec, video_field).resolve()
    if not video.is_file():
        raise BadRow(f"video not found: {video}")
    if not os.access(video, os.R_OK):
        raise BadRow(f"video not readable (permissions): {video}")
    n_video, fps, width, height = _probe_video(video)
    if abs(fps - VIDEO_FPS) > 0.01:
        raise BadRow(f"video {video} is {fps:g} fps; mouth-ROI clips must be {VIDEO_FPS} fps "
                     "(convert raw videos with preparation.own_videos.prepare)")
    if (width, height) != (ROI_SIZE, ROI_SIZE):
        raise BadRow(f"video {video} is {width}x{height}; mouth-ROI clips must be {ROI_SIZE}x{ROI_SIZE} "
                     "(crop raw videos with preparation.own_videos.prepare)")
    duration = rec.text("duration")
    if duration is not None:
        try:
            seconds = float(duration)
        except ValueError:
            raise BadRow(f"duration {duration!r} is not a number of seconds") from None
        if abs(seconds - n_video / VIDEO_FPS) > DURATION_TOLERANCE_S:
            raise BadRow(f"duration {seconds:g} s in the list, but the video has {n_video / VIDEO_FPS:g} s "
                         f"({n_video} frames at {VIDEO_FPS} fps)")
    audio_field = rec.text(*AUDIO_COLUMNS)
    target = Path(out_dir) / "audio" / f"{item_id}.wav"
    if audio_field:
        audio = record_path(rec, audio_field).resolve()
        if not audio.is_file():
            raise BadRow(f"audio not found: {audio}")
        n_audio, rate, channels = _wav_info(audio)
        if (rate, channels) != (AUDIO_SAMPLE_RATE_HZ, 1):
            if not target.is_file():
                logger.info("%s: audio %s is %d Hz x %d channels: converting to 16 kHz mono %s",
                            rec.where, audio, rate, channels, target)
                try:
                    extract_wav(audio, target, ffmpeg=ffmpeg)
                except FFmpegError as exc:
                    raise BadRow(f"audio {audio} cannot be converted to 16 kHz mono ({exc})") from None
            audio = target.resolve()
            n_audio, _, _ = _wav_info(audio)
    else:
        if not target.is_file():
            try:
                extract_wav(video, target, ffmpeg=ffmpeg)
            except NoAudioTrackError:
                raise BadRow(f"no audio column and the video {video} has no audio track") from None
            except FFmpegError as exc:
                raise BadRow(f"audio could not be extracted from {video} ({exc})") from None
        audio = target.resolve()
        n_audio, _, _ = _wav_info(audio)
    if n_audio == 0:
        raise BadRow(f"audio {audio} has no samples")
    raw_text = rec.text(*TEXT_COLUMNS)
    text = norm(raw_text) if raw_text is not None else None
    if raw_text is not None and not text:
        raise BadRow(f"transcript {raw_text!r} is empty after normalisation ({norm.case}, {norm.punctuation})")
    return ImportedRow(item_id, str(video), str(audio), n_video, n_audio, text)


def _check(rec: Record, out_dir: str, norm: TextNorm, ffmpeg: Optional[str]) -> Tuple[Optional[ImportedRow], Optional[str]]:
    try:
        return check_row(rec, out_dir, norm, ffmpeg), None
    except BadRow as exc:
        return None, str(exc)


@dataclass
class SplitResult:
    rows: List[ImportedRow]
    bad: List[Tuple[str, str, str]]  # (file:line, id, reason)


def _check_split(records: Sequence[Record], out_dir: Path, norm: TextNorm, workers: int, desc: str,
                 ffmpeg: Optional[str]) -> SplitResult:
    from tqdm import tqdm

    results: List[Tuple[Optional[ImportedRow], Optional[str]]]
    bar = tqdm(total=len(records), desc=desc, unit="clip", disable=not records)
    if workers > 1 and len(records) > 1:
        import multiprocessing

        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=procs.die_with_parent, initargs=(os.getpid(),)) as pool:
            futures = [pool.submit(_check, r, str(out_dir), norm, ffmpeg) for r in records]
            results = []
            for fut in futures:
                results.append(fut.result())
                bar.update(1)
    else:
        results = []
        for r in records:
            results.append(_check(r, str(out_dir), norm, ffmpeg))
            bar.update(1)
    bar.close()
    out = SplitResult([], [])
    good: List[Tuple[Record, ImportedRow]] = []
    for rec, (row, reason) in zip(records, results):
        if row is None:
            out.bad.append((rec.where, str(rec.fields.get("id", "")), reason or "unknown"))
        else:
            good.append((rec, row))
    # a split with transcripts needs one for every row, or its .wrd would not line up with the .tsv
    with_text = any(row.text is not None for _, row in good)
    for rec, row in good:
        if with_text and row.text is None:
            out.bad.append((rec.where, row.id, "no transcript, but other rows of this split have one"))
        else:
            out.rows.append(row)
    return out


def _unique_ids(lists: Dict[str, List[Record]]) -> Dict[str, List[Tuple[str, str, str]]]:
    """Rows whose id repeats one seen earlier (in any split) are bad: their audio would collide."""
    seen: Dict[str, str] = {}
    dup: Dict[str, List[Tuple[str, str, str]]] = {split: [] for split in lists}
    for split, records in lists.items():
        keep = []
        for rec in records:
            item_id = rec.text("id")
            if item_id and item_id in seen:
                dup[split].append((rec.where, item_id, f"duplicate id (first at {seen[item_id]})"))
                continue
            if item_id:
                seen[item_id] = rec.where
            keep.append(rec)
        lists[split] = keep
    return dup


def import_lists(
    lists: Dict[str, str | Path],
    out_dir: str | Path,
    norm: TextNorm = TextNorm("lower", "keep"),
    vocab_size: Optional[int] = 1000,
    spm_model: Optional[str | Path] = None,
    fail_on_bad: bool = False,
    workers: int = 1,
    ffmpeg: Optional[str] = None,
) -> int:
    """Import the split lists (`{"train": path, ...}`) into `out_dir`; returns the exit code."""
    from preparation.tokenizer import export_fairseq_dict, train_sentencepiece

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = {split: read_records(path) for split, path in lists.items()}
    bad_by_split = _unique_ids(records)
    results: Dict[str, SplitResult] = {}
    for split, recs in records.items():
        res = _check_split(recs, out_dir, norm, workers, f"import {split}", ffmpeg)
        res.bad = bad_by_split[split] + res.bad
        results[split] = res
        logger.info("%s: %d rows imported, %d bad (of %d in %s)", split, len(res.rows), len(res.bad),
                    len(recs) + len(bad_by_split[split]), lists[split])
    report = [(split, *b) for split, res in results.items() for b in res.bad]
    atomic.write_lines(out_dir / "import_report.tsv",
                       ["split\twhere\tid\treason"] + ["\t".join(x.replace("\t", " ") for x in r) for r in report])
    for split, where, item_id, reason in report[:20]:
        logger.warning("bad row %s (%s, id %r): %s", where, split, item_id, reason)
    if report:
        logger.warning("%d bad rows in all, listed in %s", len(report), out_dir / "import_report.tsv")
    if report and fail_on_bad:
        logger.error("--fail-on-bad: %d bad rows; nothing imported (see %s)", len(report), out_dir / "import_report.tsv")
        return 1
    empty = [split for split, res in results.items() if not res.rows]
    if empty:
        logger.error("no good row in split(s) %s: nothing to import there (see %s)", ", ".join(empty),
                     out_dir / "import_report.tsv")
        return 1

    for split, res in results.items():
        rows = [ManifestRow(r.id, os.path.relpath(r.video, out_dir.resolve()), os.path.relpath(r.audio, out_dir.resolve()),
                            r.n_video, r.n_audio) for r in res.rows]
        write_manifest(out_dir / f"{split}.tsv", str(out_dir.resolve()), rows)
        if res.rows[0].text is not None:
            atomic.write_lines(out_dir / f"{split}.wrd", (r.text for r in res.rows))
    atomic.write_text(out_dir / TEXT_NORM_FILE, norm.to_json())

    texts = [r.text for r in results.get("train", SplitResult([], [])).rows if r.text] or \
        [r.text for res in results.values() for r in res.rows if r.text]
    if spm_model is not None:
        export_fairseq_dict(spm_model, out_dir / "dict.wrd.txt")
        logger.info("dictionary of %s -> %s", spm_model, out_dir / "dict.wrd.txt")
    elif vocab_size and texts:
        prefix = out_dir / f"spm{vocab_size}" / f"spm_unigram{vocab_size}"
        model, dict_path = train_sentencepiece(texts, prefix, vocab_size)
        atomic.write_bytes(out_dir / "dict.wrd.txt", dict_path.read_bytes())
        logger.info("sentencepiece %s (%d training lines) and %s", model, len(texts), out_dir / "dict.wrd.txt")
    logger.info("imported %s into %s", ", ".join(f"{s}: {len(r.rows)}" for s, r in results.items()), out_dir)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    for split in SPLITS:
        parser.add_argument(f"--{split}", help=f"CSV or JSONL list of the {split} clips")
    parser.add_argument("--out", required=True, help="dataset folder to write")
    parser.add_argument("--text-norm", choices=CASES, default="lower",
                        help="case of the transcripts (the same normalisation is used by WER scoring)")
    parser.add_argument("--punctuation", default="keep",
                        help="keep | drop | keep:<chars> (drop all punctuation but <chars>); digits are always kept")
    spm = parser.add_mutually_exclusive_group()
    spm.add_argument("--vocab-size", type=int, default=1000, help="train a sentencepiece unigram model of this size")
    spm.add_argument("--spm-model", help="use this sentencepiece model (e.g. the checkpoint's) instead of training one")
    spm.add_argument("--no-spm", action="store_true", help="write no sentencepiece model nor dictionary")
    parser.add_argument("--fail-on-bad", action="store_true", help="stop (exit 1, no manifest written) when any row is bad")
    parser.add_argument("--workers", type=int, default=1, help="processes checking rows in parallel")
    parser.add_argument("--ffmpeg", help="ffmpeg binary (default: on PATH)")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    common.set_verbosity(args.verbose)
    lists = {split: getattr(args, split) for split in SPLITS if getattr(args, split)}
    if not lists:
        build_parser().error("give at least one of --train, --valid, --test")
    try:
        norm = TextNorm(args.text_norm, args.punctuation)
        return import_lists(lists, args.out, norm, vocab_size=None if args.no_spm else args.vocab_size,
                            spm_model=args.spm_model, fail_on_bad=args.fail_on_bad, workers=args.workers,
                            ffmpeg=args.ffmpeg)
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 1


if __name__ == "__main__":
    procs.run_main(main)
