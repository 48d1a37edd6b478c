"""Task `av_hubert_pretraining` (pre-training and fine-tuning) + its config dataclass.

Mirrors reference `avhubert/hubert_pretraining.py` (av_hubert@258fb50). Dictionaries and the
sentencepiece tokenizer live in the task state, saved in checkpoints and restored from them,
so loading never depends on the original's file paths. No `pdb` hook, no `eval`.
"""

import logging
import os
import sys
from argparse import Namespace
from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch
from fairseq import metrics
from fairseq.data import Dictionary, encoders
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, MISSING, open_dict

from . import clean_exit
from avdata.manifest import read_manifest

from .beam_search import BeamSearchConfig
from .config_fields import config_field as _f
from .dataset import AVHubertDataset
from .llm_generation import LlmGenerator
from .scoring import ErrorCounts
from .sequence_generator import CTCGenerator, Seq2SeqGenerator

logger = logging.getLogger(__name__)

__all__ = ["AVHubertPretrainingConfig", "AVHubertPretrainingTask", "GENERATOR_KINDS", "LabelEncoder",
           "LabelEncoderS2SToken", "ClassLabelEncoder", "FolderLabels", "CLASS_LABEL"]

GENERATOR_KINDS = ("ctc", "seq2seq", "llm")  # values of a model's `generator_kind` (see `build_generator`)
CLASS_LABEL = "lbl"  # label type of utterance classification: one class name per line -> one class index


class LabelEncoder:
    """Space-separated symbols -> dictionary ids (no eos, unknown symbols -> unk)."""

    def __init__(self, dictionary: Dictionary) -> None:
        self.dictionary = dictionary

    def __call__(self, label: str) -> torch.Tensor:
        return self.dictionary.encode_line(label, append_eos=False, add_if_not_exist=False).long()


class LabelEncoderS2SToken:
    """Transcript -> lower case -> sentencepiece pieces -> ids (+ eos for seq2seq, not for CTC)."""

    def __init__(self, dictionary: Dictionary, bpe_tokenizer: Any, append_eos: bool = True) -> None:
        self.dictionary, self.bpe_tokenizer, self.append_eos = dictionary, bpe_tokenizer, append_eos

    def __call__(self, label: str) -> torch.Tensor:
        pieces = self.bpe_tokenizer.encode(label.lower())
        return self.dictionary.encode_line(pieces, append_eos=self.append_eos, add_if_not_exist=False).long()

    def decode(self, tokens: torch.Tensor, symbols_ignore: Optional[set] = None) -> str:
        text = self.dictionary.string(tokens, extra_symbols_to_ignore=symbols_ignore)
        return self.bpe_tokenizer.decode(text) if self.bpe_tokenizer else text


class ClassLabelEncoder:
    """One class name per line -> `[1]` class index in `[0, N)` (dictionary index minus its specials)."""

    def __init__(self, dictionary: Dictionary, source: str = "") -> None:
        self.dictionary, self.source = dictionary, source

    def index(self, name: str) -> Optional[int]:
        """Class index of `name`, or None when the dictionary lacks it."""
        idx = self.dictionary.index(name.strip())
        return idx - self.dictionary.nspecial if idx >= self.dictionary.nspecial and self.dictionary[idx] == name.strip() else None

    def __call__(self, label: str) -> torch.Tensor:
        idx = self.index(label)
        if idx is None:
            raise ValueError(f"{self.source}: class {label.strip()!r} is not in dict.{CLASS_LABEL}.txt")
        return torch.tensor([idx], dtype=torch.long)

    def check(self, index: Any, lines: Any) -> None:
        """Raise naming the label source and line for the first class name missing from the dictionary."""
        for line in lines:
            name = index.read(int(line))
            if self.index(name) is None:
                raise ValueError(f"{index.path}: line {int(line) + 1}: class {name.strip()!r} is not in dict.{CLASS_LABEL}.txt")


