"""Generate the built-in audio-visual demo corpus (seeded, deterministic, resumable).

Writes under `out_dir`:

- `audio/{id}.wav`   16 kHz mono int16 speech (espeak-ng), exactly 640 samples per video frame
- `video/{id}.mp4`   25 fps 96x96 grayscale mouth video (mp4v) rendered from the phonemes and the audio
- `{train,valid,test}.tsv`  manifests (root line = `out_dir`, paths relative to it)
- `{train,valid,test}.wrd`  lower-case transcripts, one per manifest row
- `pretrain/{train,valid}.tsv` (when `num_unlabelled` > 0) the pre-training manifests: the labelled
  training utterances plus `num_unlabelled` more from the same speakers, whose transcripts are not
  written anywhere (speech without labels, as in AV-HuBERT's setting); valid as above
- `spm{V}/spm_unigram{V}.{model,vocab,txt}` and `dict.wrd.txt` (sentencepiece, vocab <= V)
- `noise/wav/{split}-{k}.wav`, `noise/{split}.tsv`  babble (absolute wav paths, no header)
- `demo_corpus.json`  the configuration and every speaker's voice and face parameters
- `.demo_corpus.done` the hash of the configuration once everything is written

Ids are `{split}-{speaker}-{index:05d}`. Utterance `index` of a split depends only on the seed,
the speaker set and `index`, never on worker order or on the number of utterances, so a rerun
reuses finished files and a larger corpus extends a smaller one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from avdata.atomic import atomic_path, write_lines
from avdata.constants import AUDIO_SAMPLE_RATE_HZ, AUDIO_SAMPLES_PER_FRAME, VIDEO_FPS
from preparation.common import FailureLog
from avdata.video import count_video_frames, write_video
from preparation.media import count_wav_samples, write_wav_int16
from .render import render_mouth_frames
from .speakers import Speaker, make_speakers
from .speech import add_noise_floor, frame_envelope, pad_or_trim, resample, set_peak_level, to_int16
from .tts import EspeakSynthesizer, Phone
from .visemes import articulation_tracks, couple_to_envelope
from .vocabulary import VOCABULARY, sample_transcript

logger = logging.getLogger(__name__)

__all__ = [
    "GENERATOR_VERSION",
    "SPLITS",
    "SAMPLES_PER_FRAME",
    "CorpusConfig",
    "CorpusPaths",
    "UtteranceSpec",
    "NoiseSpec",
    "plan_utterances",
    "plan_noise",
    "make_utterance",
    "make_babble",
    "generate_corpus",
]

GENERATOR_VERSION = 2  # bump when the output of a given configuration changes
SPLITS = ("train", "valid", "test")
SAMPLES_PER_FRAME = AUDIO_SAMPLES_PER_FRAME  # 640
LEAD_SILENCE_SEC = (0.08, 0.3)  # silence before / after the speech, drawn per utterance
TAIL_SILENCE_SEC = (0.05, 0.25)
UTTERANCE_LEVEL_JITTER_DB = 2.0
BABBLE_GAP_SEC = (0.05, 0.4)  # pause between the sentences of one babble talker
BABBLE_RMS_DBFS = -20.0
MIN_VOCAB_SIZE = 32
META_NAME = "demo_corpus.json"
DONE_NAME = ".demo_corpus.done"
FAILURES_NAME = "failures.demo_corpus.tsv"
_UTT_STREAMS = {"train": 1, "valid": 2, "test": 3}
_NOISE_STREAMS = {"train": 11, "valid": 12, "test": 13}


@dataclass(frozen=True)
class CorpusConfig:
    """Everything that defines the corpus. Utterance counts and `vocab_size` do not change the
    content of existing utterances; all other fields do (`content_key`)."""

    seed: int = 0
    num_train: int = 600
    num_unlabelled: int = 0  # more training-speaker utterances, for pre-training only (pretrain/train.tsv)
    num_valid: int = 60
    num_test: int = 100
    train_speakers: int = 100  # many voices, 6 utterances each: the held-out voices are then not far from all of them
    valid_speakers: int = 2
    test_speakers: int = 2
    babble_speakers: int = 6
    min_words: int = 1
    max_words: int = 4
    vocab_size: int = 64
    num_noise_train: int = 8
    num_noise_valid: int = 4
    num_noise_test: int = 4
    noise_sec: float = 6.0
    babble_talkers: int = 6

    def __post_init__(self) -> None:
        for name in ("num_train", "num_unlabelled", "num_valid", "num_test", "num_noise_train", "num_noise_valid", "num_noise_test"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("train_speakers", "valid_speakers", "test_speakers", "babble_speakers", "babble_talkers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_train < 1:
            raise ValueError("num_train must be >= 1 (the tokenizer is trained on the training transcripts)")
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(f"need 1 <= min_words <= max_words, got {self.min_words}, {self.max_words}")
        if self.vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(
                f"vocab_size must be >= {MIN_VOCAB_SIZE} (the characters of the vocabulary plus the 4 specials), "
                f"got {self.vocab_size}"
            )
        if self.noise_sec <= 0:
            raise ValueError(f"noise_sec must be > 0, got {self.noise_sec}")

    def num_utterances(self, split: str) -> int:
        """Utterances generated for `split` (train: the labelled ones, then the unlabelled ones)."""
        return {"train": self.num_train + self.num_unlabelled, "valid": self.num_valid, "test": self.num_test}[split]

    def num_noise(self, split: str) -> int:
        return {"train": self.num_noise_train, "valid": self.num_noise_valid, "test": self.num_noise_test}[split]

    def content_key(self) -> Dict:
        """The fields that determine each file's content (plus the generator version)."""
        d = asdict(self)
        for name in ("num_train", "num_unlabelled", "num_valid", "num_test", "vocab_size", "num_noise_train",
                     "num_noise_valid", "num_noise_test"):
            d.pop(name)
        d["generator_version"] = GENERATOR_VERSION
        return d

    def digest(self) -> str:
        """Hash of the whole configuration (written to the done marker)."""
        d = asdict(self)
        d["generator_version"] = GENERATOR_VERSION
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def speakers(self) -> List[Speaker]:
        return make_speakers(
            self.seed,
            [("train", self.train_speakers), ("valid", self.valid_speakers), ("test", self.test_speakers),
             ("babble", self.babble_speakers)],
        )


