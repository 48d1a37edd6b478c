"""Benchmark: Base AV-HuBERT pre-training step time and dataset throughput.

Prints time per training step (forward + backward + Adam) of the Base config
(`conf/pretrain/base_lrs3_iter5.yaml` model: 12 x 768, ResNet-18, input masking) on audio+video
batches of 4 x 3 s (75 frames), and the dataset's loading rate (decode + features + collate)
on generated 3 s clips. Run: `.venv/bin/python bench/bench_pretrain.py [--device cuda]`.
`--bf16` sets the model's `bf16_autocast` (forward under torch.autocast(bfloat16)); `--dataset-clips 0`
skips the loading benchmark. The step line names the allocator: fairseq trainers re-execute
themselves with tcmalloc (avdata/fast_malloc.py); for this script preload it
(`LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4`) to time the same step.
GPU figures per precision: bench/bench_gpu.py.
"""

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from fairseq.data import Dictionary
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench scripts run from a checkout

from avdata.fast_malloc import tcmalloc_loaded  # noqa: E402
from avhubert.dataset import AVHubertDataset  # noqa: E402
from avhubert.model import AVHubertConfig, AVHubertModel  # noqa: E402
from avhubert.task import AVHubertPretrainingConfig, LabelEncoder  # noqa: E402
from demo.synthetic_data import make_corpus  # noqa: E402

BASE = dict(
    label_rate=25, encoder_layers=12, encoder_embed_dim=768, encoder_ffn_embed_dim=3072, encoder_attention_heads=12,
    final_dim=256, untie_final_proj=True, layer_norm_first=True, audio_feat_dim=104, masking_type="input",
    selection_type="same_seq", mask_prob_image=0.3, mask_length_image=5, mask_prob_audio=0.8, mask_length_audio=10,
    modality_dropout=0.5, audio_dropout=0.5, feature_grad_mult=0.1, encoder_layerdrop=0.05, dropout_input=0.1,
)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_step(device: str, steps: int, batch: int, frames: int, num_classes: int, bf16: bool = False) -> None:
    cfg = OmegaConf.merge(OmegaConf.structured(AVHubertConfig), BASE, {"bf16_autocast": bf16})
    d = Dictionary()
    for i in range(num_classes):
        d.add_symbol(str(i))
    model = AVHubertModel(cfg, AVHubertPretrainingConfig(data="-", sample_rate=25, label_rate=25), [d]).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    audio = torch.randn(batch, 104, frames, device=device)
    video = torch.randn(batch, 1, frames, 88, 88, device=device)
    targets = [torch.randint(4, len(d), (batch, frames), device=device)]
    times = []
    for i in range(steps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model({"audio": audio, "video": video}, targets, None)
        loss = sum(torch.nn.functional.cross_entropy(l, t, reduction="sum") for l, t in zip(out["logit_m_list"], out["target_m_list"]))
        loss = loss + 10 * out["features_pen"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i:  # first step warms up
            times.append(time.perf_counter() - t0)
    per_step = sum(times) / len(times)
    mem = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else peak_rss_mb()
    alloc = "" if device == "cuda" else f", {'tcmalloc' if tcmalloc_loaded() else 'glibc malloc'}"
    print(f"train step  Base, audio+video, batch {batch} x {frames} frames ({frames / 25:.0f} s), {device}, "
          f"{'bf16 autocast' if bf16 else 'fp32'}, {torch.get_num_threads()} threads{alloc}: {per_step:.3f} s/step, {batch * frames / per_step:.1f} frames/s, "
          f"peak memory {mem:.0f} MiB ({'GPU' if device == 'cuda' else 'RSS'})")


def bench_dataset(num: int, frames: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_corpus(tmp, {"train": num}, num_classes=8, min_frames=frames, max_frames=frames, seed=0)
        d = Dictionary.load(str(corpus / "dict.km.txt"))
        ds = AVHubertDataset(str(corpus / "train.tsv"), 25, [str(corpus / "train.km")], [25], [d.pad()], [d.eos()],
                             [LabelEncoder(d)], max_sample_size=frames, stack_order_audio=4, normalize=True, image_aug=True)
        t0 = time.perf_counter()
        for start in range(0, num, 4):
            ds.collater([ds[i] for i in range(start, min(start + 4, num))])
        dt = time.perf_counter() - t0
    print(f"dataset     {num} clips x {frames} frames (96x96 mp4 + 16 kHz wav), 1 process: "
          f"{num / dt:.1f} samples/s, {num * frames / 25 / dt:.1f} s of media per s, peak RSS {peak_rss_mb():.0f} MiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=75)
    p.add_argument("--dataset-clips", type=int, default=48, help="0 skips the loading benchmark")
    p.add_argument("--bf16", action="store_true", help="forward under torch.autocast(bfloat16) (model.bf16_autocast)")
    a = p.parse_args()
    if a.dataset_clips > 0:
        bench_dataset(a.dataset_clips, a.frames)
    bench_step(a.device, a.steps, a.batch, a.frames, num_classes=2000, bf16=a.bf16)


if __name__ == "__main__":
    main()
