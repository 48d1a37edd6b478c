"""Built-in demo corpus: audio, video frame counts, labels, determinism, resumability, and the
mouth motion measured from the rendered frames following the speech energy.

Needs libespeak-ng (Debian `espeak-ng`); skipped with a reason when it is missing.
"""

import ctypes
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from demo.corpus import SAMPLES_PER_FRAME, SPLITS, VOCABULARY, CorpusConfig, generate_corpus
from demo.corpus.render import render_mouth_frames
from demo.corpus.speakers import make_speakers
from demo.corpus.tts import ESPEAK_LIBRARY, EspeakSynthesizer, VoiceSettings
from demo.corpus.visemes import OPEN, articulation_tracks, phone_targets
from preparation.media import read_video, read_wav_int16


def _have_espeak() -> bool:
    try:
        ctypes.CDLL(ESPEAK_LIBRARY)
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _have_espeak(), reason="libespeak-ng missing: apt-get install -y espeak-ng")

TINY = CorpusConfig(
    seed=3, num_train=4, num_valid=2, num_test=3, train_speakers=2, valid_speakers=1, test_speakers=1,
    babble_speakers=2, num_noise_train=1, num_noise_valid=1, num_noise_test=1, noise_sec=1.5, babble_talkers=2,
)


def _tiny_cli_args(out_dir: Path, seed: int = TINY.seed) -> list:
    return [
        "--out-dir", str(out_dir), "--seed", str(seed), "--num-train", "4", "--num-valid", "2", "--num-test", "3",
        "--train-speakers", "2", "--valid-speakers", "1", "--test-speakers", "1", "--babble-speakers", "2",
        "--num-noise-train", "1", "--num-noise-valid", "1", "--num-noise-test", "1", "--noise-sec", "1.5",
        "--babble-talkers", "2", "--num-workers", "1", "--no-progress",
    ]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "corpus"
    paths = generate_corpus(out, TINY, num_workers=2, progress=False)
    return out, paths


def _rows(out: Path, split: str):
    from avdata.manifest import read_manifest

    return read_manifest(out / f"{split}.tsv")


def _all_rows(out: Path):
    return [row for split in SPLITS for row in _rows(out, split)[1]]


def test_audio_is_16khz_mono_int16_and_not_silent(corpus):
    import soundfile as sf

    out, _ = corpus
    for row in _all_rows(out):
        path = out / row.audio
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"), path
        wav, _ = read_wav_int16(path)
        assert wav.dtype == np.int16 and len(wav) == row.num_audio_samples
        assert np.abs(wav).max() > 3000, f"{path} is (nearly) silent"
        rms = np.sqrt(np.mean(wav.astype(np.float64) ** 2))
        assert rms > 300, f"{path}: RMS {rms:.0f}"


def test_video_frames_match_duration_times_25(corpus):
    out, _ = corpus
    for row in _all_rows(out):
        frames, fps = read_video(out / row.video, gray=True)
        duration_sec = row.num_audio_samples / 16000
        assert frames.shape == (row.num_video_frames, 96, 96), row.id
        assert frames.shape[0] == round(duration_sec * 25)
        assert row.num_audio_samples == row.num_video_frames * SAMPLES_PER_FRAME
        assert fps == pytest.approx(25.0)
        assert frames.std() > 5, f"{row.id}: flat video"


