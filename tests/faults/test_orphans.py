"""Workers die with their parent (issue 12, item 5): the parent is SIGKILLed, as the
out-of-memory killer does, while its workers are busy; none of them may keep running.

- preparation pools (`preparation.common.run_items`) and a real `clustering.run_iteration`:
  `avdata.procs.die_with_parent` (PR_SET_PDEATHSIG + parent-pid watchdog);
- torch DataLoader workers (fairseq's training loaders, the AV-HuBERT feature dump's
  `--loader-workers`): torch's own watchdog, verified here (within its 5 s polling interval).
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.clustering.synth import make_corpus
from tests.faults.helpers import REPO, alive, cmdline, descendants, env, kill_tree, wait_until

pytestmark = pytest.mark.faults

PREP_POOL = """
from preparation.common import run_items
from tests.faults.helpers import sleep_item
run_items(["60", "60", "60"], sleep_item, num_workers=2, progress=False)
"""

DATALOADER = """
import time, torch
class Slow(torch.utils.data.Dataset):
    def __len__(self): return 1000
    def __getitem__(self, i):
        time.sleep(0.5)
        return i
for i in torch.utils.data.DataLoader(Slow(), batch_size=None, num_workers=2):
    print(i, flush=True)
"""


def _threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        return 0


def kill_parent_when_busy(args, is_worker, min_threads: int, limit: float, cwd=REPO) -> None:
    """Start `args`; once two workers run (with >= `min_threads` threads), SIGKILL only the parent
    and require every descendant to be gone within `limit` seconds."""
    tree: set = set()
    parent = subprocess.Popen(args, cwd=cwd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def busy() -> bool:
            workers = [p for p in descendants(parent.pid) if is_worker(cmdline(p))]
            return len(workers) >= 2 and all(_threads(w) >= min_threads for w in workers)

        assert wait_until(busy, 180), "workers did not start"
        time.sleep(1.0)
        tree |= descendants(parent.pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert wait_until(lambda: not alive(list(tree)), limit), f"orphans still running: {[cmdline(p)[:80] for p in alive(list(tree))]}"
    finally:
        for p in alive(list(tree | descendants(parent.pid))):
            kill_tree(p)
        if parent.poll() is None:
            kill_tree(parent.pid)


def test_preparation_pool_workers_exit():
    kill_parent_when_busy([sys.executable, "-c", PREP_POOL], lambda c: "spawn_main" in c, 2, 10)


def test_torch_dataloader_workers_exit():
    # DataLoader workers are forked: they share the parent's command line; torch's watchdog polls every 5 s
    kill_parent_when_busy([sys.executable, "-c", DATALOADER], lambda c: "DataLoader" in c or "import time, torch" in c, 1, 15)


def test_run_iteration_workers_exit(tmp_path):
    corpus = make_corpus(tmp_path / "data", num_utts=(40, 2), frames=(200, 400))
    args = [sys.executable, "-m", "clustering.run_iteration", "--tsv-dir", str(corpus), "--out-dir", str(tmp_path / "it"),
            "--feature", "mfcc", "--n-clusters", "4", "--nshard", "4", "--num-workers", "2", "--device", "cpu"]
    kill_parent_when_busy(args, lambda c: "spawn_main" in c, 2, 10)