@dataclass(frozen=True)
class CorpusPaths:
    """Where `generate_corpus` wrote things (all absolute)."""

    out_dir: Path
    manifests: Dict[str, Path]
    pretrain_dir: Path  # train.tsv + valid.tsv for pre-training (`out_dir` itself when there is no unlabelled speech)
    transcripts: Dict[str, Path]
    spm_model: Path
    dictionary: Path
    noise_dir: Path
    noise_lists: Dict[str, Path]


@dataclass(frozen=True)
class UtteranceSpec:
    utt_id: str
    split: str
    index: int
    speaker: Speaker
    text: str
    seed: int
    labelled: bool = True  # False: an unlabelled pre-training utterance (in pretrain/train.tsv only)

    @property
    def video_rel(self) -> str:
        return f"video/{self.utt_id}.mp4"

    @property
    def audio_rel(self) -> str:
        return f"audio/{self.utt_id}.wav"


@dataclass(frozen=True)
class NoiseSpec:
    name: str  # `{split}-{k:03d}`
    split: str
    talkers: Tuple[Speaker, ...]
    duration_sec: float
    seed: int
    min_words: int
    max_words: int

    @property
    def wav_rel(self) -> str:
        return f"noise/wav/{self.name}.wav"


@dataclass(frozen=True)
class UtteranceResult:
    utt_id: str
    num_video_frames: int
    num_audio_samples: int
    generated: bool


def plan_utterances(cfg: CorpusConfig, speakers: Sequence[Speaker]) -> List[UtteranceSpec]:
    """All utterances in manifest order; speakers take turns within a split."""
    specs: List[UtteranceSpec] = []
    for split in SPLITS:
        pool = [s for s in speakers if s.partition == split]
        for index in range(cfg.num_utterances(split)):
            rng = np.random.default_rng([cfg.seed, _UTT_STREAMS[split], index])
            speaker = pool[index % len(pool)]
            text = sample_transcript(rng, cfg.min_words, cfg.max_words)
            seed = int(rng.integers(0, 2**31 - 1))
            labelled = split != "train" or index < cfg.num_train
            specs.append(UtteranceSpec(f"{split}-{speaker.id}-{index:05d}", split, index, speaker, text, seed, labelled))
    return specs


