"""Writes the frozen data-loading reference used by `tests/plugin/test_loading_reference.py`.

`--media`: two short clips (a colour H.264 clip, so that chroma reaches the BGR -> gray step, and
an MPEG-4 part 2 clip) with their 16 kHz wavs. Then the `AVHubertDataset` items and batches of
`CONFIGS` (training transforms: time crop, image crop + flip; valid: center crop, padding) are
computed with the project imported from `--repo` and saved to `reference.npz`. The frozen file was
made with `--repo` a worktree of commit 8cea09d (before the loading speed-ups), so the test checks
that the faster loaders give the same numbers:
    .venv/bin/python tests/data/loading_reference/make_reference.py --repo /tmp/base-8cea09d
"""

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CLIPS = {"colour_h264": (12, "h264"), "gray_mp4v": (9, "mp4v")}  # name: (frames, codec)
CONFIGS = {
    "train": dict(image_aug=True, random_crop=True, max_sample_size=7, seed=7),
    "valid": dict(image_aug=False, pad_audio=True),
}
EPOCH = 3


def write_media() -> None:
    import soundfile as sf

    from avdata.video import write_video

    rng = np.random.default_rng(13)
    yy, xx = np.mgrid[0:96, 0:96]
    for name, (frames, codec) in CLIPS.items():
        clip = np.empty((frames, 96, 96, 3), np.uint8)
        for t in range(frames):  # an off-centre moving blob over gradients: crops and flips differ
            blob = 120 * np.exp(-((yy - 30 - 3 * t) ** 2 + (xx - 20 - 4 * t) ** 2) / 150.0)
            clip[t, ..., 0] = np.clip(40 + xx + blob, 0, 255)
            clip[t, ..., 1] = np.clip(30 + yy + 0.5 * blob, 0, 255)
            clip[t, ..., 2] = np.clip(200 - xx // 2 + blob, 0, 255)
        if codec == "mp4v":
            clip = np.repeat(clip.mean(-1, keepdims=True).astype(np.uint8), 3, -1)
        write_video(HERE / f"{name}.mp4", clip, codec=codec)
        n = frames * 640
        tone = np.sin(2 * np.pi * (200 + 50 * np.arange(n) / n) * np.arange(n) / 16000)
        sf.write(HERE / f"{name}.wav", (8000 * tone + 500 * rng.standard_normal(n)).astype(np.int16), 16000,
                 subtype="PCM_16")


def write_corpus(out: Path) -> Path:
    """Manifest, 25 Hz labels and dictionary for the clips in this folder; returns the manifest."""
    from avdata.manifest import ManifestRow, write_manifest

    rows = [ManifestRow(name, f"{name}.mp4", f"{name}.wav", frames, frames * 640) for name, (frames, _) in CLIPS.items()]
    write_manifest(out / "ref.tsv", str(HERE), rows)
    (out / "ref.km").write_text("".join(" ".join(str(i % 5) for i in range(r.num_video_frames)) + "\n" for r in rows))
    (out / "dict.km.txt").write_text("".join(f"{c} 1\n" for c in range(5)))
    return out / "ref.tsv"


def build(manifest: Path, **kw):
    from fairseq.data import Dictionary

    from avhubert.dataset import AVHubertDataset
    from avhubert.task import LabelEncoder

    d = Dictionary.load(str(manifest.parent / "dict.km.txt"))
    ds = AVHubertDataset(str(manifest), 25, [str(manifest.with_suffix(".km"))], [25], [d.pad()], [d.eos()],
                         [LabelEncoder(d)], stack_order_audio=4, normalize=True, **kw)
    ds.set_epoch(EPOCH)
    return ds


def outputs(ds) -> dict:
    """Everything the loader hands on, as arrays (video as a digest + per-frame means)."""
    out = {}
    items = [ds[i] for i in range(len(ds))]
    for i, it in enumerate(items):
        out[f"item{i}_audio"] = it["audio_source"].numpy()
        out[f"item{i}_video_sha256"] = np.array(digest(it["video_source"].numpy()))
        out[f"item{i}_video_means"] = it["video_source"].numpy().mean(axis=(1, 2, 3), dtype=np.float64)
    batch = ds.collater(items)
    src = batch["net_input"]["source"]
    out["batch_audio"] = src["audio"].numpy()
    out["batch_video_sha256"] = np.array(digest(src["video"].numpy()))
    out["batch_video_means"] = src["video"].numpy().mean(axis=(1, 3, 4), dtype=np.float64)
    out["batch_padding_mask"] = batch["net_input"]["padding_mask"].numpy()
    out["batch_target"] = batch["target_list"][0].numpy()
    return out


def digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(str((a.dtype.str, a.shape)).encode() + a.tobytes()).hexdigest()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", type=Path, required=True, help="checkout whose loaders define the reference")
    p.add_argument("--media", action="store_true", help="(re)write the clips first")
    p.add_argument("--work", type=Path, default=Path("/tmp/loading_reference_work"))
    a = p.parse_args()
    sys.path.insert(0, str(a.repo.resolve()))
    if a.media:
        write_media()
    a.work.mkdir(parents=True, exist_ok=True)
    manifest = write_corpus(a.work)
    ref = {}
    for name, kw in CONFIGS.items():
        ref.update({f"{name}_{k}": v for k, v in outputs(build(manifest, **kw)).items()})
    np.savez_compressed(HERE / "reference.npz", **ref)
    print(f"wrote {HERE / 'reference.npz'} ({len(ref)} arrays)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
