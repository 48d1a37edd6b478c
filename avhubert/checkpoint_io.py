"""Crash-safe checkpoint files and a resume that survives a damaged `checkpoint_last.pt`.

Why: fairseq's `checkpoint_utils.save_checkpoint` writes the first file of a save (e.g.
`checkpoint_best.pt`) through a temporary name, but then *copies* it onto the others
(`checkpoint_last.pt`, `checkpoint_N_M.pt`, ...) with `PathManager.copy`, i.e.
`shutil.copyfile` straight onto the destination. A kill inside that copy left a 0-byte
`checkpoint_last.pt`, and every rerun died with torch's `EOFError`, naming no file.

What `install_fairseq_hooks()` (called once when the plugin is imported) changes, all inside
`fairseq.checkpoint_utils` and only for local paths (iopath URLs keep fairseq's code):

1. `checkpoint_utils.PathManager` (that module's name only; `fairseq.file_io.PathManager` is
   untouched) becomes a subclass whose `copy` is `atomic_copy`: hard-link the source to a hidden
   temporary name beside the destination (a plain copy + fsync where the filesystem refuses
   links), then `os.replace` it onto the destination and fsync the directory. The only
   `PathManager.copy` call in that module is save_checkpoint's copy step. Hard links are safe
   because every checkpoint write, fairseq's and ours, replaces files by rename and never
   rewrites a file in place (so a linked `checkpoint_last.pt` and `checkpoint_3_30.pt` never
   change together); a tool that rewrites one of them in place would change both.
2. `checkpoint_utils.torch_persistent_save` (called by `Trainer.save_checkpoint` for the first
   file) writes to the hidden temporary name, fsyncs, renames and fsyncs the directory (fairseq
   renamed without fsync, so a power cut could still leave an empty file). Asynchronous writes
   (`checkpoint.write_checkpoints_asynchronously`) keep fairseq's code.
3. `checkpoint_utils.load_checkpoint_to_cpu` (used by the trainer, `load_model_ensemble_and_task`
   and fine-tuning's `w2v_path`) turns torch's errors into the one-line `CheckpointError`s of
   `avhubert.checkpoint` ("truncated or not a checkpoint", or a refused pickle).
4. `checkpoint_utils.load_checkpoint` (training's resume step, called once by `fairseq_cli.train`)
   first checks the file it is about to resume from (`checkpoint_last.pt` or
   `checkpoint.restore_file`): when it is damaged, it logs which file and why and resumes from
   the newest readable checkpoint of that directory by update count (`checkpoint_N_M.pt`,
   `checkpoint_best.pt`, `checkpoint{epoch}.pt`, `checkpoint.best_*.pt`), or stops with one line
   naming every file and its problem when none is readable. The check reads the file once more
   (zip directory, every CRC, a memory-mapped weights-only unpickle). A refused (unsafe) pickle
   stops the run: it is not damage to work around. Every rank runs the same checks on the same
   files and reaches the same decision.

The patch is narrow on purpose: wrapping these four module attributes keeps fairseq's own
`save_checkpoint` logic (file names, best-metric bookkeeping, pruning of old files) unforked.
Temporary files are named `.{name}.tmp` (hidden, never matched by fairseq's checkpoint
patterns); those a killed save left behind are deleted when the next run resumes (rank 0).

Fault injection (tests only): with `AVHUBERT_CHECKPOINT_PAUSE_S=<seconds>` in the environment,
every checkpoint write (or only those whose file name matches the glob
`AVHUBERT_CHECKPOINT_PAUSE_MATCH`) logs `checkpoint write paused: <tmp> -> <file>` and sleeps
just before its rename, so a test can SIGKILL the trainer inside a write.
"""

import fnmatch
import functools
import logging
import os
import re
import shutil
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import torch

from avdata.atomic import atomic_path

from .checkpoint import (
    CheckpointError,
    UnsafeCheckpointError,
    checkpoint_damage,
    explain_load_error,
    register_safe_globals,
)

logger = logging.getLogger(__name__)

__all__ = [
    "atomic_copy",
    "atomic_torch_save",
    "temporary_path",
    "read_num_updates",
    "find_resume_checkpoint",
    "remove_stale_temporaries",
    "install_fairseq_hooks",
    "PAUSE_ENV",
    "PAUSE_MATCH_ENV",
]

PAUSE_ENV = "AVHUBERT_CHECKPOINT_PAUSE_S"
PAUSE_MATCH_ENV = "AVHUBERT_CHECKPOINT_PAUSE_MATCH"
COPY_CHUNK_BYTES = 16 << 20
_HOOKED = "_avhubert_checkpoint_hooks"


def temporary_path(dst: str) -> str:
    """Hidden temporary name in `dst`'s directory: `.{name}.tmp` (same filesystem, so rename is atomic)."""
    head, tail = os.path.split(dst)
    return os.path.join(head, f".{tail}.tmp")