def plan_noise(cfg: CorpusConfig, speakers: Sequence[Speaker]) -> List[NoiseSpec]:
    """Babble files per split, each mixing `babble_talkers` of the babble speakers (who speak
    none of the manifest utterances)."""
    pool = [s for s in speakers if s.partition == "babble"]
    specs: List[NoiseSpec] = []
    for split in SPLITS:
        for k in range(cfg.num_noise(split)):
            rng = np.random.default_rng([cfg.seed, _NOISE_STREAMS[split], k])
            chosen = rng.choice(len(pool), size=min(cfg.babble_talkers, len(pool)), replace=False)
            specs.append(
                NoiseSpec(f"{split}-{k:03d}", split, tuple(pool[i] for i in sorted(chosen)), cfg.noise_sec,
                          int(rng.integers(0, 2**31 - 1)), cfg.min_words, cfg.max_words)
            )
    return specs


# ------------------------------------------------------------------------------------------
# workers
# ------------------------------------------------------------------------------------------

_SYNTH: Optional[EspeakSynthesizer] = None


def _synthesizer() -> EspeakSynthesizer:
    global _SYNTH
    if _SYNTH is None:
        _SYNTH = EspeakSynthesizer()
    return _SYNTH


def _speech(text: str, speaker: Speaker, rng: np.random.Generator) -> Tuple[np.ndarray, Tuple[Phone, ...]]:
    """Synthesise `text` in the speaker's voice; float samples at 16 kHz and the phones."""
    synth = _synthesizer().synthesize(text, speaker.voice.settings(rng), noise_seed=int(rng.integers(0, 2**31 - 1)))
    wave = resample(synth.samples, synth.sample_rate_hz, AUDIO_SAMPLE_RATE_HZ)
    level = speaker.voice.loudness_dbfs + rng.uniform(-UTTERANCE_LEVEL_JITTER_DB, UTTERANCE_LEVEL_JITTER_DB)
    return set_peak_level(wave, level), synth.phones


def _existing_utterance(spec: UtteranceSpec, out_dir: Path) -> Optional[UtteranceResult]:
    """The result for finished files (both present and consistent), else None."""
    video, audio = out_dir / spec.video_rel, out_dir / spec.audio_rel
    if not (video.is_file() and audio.is_file()):
        return None
    try:
        num_samples = count_wav_samples(audio)
        num_frames = count_video_frames(video)
    except (OSError, ValueError, RuntimeError):
        return None
    if num_frames < 1 or num_samples != num_frames * SAMPLES_PER_FRAME:
        return None
    return UtteranceResult(spec.utt_id, num_frames, num_samples, generated=False)


def make_utterance(spec: UtteranceSpec, out_dir: Union[str, os.PathLike], overwrite: bool = False) -> UtteranceResult:
    """Synthesise, render and write one utterance (skipped when its files are already done)."""
    out_dir = Path(out_dir)
    if not overwrite:
        existing = _existing_utterance(spec, out_dir)
        if existing is not None:
            return existing
    rng = np.random.default_rng(spec.seed)
    wave, phones = _speech(spec.text, spec.speaker, rng)
    lead = int(round(rng.uniform(*LEAD_SILENCE_SEC) * AUDIO_SAMPLE_RATE_HZ))
    tail = int(round(rng.uniform(*TAIL_SILENCE_SEC) * AUDIO_SAMPLE_RATE_HZ))
    num_frames = max(1, int(round((lead + len(wave) + tail) / SAMPLES_PER_FRAME)))  # round(duration * 25)
    num_samples = num_frames * SAMPLES_PER_FRAME
    speech = pad_or_trim(np.concatenate([np.zeros(lead), wave]), num_samples)
    lead_sec = lead / AUDIO_SAMPLE_RATE_HZ
    phones = [Phone(p.name, p.start_sec + lead_sec, p.end_sec + lead_sec) for p in phones]

    shapes = articulation_tracks(phones, num_frames, VIDEO_FPS, spec.speaker.face.smoothing_sec)
    shapes = couple_to_envelope(shapes, frame_envelope(speech, SAMPLES_PER_FRAME), spec.speaker.face.openness)
    frames = render_mouth_frames(shapes, spec.speaker.face, rng)
    samples = to_int16(add_noise_floor(speech, spec.speaker.voice.noise_floor_dbfs, rng))

    write_wav_int16(out_dir / spec.audio_rel, samples, AUDIO_SAMPLE_RATE_HZ)
    write_video(out_dir / spec.video_rel, frames, VIDEO_FPS, codec="mp4v", verify=True)  # ~25x cheaper than H.264
    return UtteranceResult(spec.utt_id, num_frames, num_samples, generated=True)


