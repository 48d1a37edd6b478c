"""The one `.tsv` manifest schema shared by the dataset, preparation and clustering.

Format (reference `hubert_dataset.load_audio_visual`, av_hubert@258fb50):

    <root directory>
    <id>\t<video path>\t<audio path>\t<num video frames>\t<num audio samples>
    ...

Reference parity: the original joined only the video path with the root and used the audio
path as is. Here both paths are resolved against the root (an absolute path stays absolute, so
manifests written by the original's scripts, with root `/` and absolute paths, read the same).
A missing modality is written as an empty path, read back as `None`.
"""

import os
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional

from avdata.atomic import write_lines

__all__ = ["ManifestRow", "ManifestError", "read_manifest", "write_manifest", "resolve"]


class ManifestError(ValueError):
    """A manifest line that cannot be parsed; the message names file, line and problem."""


@dataclass(frozen=True)
class ManifestRow:
    """One utterance. Paths are as written in the file (relative to the root or absolute)."""

    id: str
    video: Optional[str]
    audio: Optional[str]
    num_video_frames: int
    num_audio_samples: int


def resolve(root: str, path: Optional[str]) -> Optional[str]:
    """Join `path` with the manifest root; absolute paths and `None` pass through."""
    if path is None:
        return None
    return path if os.path.isabs(path) else os.path.join(root, path)


def read_manifest(path: str | os.PathLike) -> tuple[str, List[ManifestRow]]:
    """Read a manifest; returns `(root, rows)`. Raises `ManifestError` naming file and line."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"manifest not found: {path}")
    rows: List[ManifestRow] = []
    seen: dict[str, int] = {}
    with open(path, "r", encoding="utf-8") as f:
        root = f.readline().rstrip("\r\n")
        if not root:
            raise ManifestError(f"{path}:1: first line must be the root directory, got an empty line")
        if "\t" in root:
            raise ManifestError(
                f"{path}:1: first line must be the root directory, got a tab-separated row "
                "(the manifest lacks its root line)"
            )
        for lineno, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) != 5:
                raise ManifestError(
                    f"{path}:{lineno}: expected 5 tab-separated columns "
                    f"(id, video, audio, n_video_frames, n_audio_samples), got {len(cols)}"
                )
            uid, video, audio, nv, na = cols
            try:
                num_v, num_a = int(nv), int(na)
            except ValueError:
                raise ManifestError(
                    f"{path}:{lineno}: frame/sample counts must be integers, got {nv!r} and {na!r}"
                ) from None
            if uid in seen:
                raise ManifestError(f"{path}:{lineno}: duplicate id {uid!r} (first on line {seen[uid]})")
            seen[uid] = lineno
            rows.append(ManifestRow(uid, video or None, audio or None, num_v, num_a))
    return root, rows


def _manifest_lines(path: str | os.PathLike, root: str, rows: Iterable[ManifestRow]) -> Iterator[str]:
    yield root
    for r in rows:
        for field in (r.id, r.video or "", r.audio or ""):
            if "\t" in field or "\n" in field:
                raise ManifestError(f"{path}: field {field!r} of {r.id!r} contains a tab or newline")
        yield f"{r.id}\t{r.video or ''}\t{r.audio or ''}\t{r.num_video_frames}\t{r.num_audio_samples}"


def write_manifest(path: str | os.PathLike, root: str, rows: Iterable[ManifestRow]) -> None:
    """Write a manifest atomically (`avdata.atomic`); a bad field leaves `path` untouched."""
    write_lines(path, _manifest_lines(path, root, rows))
