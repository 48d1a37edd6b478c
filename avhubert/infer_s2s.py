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

Additions: `generation.lm_path=LM.pt generation.lm_weight=W` fuses a fairseq language model
(e.g. `transformer_lm` trained with `fairseq-train --task language_modeling` on the training
transcripts' sentencepiece pieces, with the target dictionary) into the beam search (shallow
fusion; seq2seq models only); a warning when decoding with a modality the model was not
fine-tuned with; `override.quantize_decoder=int8` decodes with an int8 seq2seq decoder on the CPU
(`avhubert.quantize`); `metrics.json` (WER, CER, utterances decoded and skipped with their reasons,
training and decoding modalities, wall time), whose key facts also go into `wer.<fid>` and
`decode.log`.
"""

import hashlib
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
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

from avdata.atomic import write_text  # noqa: E402
from avhubert.checkpoint import exit_on_checkpoint_error  # noqa: E402
from avdata.manifest import read_manifest, resolve  # noqa: E402
from avhubert.language_model import load_language_model  # noqa: E402
from avhubert.model import AVHubertModel  # noqa: E402
from avhubert.model_asr import AVHubertCtc, CheckpointKindError  # noqa: E402
from avhubert.quantize import check_quantize_options, quantize_model_decoder  # noqa: E402
from avhubert.run_records import run_facts  # noqa: E402
from avhubert.scoring import ErrorCounts  # noqa: E402
from avdata.text_norm import TextNorm, read_text_norm  # noqa: E402

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
    quantize_decoder: str = field(default="none", metadata={
        "help": "NEW: none or int8 (seq2seq decoder's linear layers as dynamic int8; CPU only, faster, may change hypotheses)"})


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
    with exit_on_checkpoint_error():  # a refused or damaged file: one line, exit 1
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


def training_modalities(saved_cfg: Any) -> Optional[List[str]]:
    """The modalities the checkpoint's task was trained (fine-tuned) with, if recorded."""
    mods = saved_cfg.task.get("modalities", None) if saved_cfg.get("task", None) is not None else None
    return None if mods is None else [str(m) for m in mods]


def check_modalities(trained: Optional[List[str]], decoding: List[str]) -> List[str]:
    """Warn loudly about decoding modalities the model was not fine-tuned with; returns them."""
    if trained is None:
        logger.warning("the checkpoint does not record its training modalities (task.modalities)")
        return []
    unseen = sorted(set(decoding) - set(trained))
    if unseen:
        logger.warning(
            "\n%s\nDECODING WITH %s, WHICH THIS MODEL WAS NOT FINE-TUNED WITH: it was fine-tuned with %s, "
            "decoding uses %s. Expect poor results; pass override.modalities=%s to decode as trained.\n%s",
            "!" * 100, " AND ".join(m.upper() for m in unseen), trained, decoding, "[" + ",".join(trained) + "]",
            "!" * 100)
    return unseen


