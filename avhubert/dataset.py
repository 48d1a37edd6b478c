"""`AVHubertDataset`: manifest + labels -> cropped/padded audio-visual batches.

Mirrors reference `avhubert/hubert_dataset.py` (`AVHubertDataset`, av_hubert@258fb50): sizes in
video frames, filtering by size and label alignment (counted in the log), one crop offset
shared by audio, video and frame labels, per-batch crop to the shortest (or pad to the longest
with `pad_audio`). Feature math lives in `avdata` (shared with preparation and clustering).
Deviations (fixes): both manifest paths are resolved against the root; labels are read as
UTF-8 bytes; missing files are skipped and counted at load; every random choice (time-crop
offset, image crop and flip, noise file and SNR) comes from a generator seeded by
(seed, epoch, utterance index), so batches do not depend on the process, the global RNGs or the
number of loader workers. fairseq calls `set_epoch` before it creates each epoch's loader
(`can_reuse_epoch_itr_across_epochs` is False), so workers see the current epoch.
"""

import logging
import math
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np
import torch
from fairseq.data import FairseqDataset, data_utils

from avdata.audio import audio_features, read_wav
from avdata.labels import LabelIndex
from avdata.manifest import read_manifest, resolve
from avdata.memory import keep_freed_memory
from avdata.noise import mix_noise, parse_snr
from avdata.video import load_video, transform_video

logger = logging.getLogger(__name__)

__all__ = ["AVHubertDataset"]

ALIGN_TOLERANCE_SEC = 0.1
# salts separating the per-utterance random streams (one generator per decision)
_SALT_VIDEO_AUG, _SALT_NOISE, _SALT_CROP, _SALT_VTLP = 1, 2, 3, 4
ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


