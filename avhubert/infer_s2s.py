"""Decode a test set with a fine-tuned AV-HuBERT (seq2seq or CTC) and score WER / CER.

    python avhubert/infer_s2s.py --config-dir conf --config-name s2s_decode \
      common_eval.path=model.pt common_eval.results_path=out dataset.gen_subset=test \
      override.modalities=[video] +override.data=DATA +override.label_dir=DATA \
      [override.noise_wav=NOISE_DIR override.noise_prob=1 override.noise_snr=0] [generation.beam=5]

Mirrors reference `avhubert/infer_s2s.py` (av_hubert@258fb50): same Hydra overrides and output
files (`hypo-<fid>.json`, `wer.<fid>`, `decode.log`; fid = md5 of the generation config mod
1e6) plus `decode.jsonl` (one {"id", "hyp", "ref"} per utterance). Fixes: CPU or GPU, no task
re-creation (the loaded task keeps its dictionaries and tokenizer), long utterances are never
dropped or cropped, output length bounded by encoder time steps, decoding without references,
and several processes (`distributed_training.distributed_world_size/rank`) decode disjoint
shards that the last one merges.
"""

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import hydra
import torch
from fairseq import checkpoint_utils, utils
from fairseq.dataclass.configs import (CheckpointConfig, CommonConfig, CommonEvalConfig, DatasetConfig,
                                       DistributedTrainingConfig, GenerationConfig)
from omegaconf import MISSING, OmegaConf, open_dict

if __package__ in (None, ""):  # run as a script: make the repository importable (no effect on library use)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avhubert.model import AVHubertModel  # noqa: E402
from avhubert.model_asr import CheckpointKindError  # noqa: E402
from avhubert.scoring import ErrorCounts  # noqa: E402

logger = logging.getLogger("avhubert.infer_s2s")

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@dataclass
class OverrideConfig:
    noise_wav: Optional[str] = field(default=None, metadata={"help": "noise directory with {split}.tsv"})
    noise_prob: float = field(default=0.0, metadata={"help": "noise probability"})
    noise_snr: float = field(default=0.0, metadata={"help": "noise SNR in dB"})
    modalities: List[str] = field(default_factory=lambda: [""], metadata={"help": "audio, video or both"})
    data: Optional[str] = field(default=None, metadata={"help": "test manifest directory"})
    label_dir: Optional[str] = field(default=None, metadata={"help": "test label directory"})
    ctc_weight: float = field(default=0.0, metadata={"help": "NEW: joint CTC/attention weight (models with a CTC head)"})


