"""Build `.tsv` manifests and `.wrd` label files from ids, frame counts and transcripts.

The manifest schema is `avdata.manifest` (root line, then `id, video, audio,
n_video_frames, n_audio_samples`). By default the root is the dataset folder and paths are
relative to it (`video/{id}.mp4`, `audio/{id}.wav`), so a prepared folder can be moved;
`absolute=True` writes the reference's layout (root `/`, absolute paths).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from avdata import atomic
from avdata.manifest import ManifestRow, write_manifest

logger = logging.getLogger(__name__)

__all__ = ["make_rows", "write_split", "normalize_transcript"]


def normalize_transcript(text: str) -> str:
    """`.wrd` text: lower case, single spaces (reference: `label.list` lower-cased)."""
    return " ".join(text.lower().split())


def make_rows(
    ids: Sequence[str],
    counts: Dict[str, Tuple[int, int]],
    root: str | Path,
    video_dir: str | Path,
    audio_dir: str | Path,
    absolute: bool = False,
) -> Tuple[List[ManifestRow], List[str]]:
    """Manifest rows for the ids that have counts; returns `(rows, ids without counts)`.

    Paths are `{video_dir}/{id}.mp4` and `{audio_dir}/{id}.wav`, written relative to `root`
    unless `absolute`."""
    root = Path(root).resolve()
    rows, missing = [], []
    for item_id in ids:
        if item_id not in counts:
            missing.append(item_id)
            continue
        video = (Path(video_dir) / f"{item_id}.mp4").resolve()
        audio = (Path(audio_dir) / f"{item_id}.wav").resolve()
        if not absolute:
            video, audio = Path(os.path.relpath(video, root)), Path(os.path.relpath(audio, root))
        n_video, n_audio = counts[item_id]
        rows.append(ManifestRow(item_id, str(video), str(audio), n_video, n_audio))
    return rows, missing


def write_split(
    out_dir: str | Path,
    split: str,
    root: str | Path,
    rows: Sequence[ManifestRow],
    transcripts: Optional[Dict[str, str]] = None,
    absolute: bool = False,
) -> Path:
    """Write `{out_dir}/{split}.tsv` and, given transcripts, `{out_dir}/{split}.wrd` (one
    lower-cased line per manifest row). Returns the tsv path."""
    out_dir = Path(out_dir)
    tsv = out_dir / f"{split}.tsv"
    write_manifest(tsv, "/" if absolute else str(Path(root).resolve()), rows)
    if transcripts is not None:
        atomic.write_lines(out_dir / f"{split}.wrd", (normalize_transcript(transcripts[r.id]) for r in rows))
    logger.info("%s: %d rows", tsv, len(rows))
    return tsv


def log_missing(missing: Iterable[str], what: str) -> None:
    missing = list(missing)
    if missing:
        logger.warning(
            "%d ids left out of %s (no frame counts; rejected or unprocessed clips), e.g. %s",
            len(missing),
            what,
            ", ".join(missing[:3]),
        )