class FolderLabels:
    """Class names from the parent folder of each manifest row's video (audio when there is no video);
    the `LabelIndex` interface the dataset reads (`task.label_from_folder`)."""

    def __init__(self, manifest: str) -> None:
        _, rows = read_manifest(manifest)
        self.path = f"{manifest} (parent folder names)"
        self.names = [os.path.basename(os.path.dirname(r.video or r.audio or "")) for r in rows]
        for i, name in enumerate(self.names):
            if not name:
                raise ValueError(f"{manifest}:{i + 2}: a clip without a parent folder (task.label_from_folder)")

    def __len__(self) -> int:
        return len(self.names)

    def read(self, line: int) -> str:
        return self.names[line]


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
    audio_vtlp: float = _f(
        0.0, "NEW: vocal tract length perturbation for the split named 'train': each utterance's filterbank is "
        "warped by a factor drawn from [1 - x, 1 + x] (0 = off, the reference; 0.1 is typical)",
    )
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
    eval_wer: bool = _f(False, "fine-tuning: decode the validation set and log WER/CER (use checkpoint.best_checkpoint_metric=wer)")
    eval_wer_beam: int = _f(1, "beam size of the validation decoding")
    eval_wer_max_len_a: float = _f(1.0, "validation decoding: max length = a * encoder steps + b")
    eval_wer_max_len_b: int = _f(0, "validation decoding: max length = a * encoder steps + b")
    eval_print_samples: int = _f(3, "reference/hypothesis pairs logged per validation (and to TensorBoard)")
    eval_tensorboard_dir: Optional[str] = _f(None, "TensorBoard dir for validation sample predictions (text)")
    label_from_folder: bool = _f(False, "NEW, classification (labels=[lbl]): class = parent folder name of each clip instead of {split}.lbl")