def make_babble(spec: NoiseSpec, out_dir: Union[str, os.PathLike], overwrite: bool = False) -> Path:
    """Write one babble wav: the average of several talkers, each a stream of sentences."""
    path = Path(out_dir) / spec.wav_rel
    length = int(round(spec.duration_sec * AUDIO_SAMPLE_RATE_HZ))
    if not overwrite and path.is_file():
        try:
            if count_wav_samples(path) == length:
                return path
        except (OSError, ValueError, RuntimeError):
            pass
    rng = np.random.default_rng(spec.seed)
    tracks = []
    for talker in spec.talkers:
        pieces, total = [], 0
        while total < length:
            wave, _ = _speech(sample_transcript(rng, spec.min_words, spec.max_words), talker, rng)
            gap = np.zeros(int(rng.uniform(*BABBLE_GAP_SEC) * AUDIO_SAMPLE_RATE_HZ))
            pieces += [wave, gap]
            total += len(wave) + len(gap)
        track = np.concatenate(pieces)
        start = int(rng.integers(0, len(track) - length + 1))  # talkers do not start in sync
        tracks.append(track[start : start + length])
    mix = np.mean(tracks, axis=0)
    mix *= 10.0 ** (BABBLE_RMS_DBFS / 20.0) / (np.sqrt(np.mean(mix * mix)) + 1e-12)
    write_wav_int16(path, to_int16(mix), AUDIO_SAMPLE_RATE_HZ)
    return path


def _run_task(task: Union[UtteranceSpec, NoiseSpec], out_dir: str, overwrite: bool):
    """Pool entry point: `(name, error or None, result)`; failures are reported, not raised."""
    name = task.utt_id if isinstance(task, UtteranceSpec) else f"noise/{task.name}"
    try:
        if isinstance(task, UtteranceSpec):
            return name, None, make_utterance(task, out_dir, overwrite)
        return name, None, make_babble(task, out_dir, overwrite)
    except Exception as exc:  # noqa: BLE001 - collected into the failures file by the caller
        return name, f"{type(exc).__name__}: {exc}", None


# ------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------


def _corpus_paths(out_dir: Path, cfg: CorpusConfig) -> CorpusPaths:
    spm_prefix = out_dir / f"spm{cfg.vocab_size}" / f"spm_unigram{cfg.vocab_size}"
    return CorpusPaths(
        out_dir=out_dir,
        manifests={s: out_dir / f"{s}.tsv" for s in SPLITS},
        pretrain_dir=out_dir / "pretrain" if cfg.num_unlabelled > 0 else out_dir,
        transcripts={s: out_dir / f"{s}.wrd" for s in SPLITS},
        spm_model=Path(f"{spm_prefix}.model"),
        dictionary=out_dir / "dict.wrd.txt",
        noise_dir=out_dir / "noise",
        noise_lists={s: out_dir / "noise" / f"{s}.tsv" for s in SPLITS},
    )


def _check_or_write_meta(out_dir: Path, cfg: CorpusConfig, speakers: Sequence[Speaker], overwrite: bool) -> None:
    meta_path = out_dir / META_NAME
    if meta_path.is_file() and not overwrite:
        with open(meta_path, encoding="utf-8") as f:
            old = json.load(f).get("content_key")
        if old != cfg.content_key():
            raise ValueError(
                f"{out_dir} holds a demo corpus generated with other settings ({old} vs {cfg.content_key()}); "
                "use another output directory or overwrite=True (--overwrite)"
            )
    meta = {
        "config": asdict(cfg),
        "content_key": cfg.content_key(),
        "digest": cfg.digest(),
        "vocabulary": list(VOCABULARY),
        "espeak_ng_version": _synthesizer().version(),
        "speakers": [s.to_dict() for s in speakers],
    }
    with atomic_path(meta_path) as tmp:
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _run_tasks(tasks: List, out_dir: Path, overwrite: bool, num_workers: int, progress: bool) -> Dict[str, object]:
    from tqdm import tqdm

    run = functools.partial(_run_task, out_dir=str(out_dir), overwrite=overwrite)
    failures = FailureLog()
    results: Dict[str, object] = {}
    if num_workers > 1 and len(tasks) > 1:
        # fork (the espeak wrapper forks per utterance anyway); the pool starts before the
        # progress bar so that no tqdm monitor thread exists at fork time
        with multiprocessing.get_context("fork").Pool(num_workers) as pool:
            outcomes = pool.imap_unordered(run, tasks, chunksize=1)
            with tqdm(total=len(tasks), desc="demo corpus", unit="file", disable=not progress) as bar:
                for name, error, value in outcomes:
                    _collect(name, error, value, results, failures)
                    bar.update(1)
    else:
        with tqdm(total=len(tasks), desc="demo corpus", unit="file", disable=not progress) as bar:
            for task in tasks:
                _collect(*run(task), results, failures)
                bar.update(1)
    failures.write(out_dir / FAILURES_NAME)
    if len(failures):
        raise RuntimeError(f"{len(failures)} demo-corpus items failed; see {out_dir / FAILURES_NAME}")
    return results