def skipped_utterances(task: Any, split: str, dataset: Any) -> List[Dict[str, str]]:
    """Manifest rows the dataset left out, with the reason (a missing file of a decoded modality)."""
    manifest = Path(task.cfg.data) / f"{split}.tsv"
    root, rows = read_manifest(manifest)
    kept = {r.id for r in dataset.rows}
    mods = list(task.cfg.modalities)
    out = []
    for r in rows:
        if r.id in kept:
            continue
        reason = "filtered by the dataset (size or label alignment)"
        for m in mods:
            p = r.video if m == "video" else r.audio
            if p is None or not os.path.isfile(resolve(root, p) or ""):
                reason = f"missing {m} file {p}"
                break
        out.append({"id": r.id, "reason": reason})
    return out


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
        wall_start = time.perf_counter()
        quantize = check_quantize_options(cfg.override.quantize_decoder, device)  # before the slow load
        model, saved_cfg, task = load_finetuned(cfg.common_eval.path, device, cfg.common.fp16 and use_cuda)
        if quantize:
            quantize_model_decoder(model, cfg.override.quantize_decoder, device)
            logger.info("decoder quantized: %s (override.quantize_decoder)", cfg.override.quantize_decoder)
        trained = training_modalities(saved_cfg)
        configure_task(task, cfg)
        decoding = list(task.cfg.modalities)
        unseen = check_modalities(trained, decoding)
        logger.info("modalities: decoding with %s; fine-tuned with %s", decoding, trained)
        lm = None
        if cfg.generation.lm_path:
            if getattr(model, "generator_kind", "seq2seq") == "llm":
                raise ValueError(f"generation.lm_path={cfg.generation.lm_path}: language-model shallow fusion is for "
                                 "seq2seq models (av_hubert_seq2seq); av_hubert_llm's decoder already is a language "
                                 "model: drop generation.lm_path")
            if isinstance(model, AVHubertCtc):
                raise ValueError(f"generation.lm_path={cfg.generation.lm_path}: language-model shallow fusion is "
                                 "implemented for seq2seq models only; this is a CTC model (av_hubert_ctc)")
            with exit_on_checkpoint_error():  # a refused or damaged LM file: one line, exit 1
                lm = load_language_model(cfg.generation.lm_path, task.target_dictionary, device,
                                         cfg.common.fp16 and use_cuda)
            if cfg.generation.lm_weight == 0:
                logger.warning("generation.lm_weight=0: the language model does not change the scores")
        split = cfg.dataset.gen_subset
        task.load_dataset(split)
        dataset = task.dataset(split)
        skipped = skipped_utterances(task, split, dataset)
        for item in skipped:
            logger.warning("skipped %s: %s", item["id"], item["reason"])
        world = max(1, cfg.distributed_training.distributed_world_size or 1)
        rank = cfg.distributed_training.distributed_rank or 0
        with warnings.catch_warnings():  # fairseq's loader always asks for pinned memory; torch warns without a GPU
            warnings.filterwarnings("ignore", message=r".*'pin_memory' argument is set as true", category=UserWarning)
            itr = task.get_batch_iterator(
                dataset=dataset, max_tokens=cfg.dataset.max_tokens, max_sentences=cfg.dataset.batch_size,
                max_positions=(sys.maxsize, sys.maxsize), ignore_invalid_inputs=False,
                required_batch_size_multiple=1, seed=cfg.common.seed, num_shards=world, shard_id=rank,
                num_workers=cfg.dataset.num_workers,
            ).next_epoch_itr(shuffle=False)
        extra: Dict[str, Any] = {"ctc_weight": cfg.override.ctc_weight} if cfg.override.ctc_weight > 0 else {}
        if lm is not None:
            extra.update(lm_model=lm, lm_weight=cfg.generation.lm_weight)
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
                    ref = task.target_text(sample["target"][i])
                rows.append({"id": uid, "hyp": hyp, "ref": ref})
                logger.info("%s\nREF: %s\nHYP: %s", uid, ref, hyp)
        elapsed = time.perf_counter() - start
        logger.info("decoded %d utterances in %.1f s (%.2f utt/s) on %s", len(rows), elapsed, len(rows) / max(elapsed, 1e-9), device)
        fid = generation_fid(cfg)
        norm = read_text_norm(task.cfg.label_dir or task.cfg.data)
        if norm is not None:
            logger.info("scoring with the labels' text normalisation: case %s, punctuation %s", norm.case, norm.punctuation)
        run = {"modalities": {"decoded": decoding, "fine_tuned": trained, "not_fine_tuned_with": unseen},
               "text_norm": asdict(norm) if norm is not None else None, **run_facts(device),
               "skipped": skipped, "num_in_manifest": len(dataset) + len(skipped), "decode_time_s": elapsed,
               "wall_time_s": time.perf_counter() - wall_start, "device": str(device),
               "lm": {"path": cfg.generation.lm_path, "weight": cfg.generation.lm_weight} if lm is not None else None,
               "quantize_decoder": cfg.override.quantize_decoder if quantize else None}
        return write_outputs(results, fid, rows, cfg, world, rank, run)
    finally:
        pkg = logging.getLogger("avhubert")
        pkg.removeHandler(handler)
        pkg.setLevel(handler.previous_level)  # type: ignore[attr-defined]
        handler.close()


