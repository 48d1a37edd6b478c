"""Generate a small synthetic audio-visual corpus with learnable frame labels (tests, smoke runs).

Each utterance is a sequence of segments; segment class c (of K) sets the audio (a tone whose
pitch depends on c, plus noise) and the video (a dark ellipse "mouth" whose opening depends on
c). Writes the project's standard layout:
  {out}/video/{id}.mp4 (96x96 gray, 25 fps), {out}/audio/{id}.wav (16 kHz mono int16),
  {out}/{split}.tsv, {out}/{split}.km (25 Hz), {out}/{split}.mfcc (100 Hz copy of the same
  classes), {out}/dict.km.txt, {out}/dict.mfcc.txt, {out}/{split}.wrd (class-word transcripts).
Deterministic for a given seed.
"""

import argparse
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import soundfile as sf

from avdata.constants import AUDIO_SAMPLE_RATE_HZ as SAMPLE_RATE_HZ
from avdata.constants import AUDIO_SAMPLES_PER_FRAME as SAMPLES_PER_FRAME
from avdata.manifest import ManifestRow, write_manifest
from avdata.video import write_video

logger = logging.getLogger(__name__)

__all__ = ["make_corpus", "main"]

SIZE = 96
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "go", "stop"]


def _render(classes: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Per-frame class ids `[T]` -> frames `uint8 [T, 96, 96]` (ellipse opening ~ class)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    opening = 3.0 + 14.0 * classes.astype(np.float32) / max(num_classes - 1, 1)  # [T]
    width = 18.0 + 6.0 * np.cos(classes.astype(np.float32))
    cy, cx = SIZE / 2 + rng.normal(0, 1.0), SIZE / 2 + rng.normal(0, 1.0)
    inside = ((xx[None] - cx) / width[:, None, None]) ** 2 + ((yy[None] - cy) / opening[:, None, None]) ** 2 <= 1
    base = 150 + 20 * np.sin(xx / 9.0)[None]
    frames = np.where(inside, 40.0, base) + rng.normal(0, 6, (len(classes), SIZE, SIZE))
    return np.clip(frames, 0, 255).astype(np.uint8)


def _synthesize(classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-frame class ids `[T]` -> int16 audio `[T * 640]`: a class-dependent tone + noise."""
    freqs = 200.0 + 150.0 * np.repeat(classes, SAMPLES_PER_FRAME).astype(np.float64)
    phase = 2 * np.pi * np.cumsum(freqs) / SAMPLE_RATE_HZ
    wav = 0.3 * np.sin(phase) + 0.02 * rng.standard_normal(len(freqs))
    return (wav * 32767).astype(np.int16)


def _segments(num_frames: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    classes: List[int] = []
    while len(classes) < num_frames:
        classes += [int(rng.integers(num_classes))] * int(rng.integers(3, 9))
    return np.array(classes[:num_frames])


def make_corpus(
    out_dir: str | os.PathLike,
    splits: Optional[Dict[str, int]] = None,
    num_classes: int = 8,
    min_frames: int = 30,
    max_frames: int = 60,
    seed: int = 0,
) -> Path:
    """Write the corpus; returns `out_dir`. `splits` maps split name -> utterance count."""
    out = Path(out_dir)
    splits = splits or {"train": 16, "valid": 4}
    (out / "video").mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, count in splits.items():
        rows, km, mfcc, wrd = [], [], [], []
        for i in range(count):
            uid = f"{split}_{i:04d}"
            num_frames = int(rng.integers(min_frames, max_frames + 1))
            classes = _segments(num_frames, num_classes, rng)
            write_video(out / "video" / f"{uid}.mp4", _render(classes, num_classes, rng), codec="mp4v")
            wav = _synthesize(classes, rng)
            sf.write(out / "audio" / f"{uid}.wav", wav, SAMPLE_RATE_HZ, subtype="PCM_16")
            rows.append(ManifestRow(uid, f"video/{uid}.mp4", f"audio/{uid}.wav", num_frames, len(wav)))
            km.append(" ".join(map(str, classes)))
            mfcc.append(" ".join(map(str, np.repeat(classes, 4))))
            runs = classes[np.r_[True, classes[1:] != classes[:-1]]]
            wrd.append(" ".join(WORDS[c % len(WORDS)] for c in runs[:6]))
        write_manifest(out / f"{split}.tsv", str(out.resolve()), rows)
        for ext, lines in (("km", km), ("mfcc", mfcc), ("wrd", wrd)):
            (out / f"{split}.{ext}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for ext in ("km", "mfcc"):
        (out / f"dict.{ext}.txt").write_text("".join(f"{c} 10000\n" for c in range(num_classes)))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", required=True)
    p.add_argument("--num-train", type=int, default=16)
    p.add_argument("--num-valid", type=int, default=4)
    p.add_argument("--num-classes", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    make_corpus(a.out_dir, {"train": a.num_train, "valid": a.num_valid}, a.num_classes, seed=a.seed)
    logger.info("wrote %s", a.out_dir)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    raise SystemExit(main())
