"""The last stage of `make demo`: one test utterance of the demo corpus (a 96x96 mouth video
without sound + a 16 kHz wav) muxed into one mp4 and transcribed with the command."""

from __future__ import annotations

import pytest

from avdata.video import write_video
from demo.run import transcribe_example
from tests.library.conftest import TEXTS


@pytest.mark.slow  # a subprocess that imports fairseq: ~20 s on a loaded core
def test_demo_transcribes_one_test_video(clips, s2s_ckpt, tmp_path, capsys):
    import avhubert
    from avdata.audio import read_wav
    from avdata.ffmpeg import run_ffmpeg

    prep = avhubert.load(s2s_ckpt).prepare(video=clips["car"])
    data = tmp_path / "data"
    (data / "video").mkdir(parents=True)
    (data / "audio").mkdir()
    write_video(data / "video" / "test-spk-00000.mp4", prep.rois, codec="mp4v")  # as the demo corpus writes them
    run_ffmpeg(["-i", str(clips["car_wav"]), "-ar", "16000", "-ac", "1", str(data / "audio" / "test-spk-00000.wav")])
    samples = len(read_wav(str(data / "audio" / "test-spk-00000.wav")))
    (data / "test.tsv").write_text(f"{data}\ntest-spk-00000\tvideo/test-spk-00000.mp4\taudio/test-spk-00000.wav\t100\t{samples}\n")
    (data / "test.wrd").write_text(TEXTS["car"] + "\n")
    result = transcribe_example(s2s_ckpt, data, tmp_path / "transcribe", beam=3)
    assert result == {"id": "test-spk-00000", "ref": TEXTS["car"], "hyp": TEXTS["car"]}
    out = capsys.readouterr().out
    assert f"REF: {TEXTS['car']}\n    HYP: {TEXTS['car']}  (audio-visual)" in out
    assert (tmp_path / "transcribe" / "test-spk-00000.json").is_file()
