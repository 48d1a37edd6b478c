"""Read clip lists given as CSV (with a header row) or JSONL (one JSON object per line).

Shared by `preparation.own_videos.prepare --transcripts` (raw videos) and
`preparation.import_manifest` (mouth-ROI clips). Every record keeps its line number so that errors
and bad-row reports name `file:line`.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ["Record", "read_records", "record_path"]


@dataclass(frozen=True)
class Record:
    """One row of a list file: its fields and where it came from."""

    source: Path
    line: int
    fields: Dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    def text(self, *names: str) -> Optional[str]:
        """The first non-empty field among `names`, whitespace-collapsed; None when none is set."""
        for name in names:
            value = self.fields.get(name)
            if value is not None and str(value).strip():
                return " ".join(str(value).split())
        return None


def read_records(path: str | Path) -> List[Record]:
    """Records of a `.jsonl`/`.json` (JSON Lines) or CSV file, blank lines skipped.

    Raises `FileNotFoundError` for a missing file and `ValueError` naming `file:line` for a line that
    is not a JSON object or a CSV file without a header."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"clip list not found: {path}")
    records: List[Record] = []
    if path.suffix.lower() in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
                if not isinstance(obj, dict):
                    raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                records.append(Record(path, lineno, obj))
        return records
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise ValueError(f"{path}:1: a CSV clip list needs a header row (e.g. id,video,transcript)")
        for row in reader:
            if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                continue
            # DictReader's line_num is the physical line of the row just read
            records.append(Record(path, reader.line_num, {k.strip(): v for k, v in row.items() if k}))
    return records


def record_path(record: Record, value: str) -> Path:
    """A path field: absolute as given, else relative to the list file's folder."""
    p = Path(value)
    return p if p.is_absolute() else record.source.parent / p
