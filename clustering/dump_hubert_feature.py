"""Dump features of one layer of a pre-trained AV-HuBERT checkpoint for one shard of a manifest.

Reads `{tsv_dir}/{split}.tsv`, takes shard `rank` of `nshard`, writes
`{feat_dir}/{split}_{rank}_{nshard}.npy` (float32 `[sum T_i, D]`, 25 Hz) and `.len`, resumably
(see `clustering.shards`). Example (layer 9 of a Base model, as iteration 2 of the paper):

    python -m clustering.dump_hubert_feature data/ train ckpt/iter1.pt 9 10 0 feats/iter2

Reference parity (av_hubert@258fb50 `clustering/dump_hubert_feature.py`):
- inputs are prepared with the evaluation transforms of `avdata.audio`/`avdata.video` (the same code as the
  dataset): audio = stacked log filterbank `[T, 26 * stack_order_audio]` forced to the decoded video
  length, per-frame layer norm when the task normalises; video = grayscale, /255, center crop
  `image_crop_size`, `(x - image_mean) / image_std`;
- both modalities are used by default (`--modalities` may drop one: it is then zeros after its
  front-end, as in fine-tuning);
- `extract_features(mask=False)`: layer 0 = fused front-end features after layer norm and
  projection (`ret_conv=True`); layer k >= 1 = output of transformer layer k **without** the final
  layer norm (`output_layer=k`).
Additions: several utterances per forward (zero-padded, with a padding mask; the model ignores
padded frames, so results equal one-by-one extraction up to float rounding), CPU or CUDA,
background input loading (`--num-workers`), and chunking of utterances longer than `--max_chunk`
audio samples (the reference accepted that flag but ignored it): a long input is cut into
consecutive pieces of `max_chunk // 640` frames that are encoded independently, so frames near a
cut see less context than in one pass. Manifest paths are resolved against the manifest root
(the reference used them as written).
"""

import argparse
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from avdata.manifest import ManifestRow, resolve
from clustering.shards import NonFiniteFeatureError, dump_feature_shard, refusal_exit_code

logger = logging.getLogger(__name__)

__all__ = ["AVHubertFeatureReader", "ModelInputs", "dump_hubert_shard", "build_parser", "main"]

AUDIO_SAMPLES_PER_VIDEO_FRAME = 640  # 16 kHz / 25 fps
DEFAULT_MAX_CHUNK_SAMPLES = 1_600_000  # reference default (100 s)
DEFAULT_BATCH_FRAMES = 1000  # padded frames (batch size x longest item) per forward
SORT_WINDOW = 64  # utterances gathered and length-sorted before batching (output order is kept)


@dataclass
class ModelInputs:
    """One utterance ready for the model: audio `[T, F]` and/or video `[T, H, W]` float32 tensors."""

    audio: Optional[torch.Tensor]
    video: Optional[torch.Tensor]

    @property
    def num_frames(self) -> int:
        return int((self.audio if self.audio is not None else self.video).shape[0])

    def slice(self, start: int, end: int) -> "ModelInputs":
        return ModelInputs(
            None if self.audio is None else self.audio[start:end],
            None if self.video is None else self.video[start:end],
        )


class _InputDataset(torch.utils.data.Dataset):
    """Map-style dataset over manifest items producing `ModelInputs` (runs in loader workers)."""

    def __init__(self, reader: "AVHubertFeatureReader", items: Sequence[Tuple[str, ManifestRow]]) -> None:
        self.reader, self.items = reader, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> ModelInputs:
        root, row = self.items[i]
        try:
            return self.reader.load_inputs(resolve(root, row.video), resolve(root, row.audio))
        except ValueError as e:  # name the utterance (a manifest row without the requested modality)
            raise ValueError(f"utterance {row.id!r}: {e}") from None


