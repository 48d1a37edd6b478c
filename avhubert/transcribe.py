"""Transcribe videos (or audio files) with a fine-tuned AV-HuBERT, or dump a model's features.

    python -m avhubert.transcribe talk.mp4 --checkpoint model.pt
    python -m avhubert.transcribe videos/ --checkpoint model.pt --output out.jsonl --beam 5
    python -m avhubert.transcribe list.txt --checkpoint model.pt --output subs/ --format srt
    python -m avhubert.transcribe talk.mp4 --checkpoint pretrain.pt --features --layer 9 --output feats/

Inputs: media files (anything the machine's ffmpeg reads), folders (their media files, recursively)
and list files (`.txt` / `.lst` / `.list`: one path per line, relative to the list's folder).
Each file: face tracking and the 96x96 mouth crop (frames already 96x96 are used as they are), 25 fps,
16 kHz mono audio, windows of at most `--max-window` seconds cut at quiet points of the audio,
decoded in batches and joined with their times.

Output (`--output`, the format from its suffix): `.txt` (the text; `path<TAB>text` per line for
several inputs), `.json` (an object per input: text, segments with start/end seconds, the modality
used, face-tracking figures; a list for several), `.jsonl` (one object per line), `.srt` / `.vtt`
(subtitles of one input); a folder (`--output DIR/`) gets one `<name>.<--format>` per input.
Without `--output` the text goes to stdout. A rerun skips inputs already in the output (a
`.txt` / `.srt` / `.vtt` of one input: when it is newer than the input; `--overwrite` redoes them). A bad input gets one `error:` line and the others go on; the exit
status is non-zero only when nothing could be transcribed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avdata.atomic import write_text  # noqa: E402

MEDIA_SUFFIXES = {
    ".mp4", ".mkv", ".avi", ".mov", ".webm", ".flv", ".m4v", ".mpg", ".mpeg", ".wmv", ".ts", ".3gp", ".mts",
    ".wav", ".mp3", ".flac", ".m4a", ".ogg", ".aac", ".opus",
}
LIST_SUFFIXES = {".txt", ".lst", ".list"}
FORMATS = ("txt", "json", "jsonl", "srt", "vtt")


# ---------------------------------------------------------------------------- inputs
def expand_inputs(items: List[str]) -> Tuple[List[Path], List[str]]:
    """Files to transcribe (folders and list files expanded, duplicates dropped, order kept)
    and one error line per input that does not exist."""
    out: List[Path] = []
    errors: List[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in MEDIA_SUFFIXES)
            if not found:
                errors.append(f"{p}: folder without media files ({', '.join(sorted(MEDIA_SUFFIXES)[:6])}, ...)")
            out += found
        elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                f = Path(line) if os.path.isabs(line) else p.parent / line
                if f.is_file():
                    out.append(f)
                else:
                    errors.append(f"{f}: file not found (line {n} of {p})")
        elif p.is_file():
            out.append(p)
        else:
            errors.append(f"{p}: file not found")
    seen, unique = set(), []
    for f in out:
        key = os.path.abspath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, errors


def expand_and_report(items: List[str]) -> Tuple[List[Path], List[str]]:
    """`expand_inputs`, printing one `error:` line per bad input on stderr (the commands' shared start)."""
    found, errors = expand_inputs(items)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return found, errors


# ---------------------------------------------------------------------------- formats
def _timestamp(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def subtitles(record: Dict[str, Any], fmt: str) -> str:
    """SubRip (`srt`) or WebVTT (`vtt`) text of one record's segments (empty ones left out)."""
    sep = "," if fmt == "srt" else "."
    cues = [s for s in record["segments"] if s["text"]]
    blocks = []
    for i, seg in enumerate(cues, 1):
        times = f"{_timestamp(seg['start'], sep)} --> {_timestamp(seg['end'], sep)}"
        blocks.append(f"{i}\n{times}\n{seg['text']}\n" if fmt == "srt" else f"{times}\n{seg['text']}\n")
    head = "WEBVTT\n\n" if fmt == "vtt" else ""
    return head + "\n".join(blocks)


def render(records: List[Dict[str, Any]], fmt: str, single: bool) -> str:
    """The output file's text for `records` (`single`: the run had one input)."""
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if fmt == "json":
        return json.dumps(records[0] if single and len(records) == 1 else records, indent=2, ensure_ascii=False) + "\n"
    if fmt == "txt":
        if single:
            return "".join(r["text"] + "\n" for r in records)
        return "".join(f"{r['path']}\t{r['text']}\n" for r in records)
    return subtitles(records[0], fmt) if records else ""


def read_existing(path: Path, fmt: str, single: bool) -> List[Dict[str, Any]]:
    """Records of a previous run's output file (for skipping finished inputs)."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    try:
        if fmt == "jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        if fmt == "json":
            data = json.loads(text)
            return [data] if isinstance(data, dict) else list(data)
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: {path}: not a {fmt} file of this command (line {e.lineno}: {e.msg}); "
                         "move it away or pass --overwrite") from None
    if fmt == "txt" and not single:
        return [{"path": line.split("\t", 1)[0], "text": line.split("\t", 1)[1]}
                for line in text.splitlines() if "\t" in line]
    return [{"path": None, "text": text}]  # one input (txt, srt, vtt): the file itself means done


class Output:
    """Where results go: stdout, one file (rewritten atomically after every input), or a folder."""

    def __init__(self, target: Optional[str], fmt: Optional[str], num_inputs: int, overwrite: bool,
                 features: bool) -> None:
        self.single = num_inputs == 1
        self.records: List[Dict[str, Any]] = []
        self.folder: Optional[Path] = None
        self.file: Optional[Path] = None
        self.fmt = fmt or "txt"
        if target is None:
            if features:
                raise SystemExit("error: --features needs --output DIR (one .npy per input)")
            return
        path = Path(target)
        if features or path.is_dir() or target.endswith(("/", os.sep)) or not path.suffix:
            self.folder = path
            self.fmt = "npy" if features else (fmt or "json")
            path.mkdir(parents=True, exist_ok=True)
            return
        suffix = path.suffix.lower().lstrip(".")
        if suffix not in FORMATS:
            raise SystemExit(f"error: --output {target}: unknown suffix .{suffix}; use one of "
                             f"{', '.join('.' + f for f in FORMATS)}, or a folder")
        if fmt and fmt != suffix:
            raise SystemExit(f"error: --format {fmt} contradicts --output {target}")
        if suffix in ("srt", "vtt") and not self.single:
            raise SystemExit(f"error: --output {target}: subtitles hold one input, got {num_inputs}; "
                             f"use a folder: --output DIR/ --format {suffix}")
        self.file, self.fmt = path, suffix
        if not overwrite:
            self.records = read_existing(path, suffix, self.single)

    def item_path(self, video: Path) -> Path:
        assert self.folder is not None
        return self.folder / f"{video.stem}.{self.fmt}"

    def done(self, video: Path) -> bool:
        if self.folder is not None:
            return self.item_path(video).is_file()
        if self.file is not None and self.records:
            if self.records[0].get("path") is None:  # txt / srt / vtt of one input name no path
                return self.file.stat().st_mtime >= video.stat().st_mtime
            return any(r.get("path") == str(video) for r in self.records)
        return False

    def add(self, video: Path, record: Dict[str, Any], features: Any = None) -> None:
        if self.folder is not None:
            out = self.item_path(video)
            if self.fmt == "npy":
                import numpy as np

                from avdata.atomic import atomic_path

                with atomic_path(out) as tmp:
                    with open(tmp, "wb") as f:
                        np.save(f, features)
            else:
                write_text(out, render([record], self.fmt, True))
        elif self.file is not None:
            self.records = [r for r in self.records if r.get("path") != record["path"]] + [record]
            write_text(self.file, render(self.records, self.fmt, self.single))
        else:
            print(record["text"] if self.single else f"{record['path']}\t{record['text']}", flush=True)


# ---------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m avhubert.transcribe", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("inputs", nargs="+", help="media files, folders, or list files (.txt/.lst/.list)")
    p.add_argument("--checkpoint", required=True, help="fairseq .pt, or a folder / .safetensors from avhubert.export")
    p.add_argument("--modality", choices=("audio", "video", "audio-visual"), default=None,
                   help="default: what the checkpoint was fine-tuned with")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--lm", default=None, help="fairseq language model for shallow fusion (seq2seq models)")
    p.add_argument("--lm-weight", type=float, default=0.0)
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1 ... (default: cuda when available; cpu with --quantize-decoder int8)")
    p.add_argument("--quantize-decoder", choices=("none", "int8"), default="none",
                   help="int8: seq2seq decoder with int8 linear layers, faster on the CPU "
                        "(CPU only; may change the text)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="windows decoded together (beam search reads the decoder weights once per step for all)")
    p.add_argument("--max-window", type=float, default=12.0, help="longest window in seconds")
    p.add_argument("--min-window", type=float, default=6.0, help="shortest window before a cut, in seconds")
    p.add_argument("--max-len-a", type=float, default=0.5, help="at most a * frames + b tokens per window")
    p.add_argument("--max-len-b", type=int, default=10)
    p.add_argument("--output", default=None, help="file (.txt .json .jsonl .srt .vtt) or folder (ends with /)")
    p.add_argument("--format", choices=FORMATS, default=None, help="per-input file format in an --output folder")
    p.add_argument("--features", action="store_true",
                   help="write encoder features [T, D] as <name>.npy instead of text (any checkpoint)")
    p.add_argument("--layer", type=int, default=None, help="with --features: 1-based layer (default: last)")
    p.add_argument("--overwrite", action="store_true", help="redo inputs already in the output")
    p.add_argument("--no-progress", action="store_true")
    return p


def transcribe_one(model: Any, video: Path, args: argparse.Namespace, generator: Any) -> Tuple[Dict[str, Any], Any]:
    """`(record, features or None)` for one input."""
    if args.features:
        from avdata.media import probe

        info = probe(video)
        audio = video if info.has_audio and args.modality != "video" else None
        vid = video if info.has_video and args.modality != "audio" else None
        if audio is None and vid is None:
            raise ValueError("has neither a usable video nor audio track for this modality")
        feats = model.extract_features(video=vid, audio=audio, layer=args.layer)
        record = {"path": str(video), "text": "", "shape": list(feats.shape)}
        return record, feats.cpu().numpy()
    result = model.transcribe(video, modality=args.modality, batch_size=args.batch_size, generator=generator,
                              max_window_s=args.max_window, min_window_s=min(args.min_window, args.max_window))
    return {"path": str(video), **result}, None


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Raise these loggers to WARNING while a command runs (the task logs its whole config at INFO);
    their levels are restored afterwards, so calling `main()` in-process changes nothing for the caller."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    with quiet_loggers("avhubert", "fairseq"):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    videos, errors = expand_and_report(args.inputs)
    if not videos:
        print("error: nothing to transcribe", file=sys.stderr)
        return 1
    out = Output(args.output, args.format, len(videos), args.overwrite, args.features)
    todo = [v for v in videos if args.overwrite or not out.done(v)]
    if len(todo) < len(videos):
        print(f"skipping {len(videos) - len(todo)} input(s) already in {args.output} (--overwrite redoes them)",
              file=sys.stderr)
    if not todo:
        return 0

    import torch

    from .api import load
    from .checkpoint import exit_on_checkpoint_error

    device = args.device or ("cuda" if torch.cuda.is_available() and args.quantize_decoder == "none" else "cpu")
    with exit_on_checkpoint_error():
        try:
            model = load(args.checkpoint, device=device, quantize_decoder=args.quantize_decoder)
        except FileNotFoundError as e:
            raise SystemExit(f"error: {e}") from None
        except ValueError as e:  # --quantize-decoder on a GPU or for a model without a seq2seq decoder
            raise SystemExit(f"error: {args.checkpoint}: {e}") from None
    generator = None
    if not args.features:
        try:
            generator = model.build_generator(beam=args.beam, lm=args.lm, lm_weight=args.lm_weight,
                                              max_len_a=args.max_len_a, max_len_b=args.max_len_b)
        except (ValueError, FileNotFoundError) as e:
            raise SystemExit(f"error: {args.checkpoint}: {e}") from None

    from tqdm import tqdm

    ok = failed = 0
    bar = tqdm(todo, desc="transcribe", unit="file", disable=args.no_progress or len(todo) < 2, file=sys.stderr)
    for video in bar:
        try:
            record, feats = transcribe_one(model, video, args, generator)
        except Exception as e:  # noqa: BLE001 - one line per bad input, the others go on
            failed += 1
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            prefix = "" if msg.startswith(str(video)) else f"{video}: "
            tqdm.write(f"error: {prefix}{msg}", file=sys.stderr)
            continue
        for note in record.get("notes", []):
            tqdm.write(f"note: {video}: {note}", file=sys.stderr)
        out.add(video, record, feats)
        ok += 1
    done_before = len(videos) - len(todo)
    if failed or errors:
        print(f"transcribed {ok} of {len(todo) + len(errors)} input(s); {failed + len(errors)} failed", file=sys.stderr)
    return 0 if ok + done_before > 0 else 1


if __name__ == "__main__":
    from avdata import procs

    procs.run_main(main)
