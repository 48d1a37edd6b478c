"""Bad-input catalogue (issue 12, item 6): every entry point, fed missing, empty, truncated,
wrong-format, wrong-rate, non-finite and mismatched-modality inputs, either stops with a clear
error naming the file (or the utterance) or skips the input and counts it.

Entry points: training data (the dataset the pre-training / fine-tuning tasks build), decoding
(`infer_s2s.decode`), clustering (MFCC and AV-HuBERT feature dumps, k-means, labels) and
preparation (own videos). Checkpoint files (missing, truncated, refused) are covered by
`tests/plugin/test_checkpoint_safety.py`.
"""

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from avdata.manifest import ManifestRow, read_manifest, write_manifest

pytestmark = pytest.mark.faults

# ----------------------------------------------------------------------------- corruptions


def missing(p: Path) -> None:
    p.unlink()


def empty(p: Path) -> None:
    p.write_bytes(b"")


def truncated(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: min(len(data) // 3, 30)])


def wrong_format(p: Path) -> None:
    p.write_text("this is not a media file\n")


def wrong_rate(p: Path) -> None:
    sf.write(p, np.zeros(8000, dtype=np.int16), 8000, subtype="PCM_16")


def stereo(p: Path) -> None:
    sf.write(p, np.zeros((16000, 2), dtype=np.int16), 16000, subtype="PCM_16")


def nonfinite(p: Path) -> None:
    wav = np.full(32000, 0.1, dtype=np.float32)
    wav[5000:6000] = np.nan
    sf.write(p, wav, 16000, subtype="FLOAT")


# ----------------------------------------------------------------------------- training data


def _dataset(corpus: Path, modalities=("audio", "video")):
    from fairseq.data import Dictionary

    from avhubert.dataset import AVHubertDataset
    from avhubert.task import LabelEncoder

    d = Dictionary.load(str(corpus / "dict.km.txt"))
    return AVHubertDataset(
        str(corpus / "train.tsv"), sample_rate=25, label_paths=[str(corpus / "train.km")], label_rates=[25],
        pad_list=[d.pad()], eos_list=[d.eos()], label_processors=[LabelEncoder(d)], stack_order_audio=4,
        normalize=True, modalities=modalities,
    )


@pytest.fixture()
def corpus(synthetic_corpus, tmp_path) -> Path:
    dst = tmp_path / "corpus"
    shutil.copytree(synthetic_corpus, dst)
    root, rows = read_manifest(dst / "train.tsv")
    write_manifest(dst / "train.tsv", str(dst), rows)  # root -> the copy
    return dst


def _first(corpus: Path, column: str) -> tuple:
    root, rows = read_manifest(corpus / "train.tsv")
    row = rows[0]
    return row, Path(root) / getattr(row, column)


DATASET_ERRORS = [
    ("video", empty), ("video", truncated), ("video", wrong_format),
    ("audio", empty), ("audio", truncated), ("audio", wrong_format), ("audio", wrong_rate), ("audio", stereo),
    ("audio", nonfinite),
]


@pytest.mark.parametrize("column,corrupt", DATASET_ERRORS, ids=[f"{c}-{f.__name__}" for c, f in DATASET_ERRORS])
def test_dataset_bad_media_is_named(corpus, column, corrupt):
    row, path = _first(corpus, column)
    corrupt(path)
    ds = _dataset(corpus)
    index = [r.id for r in ds.rows].index(row.id)
    with pytest.raises(Exception) as e:
        ds[index]
    assert path.name in str(e.value), f"error does not name {path}: {e.value!r}"


@pytest.mark.parametrize("column", ["video", "audio"])
def test_dataset_missing_media_is_skipped_and_counted(corpus, column, caplog):
    _, path = _first(corpus, column)
    missing(path)
    caplog.set_level(logging.INFO)
    ds = _dataset(corpus)
    assert "missing_file=1" in caplog.text and path.name in caplog.text
    assert len(ds) == len(read_manifest(corpus / "train.tsv")[1]) - 1


def test_dataset_mismatched_modality_is_skipped_and_counted(corpus, caplog):
    """A row without a video path while the task wants audio and video."""
    root, rows = read_manifest(corpus / "train.tsv")
    rows[0] = ManifestRow(rows[0].id, None, rows[0].audio, rows[0].num_video_frames, rows[0].num_audio_samples)
    write_manifest(corpus / "train.tsv", root, rows)
    caplog.set_level(logging.INFO)
    assert len(_dataset(corpus)) == len(rows) - 1
    assert "missing_file=1" in caplog.text and rows[0].id in caplog.text
    assert len(_dataset(corpus, modalities=("audio",))) == len(rows)  # audio-only use keeps it


@pytest.mark.parametrize("corrupt", [missing, empty, truncated])
def test_dataset_bad_manifest_or_labels_are_named(corpus, corrupt):
    for name in ("train.tsv", "train.km"):
        shutil.copy(corpus / name, corpus / f"{name}.orig")
        corrupt(corpus / name)
        with pytest.raises(Exception) as e:
            _dataset(corpus)
        assert name in str(e.value), f"{corrupt.__name__} {name}: {e.value!r}"
        shutil.copy(corpus / f"{name}.orig", corpus / name)


# ----------------------------------------------------------------------------- clustering


@pytest.fixture()
def audio_corpus(tmp_path) -> Path:
    from tests.clustering.synth import make_corpus

    return make_corpus(tmp_path / "data", splits=("train",), num_utts=(4,))


MFCC_ERRORS = [missing, empty, truncated, wrong_format, wrong_rate, nonfinite]


@pytest.mark.parametrize("corrupt", MFCC_ERRORS, ids=[f.__name__ for f in MFCC_ERRORS])
def test_mfcc_dump_bad_audio_is_named(audio_corpus, tmp_path, corrupt):
    from clustering.dump_mfcc_feature import dump_mfcc_shard

    path = audio_corpus / "audio" / "train002.wav"
    corrupt(path)
    with pytest.raises(Exception) as e:
        dump_mfcc_shard(str(audio_corpus), "train", 1, 0, str(tmp_path / "feat"), progress=False)
    assert "train002" in str(e.value), repr(e.value)
    assert not (tmp_path / "feat" / "train_0_1.npy").exists()


def test_hubert_dump_mismatched_modality_is_named(synthetic_corpus, tmp_path):
    """`--modalities video` on an audio-only manifest."""
    from clustering.dump_hubert_feature import dump_hubert_shard
    from tests.clustering.synth import make_corpus
    from tests.clustering.tiny_checkpoint import write_tiny_checkpoint

    data = make_corpus(tmp_path / "data", splits=("train",), num_utts=(2,))
    ckpt = write_tiny_checkpoint(tmp_path / "ckpt", layers=1)
    with pytest.raises(ValueError) as e:
        dump_hubert_shard(str(data), "train", str(ckpt), 1, 1, 0, str(tmp_path / "feat"), device="cpu",
                          modalities=["video"], progress=False)
    assert "train000" in str(e.value) and "video" in str(e.value), repr(e.value)


@pytest.fixture()
def feats(audio_corpus, tmp_path) -> Path:
    from clustering.dump_mfcc_feature import dump_mfcc_shard

    for rank in range(2):
        dump_mfcc_shard(str(audio_corpus), "train", 2, rank, str(tmp_path / "feat"), progress=False)
    return tmp_path / "feat"


SHARD_ERRORS = [("npy", missing), ("npy", empty), ("npy", truncated), ("npy", wrong_format),
                ("len", missing), ("len", empty), ("len", wrong_format)]


@pytest.mark.parametrize("ext,corrupt", SHARD_ERRORS, ids=[f"{e}-{f.__name__}" for e, f in SHARD_ERRORS])
def test_kmeans_and_labels_name_a_bad_feature_shard(feats, tmp_path, ext, corrupt):
    from clustering.dump_km_label import dump_km_label
    from clustering.learn_kmeans import learn_kmeans

    learn_kmeans(str(feats), "train", 2, str(tmp_path / "km.npy"), 4, device="cpu", n_init=2)
    bad = feats / f"train_1_2.{ext}"
    corrupt(bad)
    for call in (
        lambda: learn_kmeans(str(feats), "train", 2, str(tmp_path / "km2.npy"), 4, device="cpu", n_init=2),
        lambda: dump_km_label(str(feats), "train", str(tmp_path / "km.npy"), 2, 1, str(tmp_path / "lab"), device="cpu", progress=False),
    ):
        with pytest.raises(Exception) as e:
            call()
        assert bad.name in str(e.value), repr(e.value)


KM_ERRORS = [missing, empty, truncated, wrong_format]


@pytest.mark.parametrize("corrupt", KM_ERRORS, ids=[f.__name__ for f in KM_ERRORS])
def test_labels_name_a_bad_kmeans_model(feats, tmp_path, corrupt):
    from clustering.dump_km_label import dump_km_label
    from clustering.learn_kmeans import learn_kmeans

    km = tmp_path / "km.bin"
    learn_kmeans(str(feats), "train", 2, str(km), 4, device="cpu", n_init=2)
    corrupt(km)
    with pytest.raises(Exception) as e:
        dump_km_label(str(feats), "train", str(km), 2, 0, str(tmp_path / "lab"), device="cpu", progress=False)
    assert km.name in str(e.value), repr(e.value)


def test_labels_name_a_model_of_another_dimension(feats, tmp_path):
    from clustering.dump_km_label import dump_km_label

    np.save(tmp_path / "km.npy", np.zeros((4, 13), dtype=np.float32))
    with pytest.raises(ValueError, match=r"dim 39 .*km\.npy has centroids of dim 13"):
        dump_km_label(str(feats), "train", str(tmp_path / "km.npy"), 2, 0, str(tmp_path / "lab"), device="cpu", progress=False)


@pytest.mark.parametrize("corrupt", [missing, empty])
def test_clustering_bad_manifest_is_named(audio_corpus, tmp_path, corrupt):
    from clustering.dump_mfcc_feature import dump_mfcc_shard

    corrupt(audio_corpus / "train.tsv")
    with pytest.raises(Exception) as e:
        dump_mfcc_shard(str(audio_corpus), "train", 1, 0, str(tmp_path / "feat"), progress=False)
    assert "train.tsv" in str(e.value), repr(e.value)


# ----------------------------------------------------------------------------- preparation


def _clip(path: Path, frames: int = 30, audio: bool = True) -> Path:
    from avdata.ffmpeg import run_ffmpeg
    from avdata.video import write_video
    from preparation.media import write_wav_int16

    rng = np.random.default_rng(0)
    silent = path.with_name(path.stem + ".v.mp4")
    write_video(silent, rng.integers(0, 255, (frames, 64, 64, 3), dtype=np.uint8), fps=25)
    if not audio:
        silent.rename(path)
        return path
    wav = path.with_name(path.stem + ".a.wav")
    write_wav_int16(wav, (rng.normal(size=frames * 1764) * 3000).astype(np.int16), 44_100)
    run_ffmpeg(["-i", silent, "-i", wav, "-c:v", "copy", "-c:a", "aac", path])
    silent.unlink()
    wav.unlink()
    return path


PREP_ERRORS = {"empty": empty, "truncated": truncated, "wrong_format": wrong_format, "no_audio_track": None}


def test_own_videos_bad_clips_are_listed_per_file(tmp_path, caplog):
    """Each broken clip is listed with its reason in the failures file; the good one goes through;
    the run exits 1 and its last line says how many clips failed and where they are listed."""
    from preparation.own_videos import prepare as prepare_own_videos

    src = tmp_path / "in"
    src.mkdir()
    _clip(src / "good.mp4")
    for name, corrupt in PREP_ERRORS.items():
        p = _clip(src / f"{name}.mp4", audio=corrupt is not None)
        if corrupt is not None:
            corrupt(p)
    out = tmp_path / "out"
    rc = prepare_own_videos.main(["--in-dir", str(src), "--out-dir", str(out), "--stages", "convert", "audio", "--no-progress"])
    assert rc == 1
    failures = "".join(p.read_text() for p in out.glob("failures.*.tsv"))
    listed = {line.split("\t")[0] for line in failures.splitlines()}
    assert listed == set(PREP_ERRORS), failures
    no_audio = next(line for line in failures.splitlines() if line.startswith("no_audio_track\t"))
    assert "no audio" in no_audio.lower(), no_audio
    assert (out / "audio" / "good.wav").is_file() and (out / "video25" / "good.mp4").is_file()
    assert f"{len(PREP_ERRORS)} of {len(PREP_ERRORS) + 1} clips failed" in caplog.text


@pytest.mark.parametrize("case", ["missing_dir", "empty_dir"])
def test_own_videos_missing_or_empty_input_folder(tmp_path, case):
    from preparation.own_videos import prepare as prepare_own_videos

    src = tmp_path / "in"
    if case == "empty_dir":
        src.mkdir()
    with pytest.raises(FileNotFoundError, match=str(src)):
        prepare_own_videos.main(["--in-dir", str(src), "--out-dir", str(tmp_path / "out"), "--no-progress"])


# ----------------------------------------------------------------------------- decoding


def test_decoding_missing_checkpoint_is_named(tmp_path, synthetic_corpus):
    from omegaconf import OmegaConf

    from avhubert.infer_s2s import InferConfig, decode

    cfg = OmegaConf.structured(InferConfig)
    cfg.common_eval.path, cfg.common_eval.results_path = str(tmp_path / "nope.pt"), str(tmp_path / "dec")
    cfg.dataset.gen_subset = "test"
    cfg.override.data = cfg.override.label_dir = str(synthetic_corpus)
    with pytest.raises(BaseException) as e:
        decode(cfg)
    assert "nope.pt" in str(e.value) or "nope.pt" in repr(e.value.__context__), repr(e.value)


@pytest.fixture()
def decode_data(decoder_model, tmp_path):
    """A private copy of the tiny model's test split (manifest, media, references, dictionary)."""
    data, ckpt = decoder_model
    d = tmp_path / "decdata"
    (d / "media").mkdir(parents=True)
    for name in ("test.wrd", "dict.wrd.txt"):
        shutil.copy(data / name, d / name)
    root, rows = read_manifest(data / "test.tsv")
    new_rows = []
    for r in rows:
        video, audio = Path(root) / r.video, Path(root) / r.audio
        shutil.copy(video, d / "media" / video.name)
        shutil.copy(audio, d / "media" / audio.name)
        new_rows.append(ManifestRow(r.id, f"media/{video.name}", f"media/{audio.name}", r.num_video_frames, r.num_audio_samples))
    write_manifest(d / "test.tsv", str(d), new_rows)
    return d, ckpt, new_rows


def _decode(d: Path, ckpt: Path, out: Path):
    from omegaconf import OmegaConf

    from avhubert.infer_s2s import InferConfig, decode

    cfg = OmegaConf.structured(InferConfig)
    cfg.common_eval.path, cfg.common_eval.results_path = str(ckpt), str(out)
    cfg.dataset.gen_subset, cfg.dataset.max_tokens = "test", 1000
    cfg.generation.beam = 2
    cfg.override.modalities, cfg.override.data, cfg.override.label_dir = ["audio", "video"], str(d), str(d)
    return decode(cfg)


@pytest.mark.parametrize("column", ["video", "audio"])
def test_decoding_missing_media_is_skipped_and_counted(decode_data, tmp_path, column):
    d, ckpt, rows = decode_data
    missing(d / getattr(rows[0], column))
    res = _decode(d, ckpt, tmp_path / "out")
    assert res["num_skipped"] == 1 and res["num_utts"] == len(rows) - 1
    metrics = (tmp_path / "out" / "metrics.json").read_text()
    assert rows[0].id in metrics
    wer = next((tmp_path / "out").glob("wer.*")).read_text()
    assert f"{len(rows) - 1} of {len(rows)} utterances decoded; 1 SKIPPED: {rows[0].id}" in wer


DECODE_ERRORS = [("audio", truncated), ("audio", wrong_rate), ("audio", nonfinite), ("video", wrong_format)]


@pytest.mark.parametrize("column,corrupt", DECODE_ERRORS, ids=[f"{c}-{f.__name__}" for c, f in DECODE_ERRORS])
def test_decoding_bad_media_is_named(decode_data, tmp_path, column, corrupt):
    d, ckpt, rows = decode_data
    path = d / getattr(rows[1], column)
    corrupt(path)
    with pytest.raises(Exception) as e:
        _decode(d, ckpt, tmp_path / "out")
    assert path.name in str(e.value), repr(e.value)
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_decoding_missing_split_is_named(decode_data, tmp_path):
    d, ckpt, _ = decode_data
    missing(d / "test.tsv")
    with pytest.raises(Exception) as e:
        _decode(d, ckpt, tmp_path / "out")
    assert "test.tsv" in str(e.value), repr(e.value)
