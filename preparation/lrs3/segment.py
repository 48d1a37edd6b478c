"""Split LRS3 `pretrain` utterances longer than 15 s at pauses (reference spec 6.1 step 1).

Reads  `{lrs3}/pretrain/{spk}/{clip}.txt` (line 1 `Text: ...`, line 2 `Conf: ...`, then a
       `WORD START END ASDSCORE` table, times in seconds).
Writes `{lrs3}/short-pretrain.csv` with header `id,text,start,end`: `id` is `{spk}/{clip}` for
       an utterance kept whole and `{spk}/{clip}_{k}` (k = 0, 1, ...) for its segments; `start`
       and `end` are seconds with 3 decimals, `end = -1` meaning "to the end of the file".

Rules (reference): an utterance whose last word ends before `--max-len-sec` (15 s) is kept
whole (start 0, end -1). A longer one is cut at every gap between consecutive words longer
than `--min-pause-sec` (0.4 s), at the middle of the gap; the first segment starts at 0 and
the last ends at -1. Segments can still exceed 15 s when there is no pause; the share of
segments longer than 15 s and 20 s is logged.

Example:

    python -m preparation.lrs3.segment --lrs3 $LRS3
"""

from __future__ import annotations

import argparse
import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from avdata import atomic, procs

from preparation import common

logger = logging.getLogger(__name__)

STEP = "lrs3_segment"
MAX_SEGMENT_SEC = 15.0
MIN_PAUSE_SEC = 0.4
WHOLE_FILE_END = -1.0
CSV_NAME = "short-pretrain.csv"


@dataclass(frozen=True)
class Word:
    text: str
    start_sec: float
    end_sec: float


@dataclass(frozen=True)
class Segment:
    id: str
    text: str
    start_sec: float
    end_sec: float  # -1 = end of file


def parse_lrs3_txt(path: str | Path) -> Tuple[str, List[Word]]:
    """Parse an LRS3 transcript file; returns `(text, words)` (words empty without a table).

    Raises `ValueError` naming the file and line on malformed content."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not lines or not lines[0].startswith("Text:"):
        raise ValueError(f"{path}:1: expected a first line 'Text: ...'")
    text = lines[0][len("Text:") :].strip()
    words: List[Word] = []
    in_table = False
    for lineno, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "WORD" and parts[1:3] == ["START", "END"]:
            in_table = True
            continue
        if not in_table:
            continue
        if len(parts) < 3:
            raise ValueError(f"{path}:{lineno}: expected 'WORD START END [ASDSCORE]', got {line!r}")
        try:
            words.append(Word(parts[0], float(parts[1]), float(parts[2])))
        except ValueError:
            raise ValueError(f"{path}:{lineno}: times must be numbers, got {line!r}") from None
    return text, words


def split_utterance(
    utt_id: str,
    text: str,
    words: Sequence[Word],
    max_len_sec: float = MAX_SEGMENT_SEC,
    min_pause_sec: float = MIN_PAUSE_SEC,
) -> List[Segment]:
    """Segments of one utterance by the reference rules (see module docstring)."""
    if not words or words[-1].end_sec < max_len_sec:
        return [Segment(utt_id, text, 0.0, WHOLE_FILE_END)]
    groups: List[List[Word]] = [[words[0]]]
    cuts: List[float] = []
    for prev, cur in zip(words[:-1], words[1:]):
        if cur.start_sec - prev.end_sec > min_pause_sec:
            cuts.append((prev.end_sec + cur.start_sec) / 2)
            groups.append([])
        groups[-1].append(cur)
    if len(groups) == 1:
        return [Segment(utt_id, text, 0.0, WHOLE_FILE_END)]
    starts = [0.0] + cuts
    ends = cuts + [WHOLE_FILE_END]
    return [
        Segment(f"{utt_id}_{k}", " ".join(w.text for w in group), round(s, 3), round(e, 3))
        for k, (group, s, e) in enumerate(zip(groups, starts, ends))
    ]


def segment_lrs3(
    lrs3_dir: str | Path, max_len_sec: float = MAX_SEGMENT_SEC, min_pause_sec: float = MIN_PAUSE_SEC
) -> List[Segment]:
    """Segments of all `pretrain/*/*.txt` (sorted)."""
    lrs3_dir = Path(lrs3_dir)
    txts = sorted((lrs3_dir / "pretrain").glob("*/*.txt"))
    if not txts:
        raise FileNotFoundError(f"no pretrain/*/*.txt under {lrs3_dir}")
    segments: List[Segment] = []
    for txt in txts:
        text, words = parse_lrs3_txt(txt)
        utt_id = f"{txt.parent.name}/{txt.stem}"
        segments.extend(split_utterance(utt_id, text, words, max_len_sec, min_pause_sec))
    _log_lengths(segments, lrs3_dir, max_len_sec)
    return segments


def _log_lengths(segments: List[Segment], lrs3_dir: Path, max_len_sec: float) -> None:
    known = [s.end_sec - s.start_sec for s in segments if s.end_sec >= 0]
    if known:
        over15 = sum(d > max_len_sec for d in known) / len(known)
        over20 = sum(d > 20.0 for d in known) / len(known)
        logger.info(
            "%d segments; of the %d split ones, %.1f%% > %.0f s and %.1f%% > 20 s",
            len(segments),
            len(known),
            100 * over15,
            max_len_sec,
            100 * over20,
        )


def write_segments(path: str | Path, segments: Sequence[Segment]) -> None:
    """Write `id,text,start,end` CSV (times with 3 decimals), atomically."""
    with atomic.atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "text", "start", "end"])
            for s in segments:
                w.writerow([s.id, s.text, f"{s.start_sec:.3f}", f"{s.end_sec:.3f}"])


def read_segments(path: str | Path) -> List[Segment]:
    """Read a `short-pretrain.csv`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"segment list not found: {path} (run preparation.lrs3.segment first)")
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for lineno, row in enumerate(reader, start=2):
            try:
                out.append(Segment(row["id"], row["text"], float(row["start"]), float(row["end"])))
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{path}:{lineno}: expected id,text,start,end, got {row}") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    p.add_argument("--lrs3", required=True, help="LRS3 root (holds pretrain/, trainval/, test/)")
    p.add_argument("--out", default=None, help=f"output CSV (default: {{lrs3}}/{CSV_NAME})")
    p.add_argument("--max-len-sec", type=float, default=MAX_SEGMENT_SEC)
    p.add_argument("--min-pause-sec", type=float, default=MIN_PAUSE_SEC)
    common.add_common_args(p, sharded=False)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = common.parse_args(build_parser(), argv)
    out = Path(args.out or Path(args.lrs3) / CSV_NAME)
    if out.is_file() and not args.overwrite:
        logger.info("%s exists; skipping (--overwrite to redo)", out)
        return 0
    write_segments(out, segment_lrs3(args.lrs3, args.max_len_sec, args.min_pause_sec))
    logger.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    procs.run_main(main)