def test_manifests_labels_and_dictionary(corpus):
    import sentencepiece as spm

    out, paths = corpus
    ids = {}
    speakers_of = {}
    for split in SPLITS:
        root, rows = _rows(out, split)
        assert root == str(out.resolve())
        assert len(rows) == TINY.num_utterances(split)
        for row in rows:
            assert not os.path.isabs(row.video) and not os.path.isabs(row.audio)
            assert (out / row.video).is_file() and (out / row.audio).is_file()
            assert row.id.startswith(f"{split}-")
        ids[split] = [r.id for r in rows]
        speakers_of[split] = {r.id.split("-")[1] for r in rows}
        lines = (out / f"{split}.wrd").read_text(encoding="utf-8").splitlines()
        assert len(lines) == len(rows)
        for line in lines:
            words = line.split()
            assert line == line.lower() and 1 <= len(words) <= 4
            assert set(words) <= set(VOCABULARY), line
    all_ids = sum(ids.values(), [])
    assert len(all_ids) == len(set(all_ids))
    # test speakers are unseen in training, in voice as well as in id
    assert not speakers_of["test"] & speakers_of["train"]
    meta = json.loads((out / "demo_corpus.json").read_text(encoding="utf-8"))
    assert meta["espeak_ng_version"] and meta["config"]["seed"] == TINY.seed
    voices = {s["id"]: (s["voice"]["variant"], s["partition"]) for s in meta["speakers"]}
    assert len({v for v, _ in voices.values()}) == len(voices)
    assert {voices[s][1] for s in speakers_of["test"]} == {"test"}
    # tokenizer: fairseq dict without specials, every word encodes without <unk>
    dict_lines = paths.dictionary.read_text(encoding="utf-8").splitlines()
    assert dict_lines and all(line.endswith(" 1") for line in dict_lines)
    assert not {"<s>", "<pad>", "</s>", "<unk>"} & {line.split()[0] for line in dict_lines}
    sp = spm.SentencePieceProcessor(model_file=str(paths.spm_model))
    assert sp.unk_id() not in sp.encode(" ".join(VOCABULARY))


def test_babble_noise_lists(corpus):
    import soundfile as sf

    out, paths = corpus
    for split in SPLITS:
        lines = paths.noise_lists[split].read_text(encoding="utf-8").splitlines()
        assert len(lines) == TINY.num_noise(split)
        for line in lines:
            assert os.path.isabs(line) and "\t" not in line
            info = sf.info(line)
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert info.frames == round(TINY.noise_sec * 16000)
            wav, _ = read_wav_int16(line)
            assert np.sqrt(np.mean(wav.astype(np.float64) ** 2)) > 1000  # about -20 dBFS


def _dark_area(frames: np.ndarray) -> np.ndarray:
    """Per-frame count of dark pixels (mouth cavity) in the central 64x64 region."""
    roi = frames[:, 16:80, 16:80].astype(np.float32)
    threshold = 0.45 * np.median(roi, axis=(1, 2), keepdims=True)
    return (roi < threshold).sum(axis=(1, 2)).astype(np.float64)


def test_mouth_opening_in_frames_correlates_with_speech_energy(corpus):
    out, _ = corpus
    pooled_area, pooled_rms, per_utt = [], [], []
    for row in _all_rows(out):
        frames, _ = read_video(out / row.video, gray=True)
        wav, _ = read_wav_int16(out / row.audio)
        rms = np.sqrt(np.mean(wav.astype(np.float64).reshape(len(frames), SAMPLES_PER_FRAME) ** 2, axis=1))
        area = _dark_area(frames)
        per_utt.append(np.corrcoef(area, rms)[0, 1])
        pooled_area.append((area - area.mean()) / (area.std() + 1e-9))
        pooled_rms.append((rms - rms.mean()) / (rms.std() + 1e-9))
    r = np.corrcoef(np.concatenate(pooled_area), np.concatenate(pooled_rms))[0, 1]
    assert r > 0.3, f"pooled Pearson r = {r:.2f}; per utterance {np.round(per_utt, 2)}"
    assert min(per_utt) > 0.0, np.round(per_utt, 2)


def _snapshot(out: Path):
    """Everything that must be identical between two runs with the same seed."""
    text = {name: (out / name).read_bytes() for name in [f"{s}.wrd" for s in SPLITS] + ["dict.wrd.txt"]}
    for split in SPLITS:  # the manifests' root line and the noise lists hold the (different) folder
        text[f"{split}.tsv"] = (out / f"{split}.tsv").read_bytes().split(b"\n", 1)[1]
        text[f"noise/{split}.tsv"] = b"\n".join(
            os.path.basename(p).encode() for p in (out / "noise" / f"{split}.tsv").read_text().splitlines()
        )
    arrays = {}
    for row in _all_rows(out):
        arrays[row.audio] = read_wav_int16(out / row.audio)[0]
        arrays[row.video] = read_video(out / row.video, gray=True)[0]
    for wav in sorted((out / "noise" / "wav").glob("*.wav")):
        arrays[wav.name] = read_wav_int16(wav)[0]
    return text, arrays


