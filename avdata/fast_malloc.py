"""Run CPU trainer processes with tcmalloc instead of glibc malloc.

The visual front-end allocates activations larger than glibc's 32 MB mmap ceiling (e.g. 1000
frames x 8 x 44 x 44 floats); glibc hands each one back to the kernel when freed, so every step
page-faults them in again. On the demo's 2 CPU cores that is a fifth of the run (sys time 26 s of
74 s for 60 pre-training updates; 57 s in all with tcmalloc); a Base pre-training step on 2 cores
takes about a fifth less time with tcmalloc. tcmalloc keeps the pages.

The allocator is chosen when a process starts, so it cannot be switched inside a running Python
process. Two ways in:

- launchers pass `with_tcmalloc(env)` to the subprocesses they start (`demo.run`);
- `use_tcmalloc_in_trainer()`, called when the `avhubert` plugin is imported, re-executes a
  `fairseq-hydra-train` / `fairseq-train` process that does not have tcmalloc yet with the same
  command line and `LD_PRELOAD` set, so the README's own command gets it without the user typing
  `LD_PRELOAD`. Never in library or notebook use, under pytest, in a process that already joined a
  distributed group or is a multiprocessing child, nor twice (loop guard).

Debian/Ubuntu package: `libtcmalloc-minimal4` (`make setup` installs it). `AVHUBERT_NO_TCMALLOC=1`
opts out of both.
"""

from __future__ import annotations

import ctypes.util
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

__all__ = ["find_tcmalloc", "with_tcmalloc", "tcmalloc_loaded", "trainer_reexec_argv", "use_tcmalloc_in_trainer"]

_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib64/libtcmalloc_minimal.so.4",
    "/usr/lib/libtcmalloc_minimal.so.4",
)
# entry points that train: console scripts, or `python -m fairseq_cli.<name>`
TRAINER_SCRIPTS = ("fairseq-hydra-train", "fairseq-train")
TRAINER_MODULES = ("hydra_train.py", "train.py")
OPT_OUT = "AVHUBERT_NO_TCMALLOC"
REEXEC_MARK = "AVHUBERT_TCMALLOC_REEXEC"  # set in the re-executed process: never a second time


def find_tcmalloc() -> Optional[str]:
    """Path (or soname) of libtcmalloc_minimal, or None when it is not installed."""
    for path in _CANDIDATES:
        if Path(path).is_file():
            return path
    return ctypes.util.find_library("tcmalloc_minimal")


def with_tcmalloc(env: Mapping[str, str]) -> dict:
    """A copy of `env` whose LD_PRELOAD starts with tcmalloc (unchanged when it is missing,
    already preloaded, or `AVHUBERT_NO_TCMALLOC=1`)."""
    out = dict(env)
    preload = out.get("LD_PRELOAD", "")
    if out.get(OPT_OUT) == "1" or "tcmalloc" in preload:
        return out
    lib = find_tcmalloc()
    if lib is not None:
        out["LD_PRELOAD"] = lib + (os.pathsep + preload if preload else "")
    return out


def tcmalloc_loaded(maps: str = "/proc/self/maps") -> Optional[bool]:
    """Whether this process has a tcmalloc library mapped; None where `/proc` is not readable."""
    try:
        return "libtcmalloc" in Path(maps).read_text()
    except OSError:
        return None


def _is_trainer(argv0: str) -> bool:
    path = Path(argv0)
    return path.name in TRAINER_SCRIPTS or (path.parent.name == "fairseq_cli" and path.name in TRAINER_MODULES)


def _in_distributed_group() -> bool:
    torch = sys.modules.get("torch")
    dist = getattr(torch, "distributed", None) if torch is not None else None
    return bool(dist is not None and dist.is_available() and dist.is_initialized())


def trainer_reexec_argv(
    argv: Sequence[str], orig_argv: Sequence[str], env: Mapping[str, str], modules: Mapping[str, object],
) -> Optional[list]:
    """The command line to re-execute with tcmalloc, or None when this process must go on as it is.

    `argv` is `sys.argv` (its first item names the entry point), `orig_argv` the interpreter's full
    command line (`sys.orig_argv`), `env` the environment, `modules` `sys.modules` (pytest check).
    """
    if not argv or not _is_trainer(argv[0]) or not orig_argv:
        return None
    if env.get(OPT_OUT) == "1" or env.get(REEXEC_MARK) or "tcmalloc" in env.get("LD_PRELOAD", ""):
        return None
    if "pytest" in modules or "PYTEST_CURRENT_TEST" in env:
        return None
    return list(orig_argv)


def _hydra_run_state() -> tuple[Optional[str], Optional[str], bool]:
    """`(original cwd, resolved run dir, multirun)` of a Hydra job, or `(None, None, False)`."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:
        return None, None, False
    if not HydraConfig.initialized():
        return None, None, False
    runtime = HydraConfig.get().runtime
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    return runtime.get("cwd"), runtime.get("output_dir"), multirun


def use_tcmalloc_in_trainer(log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)) -> None:
    """Re-execute this trainer process with tcmalloc preloaded when `trainer_reexec_argv` says so,
    tcmalloc is installed and not mapped yet. Returns only when nothing was re-executed.

    A Hydra job restarts in its original working directory with `hydra.run.dir` pinned to the
    directory already created (a `${now:...}` default would otherwise name a second one). Multirun
    sweeps, processes in a distributed group (the plugin is imported after the group is joined) and
    multiprocessing children (which inherit the parent's environment) are left alone.
    """
    argv = trainer_reexec_argv(sys.argv, getattr(sys, "orig_argv", []), os.environ, sys.modules)
    if argv is None or tcmalloc_loaded() is not False:
        return
    lib = find_tcmalloc()
    if lib is None:
        return
    if multiprocessing.parent_process() is not None or _in_distributed_group():
        log("note: this trainer runs without tcmalloc (about a fifth slower on CPU); start it with "
            f"LD_PRELOAD={lib} (set {OPT_OUT}=1 to silence)")
        return
    cwd, run_dir, multirun = _hydra_run_state()
    if multirun:
        return
    if run_dir is not None:
        argv = [a for a in argv if not a.startswith("hydra.run.dir=")] + [f"hydra.run.dir={run_dir}"]
    env = with_tcmalloc(os.environ)
    env[REEXEC_MARK] = "1"
    log(f"re-executing this trainer with LD_PRELOAD={lib} (tcmalloc: faster CPU training; {OPT_OUT}=1 opts out)")
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        if cwd is not None:
            os.chdir(cwd)
        os.execve(sys.executable, argv, env)
    except OSError as err:  # exec failed: go on with glibc malloc in this process
        log(f"note: could not re-execute with tcmalloc ({err}); training goes on without it")
