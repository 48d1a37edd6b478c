"""Classify clips (isolated words, keywords) with an `av_hubert_classifier` checkpoint.

    python -m avhubert.classify clip.mp4 --checkpoint checkpoint_best.pt
    python -m avhubert.classify a.mp4 b.mp4 word.wav --checkpoint ckpt.pt --top-k 5 --output out.json
    python -m avhubert.classify clips/ --checkpoint ckpt.pt --modality video

Inputs (read as `avhubert.load` reads them: any ffmpeg input, 25 fps gray video, 16 kHz mono audio):
raw videos (face tracking and the mouth crop), mouth-ROI videos (96x96 frames are used as they are),
audio files (audio only), folders (their media files, recursively) and list files (.txt/.lst/.list,
one path per line). A video's audio is its own audio track or, for this project's data layout, the
wav with the same name beside it or in the parallel `audio/` folder (`.../video/x/c.mp4` ->
`.../audio/x/c.wav`). `--modality` (audio, video, audio-visual; default: what the checkpoint was
trained with, reduced to what the clip has) chooses the streams; a missing stream is zeros after its
front-end, as in modality dropout.

Prints the top-k classes with probabilities per clip; `--output FILE.json` writes a JSON list of
`{"path", "modality", "top_k": [{"label", "prob"}, ...]}`. A bad clip gets one `error:` line and
the others go on; the exit status is non-zero when a clip failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from avdata.atomic import write_text
from avdata.media import probe

from .model_classifier import AVHubertClassifier
from .transcribe import expand_and_report, quiet_loggers

logger = logging.getLogger("avhubert.classify")

__all__ = ["Classifier", "find_audio", "main"]

MODALITIES = {"audio": ["audio"], "video": ["video"], "audio-visual": ["audio", "video"]}


def find_audio(video: Path) -> Optional[Path]:
    """The wav of a video clip: same name beside it, or in the parallel `audio/` folder."""
    candidates = [video.with_suffix(".wav")]
    parts = list(video.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "video":
            candidates.append(Path(*parts[:i], "audio", *parts[i + 1:]).with_suffix(".wav"))
            break
    return next((c for c in candidates if c.is_file()), None)


class Classifier:
    """A loaded `av_hubert_classifier` checkpoint: `predict(path)` -> top-k classes with probabilities."""

    def __init__(self, checkpoint: str, device: str = "cpu") -> None:
        from .api import load
        from .checkpoint import exit_on_checkpoint_error

        with exit_on_checkpoint_error():
            self.av = load(checkpoint, device=device)
        if not isinstance(self.av.model, AVHubertClassifier):
            raise ValueError(f"{checkpoint}: holds a {type(self.av.model).__name__} model, not an av_hubert_classifier")
        d = self.av.task.target_dictionary
        self.labels = [d[i] for i in range(d.nspecial, len(d))]

    def streams(self, path: Path, modality: Optional[str]) -> Tuple[Optional[Path], Optional[Path], List[str]]:
        """`(video, audio, modalities)` to use for `path`: the streams it has (its audio track or its wav)
        that `modality` asks for (default: those the checkpoint was trained with)."""
        info = probe(path)
        video = path if info.has_video else None
        audio = path if info.has_audio else (find_audio(path) if video is not None else None)
        have = {"video": video, "audio": audio}
        if modality is not None:
            missing = [m for m in MODALITIES[modality] if have[m] is None]
            if missing:
                raise ValueError(f"--modality {modality} needs {missing[0]}, and the clip has none"
                                 + (" (no audio track, no wav beside it or in a parallel audio/ folder)" if missing[0] == "audio" else ""))
            mods = MODALITIES[modality]
        else:
            mods = [m for m in ("audio", "video") if m in self.av.trained_modalities and have[m] is not None]
            if not mods:
                raise ValueError(f"the clip has no stream the checkpoint was trained with ({', '.join(self.av.trained_modalities)})")
        return (video if "video" in mods else None), (audio if "audio" in mods else None), mods

    @torch.no_grad()
    def predict(self, path: Path, top_k: int = 5, modality: Optional[str] = None) -> Dict[str, Any]:
        video, audio, mods = self.streams(Path(path), modality)
        prep = self.av.prepare(video=None if video is None else str(video), audio=None if audio is None else str(audio))
        logits = self.av.model(source=self.av.model_inputs(prep), padding_mask=None)["logits"][0].float()
        top = torch.softmax(logits, dim=-1).topk(min(top_k, len(self.labels)))
        return {"path": str(path), "modality": "audio-visual" if len(mods) == 2 else mods[0],
                "top_k": [{"label": self.labels[int(i)], "prob": round(float(p), 6)} for p, i in zip(top.values, top.indices)]}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m avhubert.classify", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("clips", nargs="+", help="media files (raw or mouth-ROI video, audio), folders, or list files")
    p.add_argument("--checkpoint", required=True, help="an av_hubert_classifier checkpoint (.pt)")
    p.add_argument("--top-k", type=int, default=5, help="classes printed per clip (default: %(default)s)")
    p.add_argument("--modality", choices=tuple(MODALITIES), default=None,
                   help="streams to use (default: what the checkpoint was trained with that the clip has)")
    p.add_argument("--output", default=None, help="write the results as a JSON list to this file")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default: %(default)s)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top_k < 1:
        raise SystemExit("error: --top-k must be >= 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with quiet_loggers("avhubert.task", "fairseq"):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    clips, errors = expand_and_report(args.clips)
    if not clips:
        print("error: no clip to classify", file=sys.stderr)
        return 1
    try:
        clf = Classifier(args.checkpoint, args.device)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    results, failed = [], len(errors)
    for clip in clips:
        try:
            res = clf.predict(clip, args.top_k, args.modality)
        except Exception as e:  # noqa: BLE001 - one line per bad clip, the others go on
            failed += 1
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"error: {'' if msg.startswith(str(clip)) else f'{clip}: '}{msg}", file=sys.stderr)
            continue
        results.append(res)
        print(f"{clip} ({res['modality']}): " + ", ".join(f"{t['label']} {t['prob']:.3f}" for t in res["top_k"]))
    if args.output:
        write_text(args.output, json.dumps(results, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
