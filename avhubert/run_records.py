"""Run records: every training run writes `metrics.json` and `model_card.json` next to its checkpoints.

`install_run_record_hooks()` (called when the plugin is imported inside fairseq's trainer) wraps three module attributes
of `fairseq_cli.train` — `train` (one epoch), `get_training_stats` and `get_valid_stats` — so that
fairseq's training loop is not forked. After every epoch (and when training stops), rank 0 writes:

- `metrics.json`: final and best validation metrics (loss, WER, CER, accuracy: whatever the run
  logs; best = min, or max for accuracy), last train and valid loss, updates, wall time, time per
  update, peak CPU RSS and peak GPU memory, parameter counts (total / trainable), the effective
  batch size (mean utterances per update) and its configured bound, precision, device, world size,
  the project's git commit, and the resolved config;
- `model_card.json`: architecture, the pre-trained checkpoint it started from, tokenizer and
  dictionaries, modalities, LoRA settings, and the data manifests with their sizes.

Options given on the command line as new keys (`+run.<key>=...`):
- `+run.metrics_csv=PATH`: when the run ends, append one row to PATH (created with a header when
  absent) with a fixed column order (`CSV_COLUMNS`); appends take an exclusive `flock`, so runs of a
  sweep may finish at the same time.
- `+run.dev_run=true`: 2 training batches (update_freq forced to 1), 2 validation batches, no
  checkpoint written, the records written, exit 0: a config checked in seconds.

Early stopping is fairseq's `checkpoint.patience` on `checkpoint.best_checkpoint_metric` (with
`maximize_best_checkpoint_metric=true` for accuracy, false for WER or loss).
"""

from __future__ import annotations

import atexit
import fcntl
import functools
import json
import logging
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch

from avdata.atomic import write_text

logger = logging.getLogger(__name__)

__all__ = ["install_run_record_hooks", "run_facts", "git_commit", "CSV_COLUMNS", "append_csv_row"]

REPO_DIR = Path(__file__).resolve().parents[1]
MINIMIZED = ("loss", "nll_loss", "wer", "cer", "uer", "ctc_loss")
MAXIMIZED = ("accuracy", "accuracy_top1", "accuracy_top5", "top1", "top5", "acc")
_IMPORT_TIME = time.time()  # the plugin is imported at the start of fairseq's main: the run's wall clock
CSV_COLUMNS = (
    "finished_at", "status", "save_dir", "arch", "task", "modalities", "updates", "epochs", "best_metric",
    "best_metric_value", "valid_wer", "best_valid_wer", "valid_cer", "valid_accuracy", "best_valid_accuracy",
    "train_loss", "valid_loss", "wall_time_s", "time_per_update_s", "peak_rss_mb", "peak_gpu_mem_mb",
    "params_total", "params_trainable", "effective_batch_utts", "precision", "device", "world_size", "git_commit",
)


def git_commit(repo: Path = REPO_DIR) -> Optional[str]:
    """The checkout's commit (with "-dirty" when files differ), or None outside a git checkout."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def run_facts(device: Optional[torch.device] = None) -> Dict[str, Any]:
    """Facts every record shares: peak memory, device, commit."""
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gpu = None
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        gpu = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return {"peak_rss_mb": round(rss_kb / 1024, 1), "peak_gpu_mem_mb": gpu,
            "device": str(device) if device is not None else None, "git_commit": git_commit()}


def append_csv_row(path: str | os.PathLike, row: Dict[str, Any], columns=CSV_COLUMNS) -> None:
    """Append `row` (missing columns empty) under an exclusive lock; writes the header into a new file."""
    import csv
    import io

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf)
    values = [row.get(c) for c in columns]
    writer.writerow(["" if v is None else (json.dumps(v) if isinstance(v, (list, dict)) else v) for v in values])
    with open(path, "a+", encoding="utf-8", newline="") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                header = io.StringIO()
                csv.writer(header).writerow(columns)
                f.write(header.getvalue())
            else:
                f.seek(0)
                existing = f.readline().strip()
                if existing != ",".join(columns):
                    raise ValueError(f"{path}: its header is not this project's run columns; use another metrics_csv file")
                f.seek(0, os.SEEK_END)
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _num(v: Any) -> Any:
    """fairseq's logged values (floats, strings of floats, meters) -> plain floats where possible."""
    if isinstance(v, torch.Tensor):
        v = v.item()
    if hasattr(v, "avg"):
        v = v.avg
    if isinstance(v, (int, float)):
        return v
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def _manifest_size(path: Path) -> Optional[Dict[str, Any]]:
    if not path.is_file():
        return None
    from avdata.manifest import read_manifest

    try:
        _, rows = read_manifest(path)
    except ValueError:
        return {"path": str(path), "utterances": None}
    frames = sum(r.num_video_frames for r in rows)
    return {"path": str(path), "utterances": len(rows), "hours": round(frames / 25 / 3600, 4)}


