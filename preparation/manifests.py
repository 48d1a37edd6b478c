"""Build `.tsv` manifests and `.wrd` label files from ids, frame counts and transcripts.

The manifest schema is `avhubert.features.manifest` (root line, then `id, video, audio,
n_video_frames, n_audio_samples`). By default the root is the dataset folder and paths are
relative to it (`video/{id}.mp4`, `audio/{id}.wav`), so a prepared folder can be moved;
`absolute=True` writes the reference's layout (root `/`, absolute paths).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from . import common

logger = logging.getLogger(__name__)

_PRIVATE_NAME = "_preparation_avhubert_manifest"

__all__ = ["manifest_api", "make_rows", "write_split", "normalize_transcript"]


def manifest_api():
    """The `avhubert.features.manifest` module.

    Preparation must not import fairseq (STYLE 7.6), and importing `avhubert.features.manifest`
    normally runs `avhubert/__init__.py`, which registers fairseq components. So the module
    file is loaded on its own when the package is not imported yet."""
    for name in ("avhubert.features.manifest", _PRIVATE_NAME):
        if name in sys.modules:
            return sys.modules[name]
    spec = importlib.util.find_spec("avhubert")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the avhubert package is not importable; run from the repository root or install it")
    path = Path(list(spec.submodule_search_locations)[0]) / "features" / "manifest.py"
    mod_spec = importlib.util.spec_from_file_location(_PRIVATE_NAME, path)
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[_PRIVATE_NAME] = module
    mod_spec.loader.exec_module(module)
    return module


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
) -> Tuple[list, List[str]]:
    """Manifest rows for the ids that have counts; returns `(rows, ids without counts)`.

    Paths are `{video_dir}/{id}.mp4` and `{audio_dir}/{id}.wav`, written relative to `root`
    unless `absolute`."""
    api = manifest_api()
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
        rows.append(api.ManifestRow(item_id, str(video), str(audio), n_video, n_audio))
    return rows, missing


def write_split(
    out_dir: str | Path,
    split: str,
    root: str | Path,
    rows: list,
    transcripts: Optional[Dict[str, str]] = None,
    absolute: bool = False,
) -> Path:
    """Write `{out_dir}/{split}.tsv` and, given transcripts, `{out_dir}/{split}.wrd` (one
    lower-cased line per manifest row). Returns the tsv path."""
    api = manifest_api()
    out_dir = Path(out_dir)
    tsv = out_dir / f"{split}.tsv"
    api.write_manifest(tsv, "/" if absolute else str(Path(root).resolve()), rows)
    if transcripts is not None:
        common.write_lines(out_dir / f"{split}.wrd", (normalize_transcript(transcripts[r.id]) for r in rows))
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