def test_same_seed_gives_identical_outputs_via_cli(corpus, tmp_path):
    from demo.make_corpus import main

    out, _ = corpus
    again = tmp_path / "again"
    assert main(_tiny_cli_args(again)) == 0  # one worker here, two in the fixture: order does not matter
    text_a, arrays_a = _snapshot(out)
    text_b, arrays_b = _snapshot(again)
    assert text_a == text_b
    assert arrays_a.keys() == arrays_b.keys()
    for key in arrays_a:
        np.testing.assert_array_equal(arrays_a[key], arrays_b[key], err_msg=key)

    other = tmp_path / "other"
    generate_corpus(other, CorpusConfig(**{**TINY.__dict__, "seed": TINY.seed + 1}), num_workers=1, progress=False)
    assert (other / "train.wrd").read_bytes() != (out / "train.wrd").read_bytes()


def test_rerun_reuses_files_and_regenerates_missing_ones(corpus, tmp_path):
    out, _ = corpus
    work = tmp_path / "copy"
    shutil.copytree(out, work)
    videos = sorted((work / "video").glob("*.mp4"))
    mtimes = {p: p.stat().st_mtime_ns for p in videos}
    generate_corpus(work, TINY, num_workers=1, progress=False)  # done marker: nothing to do
    assert {p: p.stat().st_mtime_ns for p in videos} == mtimes

    victim = videos[0]
    before = read_video(victim, gray=True)[0]
    victim.unlink()
    (work / ".demo_corpus.done").unlink()
    (victim.parent / f"{victim.stem}.tmp{victim.suffix}").write_bytes(b"partial")  # a crashed write
    generate_corpus(work, TINY, num_workers=1, progress=False)
    np.testing.assert_array_equal(read_video(victim, gray=True)[0], before)
    assert not (victim.parent / f"{victim.stem}.tmp{victim.suffix}").exists()
    assert all(p.stat().st_mtime_ns == mtimes[p] for p in videos[1:])
    assert (work / ".demo_corpus.done").is_file()

    with pytest.raises(ValueError, match="other settings"):
        generate_corpus(work, CorpusConfig(**{**TINY.__dict__, "seed": 99}), num_workers=1, progress=False)


def test_tts_is_seeded_and_timed():
    synth = EspeakSynthesizer()
    voice = VoiceSettings("en-us+m3", rate_wpm=160, pitch=40)
    a = synth.synthesize("seven three go", voice, noise_seed=1)
    b = synth.synthesize("help", voice, noise_seed=5)
    c = synth.synthesize("seven three go", voice, noise_seed=1)
    np.testing.assert_array_equal(a.samples, c.samples)
    assert a.phones == c.phones and a.phones != b.phones
    starts = [p.start_sec for p in a.phones]
    assert starts == sorted(starts) and a.phones[-1].end_sec == pytest.approx(a.duration_sec)
    assert [p.name for p in a.phones if not p.name.startswith("_")][:3] == ["s", "E", "v"]
    with pytest.raises(Exception, match="not available"):
        synth.synthesize("go", VoiceSettings("no-such-voice"), noise_seed=0)


def test_synthesizers_share_the_process_engine():
    """espeak-ng's engine and callback are process-wide: a second synthesizer, even once garbage
    collected, must not break the first one (its children used to die of SIGSEGV)."""
    import gc

    voice = VoiceSettings("en-gb-scotland+adam", rate_wpm=152, pitch=45)
    first = EspeakSynthesizer()
    a = first.synthesize("six five", voice, noise_seed=3)
    second = EspeakSynthesizer()
    b = second.synthesize("six five", voice, noise_seed=3)
    del second
    gc.collect()
    c = first.synthesize("six five", voice, noise_seed=3)
    np.testing.assert_array_equal(a.samples, b.samples)
    np.testing.assert_array_equal(a.samples, c.samples)