def write_outputs(results: Path, fid: int, rows: List[Dict[str, Any]], cfg: Any, world: int, rank: int,
                  run: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Write this shard; when every shard of a multi-process run is there, merge them.
    `run`: facts about the run for `metrics.json` (modalities, skipped utterances, timing)."""
    run = dict(run or {})
    if world > 1:
        write_text(results / f"decode.shard{rank}of{world}.meta.json", json.dumps(run))
        write_text(results / f"decode.shard{rank}of{world}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        shards = [results / f"decode.shard{r}of{world}.jsonl" for r in range(world)]
        if not all(p.is_file() for p in shards):
            logger.info("shard %d/%d written; the last process to finish merges", rank, world)
            return {"fid": fid, "num_utts": len(rows), "wer": None, "cer": None, "results_path": str(results),
                    "num_skipped": len(run.get("skipped", []))}
        rows = [json.loads(line) for p in shards for line in p.read_text(encoding="utf-8").splitlines()]
        metas = [results / f"decode.shard{r}of{world}.meta.json" for r in range(world)]
        times = [json.loads(p.read_text())["decode_time_s"] for p in metas if p.is_file()]
        if times:  # shards run side by side: the slowest one bounds the run
            run["decode_time_s"] = max(times)
    counts = ErrorCounts()
    have_refs = bool(rows) and all(r["ref"] is not None for r in rows)
    norm = TextNorm.from_dict(run["text_norm"]) if run.get("text_norm") else None
    if have_refs:
        for r in rows:  # with the labels' text_norm.json, both sides are normalised alike
            ref, hyp = (norm(r["ref"]), norm(r["hyp"])) if norm else (r["ref"], r["hyp"])
            counts.add(ref, hyp)
    write_text(results / "decode.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    hypo = {"utt_id": [r["id"] for r in rows], "ref": [r["ref"] for r in rows], "hypo": [r["hyp"] for r in rows]}
    write_text(results / f"hypo-{fid}.json", json.dumps(hypo, indent=4, ensure_ascii=False))
    skipped = run.get("skipped", [])
    total = len(rows) + len(skipped)
    coverage = f"{len(rows)} of {total} utterances decoded"
    if skipped:
        coverage += f"; {len(skipped)} SKIPPED: " + ", ".join(f"{s['id']} ({s['reason']})" for s in skipped[:10])
        coverage += " ..." if len(skipped) > 10 else ""
    mods = run.get("modalities", {})
    modality_line = f"modalities: decoded with {mods.get('decoded')}, fine-tuned with {mods.get('fine_tuned')}"
    if mods.get("not_fine_tuned_with"):
        modality_line += f"  WARNING: the model was not fine-tuned with {mods['not_fine_tuned_with']}"
    wer = cer = None
    if have_refs:
        wer, cer = counts.wer, counts.cer
        # lines 1-2 keep the original's format (`WER: x`, `err / num_ref_words = e / n`)
        text = (f"WER: {wer}\nerr / num_ref_words = {counts.word_errors} / {counts.ref_words}\n{coverage}\n{modality_line}\n\n"
                f"{OmegaConf.to_yaml(cfg.generation)}\nCER: {cer}\nerr / num_ref_chars = {counts.char_errors} / {counts.ref_chars}\n")
        write_text(results / f"wer.{fid}", text)
        logger.info("WER: %.3f  CER: %.3f  (%s) -> %s", wer, cer, coverage, results / f"wer.{fid}")
    else:
        logger.info("%s (no references: no WER)", coverage)
    logger.info("%s", modality_line)
    decode_time = run.get("decode_time_s")
    metrics = {
        "wer": wer, "cer": cer,
        "word_errors": counts.word_errors if have_refs else None, "ref_words": counts.ref_words if have_refs else None,
        "char_errors": counts.char_errors if have_refs else None, "ref_chars": counts.ref_chars if have_refs else None,
        "num_utts": len(rows), "num_skipped": len(skipped), "num_in_manifest": total, "skipped": skipped,
        "modalities": mods or None, "subset": cfg.dataset.gen_subset, "checkpoint": cfg.common_eval.path,
        "noise": {"wav": cfg.override.noise_wav, "prob": cfg.override.noise_prob, "snr": cfg.override.noise_snr},
        "lm": run.get("lm"), "quantize_decoder": run.get("quantize_decoder"), "fid": fid, "world_size": world, "device": run.get("device"),
        "decode_time_s": decode_time, "wall_time_s": run.get("wall_time_s"),
        "utt_per_s": (len(rows) / decode_time) if decode_time else None,
        "text_norm": run.get("text_norm"), "peak_rss_mb": run.get("peak_rss_mb"),
        "peak_gpu_mem_mb": run.get("peak_gpu_mem_mb"), "git_commit": run.get("git_commit"),
    }
    write_text(results / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    return {"fid": fid, "num_utts": len(rows), "wer": wer, "cer": cer, "results_path": str(results),
            "num_skipped": len(skipped)}


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