class RunRecorder:
    """Collects the facts of one training run and writes the records (rank 0 only)."""

    def __init__(self, cfg: Any, trainer: Any, task: Any) -> None:
        from fairseq import distributed_utils
        from omegaconf import OmegaConf

        self.cfg, self.trainer, self.task = cfg, trainer, task
        self.master = distributed_utils.is_master(cfg.distributed_training)
        run = cfg.get("run") or {}
        self.options: Dict[str, Any] = OmegaConf.to_container(run, resolve=True) if OmegaConf.is_config(run) else dict(run)
        self.dev_run = bool(self.options.get("dev_run", False))
        self.start = time.time()
        self.start_updates = trainer.get_num_updates()
        self.train_stats: Dict[str, Any] = {}
        self.valid_stats: Dict[str, Any] = {}
        self.best: Dict[str, float] = {}
        self.effective_bsz: Optional[float] = None
        self.finished = False
        self.status_override: Optional[str] = None
        self.epoch: Optional[int] = None
        self.csv_written = False
        self.save_dir = Path(cfg.checkpoint.save_dir)

    # ---------------------------------------------------------------------------------------
    def apply_dev_run(self) -> None:
        from omegaconf import open_dict

        cfg = self.cfg
        with open_dict(cfg):
            cfg.optimization.update_freq = [1]
            cfg.optimization.max_update = self.trainer.get_num_updates() + 2
            cfg.dataset.max_valid_steps = 1  # fairseq stops after step index max_valid_steps: 2 batches
            cfg.dataset.validate_after_updates = 0
            cfg.dataset.disable_validation = False
            cfg.checkpoint.no_save = True
            cfg.checkpoint.patience = -1
        logger.info("run.dev_run: 2 training batches, 2 validation batches, no checkpoint; then the run records")

    def on_train_stats(self, stats: Dict[str, Any]) -> None:
        self.train_stats = dict(stats)
        if "bsz" in stats:  # utterances per update (all workers, all accumulated batches)
            self.effective_bsz = float(_num(stats["bsz"]))

    def on_valid_stats(self, stats: Dict[str, Any]) -> None:
        self.valid_stats = {k: _num(v) for k, v in stats.items()}
        metric = self.cfg.checkpoint.best_checkpoint_metric
        for key, value in self.valid_stats.items():
            if not isinstance(value, (float, int)):
                continue
            if key == metric:
                better = max if self.cfg.checkpoint.maximize_best_checkpoint_metric else min
            elif key in MINIMIZED or key in MAXIMIZED:
                better = max if key in MAXIMIZED else min
            else:
                continue
            self.best[key] = better(self.best.get(key, value), value)

    # ---------------------------------------------------------------------------------------
    def _precision(self) -> str:
        c = self.cfg.common
        if c.bf16:
            return "bf16"
        if c.fp16:
            return "fp16" + ("-memory-efficient" if c.memory_efficient_fp16 else "")
        return "fp32" + ("+cpu-bf16-autocast" if getattr(self.task.cfg, "cpu_bf16_autocast", False) else "")

    def metrics(self) -> Dict[str, Any]:
        from fairseq import distributed_utils
        from omegaconf import OmegaConf

        cfg, trainer = self.cfg, self.trainer
        model = trainer.model
        params = list(model.parameters())
        updates = trainer.get_num_updates()
        wall = time.time() - _IMPORT_TIME
        done = updates - self.start_updates
        loop = time.time() - self.start
        metric = cfg.checkpoint.best_checkpoint_metric
        world = distributed_utils.get_data_parallel_world_size() if torch.distributed.is_initialized() else 1
        max_tokens = cfg.dataset.max_tokens
        update_freq = cfg.optimization.update_freq[-1] if cfg.optimization.update_freq else 1
        out = {
            "status": self.status_override or ("finished" if self.finished else "running"),
            "dev_run": self.dev_run,
            "updates": updates, "updates_this_run": done, "epochs": self.epoch,
            "wall_time_s": round(wall, 2), "train_loop_time_s": round(loop, 2),
            "time_per_update_s": round(loop / done, 4) if done else None,
            "best_checkpoint_metric": metric,
            "best_metric_value": self.best.get(metric),
            "valid": self.valid_stats, "best_valid": dict(self.best),
            "train": {k: _num(v) for k, v in self.train_stats.items()},
            "train_loss": _num(self.train_stats.get("loss")) if self.train_stats else None,
            "valid_loss": self.valid_stats.get("loss"),
            "params_total": sum(p.numel() for p in params),
            "params_trainable": sum(p.numel() for p in params if p.requires_grad),
            "effective_batch_utts": self.effective_bsz,
            "batch_bound": {"max_tokens_per_gpu": max_tokens, "batch_size_per_gpu": cfg.dataset.batch_size,
                            "update_freq": update_freq, "world_size": world},
            "precision": self._precision(), "world_size": world,
            "config": OmegaConf.to_container(cfg, resolve=True),
        }
        out.update(run_facts(trainer.device))
        return out

    def model_card(self) -> Dict[str, Any]:
        cfg, task = self.cfg, self.task
        mcfg = cfg.model
        tcfg = task.cfg
        data = Path(tcfg.data)
        label_dir = Path(tcfg.label_dir or tcfg.data)
        labels = list(getattr(tcfg, "labels", []) or [])
        encoder_keys = ("encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_attention_heads",
                        "llm_path", "num_classes", "pooling")
        if hasattr(self.trainer.model, "decoder"):
            encoder_keys += ("decoder_layers", "decoder_embed_dim", "decoder_ffn_embed_dim", "decoder_attention_heads")
        w2v = mcfg.get("w2v_path") if hasattr(mcfg, "get") else None
        card = {
            "architecture": {"name": mcfg.get("_name"), "class": type(self.trainer.model).__name__,
                             **{k: mcfg.get(k) for k in encoder_keys if mcfg.get(k) is not None}},
            "pretrained_checkpoint": None if not w2v else {
                "path": str(w2v), "bytes": os.path.getsize(w2v) if os.path.isfile(w2v) else None},
            "tokenizer": {"bpe": getattr(tcfg, "tokenizer_bpe_name", None),
                          "model": getattr(tcfg, "tokenizer_bpe_model", None)},
            "dictionaries": {lab: str(label_dir / f"dict.{lab}.txt") for lab in labels},
            "modalities": list(getattr(tcfg, "modalities", []) or []),
            "lora": {k: mcfg.get(k) for k in mcfg if str(k).startswith(("lora_", "llm_lora_"))} or None,
            "data": {split: _manifest_size(data / f"{split}.tsv")
                     for split in [cfg.dataset.train_subset, *str(cfg.dataset.valid_subset).split(",")]},
            "labels": {split: {lab: str(label_dir / f"{split}.{lab}") for lab in labels}
                       for split in [cfg.dataset.train_subset, *str(cfg.dataset.valid_subset).split(",")]},
            "git_commit": git_commit(),
        }
        return card

    def write(self) -> None:
        if not self.master:
            return
        self.save_dir.mkdir(parents=True, exist_ok=True)
        metrics = self.metrics()
        write_text(self.save_dir / "metrics.json", json.dumps(metrics, indent=2, default=str) + "\n")
        if not (self.save_dir / "model_card.json").is_file() or self.finished:
            write_text(self.save_dir / "model_card.json", json.dumps(self.model_card(), indent=2, default=str) + "\n")
        path = self.options.get("metrics_csv")
        if path and self.finished and not self.csv_written:
            append_csv_row(path, self.csv_row(metrics))
            self.csv_written = True
            logger.info("run record appended to %s", path)

    def csv_row(self, m: Dict[str, Any]) -> Dict[str, Any]:
        v, b = m["valid"], m["best_valid"]
        cfg = self.cfg
        return {
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "status": m["status"], "save_dir": str(self.save_dir),
            "arch": cfg.model.get("_name"), "task": cfg.task.get("_name"),
            "modalities": " ".join(getattr(self.task.cfg, "modalities", []) or []),
            "updates": m["updates"], "epochs": m["epochs"], "best_metric": m["best_checkpoint_metric"],
            "best_metric_value": m["best_metric_value"], "valid_wer": v.get("wer"), "best_valid_wer": b.get("wer"),
            "valid_cer": v.get("cer"), "valid_accuracy": v.get("accuracy"), "best_valid_accuracy": b.get("accuracy"),
            "train_loss": m["train_loss"], "valid_loss": m["valid_loss"], "wall_time_s": m["wall_time_s"],
            "time_per_update_s": m["time_per_update_s"], "peak_rss_mb": m["peak_rss_mb"],
            "peak_gpu_mem_mb": m["peak_gpu_mem_mb"], "params_total": m["params_total"],
            "params_trainable": m["params_trainable"], "effective_batch_utts": m["effective_batch_utts"],
            "precision": m["precision"], "device": m["device"], "world_size": m["world_size"],
            "git_commit": m["git_commit"],
        }