def _collect(name: str, error: Optional[str], value, results: Dict, failures: FailureLog) -> None:
    if error is None:
        results[name] = value
    else:
        logger.error("%s: %s", name, error)
        failures.add(name, error)


def _write_text_outputs(
    paths: CorpusPaths, cfg: CorpusConfig, specs: Sequence[UtteranceSpec], results: Dict[str, object],
    noise: Sequence[NoiseSpec],
) -> None:
    from avdata.manifest import ManifestRow, write_manifest

    from preparation.tokenizer import train_sentencepiece

    root = str(paths.out_dir)

    def row(spec: UtteranceSpec) -> ManifestRow:
        res = results[spec.utt_id]
        return ManifestRow(spec.utt_id, spec.video_rel, spec.audio_rel, res.num_video_frames, res.num_audio_samples)

    for split in SPLITS:
        labelled = [s for s in specs if s.split == split and s.labelled]
        write_manifest(paths.manifests[split], root, [row(s) for s in labelled])
        write_lines(paths.transcripts[split], [s.text for s in labelled])
        write_lines(paths.noise_lists[split], (str(paths.out_dir / n.wav_rel) for n in noise if n.split == split))
    if paths.pretrain_dir != paths.out_dir:
        for split in ("train", "valid"):
            write_manifest(paths.pretrain_dir / f"{split}.tsv", root, [row(s) for s in specs if s.split == split])
    # every vocabulary word once, so that valid/test words are covered even by a tiny train split
    train_texts = [s.text for s in specs if s.split == "train" and s.labelled] + list(VOCABULARY)
    _, dict_path = train_sentencepiece(train_texts, paths.spm_model.with_suffix(""), cfg.vocab_size)
    with atomic_path(paths.dictionary) as tmp:
        shutil.copyfile(dict_path, tmp)


def generate_corpus(
    out_dir: Union[str, os.PathLike],
    cfg: Optional[CorpusConfig] = None,
    num_workers: int = 2,
    overwrite: bool = False,
    progress: bool = True,
) -> CorpusPaths:
    """Generate (or finish, or reuse) the demo corpus in `out_dir`; returns its paths.

    `cfg` defaults to `CorpusConfig()` (600/60/100 utterances, no unlabelled ones, seed 0).

    Resumable: finished media files are kept, and a complete corpus with the same
    configuration (done marker) returns at once. Raises `ValueError` when `out_dir` holds a
    corpus of different content settings, unless `overwrite`.
    """
    cfg = cfg if cfg is not None else CorpusConfig()
    out_dir = Path(out_dir).resolve()
    paths = _corpus_paths(out_dir, cfg)
    done = out_dir / DONE_NAME
    if not overwrite and done.is_file() and done.read_text(encoding="utf-8").strip() == cfg.digest():
        logger.info("demo corpus in %s is complete (config %s); nothing to do", out_dir, cfg.digest())
        return paths
    if done.exists():
        done.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    speakers = cfg.speakers()
    _check_or_write_meta(out_dir, cfg, speakers, overwrite)
    specs = plan_utterances(cfg, speakers)
    noise = plan_noise(cfg, speakers)
    start = time.perf_counter()
    results = _run_tasks(list(noise) + list(specs), out_dir, overwrite, num_workers, progress)
    elapsed = time.perf_counter() - start
    generated = sum(1 for r in results.values() if isinstance(r, UtteranceResult) and r.generated)
    logger.info(
        "demo corpus: %d utterances (%d generated, %d reused) and %d noise files in %.1f s with %d workers",
        len(specs), generated, len(specs) - generated, len(noise), elapsed, num_workers,
    )
    _write_text_outputs(paths, cfg, specs, results, noise)
    with atomic_path(done) as tmp:
        tmp.write_text(cfg.digest() + "\n", encoding="utf-8")
    return paths