def test_visemes_close_for_bilabials_and_render_opening_monotonically():
    from demo.corpus.tts import Phone

    assert phone_targets("p")[0][OPEN] == 0.0 and phone_targets("A:")[0][OPEN] == 1.0
    assert len(phone_targets("aI")) == 2 and phone_targets("_:") == phone_targets("_")
    assert phone_targets("zz9")[0] == phone_targets("z")[0]  # unknown variants fall back to the stem
    phones = [Phone("_", 0.0, 0.2), Phone("m", 0.2, 0.36), Phone("A:", 0.36, 0.6), Phone("p", 0.6, 0.76),
              Phone("_", 0.76, 1.0)]
    tracks = articulation_tracks(phones, 25, 25.0, smoothing_sec=0.015)
    opening = tracks[:, OPEN]
    assert opening[12] > 0.5 and opening[7] < 0.15 and opening[17] < 0.15 and opening[0] < 0.05

    face = make_speakers(0, [("train", 1)])[0].face
    shapes = np.zeros((6, 5), np.float32)
    shapes[:, OPEN] = np.linspace(0.0, 1.0, 6)
    shapes[:, 1] = 0.5
    frames = render_mouth_frames(shapes, face, np.random.default_rng(0))
    assert frames.shape == (6, 96, 96) and frames.dtype == np.uint8
    area = _dark_area(frames)
    assert np.all(np.diff(area) > 0), area


def test_held_out_speakers_own_their_voice_variants_and_training_speakers_share_the_rest():
    from demo.corpus.speakers import VOICE_VARIANTS

    counts = [("train", 60), ("valid", 2), ("test", 3), ("babble", 5)]
    speakers = make_speakers(0, counts)
    assert [s.partition for s in speakers] == [p for p, n in counts for _ in range(n)]
    assert len({s.id for s in speakers}) == len(speakers)
    held = [s.voice.variant for s in speakers if s.partition != "train"]
    train = {s.voice.variant for s in speakers if s.partition == "train"}
    assert len(set(held)) == len(held) == 10 and not set(held) & train
    assert train == set(VOICE_VARIANTS) - set(held)  # 60 training speakers cycle over all other variants
    voices = {(s.voice.base, s.voice.variant, s.voice.pitch, s.voice.rate_wpm) for s in speakers}
    assert len(voices) == len(speakers)
    assert make_speakers(0, counts) == speakers  # seeded
    with pytest.raises(ValueError, match="held-out"):
        make_speakers(0, [("train", 1), ("test", len(VOICE_VARIANTS))])


def test_unlabelled_utterances_extend_the_pretraining_manifest_only(corpus, tmp_path):
    """`num_unlabelled` adds training-speaker utterances to pretrain/train.tsv alone: the labelled
    manifests, transcripts and tokenizer stay those of the corpus without them (files reused)."""
    from avdata.manifest import read_manifest

    out, paths = corpus
    work = tmp_path / "more"
    shutil.copytree(out, work)
    cfg = CorpusConfig(**{**TINY.__dict__, "num_unlabelled": 3})
    more = generate_corpus(work, cfg, num_workers=1, progress=False)
    assert paths.pretrain_dir == out and more.pretrain_dir == work / "pretrain"
    for split in SPLITS:
        assert (work / f"{split}.tsv").read_text() == (out / f"{split}.tsv").read_text().replace(str(out), str(work))
        assert (work / f"{split}.wrd").read_text() == (out / f"{split}.wrd").read_text()
    assert more.spm_model.with_suffix(".vocab").read_text() == paths.spm_model.with_suffix(".vocab").read_text()
    assert more.dictionary.read_text() == paths.dictionary.read_text()
    root, rows = read_manifest(more.pretrain_dir / "train.tsv")
    _, labelled = read_manifest(work / "train.tsv")
    assert root == str(work) and [r.id for r in rows[:TINY.num_train]] == [r.id for r in labelled]
    extra = rows[TINY.num_train:]
    assert len(extra) == 3 and all((work / r.video).is_file() and (work / r.audio).is_file() for r in extra)
    train_speakers = {r.id.split("-")[1] for r in labelled}
    assert {r.id.split("-")[1] for r in extra} <= train_speakers
    assert read_manifest(more.pretrain_dir / "valid.tsv")[1] == read_manifest(work / "valid.tsv")[1]
    texts = (work / "train.wrd").read_text().splitlines()
    assert len(texts) == TINY.num_train