_recorder: Optional[RunRecorder] = None


def _wrap_train(original: Callable) -> Callable:
    @functools.wraps(original)
    def train(cfg, trainer, task, epoch_itr):
        global _recorder
        if _recorder is None or _recorder.trainer is not trainer:
            _recorder = RunRecorder(cfg, trainer, task)
            if _recorder.dev_run:
                _recorder.apply_dev_run()
            atexit.register(_write_at_exit, _recorder)
        valid_losses, should_stop = original(cfg, trainer, task, epoch_itr)
        rec = _recorder
        rec.epoch = epoch_itr.epoch
        max_epoch = cfg.optimization.max_epoch or math.inf
        max_update = cfg.optimization.max_update or math.inf
        if should_stop or epoch_itr.next_epoch_idx > max_epoch or trainer.get_num_updates() >= max_update:
            rec.finished = True
        try:
            rec.write()
        except OSError as exc:  # a full disk must not kill the run after its checkpoints were saved
            logger.warning("could not write the run records into %s: %s", rec.save_dir, exc)
        if rec.dev_run:
            should_stop = True
        return valid_losses, should_stop

    train._avhubert_run_records = True
    return train


def _write_at_exit(rec: RunRecorder) -> None:
    """A run that ended without its last epoch returning (an exception, stop_min_lr): metrics.json
    says status "incomplete"; no CSV row is appended for it."""
    if rec.finished:
        return
    rec.status_override = "incomplete"
    rec.options.pop("metrics_csv", None)
    try:
        rec.write()
    except Exception as exc:  # noqa: BLE001 - at exit, report and go on
        logger.warning("could not write the run records at exit: %s", exc)


def _wrap_stats(original: Callable, on_stats: Callable[[RunRecorder, Dict[str, Any]], None]) -> Callable:
    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        stats = original(*args, **kwargs)
        if _recorder is not None:
            on_stats(_recorder, stats)
        return stats

    return wrapper


def install_run_record_hooks() -> None:
    """Wrap `fairseq_cli.train`'s epoch and stats functions once (idempotent)."""
    fairseq_train = sys.modules.get("fairseq_cli.train")
    if fairseq_train is None:  # not inside fairseq's trainer (library use, decoding): nothing to record
        return
    if getattr(fairseq_train.train, "_avhubert_run_records", False):
        return
    fairseq_train.train = _wrap_train(fairseq_train.train)
    fairseq_train.get_training_stats = _wrap_stats(fairseq_train.get_training_stats, RunRecorder.on_train_stats)
    fairseq_train.get_valid_stats = _wrap_stats(
        fairseq_train.get_valid_stats, lambda rec, stats: rec.on_valid_stats(stats))