@dataclass
class InferConfig:
    task: Any = None
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    common: CommonConfig = field(default_factory=CommonConfig)
    common_eval: CommonEvalConfig = field(default_factory=CommonEvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed_training: DistributedTrainingConfig = field(default_factory=DistributedTrainingConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    override: OverrideConfig = field(default_factory=OverrideConfig)
    is_ax: bool = False


def generation_fid(cfg: Any) -> int:
    """Reference file id: md5 of the generation config YAML, mod 1,000,000."""
    text = OmegaConf.to_yaml(cfg.generation)
    return int(hashlib.md5(text.encode("utf-8")).hexdigest(), 16) % 1_000_000


def _setup_logging(results_path: Path) -> logging.Handler:
    """`decode.log` gets this package's INFO records (REF/HYP per utterance, WER)."""
    handler = logging.FileHandler(results_path / "decode.log", mode="a")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)s | %(name)s | %(message)s"))
    pkg = logging.getLogger("avhubert")
    pkg.addHandler(handler)
    handler.previous_level = pkg.level  # type: ignore[attr-defined]
    if pkg.getEffectiveLevel() > logging.INFO:
        pkg.setLevel(logging.INFO)
    return handler


def load_finetuned(path: str, device: torch.device, fp16: bool):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found (common_eval.path)")
    models, saved_cfg, task = checkpoint_utils.load_model_ensemble_and_task([path])
    model = models[0]
    if isinstance(model, AVHubertModel) or not saved_cfg.task.fine_tuning:
        raise CheckpointKindError(
            f"{path} is a pre-trained av_hubert checkpoint; decoding needs a fine-tuned one "
            "(av_hubert_seq2seq or av_hubert_ctc)")
    model.eval().to(device)
    if fp16:
        model.half()
    return model, saved_cfg, task


def configure_task(task: Any, cfg: Any) -> None:
    """Apply the decoding overrides to the loaded task (reference: re-created the task)."""
    mods = [m for m in cfg.override.modalities if m]
    if not mods:
        raise ValueError("override.modalities is required, e.g. override.modalities=[video] or [audio,video]")
    bad = sorted(set(mods) - {"audio", "video"})
    if bad:
        raise ValueError(f"unknown modalities {bad} in override.modalities; use audio and/or video")
    with open_dict(task.cfg):
        task.cfg.modalities = mods
        if cfg.override.data:
            task.cfg.data = cfg.override.data
        if cfg.override.label_dir:
            task.cfg.label_dir = cfg.override.label_dir
        elif cfg.override.data:
            task.cfg.label_dir = cfg.override.data
        task.cfg.noise_wav = cfg.override.noise_wav
        task.cfg.noise_prob = cfg.override.noise_prob
        task.cfg.noise_snr = str(cfg.override.noise_snr)
        # never drop or crop test utterances (reference: saved max_sample_size dropped long ones)
        task.cfg.max_sample_size = None
        task.cfg.max_trim_sample_size = None
        task.cfg.min_sample_size = None
        task.cfg.pad_audio = True
        task.cfg.random_crop = False
        task.cfg.image_aug = False
        labels_path = Path(task.cfg.label_dir or task.cfg.data) / f"{cfg.dataset.gen_subset}.{task.cfg.labels[0]}"
        if not labels_path.is_file():
            logger.warning("no reference file %s: decoding without references (no WER)", labels_path)
            task.cfg.labels = []


def decode(cfg: Any) -> Dict[str, Any]:
    """Run decoding; returns {"wer", "cer", "num_utts", "fid", "results_path"}."""
    if cfg.common_eval.results_path is None:
        raise ValueError("common_eval.results_path is required")
    results = Path(cfg.common_eval.results_path)
    results.mkdir(parents=True, exist_ok=True)
    handler = _setup_logging(results)
    try:
        utils.import_user_module(cfg.common)
        use_cuda = torch.cuda.is_available() and not cfg.common.cpu
        device = torch.device("cuda" if use_cuda else "cpu")
        model, saved_cfg, task = load_finetuned(cfg.common_eval.path, device, cfg.common.fp16 and use_cuda)
        configure_task(task, cfg)
        split = cfg.dataset.gen_subset
        task.load_dataset(split)
        dataset = task.dataset(split)
        world = max(1, cfg.distributed_training.distributed_world_size or 1)
        rank = cfg.distributed_training.distributed_rank or 0
        itr = task.get_batch_iterator(
            dataset=dataset, max_tokens=cfg.dataset.max_tokens, max_sentences=cfg.dataset.batch_size,
            max_positions=(sys.maxsize, sys.maxsize), ignore_invalid_inputs=False,
            required_batch_size_multiple=1, seed=cfg.common.seed, num_shards=world, shard_id=rank,
            num_workers=cfg.dataset.num_workers,
        ).next_epoch_itr(shuffle=False)
        extra = {"ctc_weight": cfg.override.ctc_weight} if cfg.override.ctc_weight > 0 else None
        generator = task.build_generator([model], cfg.generation, extra_gen_cls_kwargs=extra)
        rows: List[Dict[str, Any]] = []
        start = time.perf_counter()
        for sample in itr:
            if not sample:
                continue
            sample = utils.move_to_cuda(sample) if use_cuda else sample
            if cfg.common.fp16 and use_cuda:
                sample = utils.apply_to_sample(lambda t: t.half() if t.is_floating_point() else t, sample)
            prefix = None
            if cfg.generation.prefix_size > 0:  # hypotheses start with the reference's first tokens
                if "target" not in sample:
                    raise ValueError(f"generation.prefix_size={cfg.generation.prefix_size} needs reference labels")
                prefix = sample["target"][:, : cfg.generation.prefix_size]
            hyps = generator.generate([model], sample, prefix_tokens=prefix)
            for i, uid in enumerate(sample["utt_id"]):
                hyp = task.decode_tokens(hyps[i][0]["tokens"])
                ref = None
                if "target" in sample:
                    t = sample["target"][i]
                    ref = task.decode_tokens(t[t != task.target_dictionary.pad()])
                rows.append({"id": uid, "hyp": hyp, "ref": ref})
                logger.info("%s\nREF: %s\nHYP: %s", uid, ref, hyp)
        elapsed = time.perf_counter() - start
        logger.info("decoded %d utterances in %.1f s (%.2f utt/s) on %s", len(rows), elapsed, len(rows) / max(elapsed, 1e-9), device)
        fid = generation_fid(cfg)
        return write_outputs(results, fid, rows, cfg, world, rank)
    finally:
        pkg = logging.getLogger("avhubert")
        pkg.removeHandler(handler)
        pkg.setLevel(handler.previous_level)  # type: ignore[attr-defined]
        handler.close()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_outputs(results: Path, fid: int, rows: List[Dict[str, Any]], cfg: Any, world: int, rank: int) -> Dict[str, Any]:
    """Write this shard; when every shard of a multi-process run is there, merge them."""
    if world > 1:
        _atomic_write(results / f"decode.shard{rank}of{world}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        shards = [results / f"decode.shard{r}of{world}.jsonl" for r in range(world)]
        if not all(p.is_file() for p in shards):
            logger.info("shard %d/%d written; the last process to finish merges", rank, world)
            return {"fid": fid, "num_utts": len(rows), "wer": None, "cer": None, "results_path": str(results)}
        rows = [json.loads(line) for p in shards for line in p.read_text(encoding="utf-8").splitlines()]
    counts = ErrorCounts()
    have_refs = bool(rows) and all(r["ref"] is not None for r in rows)
    if have_refs:
        for r in rows:
            counts.add(r["ref"], r["hyp"])
    _atomic_write(results / "decode.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    hypo = {"utt_id": [r["id"] for r in rows], "ref": [r["ref"] for r in rows], "hypo": [r["hyp"] for r in rows]}
    _atomic_write(results / f"hypo-{fid}.json", json.dumps(hypo, indent=4, ensure_ascii=False))
    wer = cer = None
    if have_refs:
        wer, cer = counts.wer, counts.cer
        text = (f"WER: {wer}\nerr / num_ref_words = {counts.word_errors} / {counts.ref_words}\n\n"
                f"{OmegaConf.to_yaml(cfg.generation)}\nCER: {cer}\nerr / num_ref_chars = {counts.char_errors} / {counts.ref_chars}\n")
        _atomic_write(results / f"wer.{fid}", text)
        logger.info("WER: %.3f  CER: %.3f  (%d utterances) -> %s", wer, cer, len(rows), results / f"wer.{fid}")
    return {"fid": fid, "num_utts": len(rows), "wer": wer, "cer": cer, "results_path": str(results)}


def prepare_config(cfg: Any) -> Any:
    """Merge the composed YAML into the typed schema (unknown keys are errors, e.g. `criterion`)."""
    schema = OmegaConf.structured(InferConfig)
    try:
        return OmegaConf.merge(schema, cfg)
    except Exception as e:
        raise ValueError(
            f"{e}\nUse a decoding config (conf/s2s_decode.yaml), not a fine-tuning YAML") from None


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="s2s_decode")
def hydra_main(cfg: Any) -> None:
    decode(prepare_config(cfg))


if __name__ == "__main__":
    hydra_main()