def _batch_tensor(like: torch.Tensor, shape: Tuple[int, ...]) -> torch.Tensor:
    """Uninitialised CPU tensor of `shape` and `like`'s dtype. In a DataLoader worker it lives in
    shared memory (as torch's `default_collate` does), so handing the batch to the trainer process
    moves a handle instead of copying the megabytes of video into shared memory afterwards."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=like.dtype)
    storage = like._typed_storage()._new_shared(math.prod(shape), device=like.device)
    return like.new(storage).resize_(shape)


class AVHubertDataset(FairseqDataset):
    def __init__(
        self,
        manifest_path: str,
        sample_rate: float,
        label_paths: Sequence[str],
        label_rates: Union[float, Sequence[float]],
        pad_list: Sequence[int],
        eos_list: Sequence[int],
        label_processors: Optional[Sequence[Callable[[str], torch.Tensor]]] = None,
        max_keep_sample_size: Optional[int] = None,
        min_keep_sample_size: Optional[int] = None,
        max_sample_size: Optional[int] = None,
        shuffle: bool = True,
        pad_audio: bool = False,
        normalize: bool = False,
        random_crop: bool = False,
        single_target: bool = False,
        stack_order_audio: int = 1,
        skip_verify: bool = False,
        image_mean: float = 0.421,
        image_std: float = 0.165,
        image_crop_size: int = 88,
        image_aug: bool = False,
        modalities: Sequence[str] = ("audio", "video"),
        is_s2s: bool = False,
        noise_fn: Optional[str] = None,
        noise_prob: float = 0.0,
        noise_snr: Union[str, float] = "0",
        noise_num: int = 1,
        seed: int = 0,
        check_files: bool = True,
        audio_vtlp: float = 0.0,
    ) -> None:
        self.video_fps = sample_rate  # Reference parity: `sample_rate` is the video frame rate
        self.modalities = set(modalities)
        unknown = self.modalities - {"audio", "video"}
        if unknown or not self.modalities:
            raise ValueError(f"modalities must be a non-empty subset of ['audio', 'video'], got {list(modalities)}")
        self.label_rates = list(label_rates) if isinstance(label_rates, (list, tuple)) else [label_rates] * len(label_paths)
        self.single_target = single_target
        if single_target != all(r == -1 for r in self.label_rates) and label_paths:
            raise ValueError("single_target must be true exactly when label_rate == -1 (sequence labels)")
        self.pad_list, self.eos_list = list(pad_list), list(eos_list)
        self.label_processors = label_processors
        self.shuffle, self.pad_audio, self.normalize = shuffle, pad_audio, normalize
        self.random_crop, self.stack_order_audio = random_crop, stack_order_audio
        self.image_mean, self.image_std, self.image_crop_size = image_mean, image_std, image_crop_size
        self.image_aug, self.is_s2s = image_aug, is_s2s
        self.max_sample_size = max_sample_size if max_sample_size is not None else np.iinfo(np.int64).max
        self.noise_prob, self.noise_num = noise_prob, noise_num
        self.noise_snr = parse_snr(noise_snr)
        self.seed, self.epoch = seed, 1
        if not 0.0 <= audio_vtlp < 1.0:
            raise ValueError(f"audio_vtlp must be in [0, 1), got {audio_vtlp}")
        self.audio_vtlp = audio_vtlp
        self.noise_paths: List[str] = []
        if noise_prob > 0:
            if not noise_fn or not os.path.isfile(noise_fn):
                raise FileNotFoundError(f"noise_prob={noise_prob} but the noise list {noise_fn} does not exist")
            with open(noise_fn, encoding="utf-8") as f:
                self.noise_paths = [ln.strip() for ln in f if ln.strip()]
            if not self.noise_paths:
                raise ValueError(f"noise list {noise_fn} is empty")

        self.root, rows = read_manifest(manifest_path)
        self.label_indexes = [LabelIndex(p) for p in label_paths]
        for idx in self.label_indexes:
            if len(idx) != len(rows):
                raise ValueError(
                    f"{idx.path}: {len(idx)} label lines but {len(rows)} rows in {manifest_path} "
                    "(one label line per manifest row is required)"
                )
        keep, counts = self._filter(rows, max_keep_sample_size, min_keep_sample_size, skip_verify, check_files)
        self.rows = [rows[i] for i in keep]
        self.label_lines = np.asarray(keep, dtype=np.int64)  # line of each kept item in the label files
        self.sizes = np.array([r.num_video_frames for r in self.rows], dtype=np.int64)
        logger.info(
            "%s: kept %d of %d utterances (skipped: %s); max size %s, min size %s",
            manifest_path, len(self.rows), len(rows),
            ", ".join(f"{k}={v}" for k, v in counts.items()) or "none",
            self.sizes.max(initial=0), self.sizes.min() if len(self.sizes) else 0,
        )
        if not self.rows:
            raise ValueError(f"{manifest_path}: no utterance left after filtering ({counts})")

    # ------------------------------------------------------------------ loading
    def _filter(self, rows, max_keep, min_keep, skip_verify, check_files) -> Tuple[List[int], Dict[str, int]]:
        counts = {"short": 0, "long": 0, "missing_file": 0, "unaligned": 0}
        sizes = np.array([r.num_video_frames for r in rows])
        ok = np.ones(len(rows), dtype=bool)
        if min_keep is not None:
            counts["short"] = int((ok & (sizes < min_keep)).sum())
            ok &= sizes >= min_keep
        if max_keep is not None:
            counts["long"] = int((ok & (sizes > max_keep)).sum())
            ok &= sizes <= max_keep
        for idx, rate in zip(self.label_indexes, self.label_rates):
            if rate == -1:
                continue
            dur_labels = idx.num_tokens() / rate
            bad = np.abs(sizes / self.video_fps - dur_labels) >= ALIGN_TOLERANCE_SEC
            if not skip_verify:
                for i in np.flatnonzero(ok & bad)[:5]:
                    logger.warning(
                        "%s:%d: %d labels at %s Hz (%.2f s) vs %d video frames (%.2f s): skipped as unaligned",
                        idx.path, i + 1, int(dur_labels[i] * rate), rate, dur_labels[i], sizes[i], sizes[i] / self.video_fps,
                    )
            counts["unaligned"] += int((ok & bad).sum())
            ok &= ~bad
        if check_files:
            missing = []
            for i in np.flatnonzero(ok):
                r = rows[i]
                for m, p in (("video", r.video), ("audio", r.audio)):
                    if m not in self.modalities:
                        continue
                    if p is None or not os.path.isfile(resolve(self.root, p)):
                        missing.append((r.id, m, p))
                        ok[i] = False
                        break
            for uid, m, p in missing[:5]:
                logger.warning("%s: %s file %s missing: skipped", uid, m, p)
            counts["missing_file"] = len(missing)
        return [int(i) for i in np.flatnonzero(ok)], {k: v for k, v in counts.items() if v}

    def _rng(self, index: int, salt: int) -> np.random.Generator:
        """Per-item generator: a function of (seed, epoch, item, salt) only."""
        return np.random.default_rng([self.seed, self.epoch, index, salt])

    def load_feature(self, index: int) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Audio `[T, 26*k]` float32 (aligned to the video) and video `[T, crop, crop, 1]`."""
        row = self.rows[index]
        video = None
        if "video" in self.modalities:
            frames = load_video(resolve(self.root, row.video))
            video = transform_video(
                frames, self.image_aug, self.image_crop_size, self.image_mean, self.image_std,
                self._rng(index, _SALT_VIDEO_AUG),
            )[..., None]
        audio = None
        if "audio" in self.modalities:
            wav = read_wav(resolve(self.root, row.audio))
            if self.noise_prob > 0:
                rng = self._rng(index, _SALT_NOISE)
                if rng.random() < self.noise_prob:
                    wav = mix_noise(wav, self.noise_paths, read_wav, self.noise_snr, self.noise_num, rng)
            warp = 1.0
            if self.audio_vtlp > 0:
                warp = float(self._rng(index, _SALT_VTLP).uniform(1.0 - self.audio_vtlp, 1.0 + self.audio_vtlp))
            audio = audio_features(
                wav, self.stack_order_audio, len(video) if video is not None else None, self.normalize, warp
            )
        return audio, (None if video is None else torch.from_numpy(np.ascontiguousarray(video)))

    def get_labels(self, index: int) -> List[torch.Tensor]:
        line = int(self.label_lines[index])
        labels = [idx.read(line) for idx in self.label_indexes]
        if self.label_processors is not None:
            return [proc(lbl) for proc, lbl in zip(self.label_processors, labels)]
        return labels

    def __getitem__(self, index: int) -> Dict[str, Any]:
        if torch.utils.data.get_worker_info() is not None:  # a DataLoader worker: see avdata.memory
            keep_freed_memory()
        audio, video = self.load_feature(index)
        return {"id": index, "fid": self.rows[index].id, "video_source": video, "audio_source": audio, "label_list": self.get_labels(index)}

    def __len__(self) -> int:
        return len(self.rows)

    # ------------------------------------------------------------------ batching
    def crop_to_max_size(
        self, x: ArrayOrTensor, target: int, start: Optional[int] = None, index: Optional[int] = None
    ) -> Tuple[ArrayOrTensor, int]:
        """Crop `x [T, ...]` (array or tensor) to `target` steps from `start`, or from an offset drawn
        for item `index` (seeded by (seed, epoch, index); 0 unless `random_crop`). Returns the crop
        and its start."""
        diff = x.shape[0] - target
        if diff <= 0:
            return x, 0
        if start is None:
            if not self.random_crop:
                start = 0
            elif index is None:
                raise ValueError("random_crop: crop_to_max_size needs the item index (its offset is seeded per item)")
            else:
                start = int(self._rng(index, _SALT_CROP).integers(0, diff + 1))
        return x[start : start + target], start

    def collater(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        samples = [s for s in samples if s["id"] is not None]
        if not samples:
            return {}
        streams = [s["audio_source"] if s["audio_source"] is not None else s["video_source"] for s in samples]
        sizes = [x.shape[0] for x in streams]
        ids = [int(s["id"]) for s in samples]
        size = min(max(sizes), self.max_sample_size) if self.pad_audio else min(min(sizes), self.max_sample_size)
        audio = video = None
        starts: Optional[List[int]] = None
        padding_mask = None
        if samples[0]["audio_source"] is not None:
            audio, padding_mask, starts = self.collate_stream([s["audio_source"] for s in samples], size, None, ids)
            audio = audio.transpose(1, 2)  # [B, T, F] -> [B, F, T]
        if samples[0]["video_source"] is not None:
            video, padding_mask, starts = self.collate_stream([s["video_source"] for s in samples], size, starts, ids)
            video = video.permute(0, 4, 1, 2, 3).contiguous()  # [B, T, H, W, C] -> [B, C, T, H, W]
        targets_by_label = [[s["label_list"][i] for s in samples] for i in range(len(samples[0]["label_list"]))]
        targets, lengths, ntokens = self.collate_labels(targets_by_label, size, starts)
        net_input = {"source": {"audio": audio, "video": video}, "padding_mask": padding_mask}
        batch: Dict[str, Any] = {
            "id": torch.LongTensor([s["id"] for s in samples]),
            "net_input": net_input,
            "utt_id": [s["fid"] for s in samples],
        }
        if not targets:  # decoding without references
            return batch
        if self.single_target:
            batch["target_lengths"], batch["ntokens"] = lengths[0], ntokens[0]
            if self.is_s2s:
                batch["target"], net_input["prev_output_tokens"] = targets[0][0], targets[0][1]
            else:
                batch["target"] = targets[0]
        else:
            batch["target_lengths_list"], batch["ntokens_list"], batch["target_list"] = lengths, ntokens, targets
        return batch

    def collate_stream(
        self, xs: List[torch.Tensor], size: int, starts: Optional[List[int]], ids: Optional[List[int]] = None
    ) -> Tuple[torch.Tensor, torch.Tensor, List[int]]:
        """Crop longer items (given offsets, or offsets drawn per item id), zero-pad shorter ones;
        padding mask True = pad.

        Assembled in NumPy: small torch ops in the loader wake torch's OpenMP pool and stall
        against the training threads on a 2-core machine.
        """
        arrays = [x.numpy() for x in xs]
        batch = _batch_tensor(xs[0], (len(xs), size) + arrays[0].shape[1:])
        out = batch.numpy()  # filled below, once
        padding_mask = np.zeros((len(xs), size), dtype=bool)
        new_starts = []
        for i, x in enumerate(arrays):
            x, start = self.crop_to_max_size(x, size, None if starts is None else starts[i], None if ids is None else ids[i])
            new_starts.append(start)
            n = x.shape[0]
            out[i, :n] = x
            out[i, n:] = 0
            padding_mask[i, n:] = True
        return batch, torch.from_numpy(padding_mask), new_starts

    def collate_labels(self, targets_by_label, size: int, starts: Optional[List[int]]):
        targets_list, lengths_list, ntokens_list = [], [], []
        starts = starts or [0] * len(targets_by_label[0]) if targets_by_label else []
        for targets, rate, pad, eos in zip(targets_by_label, self.label_rates, self.pad_list, self.eos_list):
            if rate == -1:
                lengths = torch.LongTensor([len(t) for t in targets])
                tokens = data_utils.collate_tokens(targets, pad_idx=pad, left_pad=False)
                if self.is_s2s:
                    prev = data_utils.collate_tokens(targets, pad_idx=pad, eos_idx=eos, left_pad=False, move_eos_to_beginning=True)
                    tokens = (tokens, prev)
                ntokens = int(lengths.sum())
            else:
                s2f = rate / self.video_fps
                frm_starts = [int(round(s * s2f)) for s in starts]
                frm_size = int(round(size * s2f))
                if not self.pad_audio:
                    frm_size = min([frm_size] + [len(t) - s for t, s in zip(targets, frm_starts)])
                targets = [t[s : s + frm_size] for t, s in zip(targets, frm_starts)]
                lengths = torch.LongTensor([len(t) for t in targets])
                ntokens = int(lengths.sum())
                tokens = data_utils.collate_tokens(targets, pad_idx=pad, left_pad=False)
            targets_list.append(tokens)
            lengths_list.append(lengths)
            ntokens_list.append(ntokens)
        return targets_list, lengths_list, ntokens_list

    def num_tokens(self, index: int) -> int:
        return self.size(index)

    def num_tokens_vec(self, indices: np.ndarray) -> np.ndarray:
        sizes = self.sizes[indices]
        return sizes if self.pad_audio else np.minimum(sizes, self.max_sample_size)

    def batch_by_size(
        self, indices: np.ndarray, max_tokens: Optional[int] = None, max_sentences: Optional[int] = None,
        required_batch_size_multiple: int = 1, fixed_shapes: Any = None,
    ) -> List[np.ndarray]:
        """fairseq's greedy batching (batch tokens = longest item x batch size).

        Replaces fairseq's compiled `batch_by_size_vec`, which in the pinned release drops the
        final partial batch (and everything when a split has fewer items than
        `required_batch_size_multiple`); here the remainder is kept, so no utterance is lost.
        """
        if fixed_shapes is not None:
            return super().batch_by_size(indices, max_tokens, max_sentences, required_batch_size_multiple, fixed_shapes)
        lens = self.num_tokens_vec(indices)
        mult = max(1, required_batch_size_multiple)
        batches: List[np.ndarray] = []
        start, longest = 0, 0
        for pos, n in enumerate(lens):
            cand = max(longest, int(n))
            count = pos - start
            full = count > 0 and (
                (max_sentences is not None and count == max_sentences)
                or (max_tokens is not None and (count + 1) * cand > max_tokens)
            )
            if full:
                take = max(mult * (count // mult), count % mult)
                batches.append(indices[start : start + take])
                start += take
                longest = int(lens[start:pos].max()) if pos > start else 0
                cand = max(longest, int(n))
            longest = cand
        if start < len(indices):
            batches.append(indices[start:])
        return batches

    def size(self, index: int) -> int:
        return int(self.sizes[index]) if self.pad_audio else int(min(self.sizes[index], self.max_sample_size))

    def ordered_indices(self) -> np.ndarray:
        """Longest first; ties broken by a permutation seeded from (seed, epoch)."""
        order = [np.random.default_rng([self.seed, self.epoch]).permutation(len(self))] if self.shuffle else [np.arange(len(self))]
        order.append(self.sizes)
        return np.ascontiguousarray(np.lexsort(order)[::-1])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def can_reuse_epoch_itr_across_epochs(self) -> bool:
        return False