class AVHubertFeatureReader:
    """Features of transformer layer `layer` (0 = front-end) of a checkpoint: `get_feats -> [T, D]`.

    The checkpoint is loaded lazily on first use (`load()`), so the object is cheap to create and
    can be sent to data-loader workers (which only prepare inputs).
    """

    def __init__(
        self,
        ckpt_path: str,
        layer: int,
        max_chunk: int = DEFAULT_MAX_CHUNK_SAMPLES,
        user_dir: Optional[str] = None,
        device: str = "auto",
        modalities: Sequence[str] = ("audio", "video"),
        batch_frames: int = DEFAULT_BATCH_FRAMES,
    ) -> None:
        if layer < 0:
            raise ValueError(f"layer must be >= 0, got {layer}")
        bad = set(modalities) - {"audio", "video"}
        if bad or not modalities:
            raise ValueError(f"modalities must be a non-empty subset of audio, video; got {list(modalities)}")
        self.ckpt_path, self.layer, self.user_dir = ckpt_path, layer, user_dir
        self.max_chunk_frames = max(1, max_chunk // AUDIO_SAMPLES_PER_VIDEO_FRAME)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.modalities = tuple(modalities)
        self.batch_frames = batch_frames
        self.model: Any = None
        self.task_cfg: Any = None

    # ------------------------------------------------------------------ model
    def load(self) -> None:
        """Import the plugin, load model + task from the checkpoint (once)."""
        if self.model is not None:
            return
        from argparse import Namespace

        from fairseq import checkpoint_utils, utils

        user_dir = self.user_dir
        if user_dir is None:
            import avhubert

            user_dir = os.path.dirname(avhubert.__file__)
        utils.import_user_module(Namespace(user_dir=user_dir))
        from avhubert.checkpoint import exit_on_checkpoint_error

        with exit_on_checkpoint_error():  # a refused or damaged checkpoint: one line, exit 1
            models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task([self.ckpt_path])
        self.model = models[0].eval().to(self.device)
        self.task_cfg = task.cfg
        num_layers = len(self.model.encoder.layers) if hasattr(self.model, "encoder") else None
        if num_layers is not None and self.layer > num_layers:
            raise ValueError(f"layer {self.layer} > {num_layers} encoder layers in {self.ckpt_path}")
        logger.info("loaded %s on %s: layer %d of %s, modalities %s", self.ckpt_path, self.device, self.layer, num_layers, self.modalities)

    def _cfg(self, name: str, default: Any) -> Any:
        return getattr(self.task_cfg, name, default)

    # ------------------------------------------------------------------ inputs
    def load_inputs(self, video_path: Optional[str], audio_path: Optional[str]) -> ModelInputs:
        """Eval-transformed inputs of one utterance (options from the checkpoint's task config)."""
        from avdata.audio import audio_features, read_wav
        from avdata.video import load_video, transform_video

        if self.task_cfg is None:  # loader workers receive the task config already loaded
            self.load()

        video = audio = None
        num_frames = None
        if "video" in self.modalities:
            if video_path is None:
                raise ValueError("manifest row has no video path but modality 'video' is requested")
            frames = transform_video(
                load_video(video_path), train=False, crop_size=self._cfg("image_crop_size", 88),
                mean=self._cfg("image_mean", 0.421), std=self._cfg("image_std", 0.165),
            )
            video = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))
            num_frames = video.shape[0]
        if "audio" in self.modalities:
            if audio_path is None:
                raise ValueError("manifest row has no audio path but modality 'audio' is requested")
            audio = audio_features(
                read_wav(audio_path), stack_order=self._cfg("stack_order_audio", 4),
                num_video_frames=num_frames, normalize=self._cfg("normalize", True),
            )
        return ModelInputs(audio, video)

    # ------------------------------------------------------------------ model calls
    @torch.no_grad()
    def extract_batch(self, batch: Sequence[ModelInputs]) -> List[np.ndarray]:
        """One forward over zero-padded inputs -> float32 `[T_i, D]` per input."""
        self.load()
        lengths = [b.num_frames for b in batch]
        bsz, tmax = len(batch), max(lengths)
        padding_mask = torch.arange(tmax)[None, :] >= torch.tensor(lengths)[:, None]  # [B, T] True = pad
        source: dict = {"audio": None, "video": None}
        if batch[0].audio is not None:
            audio = torch.zeros(bsz, tmax, batch[0].audio.shape[1])
            for i, b in enumerate(batch):
                audio[i, : lengths[i]] = b.audio
            source["audio"] = audio.transpose(1, 2).to(self.device)  # [B, F, T]
        if batch[0].video is not None:
            _, h, w = batch[0].video.shape
            video = torch.zeros(bsz, tmax, h, w)
            for i, b in enumerate(batch):
                video[i, : lengths[i]] = b.video
            source["video"] = video.unsqueeze(1).to(self.device)  # [B, 1, T, H, W]
        ret_conv = self.layer == 0
        # Layer 0 needs no transformer layer; output_layer=1 just avoids running the whole stack.
        feats, _ = self.model.extract_features(
            source=source, padding_mask=padding_mask.to(self.device), mask=False,
            ret_conv=ret_conv, output_layer=1 if ret_conv else self.layer,
        )
        feats = feats.float().cpu().numpy()  # [B, T', D]
        return [feats[i, : lengths[i]] for i in range(bsz)]

    def _pieces(self, inputs: ModelInputs) -> List[ModelInputs]:
        n, step = inputs.num_frames, self.max_chunk_frames
        return [inputs.slice(s, min(s + step, n)) for s in range(0, max(n, 1), step)]

    def extract_many(self, inputs: Sequence[ModelInputs]) -> List[np.ndarray]:
        """Features of several utterances: chunked, length-sorted, batched by `batch_frames`."""
        pieces: List[Tuple[int, ModelInputs]] = [(i, p) for i, x in enumerate(inputs) for p in self._pieces(x)]
        order = sorted(range(len(pieces)), key=lambda j: -pieces[j][1].num_frames)
        out: List[Optional[np.ndarray]] = [None] * len(pieces)
        start = 0
        while start < len(order):
            longest = pieces[order[start]][1].num_frames  # sorted descending: first is longest
            size = max(1, self.batch_frames // max(longest, 1))
            chunk = order[start : start + size]
            for j, feat in zip(chunk, self.extract_batch([pieces[j][1] for j in chunk])):
                out[j] = feat
            start += size
        per_utt: List[List[np.ndarray]] = [[] for _ in inputs]
        for (i, _), feat in zip(pieces, out):
            per_utt[i].append(feat)
        return [np.concatenate(f) if len(f) > 1 else f[0] for f in per_utt]

    def get_feats(self, path: Tuple[Optional[str], Optional[str]], ref_len: Optional[int] = None) -> np.ndarray:
        """Features `[T, D]` of one `(video_path, audio_path)` pair (reference signature)."""
        self.load()
        return self.extract_many([self.load_inputs(*path)])[0]

    def iter_feats(self, items: Sequence[Tuple[str, ManifestRow]], num_workers: int = 0) -> Iterator[np.ndarray]:
        """Features of `(root, row)` items in manifest order; inputs load in `num_workers` processes."""
        self.load()
        loader = torch.utils.data.DataLoader(
            _InputDataset(self, items), batch_size=None, shuffle=False, num_workers=num_workers,
            collate_fn=lambda x: x, prefetch_factor=4 if num_workers else None,
        )
        window: List[ModelInputs] = []
        for inputs in loader:
            window.append(inputs)
            if len(window) == SORT_WINDOW:
                yield from self.extract_many(window)
                window = []
        if window:
            yield from self.extract_many(window)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["model"] = None  # workers only prepare inputs
        return state


def dump_hubert_shard(
    tsv_dir: str,
    split: str,
    ckpt_path: str,
    layer: int,
    nshard: int,
    rank: int,
    feat_dir: str,
    max_chunk: int = DEFAULT_MAX_CHUNK_SAMPLES,
    user_dir: Optional[str] = None,
    device: str = "auto",
    modalities: Sequence[str] = ("audio", "video"),
    batch_frames: int = DEFAULT_BATCH_FRAMES,
    num_workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    allow_nonfinite: bool = False,
) -> bool:
    """Dump one shard of layer-`layer` features; returns False when it was already done.

    NaN/inf features (a diverged checkpoint) raise `NonFiniteFeatureError` naming the
    utterances, unless `allow_nonfinite` (see `clustering.shards.dump_feature_shard`).
    """
    reader = AVHubertFeatureReader(ckpt_path, layer, max_chunk, user_dir, device, modalities, batch_frames)
    return dump_feature_shard(
        lambda items: reader.iter_feats(items, num_workers), tsv_dir, split, nshard, rank, feat_dir,
        overwrite=overwrite, progress=progress, allow_nonfinite=allow_nonfinite,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tsv_dir", help="directory holding {split}.tsv")
    p.add_argument("split")
    p.add_argument("ckpt_path")
    p.add_argument("layer", type=int, help="0: front-end features; k: output of transformer layer k")
    p.add_argument("nshard", type=int)
    p.add_argument("rank", type=int)
    p.add_argument("feat_dir")
    p.add_argument("--max-chunk", "--max_chunk", dest="max_chunk", type=int, default=DEFAULT_MAX_CHUNK_SAMPLES,
                   help="longest piece encoded at once, in 16 kHz audio samples (640 per video frame)")
    p.add_argument("--user-dir", "--user_dir", dest="user_dir", default=None, help="fairseq user dir (default: this repo's avhubert)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--modalities", nargs="+", default=["audio", "video"], choices=["audio", "video"])
    p.add_argument("--batch-frames", type=int, default=DEFAULT_BATCH_FRAMES, help="padded frames per forward")
    p.add_argument("--num-workers", type=int, default=0, help="input-loading processes")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--keep-nonfinite", action="store_true", help="write NaN/inf features (counted) instead of stopping")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logger.info("args: %s", vars(args))
    return refusal_exit_code(lambda: dump_hubert_shard(
        args.tsv_dir, args.split, args.ckpt_path, args.layer, args.nshard, args.rank, args.feat_dir,
        args.max_chunk, args.user_dir, args.device, args.modalities, args.batch_frames, args.num_workers,
        args.overwrite, not args.no_progress, args.keep_nonfinite,
    ))


if __name__ == "__main__":
    from avdata.procs import run_main

    run_main(main)