def _fault_pause(tmp: Path, dst: Path) -> None:
    """Test hook: sleep just before the rename when `AVHUBERT_CHECKPOINT_PAUSE_S` is set."""
    seconds = os.environ.get(PAUSE_ENV)
    if seconds and fnmatch.fnmatch(os.path.basename(dst), os.environ.get(PAUSE_MATCH_ENV, "*")):
        logger.warning("checkpoint write paused: %s -> %s", tmp, dst)
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(float(seconds))


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def atomic_copy(src: str, dst: str, hard_link: bool = True) -> str:
    """Make `dst` a complete copy of `src` in one step: readers see the old `dst` or the new one.

    Hard-links `src` to a temporary name (or, where links fail or `hard_link` is False, copies
    it), then `avdata.atomic` fsyncs and renames that onto `dst`. Returns "link" or "copy".
    """
    method = "copy"
    with atomic_path(dst, tmp=temporary_path(dst), before_publish=_fault_pause) as tmp:
        if hard_link:
            try:
                os.link(src, tmp)
                method = "link"
            except OSError:  # cross-device, FAT, some network filesystems: copy instead
                pass
        if method == "copy":
            with open(src, "rb") as fi, open(tmp, "wb") as fo:
                shutil.copyfileobj(fi, fo, COPY_CHUNK_BYTES)
    return method


def atomic_torch_save(obj: Any, path: str) -> None:
    """`torch.save(obj, path)` through a temporary file, fsync and rename (`avdata.atomic`)."""
    with atomic_path(path, tmp=temporary_path(path), before_publish=_fault_pause) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)


# ---------------------------------------------------------------------------------- resume

_CKPT_RE = r"checkpoint(?:_last|_best|\d+|_\d+_(\d+)|\.best_.+)"


def _is_checkpoint_name(name: str, suffix: str) -> Optional[re.Match]:
    return re.fullmatch(_CKPT_RE + re.escape(suffix) + r"\.pt", name)


def read_num_updates(path: str) -> int:
    """`optimizer_history[-1]["num_updates"]` of a checkpoint (memory-mapped, weights-only load),
    else the M of a `checkpoint_N_M.pt` name, else -1. Raises `CheckpointError` when unreadable."""
    register_safe_globals()
    try:
        # memory-mapped: the tensors are not read; torch's legacy non-zip format cannot be mapped
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # noqa: BLE001 - translated below
        err = explain_load_error(path, e)
        if err is None:
            raise
        raise err from None
    hist = state.get("optimizer_history") if isinstance(state, dict) else None
    if hist and isinstance(hist[-1], dict) and "num_updates" in hist[-1]:
        return int(hist[-1]["num_updates"])
    m = re.fullmatch(r"checkpoint_\d+_(\d+).*\.pt", os.path.basename(path))
    return int(m.group(1)) if m else -1


def find_resume_checkpoint(directory: str, suffix: str = "", exclude: Tuple[str, ...] = ()) -> Tuple[Optional[str], int, List[str]]:
    """Newest readable checkpoint of `directory` by update count.

    Returns `(path or None, num_updates, problems)` where `problems` lists `"name (why)"` for each
    candidate found unreadable. Ties go to the most recently modified file.
    """
    excluded = {os.path.abspath(p) for p in exclude}
    candidates: List[Tuple[int, float, str]] = []
    problems: List[str] = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if not _is_checkpoint_name(name, suffix) or os.path.abspath(path) in excluded or not os.path.isfile(path):
            continue
        try:
            updates = read_num_updates(path)
        except CheckpointError as e:
            problems.append(f"{name} ({e.short})")
            continue
        except Exception as e:  # noqa: BLE001 - any other load failure also makes it unusable
            problems.append(f"{name} ({type(e).__name__}: {e})")
            continue
        candidates.append((updates, os.path.getmtime(path), path))
    for updates, _mtime, path in sorted(candidates, reverse=True):
        damage = checkpoint_damage(path)  # the weights-only load above read the pickle; this checks every byte
        if damage is None:
            return path, updates, problems
        problems.append(f"{os.path.basename(path)} (truncated or not a checkpoint: {damage})")
    return None, -1, problems


def remove_stale_temporaries(directory: str) -> List[str]:
    """Delete the `.checkpoint*.pt.tmp` files a killed save left in `directory`; returns their names."""
    if not os.path.isdir(directory):
        return []
    stale = sorted(n for n in os.listdir(directory) if re.fullmatch(r"\.checkpoint.*\.pt\.tmp", n))
    for name in stale:
        _remove_quietly(os.path.join(directory, name))
    if stale:
        logger.info("removed %d unfinished checkpoint write(s) of an interrupted run: %s", len(stale), ", ".join(stale))
    return stale


def _file_problem(path: str) -> Optional[CheckpointError]:
    """The problem that makes `path` unusable for resuming, or None."""
    try:
        read_num_updates(path)
    except CheckpointError as e:
        return e
    damage = checkpoint_damage(path)
    if damage is not None:
        from .checkpoint import CorruptCheckpointError

        return CorruptCheckpointError(path, damage)
    return None