@register_task("av_hubert_pretraining", dataclass=AVHubertPretrainingConfig)
class AVHubertPretrainingTask(FairseqTask):
    cfg: AVHubertPretrainingConfig
    text_codec: Any = None  # set by a model that tokenises transcripts itself (see `set_text_codec`)

    def __init__(self, cfg: AVHubertPretrainingConfig) -> None:
        super().__init__(cfg)
        logger.info("AVHubertPretrainingTask config: %s", cfg)
        if cfg.fine_tuning:
            self.state.add_factory("target_dictionary", self.load_target_dictionary)
            if self._config_names_tokenizer():
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
        if not self.cfg.labels or self.text_codec is not None:  # av_hubert_llm: the LM's tokenizer, no dict.{label}.txt
            return None
        return self.load_dictionaries()[0]

    def load_tokenizer(self) -> Any:
        model = self.cfg.tokenizer_bpe_model
        if not model or not os.path.isfile(model):
            raise FileNotFoundError(
                f"sentencepiece model {model!r} not found (task.tokenizer_bpe_model); a fine-tuned "
                "checkpoint carries its tokenizer in task_state"
            )
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
        clean_exit.install()  # stop fairseq's prefetch threads at exit (else: abort after a good run)
        cfg = self.cfg
        manifest = os.path.join(cfg.data, f"{split}.tsv")
        dictionaries = [] if self.text_codec is not None else [self.target_dictionary] if cfg.fine_tuning else self.dictionaries
        paths = [os.path.join(self._label_dir(), f"{split}.{label}") for label in cfg.labels]
        folder_labels = cfg.label_from_folder and list(cfg.labels) == [CLASS_LABEL]
        if folder_labels:
            paths = []  # the dataset gets a `FolderLabels` index below
        for p in paths:
            if not os.path.isfile(p):
                raise FileNotFoundError(f"label file {p} not found (task.label_dir / task.labels)")
        if cfg.fine_tuning and list(cfg.labels) == [CLASS_LABEL]:
            procs = [ClassLabelEncoder(dictionaries[0], source=f"{split}.{CLASS_LABEL}")]
        elif cfg.fine_tuning and self.has_tokenizer:
            procs = [LabelEncoderS2SToken(dictionaries[0], self.s2s_tokenizer, append_eos=cfg.is_s2s)]
        else:
            procs = [LabelEncoder(d) for d in dictionaries]
        pads, eoss = [d.pad() for d in dictionaries], [d.eos() for d in dictionaries]
        if self.text_codec is not None:  # transcripts in the model's own tokenizer (av_hubert_llm)
            procs, pads, eoss = [self.text_codec] * len(paths), [self.text_codec.pad] * len(paths), [self.text_codec.eos] * len(paths)
        noise_fn = os.path.join(cfg.noise_wav, f"{split}.tsv") if cfg.noise_wav else None
        max_trim = cfg.max_trim_sample_size
        if isinstance(max_trim, str):  # unresolved `${task.max_sample_size}` (config built outside Hydra)
            max_trim = cfg.max_sample_size
        self.datasets[split] = AVHubertDataset(
            manifest,
            sample_rate=cfg.sample_rate,
            label_paths=paths,
            label_rates=cfg.label_rate,
            pad_list=pads,
            eos_list=eoss,
            label_processors=procs,
            max_keep_sample_size=cfg.max_sample_size,
            min_keep_sample_size=cfg.min_sample_size,
            max_sample_size=max_trim,
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
            audio_vtlp=cfg.audio_vtlp if split == "train" else 0.0,
        )
        if procs and isinstance(procs[0], ClassLabelEncoder):
            dataset = self.datasets[split]
            if folder_labels:  # the dataset's label index, built from the manifest instead of a file
                dataset.label_indexes, dataset.label_rates = [FolderLabels(manifest)], [-1]
            index = dataset.label_indexes[0]
            procs[0].check(index, dataset.label_lines)

    def build_model(self, cfg: Any, from_checkpoint: bool = False) -> Any:
        """Build, then copy the pre-training config the fine-tuning model stored (`w2v_args`)
        back into the caller's config, which is what checkpoints save: fairseq builds models from
        a merged copy, so without this fine-tuned checkpoints would need `w2v_path` to reload."""
        model = super().build_model(cfg, from_checkpoint)
        w2v_args = getattr(getattr(model, "cfg", None), "w2v_args", None)
        if w2v_args is not None and "w2v_args" in cfg and cfg.w2v_args is None:
            with open_dict(cfg):
                cfg.w2v_args = w2v_args
        return model

    # ------------------------------------------------------------- decoding
    def build_generator(self, models: List[Any], args: Any, seq_gen_cls: Any = None,
                        extra_gen_cls_kwargs: Optional[dict] = None, **kwargs: Any) -> Any:
        """Our own generators (no copied fairseq code): beam search or CTC decoding.

        The model says which it needs: its class attribute `generator_kind` ("ctc" or "seq2seq";
        models without one get "seq2seq"), so the task imports no model class.
        `extra_gen_cls_kwargs` may hold fairseq `SequenceGenerator`'s `lm_model` / `lm_weight`
        (shallow fusion, as the original's infer_s2s passes them) and `BeamSearchConfig` fields."""
        extra = dict(extra_gen_cls_kwargs or {})
        lm_model = extra.pop("lm_model", None)
        lm_weight = extra.pop("lm_weight", None)
        kind = getattr(models[0], "generator_kind", "seq2seq")
        if kind not in GENERATOR_KINDS:
            raise ValueError(f"{type(models[0]).__name__}.generator_kind must be one of {GENERATOR_KINDS}, got {kind!r}")
        if kind == "llm":
            if lm_model is not None:
                raise ValueError("language-model shallow fusion (lm_model / generation.lm_path) does not apply to "
                                 "av_hubert_llm: its decoder is already a language model")
            return LlmGenerator(BeamSearchConfig.from_generation_cfg(args, **extra))
        if kind == "ctc":
            if lm_model is not None:
                raise ValueError("language-model shallow fusion (lm_model / generation.lm_path) is implemented for "
                                 "seq2seq models only; this is a CTC model (av_hubert_ctc)")
            return CTCGenerator(self.target_dictionary, beam=getattr(args, "beam", 1))
        config = BeamSearchConfig.from_generation_cfg(args, **extra)
        return Seq2SeqGenerator(self.target_dictionary, config, lm_model=lm_model,
                                lm_weight=None if lm_weight is None else float(lm_weight))

    def set_text_codec(self, codec: Any) -> None:
        """A model that tokenises transcripts with its own tokenizer (`av_hubert_llm`: the LM's) hands
        it over at build time: `codec(text) -> ids`, `codec.decode(ids) -> text`, `codec.pad`,
        `codec.eos`. Datasets loaded afterwards carry those ids; `decode_tokens` uses it."""
        self.text_codec = codec

    def target_text(self, target: torch.Tensor) -> str:
        """One padded row of `sample["target"]` -> the reference text."""
        pad = self.text_codec.pad if self.text_codec is not None else self.target_dictionary.pad()
        return self.decode_tokens(target[target != pad])

    def decode_tokens(self, tokens: torch.Tensor) -> str:
        """Target ids -> text (eos/pad/bos stripped, sentencepiece detokenised)."""
        if self.text_codec is not None:
            return self.text_codec.decode(tokens)
        d = self.target_dictionary
        text = d.string(tokens.int().cpu(), extra_symbols_to_ignore={d.eos(), d.pad(), d.bos()})
        return self.s2s_tokenizer.decode(text) if self.has_tokenizer else text

    def _config_names_tokenizer(self) -> bool:
        """The config asks for a sentencepiece tokenizer (then `__init__` adds its state factory)."""
        return bool(self.cfg.fine_tuning and (self.cfg.is_s2s or self.cfg.tokenizer_bpe_model))

    @property
    def has_tokenizer(self) -> bool:
        """A sentencepiece tokenizer is in the task state (restored from a checkpoint) or can be built
        from the config. Checked without building it (that would read the model file)."""
        return "s2s_tokenizer" in self.state.state_dict or self._config_names_tokenizer()

    def valid_step(self, sample: Any, model: Any, criterion: Any):
        self._valid_criterion = criterion  # for post_validate
        loss, sample_size, log = super().valid_step(sample, model, criterion)
        if self.cfg.eval_wer and self.cfg.fine_tuning and "target" in sample:
            counts = ErrorCounts()
            refs, hyps = self._decode_batch(sample, model)
            norm = self._text_norm()
            for r, h in zip(refs, hyps):
                if norm is not None:  # the labels' text_norm.json, as infer_s2s scores
                    r, h = norm(r), norm(h)
                counts.add(r, h)
            log.update({"_wer_errors": counts.word_errors, "_wer_words": counts.ref_words,
                        "_cer_errors": counts.char_errors, "_cer_chars": counts.ref_chars})
            self._log_samples(model, sample, refs, hyps)
        return loss, sample_size, log

    def _text_norm(self):
        """The labels' `text_norm.json` (avdata.text_norm), read once; validation WER scores through it
        as `infer_s2s.py` does."""
        if not hasattr(self, "_text_norm_cache"):
            from avdata.text_norm import read_text_norm

            self._text_norm_cache = read_text_norm(self.cfg.label_dir or self.cfg.data)
        return self._text_norm_cache

    def _decode_batch(self, sample: Any, model: Any) -> tuple:
        if getattr(self, "_eval_generator", None) is None:
            gen = Namespace(beam=self.cfg.eval_wer_beam, max_len_a=self.cfg.eval_wer_max_len_a,
                            max_len_b=self.cfg.eval_wer_max_len_b, min_len=1, lenpen=1.0, unkpen=0.0,
                            temperature=1.0, no_repeat_ngram_size=0, unnormalized=False)
            self._eval_generator = self.build_generator([model], gen)
        hyps = self._eval_generator.generate([model], sample)
        refs = [self.target_text(t) for t in sample["target"]]
        return refs, [self.decode_tokens(h[0]["tokens"]) for h in hyps]

    def _log_samples(self, model: Any, sample: Any, refs: List[str], hyps: List[str]) -> None:
        """First validation batch: log a few REF/HYP pairs (and to TensorBoard when configured)."""
        updates = getattr(model, "num_updates", 0)
        if self.cfg.eval_print_samples <= 0 or getattr(self, "_samples_logged_at", None) == updates:
            return
        self._samples_logged_at = updates
        lines = [f"{uid}\n  REF: {r}\n  HYP: {h}" for uid, r, h in zip(sample["utt_id"], refs, hyps)][: self.cfg.eval_print_samples]
        logger.info("validation samples at update %d:\n%s", updates, "\n".join(lines))
        if self.cfg.eval_tensorboard_dir:
            from tensorboardX import SummaryWriter  # only when asked for: its import is slow

            if getattr(self, "_tb_writer", None) is None:
                self._tb_writer = SummaryWriter(self.cfg.eval_tensorboard_dir)
            self._tb_writer.add_text("valid/samples", "\n\n".join(l.replace("\n", "  \n") for l in lines), updates)
            self._tb_writer.flush()

    def post_validate(self, model: Any, stats: dict, agg: Any) -> None:
        """End of a validation pass (fairseq_cli.train calls it): a criterion with `post_validate`
        reports from the aggregated metrics (classification: per-class accuracy, confusion matrix)."""
        report = getattr(getattr(self, "_valid_criterion", None), "post_validate", None)
        if report is not None:
            report(stats, agg, int(stats.get("num_updates", getattr(model, "num_updates", 0))))

    def reduce_metrics(self, logging_outputs: List[Any], criterion: Any) -> None:
        super().reduce_metrics(logging_outputs, criterion)
        if not logging_outputs or "_wer_words" not in logging_outputs[0]:
            return
        for key in ("_wer_errors", "_wer_words", "_cer_errors", "_cer_chars"):
            metrics.log_scalar_sum(key, sum(log.get(key, 0) for log in logging_outputs))
        metrics.log_derived("wer", lambda m: round(100.0 * m["_wer_errors"].sum / max(m["_wer_words"].sum, 1), 3))
        metrics.log_derived("cer", lambda m: round(100.0 * m["_cer_errors"].sum / max(m["_cer_chars"].sum, 1), 3))

    def max_positions(self) -> tuple:
        return (sys.maxsize, sys.maxsize)

    def filter_indices_by_size(self, indices, *args: Any, **kwargs: Any):
        return indices  # size filtering happens in the dataset
