"""Task `av_hubert_pretraining` (pre-training and fine-tuning) + its config dataclass.

Mirrors reference `avhubert/hubert_pretraining.py` (av_hubert@258fb50). Dictionaries and the
sentencepiece tokenizer live in the task state, saved in checkpoints and restored from them,
so loading never depends on the original's file paths. No `pdb` hook, no `eval`.
"""

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch
from fairseq.data import Dictionary, encoders
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, MISSING

from .dataset import AVHubertDataset

logger = logging.getLogger(__name__)

__all__ = ["AVHubertPretrainingConfig", "AVHubertPretrainingTask", "LabelEncoder", "LabelEncoderS2SToken"]


class LabelEncoder:
    """Space-separated symbols -> dictionary ids (no eos, unknown symbols -> unk)."""

    def __init__(self, dictionary: Dictionary) -> None:
        self.dictionary = dictionary

    def __call__(self, label: str) -> torch.Tensor:
        return self.dictionary.encode_line(label, append_eos=False, add_if_not_exist=False).long()


class LabelEncoderS2SToken:
    """Transcript -> lower case -> sentencepiece pieces -> ids + eos."""

    def __init__(self, dictionary: Dictionary, bpe_tokenizer: Any) -> None:
        self.dictionary, self.bpe_tokenizer = dictionary, bpe_tokenizer

    def __call__(self, label: str) -> torch.Tensor:
        pieces = self.bpe_tokenizer.encode(label.lower())
        return self.dictionary.encode_line(pieces, append_eos=True, add_if_not_exist=False).long()

    def decode(self, tokens: torch.Tensor, symbols_ignore: Optional[set] = None) -> str:
        text = self.dictionary.string(tokens, extra_symbols_to_ignore=symbols_ignore)
        return self.bpe_tokenizer.decode(text) if self.bpe_tokenizer else text


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class AVHubertPretrainingConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={"help": "directory with {split}.tsv manifests"})
    labels: List[str] = field(default_factory=lambda: ["ltr"], metadata={"help": "label file extensions, e.g. [km] or [wrd]; one dict.{label}.txt each"})
    label_dir: Optional[str] = _f(None, "directory of {split}.{label} and dict.{label}.txt (default: data)")
    label_rate: int = _f(-1, "label frame rate in Hz (25 or 100); -1 for sequence labels")
    sample_rate: int = _f(16_000, "MISNAMED (reference parity): the VIDEO frame rate, 25 in every pre-training config; converts manifest sizes to seconds")
    normalize: bool = _f(False, "per-frame layer norm of the stacked audio features (all configs: true)")
    enable_padding: bool = _f(False, "unused (reference legacy field)")
    max_sample_size: Optional[int] = _f(None, "drop utterances longer than this many video frames")
    min_sample_size: Optional[int] = _f(None, "drop utterances shorter than this many video frames")
    max_trim_sample_size: Optional[int] = _f(II("task.max_sample_size"), "crop length in video frames used when batching")
    single_target: Optional[bool] = _f(False, "sequence targets; must be true iff label_rate == -1")
    random_crop: Optional[bool] = _f(True, "random (vs start-aligned) crop when trimming")
    pad_audio: Optional[bool] = _f(False, "pad batches to the longest item (vs crop to the shortest)")
    pdb: Optional[bool] = _f(False, "ignored (reference debugger hook); kept so stored configs load")
    stack_order_audio: int = _f(1, "10-ms filterbank frames stacked per step (configs: 4 -> 104-d at 25 Hz)")
    skip_verify: Optional[bool] = _f(False, "do not log per-line label alignment warnings")
    image_aug: bool = _f(False, "random crop + horizontal flip, for the split named 'train' only")
    image_crop_size: int = _f(88, "mouth ROI crop size (pixels)")
    image_mean: float = _f(0.421, "pixel mean after /255")
    image_std: float = _f(0.165, "pixel std after /255")
    modalities: Optional[List[str]] = field(default_factory=lambda: ["audio", "video"], metadata={"help": "streams to load: audio, video or both"})
    is_s2s: bool = _f(False, "sequence-to-sequence targets (sentencepiece + eos, prev_output_tokens)")
    tokenizer_bpe_name: Optional[str] = _f(None, "fairseq BPE name, e.g. sentencepiece")
    tokenizer_bpe_model: Optional[str] = _f(None, "path of the sentencepiece .model")
    noise_wav: Optional[str] = _f(None, "DIRECTORY holding {split}.tsv noise lists (one wav path per line)")
    noise_prob: float = _f(0.0, "per-utterance probability of adding noise (every split)")
    noise_snr: Optional[str] = _f("0", "SNR in dB: a number, or '(lo, hi)' for a uniform integer draw")
    noise_num: int = _f(1, "number of noise files averaged into one noise signal")
    fine_tuning: bool = _f(False, "fine-tuning task state (target_dictionary, s2s_tokenizer) instead of dictionaries")
    input_modality: Optional[str] = _f(None, "deprecated and unused (reference #58); accepted so stored configs and YAMLs load")
    noise_seed: int = _f(1337, "seed of the per-utterance noise/crop generators (reproducible evaluation)")


