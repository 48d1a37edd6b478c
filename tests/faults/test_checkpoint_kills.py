"""SIGKILL the tiny pre-training inside checkpoint writes, rerun, and check that training completes
and that no visible checkpoint is ever partial.

Targeted kills use the save hook's fault-injection pause (`AVHUBERT_CHECKPOINT_PAUSE_S` /
`_MATCH`, see avhubert/checkpoint_io.py): the trainer stops just before the rename that publishes
a file and is killed there, inside fairseq's copy step (`checkpoint_last.pt`) and inside the
first-file write (`checkpoint_N_M.pt`). Random kills land 0-0.4 s after a "Preparing to save
checkpoint" line (seeded delays), i.e. around or inside the writes. After every kill, each visible
`checkpoint*.pt` must pass the full check (zip directory, every CRC, weights-only unpickle), no
rerun may need the damaged-checkpoint fallback, and the last rerun must reach `max_update`.
"""

import random
import re
import time
from pathlib import Path
from typing import Dict, List

import pytest

from avhubert import checkpoint_io
from avhubert.checkpoint import checkpoint_damage
from tests.faults.helpers import REPO, env, kill_tree, run_ok, start, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.slow]  # ~2.5 min

MAX_UPDATE = 16


def train_args(data: Path, exp: Path) -> List[str]:
    bin_dir = Path(__import__("sys").executable).parent
    return [
        str(bin_dir / "fairseq-hydra-train"), "--config-dir", str(REPO / "conf/pretrain"), "--config-name", "tiny",
        f"task.data={data}", f"task.label_dir={data}", f"common.user_dir={REPO / 'avhubert'}", f"hydra.run.dir={exp}",
        f"checkpoint.save_dir={exp / 'ckpt'}", f"optimization.max_update={MAX_UPDATE}",
        "checkpoint.save_interval_updates=2",
    ]


def visible_checkpoints(ckpt: Path) -> Dict[str, int]:
    """name -> num_updates of every visible checkpoint; fails on any partial or unreadable one."""
    out = {}
    for p in sorted(ckpt.glob("checkpoint*.pt")):
        damage = checkpoint_damage(str(p))
        assert damage is None, f"partial checkpoint visible: {p.name}: {damage}"
        out[p.name] = checkpoint_io.read_num_updates(str(p))
    return out


def kill_when(args: List[str], log: Path, condition, extra_env: Dict[str, str], delay: float = 0.0,
              timeout: float = 300) -> bool:
    """Start the trainer; SIGKILL its process tree once `condition(log_text)` holds (after `delay` s)."""
    offset = log.stat().st_size if log.exists() else 0
    proc = start(args, log, env=env(PYTHONUNBUFFERED="1", **extra_env))
    try:
        hit = wait_until(lambda: proc.poll() is not None or condition(log.read_text(errors="replace")[offset:]),
                         timeout=timeout, interval=0.02)
        assert hit, f"neither the kill condition nor the end of the run within {timeout} s"
        if proc.poll() is not None:
            return False
        time.sleep(delay)
        kill_tree(proc.pid)
        proc.wait()
        return True
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
            proc.wait()


def test_kills_inside_checkpoint_writes_lose_nothing(synthetic_corpus, tmp_path):
    exp, log = tmp_path / "exp", tmp_path / "train.log"
    args = train_args(synthetic_corpus, exp)
    ckpt = exp / "ckpt"
    kills, states = 0, []

    def paused(name: str, nth: int):
        pattern = re.compile(r"checkpoint write paused: \S+ -> \S+/" + name)
        return lambda text: len(pattern.findall(text)) >= nth

    # 1. inside fairseq's copy step, at the second save (checkpoint_last.pt already exists)
    assert kill_when(args, log, paused("checkpoint_last.pt", 2),
                     {checkpoint_io.PAUSE_ENV: "2", checkpoint_io.PAUSE_MATCH_ENV: "checkpoint_last.pt"})
    kills += 1
    states.append(visible_checkpoints(ckpt))
    assert "checkpoint_last.pt" in states[-1] and (ckpt / ".checkpoint_last.pt.tmp").exists(), "killed before the rename"
    # 2. inside the first-file write of the next interval checkpoint (after resuming)
    assert kill_when(args, log, paused(r"checkpoint_\d+_\d+\.pt", 1),
                     {checkpoint_io.PAUSE_ENV: "2", checkpoint_io.PAUSE_MATCH_ENV: "checkpoint_*_*.pt"})
    kills += 1
    states.append(visible_checkpoints(ckpt))
    # 3. random moments around the writes (seeded)
    rng = random.Random(12)
    for _ in range(3):
        nth, delay = rng.randint(1, 2), rng.uniform(0.0, 0.4)
        kills += kill_when(args, log, lambda text, n=nth: text.count("Preparing to save checkpoint") >= n, {},
                           delay=delay)
        states.append(visible_checkpoints(ckpt))
    assert states[-1]["checkpoint_last.pt"] < MAX_UPDATE, "the kills left work for the last run"
    # 4. an uninterrupted rerun finishes the training
    run_ok(args, log)
    final = visible_checkpoints(ckpt)
    text = log.read_text(errors="replace")
    assert final["checkpoint_last.pt"] == MAX_UPDATE
    assert not list(ckpt.glob(".*.tmp")), "the unfinished writes of killed runs were cleaned up"
    assert "removed 1 unfinished checkpoint write(s)" in text
    assert kills == 5, f"only {kills} of 5 kills landed before the run ended"
    assert "Loaded checkpoint" in text, "reruns resumed from the saved state"
    assert "truncated or not a checkpoint" not in text and "resuming from" not in text, \
        "no rerun needed the damaged-checkpoint fallback"
    updates = [s.get("checkpoint_last.pt", 0) for s in states]
    assert updates == sorted(updates), f"checkpoint_last.pt never went back: {updates}"
