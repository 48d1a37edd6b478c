"""The demo's report: WER table, chance baseline and the WER-vs-SNR plot."""

from demo.run import CONDITIONS, chance_wer, plot, write_report


def _grid(offset: float):
    cols = ["clean"] + [f"{c:g} dB" for c in CONDITIONS[1:]]
    return {mode: {c: offset + i * 10 + j for j, c in enumerate(cols)} for i, mode in enumerate(["audio", "video", "audio-visual"])}


def test_report_table_and_plot(tmp_path):
    grids = {"pretrained": _grid(0.0), "scratch": _grid(5.0)}
    text = write_report(tmp_path, grids, chance=90.0, wall=600)
    assert (tmp_path / "results.md").read_text().strip() == text.strip()
    assert "| audio-visual | 20.0 | 21.0 | 22.0 | 23.0 | 24.0 |" in text
    assert "## scratch" in text and "Chance baseline" in text and "10.0 min" in text
    png = plot(tmp_path, grids)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_chance_wer(tmp_path):
    (tmp_path / "train.wrd").write_text("go left\ngo left\nstop\n")
    (tmp_path / "test.wrd").write_text("go left\nstop now\n")
    assert chance_wer(tmp_path) == 50.0  # 0 + 2 errors over 4 reference words
