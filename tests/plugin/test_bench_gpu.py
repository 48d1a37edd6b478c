"""bench/bench_gpu.py: its largest-batch search, and a CPU smoke run of the whole script (tiny sizes)."""

import json

import pytest

from bench.bench_gpu import largest_batch, main


@pytest.mark.parametrize("limit_fits, start, limit", [(37, 12, 1024), (12, 12, 1024), (5, 12, 1024), (2000, 12, 100), (0, 12, 64)])
def test_largest_batch_is_within_six_percent_of_the_limit(limit_fits, start, limit):
    tried = []

    def fits(b):
        tried.append(b)
        return b <= limit_fits

    best = largest_batch(fits, start, limit)
    want = min(limit_fits, limit)
    assert best <= want and best >= want - max(1, want // 16)
    assert all(1 <= b <= limit for b in tried) and len(tried) < 20


def test_cpu_smoke_run_writes_every_measure(tmp_path):
    out = tmp_path / "r.json"
    assert main(["--device", "cpu", "--size", "tiny", "--steps", "1", "--batch", "2", "--frames", "8", "--dtypes", "fp32",
                 "--decode-batches", "1", "2", "--decode-utts", "2", "--decode-len", "3", "--json", str(out)]) == 0
    row = json.loads(out.read_text())["fp32"]
    for key in ("s_per_step", "video_frames_per_s", "peak_mb", "s2s_s_per_step", "decode_b1_utt_per_s", "decode_b2_utt_per_s"):
        assert row[key] > 0, key