def _resume_path(cfg: Any, suffix: str) -> Optional[str]:
    """The file fairseq's `load_checkpoint` would resume from, when it exists (else None)."""
    if cfg.restore_file == "checkpoint_last.pt":
        path = os.path.join(cfg.save_dir, f"checkpoint_last{suffix}.pt")
    elif suffix:
        path = cfg.restore_file.replace(".pt", suffix + ".pt")
    else:
        path = cfg.restore_file
    return path if os.path.isfile(path) else None


def _restore_file_for(path: str, suffix: str) -> str:
    """`checkpoint.restore_file` value that makes fairseq open `path` (it re-appends the suffix)."""
    if suffix and path.endswith(suffix + ".pt"):
        return path[: -len(suffix + ".pt")] + ".pt"
    return path


def _wrap_load_checkpoint(original: Callable) -> Callable:
    @functools.wraps(original)
    def load_checkpoint(cfg: Any, trainer: Any, **passthrough_args: Any) -> Any:
        suffix = trainer.checkpoint_suffix or ""
        if getattr(trainer, "data_parallel_rank", 0) == 0:
            remove_stale_temporaries(cfg.save_dir)
        path = _resume_path(cfg, suffix)
        problem = _file_problem(path) if path is not None else None
        if problem is None:
            return original(cfg, trainer, **passthrough_args)
        if isinstance(problem, UnsafeCheckpointError):
            raise SystemExit(f"error: cannot resume: {problem}")
        directory = os.path.dirname(os.path.abspath(path))
        chosen, updates, others = find_resume_checkpoint(directory, suffix, exclude=(path,))
        if chosen is None:
            listed = "; ".join([f"{os.path.basename(path)} ({problem.short})"] + others)
            raise SystemExit(
                f"error: cannot resume: no readable checkpoint in {directory}: {listed}; "
                "restore one from a backup, or start afresh in another checkpoint.save_dir"
            )
        for other in others:
            logger.warning("skipped unreadable checkpoint %s", other)
        logger.warning("%s: %s; resuming from %s (%d updates), the newest readable checkpoint in %s",
                       path, problem.short, chosen, updates, directory)
        from omegaconf import open_dict

        # point fairseq at the chosen file for this call only (cfg is fairseq's own config node)
        keys = [k for k in ("restore_file", "finetune_from_model", "continue_once") if k in cfg]
        saved = {k: cfg[k] for k in keys}
        try:
            with open_dict(cfg):
                for k in keys:  # a resume from `chosen`, not a first launch
                    cfg[k] = _restore_file_for(chosen, suffix) if k == "restore_file" else None
            return original(cfg, trainer, **passthrough_args)
        finally:
            with open_dict(cfg):
                for k, v in saved.items():
                    cfg[k] = v

    return load_checkpoint


def _wrap_load_checkpoint_to_cpu(original: Callable) -> Callable:
    @functools.wraps(original)
    def load_checkpoint_to_cpu(path: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(path, *args, **kwargs)
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - translated when it is a checkpoint problem
            err = explain_load_error(path, e)
            if err is None:
                raise
        raise err from None

    return load_checkpoint_to_cpu


def _wrap_torch_persistent_save(original: Callable, path_manager: Any) -> Callable:
    @functools.wraps(original)
    def torch_persistent_save(obj: Any, filename: str, async_write: bool = False) -> None:
        if async_write or path_manager.path_requires_pathmanager(filename):
            return original(obj, filename, async_write=async_write)
        atomic_torch_save(obj, filename)

    return torch_persistent_save


def install_fairseq_hooks() -> None:
    """Patch `fairseq.checkpoint_utils` as the module docstring describes (idempotent)."""
    from fairseq import checkpoint_utils
    from fairseq.file_io import PathManager

    if getattr(checkpoint_utils, _HOOKED, False):
        return

    class AtomicCopyPathManager(PathManager):
        """fairseq's PathManager whose `copy` of local files is `atomic_copy` (avhubert.checkpoint_io)."""

        @staticmethod
        def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
            if PathManager.path_requires_pathmanager(src_path) or PathManager.path_requires_pathmanager(dst_path):
                return PathManager.copy(src_path, dst_path, overwrite=overwrite)
            if not overwrite and os.path.exists(dst_path):
                return False
            atomic_copy(src_path, dst_path)
            return True

    checkpoint_utils.PathManager = AtomicCopyPathManager
    checkpoint_utils.torch_persistent_save = _wrap_torch_persistent_save(checkpoint_utils.torch_persistent_save, PathManager)
    checkpoint_utils.load_checkpoint_to_cpu = _wrap_load_checkpoint_to_cpu(checkpoint_utils.load_checkpoint_to_cpu)
    checkpoint_utils.load_checkpoint = _wrap_load_checkpoint(checkpoint_utils.load_checkpoint)
    setattr(checkpoint_utils, _HOOKED, True)
