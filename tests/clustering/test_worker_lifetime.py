"""Pool workers of `clustering.run_iteration` die with their parent (issue 12, item 5).

The parent is SIGKILLed, as the out-of-memory killer does; its workers, busy in a 60 s job,
must be gone within a few seconds (`avdata.procs.die_with_parent`).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.helpers import alive, descendants, env, kill_tree, wait_until

REPO = Path(__file__).resolve().parents[2]
SCRIPT = "import time\nfrom clustering.run_iteration import LocalRunner\nLocalRunner(2).map(time.sleep, [(60,), (60,)])\n"


def _threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        return 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


@pytest.mark.parametrize("moment", ["busy", "starting"])
def test_pool_workers_exit_when_parent_is_killed(moment):
    tree: set = set()
    parent = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=REPO, env=env(), stderr=subprocess.PIPE)
    try:
        workers = []

        def started() -> bool:
            workers[:] = [p for p in descendants(parent.pid) if "spawn_main" in _cmdline(p)]
            if len(workers) < 2:
                return False
            # "busy": the initializer ran (its watchdog thread exists) and the jobs sleep
            return moment == "starting" or all(_threads(w) >= 2 for w in workers)

        assert wait_until(started, 180), "pool workers did not start"  # slow imports on a loaded machine
        if moment == "busy":
            time.sleep(1.0)
        tree |= descendants(parent.pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        # busy workers: the kernel's parent-death signal (or the 1 s watchdog); starting ones exit in
        # their initializer, once their imports (seconds; more on a loaded machine) are done
        limit = 10 if moment == "busy" else 120
        assert wait_until(lambda: not alive(list(tree)), limit), f"orphans still running: {alive(list(tree))}"
    finally:
        for p in alive(list(tree | descendants(parent.pid))):
            kill_tree(p)
        if parent.poll() is None:
            kill_tree(parent.pid)
