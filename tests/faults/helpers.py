"""Process and file helpers of the fault-injection suite (SIGKILL at chosen moments, tree listings)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set

REPO = Path(__file__).resolve().parents[2]


def env(**extra: str) -> Dict[str, str]:
    """Environment for child Python processes: repo on the path, one thread each."""
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)


def _proc_stat(pid: int) -> Optional[tuple]:
    """(state, ppid) of a live process, None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def children_map() -> Dict[int, List[int]]:
    """ppid -> child pids of every live process."""
    out: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _proc_stat(int(entry))
            if st is not None:
                out.setdefault(st[1], []).append(int(entry))
    return out


def descendants(pid: int) -> Set[int]:
    """All live descendants of `pid`."""
    tree, out, todo = children_map(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def alive(pids: Sequence[int]) -> List[int]:
    """The pids still running (zombies count as gone: their code no longer runs)."""
    out = []
    for pid in pids:
        st = _proc_stat(pid)
        if st is not None and st[0] not in ("Z", "X"):
            out.append(pid)
    return out


def wait_until(cond: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(interval)
    return cond()


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant (test clean-up)."""
    for p in [pid, *descendants(pid)]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start(args: Sequence[str], log: Path, **kw) -> subprocess.Popen:
    """Start `args` (in the repo, test environment) with stdout+stderr to `log`."""
    f = open(log, "ab")
    return subprocess.Popen(list(args), cwd=REPO, env=kw.pop("env", env()), stdout=f, stderr=subprocess.STDOUT, **kw)


def run_killed_when(
    args: Sequence[str], when: Callable[[], bool], log: Path, timeout: float = 120, delay: float = 0.0
) -> bool:
    """Run `args`; SIGKILL it (and its children) as soon as `when()` holds (then after `delay` s).

    Returns True when the kill happened, False when the process finished first.
    """
    proc = start(args, log)
    try:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if when():
                if delay:
                    time.sleep(delay)
                kill_tree(proc.pid)
                proc.wait()
                return True
            if proc.poll() is not None:
                return False
            time.sleep(0.01)
        raise TimeoutError(f"{args} neither met the kill condition nor finished in {timeout} s; log {log}")
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
            proc.wait()


def run_ok(args: Sequence[str], log: Path, timeout: float = 600) -> None:
    """Run to completion; raise with the log tail on failure."""
    with open(log, "ab") as f:
        proc = subprocess.run(list(args), cwd=REPO, env=env(), stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {' '.join(map(str, args))}\n{log.read_text()[-4000:]}")


def tree_digest(root: Path, ignore: Callable[[Path], bool] = lambda p: False) -> Dict[str, str]:
    """relative path -> sha256 of every file under `root` (minus `ignore`d ones)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not ignore(p):
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def python() -> str:
    return sys.executable


def sleep_item(item: str) -> str:
    """A pool job that sleeps `float(item)` seconds (picklable by reference for spawn workers)."""
    time.sleep(float(item))
    return item


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text(errors="replace").replace("\0", " ")
    except (FileNotFoundError, ProcessLookupError):
        return ""
