"""`keep_freed_memory`: a process loading clips as a loader worker does (decode, crop + normalise,
collate a batch) stops faulting in fresh pages. Run in child processes: the setting is process-wide."""

import subprocess
import sys

import numpy as np
import pytest

CHILD = """
import resource, sys
import numpy as np
from avdata.memory import keep_freed_memory
from avdata.video import load_video, transform_video
if sys.argv[1] == "keep":
    assert keep_freed_memory() and keep_freed_memory()  # idempotent
def batch():
    items = [transform_video(load_video(sys.argv[2]), True, rng=np.random.default_rng(i)) for i in range(4)]
    out = np.empty((4,) + items[0].shape, np.float32)
    for i, x in enumerate(items):
        out[i] = x
for _ in range(2):  # warm-up: the heap reaches its working size
    batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    batch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_kept_memory_removes_the_page_faults_of_loading_clips(tmp_path):
    from avdata.video import write_video

    frames = np.random.default_rng(0).integers(0, 256, (75, 96, 96), dtype=np.uint8)  # a 3 s clip
    write_video(tmp_path / "clip.mp4", frames, codec="mp4v")

    def faults(mode: str) -> int:
        cmd = [sys.executable, "-c", CHILD, mode, str(tmp_path / "clip.mp4")]
        return int(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip())

    default, kept = faults("default"), faults("keep")
    assert default > 20 * 200, (default, kept)  # 20 clips: hundreds of fresh pages each by default
    assert kept < default / 20, (default, kept)
