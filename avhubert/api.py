"""AV-HuBERT without fairseq knowledge: `load(path)` -> `AVHubert`, which turns videos, audio,
arrays or tensors into features or text.

    import avhubert
    model = avhubert.load("checkpoint.pt")              # or an exported safetensors folder
    feats = model.extract_features(video="talk.mp4", audio="talk.mp4", layer=9)   # [T, D] at 25 Hz
    result = model.transcribe("talk.mp4")                # {"text", "segments", "modality", ...}

Inputs (`video=`, `audio=`):

- a file path: anything the machine's ffmpeg reads; video is converted to 25 fps grayscale, audio
  to 16 kHz mono;
- video as an array / tensor `[T, H, W]` (gray) or `[T, H, W, 3]` (RGB) of uint8 frames at 25 fps;
  frames of the mouth-ROI size (96x96) are used as they are, any other size goes through face
  tracking and the mouth crop (`avdata.face.roi`);
- audio as an array / tensor `[N]` at 16 kHz: int16 values, or floats in [-1, 1].

A missing modality is zeros after its front-end, as in modality dropout. Long inputs are cut into
windows at low-energy points of the audio (`plan_windows`) for `transcribe`.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from avdata.audio import audio_features
from avdata.constants import AUDIO_SAMPLE_RATE_HZ, AUDIO_SAMPLES_PER_FRAME, VIDEO_FPS
from avdata.face.landmarks import LandmarkOptions
from avdata.face.roi import FaceQuality, MouthRoiExtractor, NoFaceError
from avdata.media import decode_audio, iter_video_chunks, probe
from avdata.video import transform_video

__all__ = ["MODALITIES", "load", "AVHubert", "Prepared", "plan_windows", "modality_list", "InputError"]

MODALITIES = ("audio", "video", "audio-visual")
MAX_DECODE_SIDE = 640  # frames are downscaled to this longer side before face tracking
VIDEO_CHUNK_FRAMES = 250  # frames decoded and face-tracked at a time (10 s): bounded memory
# Face detection on frames downscaled to 320 px and a full detection every 25 frames (tracking, with
# re-detection on drift, in between): 17-36 ms/frame instead of 210-250 ms/frame for the corpus
# settings (640 px, every 5 frames) on 640x480 carphone frames (one loaded core), landmarks 1.4 px
# apart on average.
TRANSCRIBE_LANDMARKS = LandmarkOptions(detect_max_side=320, redetect_every=25)

PathLike = Union[str, os.PathLike]
VideoInput = Union[PathLike, np.ndarray, torch.Tensor, None]
AudioInput = Union[PathLike, np.ndarray, torch.Tensor, None]


class InputError(ValueError):
    """An input that cannot be used (no face, no audio for an audio mode, unreadable file)."""


def modality_list(modality: str) -> List[str]:
    """'audio' -> [audio], 'video' -> [video], 'audio-visual' -> [audio, video]."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    return ["audio", "video"] if modality == "audio-visual" else [modality]


def modality_name(modalities: Sequence[str]) -> str:
    mods = set(modalities)
    return "audio-visual" if mods == {"audio", "video"} else next(iter(mods))


@dataclass
class Prepared:
    """Decoded inputs of one recording: mouth ROIs `uint8 [T, 96, 96]` and/or int16 audio `[N]`
    at 16 kHz, the face-tracking figures, and seconds spent per stage."""

    rois: Optional[np.ndarray] = None
    wav: Optional[np.ndarray] = None
    face: Optional[FaceQuality] = None
    timings: Dict[str, float] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        if self.rois is not None:
            return len(self.rois)
        assert self.wav is not None
        return int(np.ceil(len(self.wav) / AUDIO_SAMPLES_PER_FRAME))