@register_task("av_hubert_pretraining", dataclass=AVHubertPretrainingConfig)
class AVHubertPretrainingTask(FairseqTask):
    cfg: AVHubertPretrainingConfig

    def __init__(self, cfg: AVHubertPretrainingConfig) -> None:
        super().__init__(cfg)
        logger.info("AVHubertPretrainingTask config: %s", cfg)
        if cfg.fine_tuning:
            self.state.add_factory("target_dictionary", self.load_target_dictionary)
            if cfg.is_s2s:
                self.state.add_factory("s2s_tokenizer", self.load_tokenizer)
        else:
            self.state.add_factory("dictionaries", self.load_dictionaries)
        self.blank_symbol = "<s>"

    @classmethod
    def setup_task(cls, cfg: AVHubertPretrainingConfig, **kwargs: Any) -> "AVHubertPretrainingTask":
        if cfg.modalities is not None:
            bad = set(cfg.modalities) - {"audio", "video"}
            if bad or not cfg.modalities:
                raise ValueError(f"task.modalities must be a non-empty subset of [audio, video], got {list(cfg.modalities)}")
        return cls(cfg)

    # ------------------------------------------------------------- state factories
    def _label_dir(self) -> str:
        return self.cfg.label_dir if self.cfg.label_dir is not None else self.cfg.data

    def load_dictionaries(self) -> List[Dictionary]:
        paths = [os.path.join(self._label_dir(), f"dict.{label}.txt") for label in self.cfg.labels]
        for p in paths:
            if not os.path.isfile(p):
                raise FileNotFoundError(f"dictionary {p} not found (task.label_dir / task.labels)")
        return [Dictionary.load(p) for p in paths]

    def load_target_dictionary(self) -> Optional[Dictionary]:
        if not self.cfg.labels:
            return None
        return self.load_dictionaries()[0]

    def load_tokenizer(self) -> Any:
        model = self.cfg.tokenizer_bpe_model
        if not model or not os.path.isfile(model):
            raise FileNotFoundError(
                f"sentencepiece model {model!r} not found (task.tokenizer_bpe_model); a fine-tuned "
                "checkpoint carries its tokenizer in task_state"
            )
        from argparse import Namespace

        return encoders.build_bpe(Namespace(bpe=self.cfg.tokenizer_bpe_name, sentencepiece_model=model))

    @property
    def dictionaries(self) -> List[Dictionary]:
        return self.state.dictionaries

    @property
    def target_dictionary(self) -> Optional[Dictionary]:
        return self.state.target_dictionary if self.cfg.fine_tuning else None

    @property
    def source_dictionary(self) -> Optional[Dictionary]:
        return None

    @property
    def s2s_tokenizer(self) -> Any:
        return self.state.s2s_tokenizer

    # ------------------------------------------------------------- data
    def load_dataset(self, split: str, **kwargs: Any) -> None:
        cfg = self.cfg
        manifest = os.path.join(cfg.data, f"{split}.tsv")
        dictionaries = [self.target_dictionary] if cfg.fine_tuning else self.dictionaries
        paths = [os.path.join(self._label_dir(), f"{split}.{label}") for label in cfg.labels]
        for p in paths:
            if not os.path.isfile(p):
                raise FileNotFoundError(f"label file {p} not found (task.label_dir / task.labels)")
        if cfg.fine_tuning and cfg.is_s2s:
            procs = [LabelEncoderS2SToken(dictionaries[0], self.s2s_tokenizer)]
        else:
            procs = [LabelEncoder(d) for d in dictionaries]
        noise_fn = os.path.join(cfg.noise_wav, f"{split}.tsv") if cfg.noise_wav else None
        self.datasets[split] = AVHubertDataset(
            manifest,
            sample_rate=cfg.sample_rate,
            label_paths=paths,
            label_rates=cfg.label_rate,
            pad_list=[d.pad() for d in dictionaries],
            eos_list=[d.eos() for d in dictionaries],
            label_processors=procs,
            max_keep_sample_size=cfg.max_sample_size,
            min_keep_sample_size=cfg.min_sample_size,
            max_sample_size=cfg.max_trim_sample_size,
            pad_audio=cfg.pad_audio,
            normalize=cfg.normalize,
            random_crop=cfg.random_crop,
            single_target=cfg.single_target,
            stack_order_audio=cfg.stack_order_audio,
            skip_verify=cfg.skip_verify,
            image_mean=cfg.image_mean,
            image_std=cfg.image_std,
            image_crop_size=cfg.image_crop_size,
            image_aug=cfg.image_aug if split == "train" else False,  # Reference parity: literal 'train'
            modalities=cfg.modalities,
            is_s2s=cfg.is_s2s,
            noise_fn=noise_fn,
            noise_prob=cfg.noise_prob,
            noise_snr=cfg.noise_snr,
            noise_num=cfg.noise_num,
            seed=cfg.noise_seed,
        )

    def max_positions(self) -> tuple:
        return (sys.maxsize, sys.maxsize)

    def filter_indices_by_size(self, indices, *args: Any, **kwargs: Any):
        return indices  # size filtering happens in the dataset
