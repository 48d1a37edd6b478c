"""ffmpeg errors, the per-item loop, Slurm submission, and the video/audio I/O on a real clip.

The shard formula, atomic writes and done markers are tested in `tests/avdata`."""

from __future__ import annotations

import numpy as np
import pytest

from avdata import ffmpeg, sharding
from avdata.video import count_video_frames, write_video
from avdata.markers import done_marker, is_done
from preparation import common, media


def test_run_ffmpeg_raises_with_stderr(tmp_path):
    with pytest.raises(ffmpeg.FFmpegError, match="exit"):
        ffmpeg.run_ffmpeg(["-i", str(tmp_path / "nope.mp4"), str(tmp_path / "out.wav")])
    with pytest.raises(FileNotFoundError, match="apt-get install ffmpeg"):
        ffmpeg.find_ffmpeg("/no/such/ffmpeg")


def test_run_items_records_failures_and_skips(tmp_path):
    done = {"b"}

    def work(item):
        if item == "c":
            raise ValueError("bad item")
        return item.upper()

    result, outputs = common.run_items(["a", "b", "c"], work, is_finished=lambda i: i in done, progress=False)
    assert outputs == {"a": "A"}
    assert (result.processed, result.skipped, len(result.failures)) == (1, 1, 1)
    assert common.finish_shard(result, tmp_path, "step", 0, 1) == 1
    assert (tmp_path / "failures.step.0_1.tsv").read_text() == "c\tValueError: bad item\n"
    assert not is_done(done_marker(tmp_path, "step", 0, 1))
    assert common.finish_shard(type(result)(processed=1), tmp_path, "step", 0, 1) == 0
    assert is_done(done_marker(tmp_path, "step", 0, 1))


def test_fps_conversion_gives_duration_times_25(carphone_path, tmp_path):
    frames, fps = media.read_video(carphone_path)
    assert frames.shape == (120, 144, 176, 3)
    assert fps == pytest.approx(30000 / 1001)
    out = tmp_path / "c25.mp4"
    media.convert_fps(carphone_path, out)
    duration = len(frames) / fps  # 4.004 s
    assert count_video_frames(out) == round(duration * 25) == 100
    assert media.video_fps(out) == pytest.approx(25.0)


def test_write_video_roundtrip_and_odd_size(tmp_path):
    rng = np.random.default_rng(0)
    frames = np.repeat(np.linspace(0, 255, 33 * 31).reshape(1, 33, 31, 1), 7, axis=0).astype(np.uint8)
    frames = np.repeat(frames, 3, axis=3) + rng.integers(0, 3, frames.shape[:3] + (3,), dtype=np.uint8)
    out = tmp_path / "odd.mp4"
    write_video(out, frames)
    back, fps = media.read_video(out)
    assert fps == pytest.approx(25.0)
    assert back.shape == (7, 34, 32, 3)  # padded to even size for yuv420p
    assert np.abs(back[:, :33, :31].astype(int) - frames).mean() < 4
    with pytest.raises(TypeError):
        write_video(out, frames.astype(np.float32))


def test_extract_wav_resamples_to_16k_mono(tmp_path, face25, make_clip):
    _, frames = face25
    clip = make_clip(tmp_path / "clip.mp4", frames[:25], audio_rate=44_100)
    wav = tmp_path / "clip.wav"
    media.extract_wav(clip, wav)
    samples, rate = media.read_wav_int16(wav)
    assert rate == 16_000 and samples.ndim == 1 and samples.dtype == np.int16
    assert abs(len(samples) - 16_000) < 0.05 * 16_000  # 1 s of audio (AAC adds a few ms)
    assert media.count_wav_samples(wav) == len(samples)
    assert np.abs(samples).max() > 1000  # not silence


def test_slurm_submission_maps_one_task_per_shard(monkeypatch, tmp_path):
    import sys
    import types

    calls = {}

    class FakeExecutor:
        def __init__(self, folder):
            calls["folder"] = folder

        def update_parameters(self, **kw):
            calls["params"] = kw

        def map_array(self, fn, *iterables):
            calls["tasks"] = list(zip(*iterables))
            return [types.SimpleNamespace(job_id=f"1_{i}", fn=fn) for i in range(len(calls["tasks"]))]

    monkeypatch.setitem(sys.modules, "submitit", types.SimpleNamespace(AutoExecutor=FakeExecutor))
    from preparation import extract_audio

    argv = ["--video-dir", "v", "--file-list", "l", "--audio-dir", "a", "--nshard", "3", "--slurm-partition", "gpu"]
    assert extract_audio.main(argv) == 0
    assert calls["params"]["slurm_partition"] == "gpu" and len(calls["tasks"]) == 3
    seen = []
    for _main, task_argv, rank, nshard in calls["tasks"]:
        assert "--slurm-partition" not in task_argv and "--nshard" not in task_argv
        sharding._run_shard(lambda a: seen.append(a) or 0, task_argv, rank, nshard)
    assert [a[-4:] for a in seen] == [["--rank", str(r), "--nshard", "3"] for r in range(3)]
