"""`bench/bench_loading.py` runs end to end on a few tiny clips and prints every figure it promises."""

import re

from tests.conftest import REPO, run_cli


def test_bench_loading_prints_rates_breakdown_workers_and_rss(tmp_path):
    out = run_cli([str(REPO / ".venv/bin/python"), "bench/bench_loading.py", "--clips", "4", "--frames", "10",
                   "--repeats", "1", "--codec", "mp4v", "--workers", "1", "--corpus", str(tmp_path)]).stdout
    for mode in ("train", "valid"):
        line = next(ln for ln in out.splitlines() if ln.startswith(f"mp4v {mode}"))
        assert re.search(r"\d+\.\d clips/s per CPU-second", line), line
        for stage in ("video decode", "video transforms", "audio read", "audio features", "labels", "collate", "other"):
            assert re.search(rf"{stage} \d+\.\d\d", line), (stage, line)
    assert len(re.findall(r"needs \d+ loader workers", out)) == 2, out
    assert len(re.findall(r"DataLoader, 1 workers: \d+\.\d clips/s", out)) == 2, out
    assert "loader-worker setup: glibc keep_freed_memory" in out
    assert re.search(r"peak RSS \d+ MiB", out), out