def _is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def _to_numpy(x: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _audio_array(x: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    """`[N]` int16, or floats in [-1, 1] -> int16-scale samples."""
    a = _to_numpy(x)
    if a.ndim != 1:
        raise InputError(f"audio array must be [N] mono samples at 16 kHz, got shape {a.shape}")
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise InputError("audio array has NaN/inf samples")
        peak = float(np.abs(a).max()) if a.size else 0.0
        if peak > 1.0 + 1e-6:
            raise InputError(f"float audio must lie in [-1, 1] (peak {peak:.3g}); pass int16 samples otherwise")
        return np.clip(np.round(a * 32768.0), -32768, 32767).astype(np.int16)
    return a.astype(np.int16)


def _video_array(x: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    """`[T, H, W]` gray or `[T, H, W, 3]` RGB frames -> uint8 gray `[T, H, W]`."""
    v = _to_numpy(x)
    if v.ndim == 4 and v.shape[-1] == 3:
        import cv2

        v = np.clip(v, 0, 255).astype(np.uint8)
        t, h, w, _ = v.shape
        v = cv2.cvtColor(v.reshape(t * h, w, 3), cv2.COLOR_RGB2GRAY).reshape(t, h, w)
    if v.ndim != 3 or len(v) == 0:
        raise InputError(f"video array must be [T, H, W] or [T, H, W, 3] frames at 25 fps, got shape {v.shape}")
    return np.clip(v, 0, 255).astype(np.uint8) if v.dtype != np.uint8 else v


@contextlib.contextmanager
def _timed(timings: Dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def plan_windows(num_frames: int, wav: Optional[np.ndarray], max_frames: int, min_frames: int) -> List[Tuple[int, int]]:
    """Cut `[0, num_frames)` into windows of at most `max_frames` frames. With audio, each cut
    falls at the quietest frame (RMS over 40 ms, smoothed over 3 frames) between `min_frames` and
    `max_frames` after the window start; without audio, the windows get equal lengths."""
    if num_frames <= max_frames:
        return [(0, num_frames)]
    if wav is None:
        n = int(np.ceil(num_frames / max_frames))
        bounds = np.linspace(0, num_frames, n + 1).round().astype(int)
        return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    per = AUDIO_SAMPLES_PER_FRAME
    padded = np.zeros(num_frames * per, dtype=np.float64)
    n = min(len(wav), len(padded))
    padded[:n] = wav[:n]
    energy = np.sqrt((padded.reshape(num_frames, per) ** 2).mean(axis=1))
    energy = np.convolve(energy, np.ones(3) / 3, mode="same")
    windows, start = [], 0
    while num_frames - start > max_frames:
        lo, hi = start + min_frames, start + max_frames
        cut = lo + int(np.argmin(energy[lo:hi + 1]))
        windows.append((start, cut))
        start = cut
    windows.append((start, num_frames))
    return windows


class AVHubert:
    """A loaded AV-HuBERT checkpoint: `extract_features`, `transcribe` (fine-tuned models),
    `task_cfg` (the checkpoint's task settings) and `settings` (a summary)."""

    def __init__(self, model: torch.nn.Module, task: Any, cfg: Dict[str, Any], device: Union[str, torch.device],
                 source: str) -> None:
        self.model = model.eval()
        self.task = task
        self.cfg = cfg
        self.device = torch.device(device)
        self.source = source
        self.kind = self._kind(model)
        self._roi_extractor: Optional[MouthRoiExtractor] = None

    # ------------------------------------------------------------------ description
    @staticmethod
    def _kind(model: torch.nn.Module) -> str:
        if hasattr(model, "generator_kind"):
            return str(model.generator_kind)  # "seq2seq", "ctc" or "llm" (av_hubert_llm)
        return "pretrain"

    @property
    def w2v_model(self) -> torch.nn.Module:
        """The AV-HuBERT encoder (`AVHubertModel`) inside any checkpoint kind."""
        from .safetensors_io import find_av_hubert

        return find_av_hubert(self.model)

    @property
    def task_cfg(self) -> Dict[str, Any]:
        """The checkpoint's task settings (`cfg.task`) as a plain dict."""
        from omegaconf import DictConfig, OmegaConf

        task = self.cfg.get("task", {}) if isinstance(self.cfg, (dict, DictConfig)) else {}
        return OmegaConf.to_container(task, resolve=False) if isinstance(task, DictConfig) else dict(task)

    @property
    def trained_modalities(self) -> List[str]:
        mods = self.task_cfg.get("modalities") or ["audio", "video"]
        return [str(m) for m in mods]

    @property
    def default_modality(self) -> str:
        """What the checkpoint was fine-tuned (or pre-trained) with."""
        return modality_name(self.trained_modalities)

    @property
    def can_transcribe(self) -> bool:
        if self.kind == "llm":  # the LM's own tokenizer (the model hands the task its codec)
            return getattr(self.task, "text_codec", None) is not None
        return self.kind in ("seq2seq", "ctc") and getattr(self.task, "target_dictionary", None) is not None

    @property
    def vocabulary_size(self) -> Optional[int]:
        if not self.can_transcribe:
            return None
        return len(self.model.tokenizer) if self.kind == "llm" else len(self.task.target_dictionary)

    @property
    def settings(self) -> Dict[str, Any]:
        enc = self.w2v_model.cfg
        tc = self.task_cfg
        return {
            "kind": self.kind, "source": self.source, "modality": self.default_modality,
            "encoder_layers": int(enc.encoder_layers), "embed_dim": int(enc.encoder_embed_dim),
            "video_fps": VIDEO_FPS, "audio_sample_rate": AUDIO_SAMPLE_RATE_HZ,
            "image_crop_size": int(tc.get("image_crop_size", 88)), "stack_order_audio": int(tc.get("stack_order_audio", 4)),
            "normalize": bool(tc.get("normalize", True)),
            "vocabulary": self.vocabulary_size,
        }

    def __repr__(self) -> str:
        s = self.settings
        return f"AVHubert({s['kind']}, {s['encoder_layers']} layers x {s['embed_dim']}, modality={s['modality']}, from {self.source})"

    # ------------------------------------------------------------------ inputs
    @property
    def roi_extractor(self) -> MouthRoiExtractor:
        if self._roi_extractor is None:
            self._roi_extractor = MouthRoiExtractor(landmark_options=TRANSCRIBE_LANDMARKS)
        return self._roi_extractor

    def _video_rois(self, video: VideoInput, prep: Prepared) -> np.ndarray:
        """Mouth ROIs `[T, 96, 96]` of a path / array: face tracking unless already ROIs."""
        chunks = self._video_chunks(str(video), prep) if _is_path(video) else iter([_video_array(video)])
        try:
            rois, prep.face = self.roi_extractor.extract_chunks(chunks, prep.timings)
        except NoFaceError as e:
            raise InputError(str(e)) from None
        return rois

    def _video_chunks(self, path: str, prep: Prepared) -> Iterator[np.ndarray]:
        it = iter_video_chunks(path, chunk_frames=VIDEO_CHUNK_FRAMES, max_side=MAX_DECODE_SIDE)
        while True:
            with _timed(prep.timings, "video_decoding"):
                chunk = next(it, None)
            if chunk is None:
                return
            yield chunk

    def prepare(self, video: VideoInput = None, audio: AudioInput = None) -> Prepared:
        """Decode and crop: `Prepared` with the mouth ROIs and / or the 16 kHz audio."""
        if video is None and audio is None:
            raise InputError("give video=, audio= or both")
        prep = Prepared()
        if video is not None:
            prep.rois = self._video_rois(video, prep)
        if audio is not None:
            with _timed(prep.timings, "audio"):
                prep.wav = decode_audio(audio) if _is_path(audio) else _audio_array(audio)
            if len(prep.wav) < AUDIO_SAMPLES_PER_FRAME:
                raise InputError(f"audio of {len(prep.wav)} samples is shorter than one 40 ms frame")
        return prep

    def model_inputs(self, prep: Prepared, start: int = 0, end: Optional[int] = None) -> Dict[str, Optional[torch.Tensor]]:
        """`source` dict for the encoder, frames `[start, end)`: video `[1, 1, T, 88, 88]`,
        audio `[1, 104, T]` (filterbanks aligned to the video length when both are there)."""
        tc = self.task_cfg
        end = prep.num_frames if end is None else end
        T = end - start
        src: Dict[str, Optional[torch.Tensor]] = {"audio": None, "video": None}
        if prep.rois is not None:
            v = transform_video(prep.rois[start:end], train=False, crop_size=int(tc.get("image_crop_size", 88)),
                                mean=float(tc.get("image_mean", 0.421)), std=float(tc.get("image_std", 0.165)))
            src["video"] = torch.from_numpy(np.ascontiguousarray(v))[None, None].to(self.device)
        if prep.wav is not None:
            per = AUDIO_SAMPLES_PER_FRAME
            wav = prep.wav[start * per:end * per]
            if len(wav) < T * per:  # audio shorter than the video: silence at the end
                wav = np.concatenate([wav, np.zeros(T * per - len(wav), np.int16)])
            a = audio_features(wav, int(tc.get("stack_order_audio", 4)), num_video_frames=T,
                               normalize=bool(tc.get("normalize", True)))
            src["audio"] = a.T[None].to(self.device)
        return src

    # ------------------------------------------------------------------ features
    @torch.no_grad()
    def extract_features(self, video: VideoInput = None, audio: AudioInput = None, layer: Optional[int] = None) -> torch.Tensor:
        """Encoder features `[T, D]` at 25 Hz (float32, on the model's device).

        `layer`: 1-based transformer layer whose output is returned (before the final layer
        norm, as the reference's `output_layer`); None = the last layer, normalised."""
        prep = self.prepare(video, audio)
        feats, _ = self.w2v_model.extract_finetune(self.model_inputs(prep), None, output_layer=layer)
        return feats[0]

    # ------------------------------------------------------------------ text
    def build_generator(self, beam: int = 5, lm: Optional[str] = None, lm_weight: float = 0.0,
                        max_len_a: float = 0.5, max_len_b: int = 10, lenpen: float = 1.0) -> Any:
        """The task's decoder for this model: beam search (seq2seq, optional LM shallow fusion), CTC, or
        the LLM decoder's greedy (`beam=1`) / beam search (`avhubert.llm_generation`)."""
        if not self.can_transcribe:
            raise ValueError(f"{self.source} is a {self.kind} checkpoint: it gives features, not text "
                             "(transcription needs a fine-tuned seq2seq, CTC or av_hubert_llm checkpoint)")
        if lm and self.kind != "seq2seq":
            why = "its decoder already is a language model" if self.kind == "llm" else "this is a CTC model"
            raise ValueError(f"lm={lm}: language-model shallow fusion is for seq2seq models; {why}")
        from fairseq.dataclass.configs import GenerationConfig

        gen = GenerationConfig(beam=beam, max_len_a=max_len_a, max_len_b=max_len_b, lenpen=lenpen)
        extra: Dict[str, Any] = {}
        if lm:
            from .language_model import load_language_model

            extra.update(lm_model=load_language_model(lm, self.task.target_dictionary, self.device), lm_weight=lm_weight)
        return self.task.build_generator([self.model], gen, extra_gen_cls_kwargs=extra)

    def resolve_modality(self, modality: Optional[str], prep_has_audio: bool, prep_has_video: bool) -> Tuple[str, List[str]]:
        """The modality to decode with, and notes. No audio track -> video only; audio modes need audio."""
        notes: List[str] = []
        modality = modality or self.default_modality
        mods = modality_list(modality)
        if "audio" in mods and not prep_has_audio:
            if mods == ["audio"]:
                raise InputError("has no audio track, which --modality audio needs")
            mods, notes = ["video"], ["no audio track: decoded from video only"]
        if "video" in mods and not prep_has_video:
            if mods == ["video"]:
                raise InputError("has no video track, which --modality video needs")
            mods, notes = ["audio"], ["no video track: decoded from audio only"]
        return modality_name(mods), notes

    @torch.no_grad()
    def transcribe(self, video: VideoInput = None, audio: AudioInput = None, modality: Optional[str] = None,
                   beam: int = 5, lm: Optional[str] = None, lm_weight: float = 0.0, batch_size: int = 8,
                   max_window_s: float = 12.0, min_window_s: float = 6.0, generator: Any = None) -> Dict[str, Any]:
        """Text of one recording: `{"text", "segments": [{"start", "end", "text"}], "modality",
        "face", "duration_s", "timings", "notes"}`.

        A path given as `video` also provides the audio when the modality needs it (unless
        `audio=` is given); a video file without an audio track is decoded from video only."""
        generator = generator or self.build_generator(beam=beam, lm=lm, lm_weight=lm_weight)
        want = modality_list(modality or self.default_modality)
        timings: Dict[str, float] = {}
        info = None
        if _is_path(video):
            with _timed(timings, "probe"):
                info = probe(video)
            if not info.has_video and not info.has_audio:
                raise InputError("has neither a video nor an audio track")
        has_video = video is not None and (info is None or info.has_video)
        if audio is None and _is_path(video) and "audio" in want and info is not None and info.has_audio:
            audio = video
        used, notes = self.resolve_modality(modality, audio is not None, has_video)
        mods = modality_list(used)
        prep = self.prepare(video if "video" in mods else None, audio if "audio" in mods else None)
        for k, v in prep.timings.items():
            timings[k] = timings.get(k, 0.0) + v
        segments = self.decode_prepared(prep, generator, batch_size, max_window_s, min_window_s, timings)
        text = " ".join(s["text"] for s in segments if s["text"])
        return {"text": text, "segments": segments, "modality": used,
                "face": prep.face.as_dict() if prep.face else None,
                "duration_s": round(prep.num_frames / VIDEO_FPS, 3), "timings": {k: round(v, 4) for k, v in timings.items()},
                "notes": notes + prep.notes}

    def decode_prepared(self, prep: Prepared, generator: Any, batch_size: int = 8, max_window_s: float = 12.0,
                        min_window_s: float = 6.0, timings: Optional[Dict[str, float]] = None) -> List[Dict[str, Any]]:
        """Windows of `prep` decoded in batches -> `[{"start", "end", "text"}]` (seconds)."""
        timings = timings if timings is not None else {}
        windows = plan_windows(prep.num_frames, prep.wav, max(1, int(max_window_s * VIDEO_FPS)),
                               max(1, int(min_window_s * VIDEO_FPS)))
        segments: List[Dict[str, Any]] = []
        encoder = self.model.w2v_encoder if self.kind == "ctc" else self.model.encoder
        with _encoder_timer(encoder, timings):
            for b in range(0, len(windows), batch_size):
                batch = windows[b:b + batch_size]
                with _timed(timings, "features"):
                    sample = self._batch(prep, batch)
                with _timed(timings, "decoding"):
                    hyps = generator.generate([self.model], sample)
                for (s, e), h in zip(batch, hyps):
                    text = self.task.decode_tokens(h[0]["tokens"]).strip()
                    segments.append({"start": round(s / VIDEO_FPS, 3), "end": round(e / VIDEO_FPS, 3), "text": text})
        if "encoder" in timings:  # decoding time without the encoder's share
            timings["decoding"] = max(0.0, timings.get("decoding", 0.0) - timings["encoder"])
        return segments

    def _batch(self, prep: Prepared, windows: List[Tuple[int, int]]) -> Dict[str, Any]:
        """Padded batch of windows: `{"net_input": {"source", "padding_mask"}}`."""
        parts = [self.model_inputs(prep, s, e) for s, e in windows]
        T = max(e - s for s, e in windows)
        pad = torch.zeros(len(windows), T, dtype=torch.bool, device=self.device)
        source: Dict[str, Optional[torch.Tensor]] = {"audio": None, "video": None}
        for m, axis in (("audio", 2), ("video", 2)):
            xs = [p[m] for p in parts]
            if xs[0] is None:
                continue
            padded = []
            for x in xs:
                extra = T - x.shape[axis]
                if extra:
                    shape = list(x.shape)
                    shape[axis] = extra
                    x = torch.cat([x, x.new_zeros(shape)], dim=axis)
                padded.append(x)
            source[m] = torch.cat(padded, dim=0)
        for i, (s, e) in enumerate(windows):
            pad[i, e - s:] = True
        return {"net_input": {"source": source, "padding_mask": pad if pad.any() else None}}


@contextlib.contextmanager
def _encoder_timer(encoder: torch.nn.Module, timings: Dict[str, float]) -> Iterator[None]:
    """Adds the encoder's forward time to `timings["encoder"]` (forward hooks)."""
    starts: List[float] = []

    def pre(*_: Any) -> None:
        starts.append(time.perf_counter())

    def post(*_: Any) -> None:
        timings["encoder"] = timings.get("encoder", 0.0) + time.perf_counter() - starts.pop()

    handles = [encoder.register_forward_pre_hook(pre), encoder.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _is_exported(path: Path) -> bool:
    return path.is_dir() or path.suffix == ".safetensors"


def load(path: PathLike, device: Union[str, torch.device] = "cpu", quantize_decoder: Optional[str] = None) -> AVHubert:
    """Load a checkpoint: a fairseq `.pt` (pre-training, seq2seq, CTC or av_hubert_llm fine-tuning,
    this project's or a released one) or a folder / `.safetensors` file written by `avhubert.export`.

    Raises `FileNotFoundError` for a missing path and `avhubert.checkpoint.CheckpointError`
    (one line) for a file that is damaged or asks to unpickle code.

    `quantize_decoder="int8"`: a seq2seq model's decoder with int8 linear layers (faster CPU
    decoding, hypotheses may change; `avhubert.quantize`); ValueError on another device or model kind."""
    from .quantize import check_quantize_options, quantize_model_decoder

    quantize = check_quantize_options(quantize_decoder, device)
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file or folder")
    if _is_exported(p):
        from .safetensors_io import load_safetensors_with_task

        model, cfg, task = load_safetensors_with_task(p, device)
    else:
        from fairseq import checkpoint_utils

        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(p)], strict=True)
        model = models[0].float().to(device)
    if quantize:
        quantize_model_decoder(model, quantize_decoder, device)
    return AVHubert(model, task, cfg, device, str(path))
