"""Dataset: manifest paths, labels (UTF-8), filtering with counts, crop/pad rules, noise."""

import logging
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from fairseq.data import Dictionary

from avhubert.dataset import AVHubertDataset
from avdata.manifest import ManifestError, read_manifest, write_manifest, ManifestRow
from avdata.noise import mix_noise, parse_snr
from avhubert.task import LabelEncoder


def _km_dict(corpus):
    return Dictionary.load(str(corpus / "dict.km.txt"))


def make_dataset(corpus, split="train", labels=("km",), rates=(25,), **kw):
    d = _km_dict(corpus)
    args = dict(
        sample_rate=25, label_paths=[str(corpus / f"{split}.{l}") for l in labels], label_rates=list(rates),
        pad_list=[d.pad()] * len(labels), eos_list=[d.eos()] * len(labels),
        label_processors=[LabelEncoder(d)] * len(labels), stack_order_audio=4, normalize=True,
    )
    args.update(kw)
    return AVHubertDataset(str(corpus / f"{split}.tsv"), **args)


def test_items_align_audio_video_and_labels(synthetic_corpus):
    ds = make_dataset(synthetic_corpus)
    item = ds[0]
    n = ds.rows[0].num_video_frames
    assert item["video_source"].shape == (n, 88, 88, 1)
    assert item["audio_source"].shape == (n, 104)
    assert item["label_list"][0].dtype == torch.long and len(item["label_list"][0]) == n
    # per-frame layer norm
    torch.testing.assert_close(item["audio_source"].mean(1), torch.zeros(n), atol=1e-4, rtol=0)


def test_collater_crops_with_shared_offsets(synthetic_corpus):
    ds = make_dataset(synthetic_corpus, max_sample_size=20, random_crop=True)
    samples = [ds[i] for i in range(3)]
    torch.manual_seed(0)
    batch = ds.collater(samples)
    src = batch["net_input"]["source"]
    assert src["audio"].shape == (3, 104, 20) and src["video"].shape == (3, 1, 20, 88, 88)
    assert not batch["net_input"]["padding_mask"].any()
    for b, s in enumerate(samples):
        # find the crop start from the video and check audio and labels use the same offset
        v = s["video_source"][..., 0]
        start = next(t for t in range(len(v) - 19) if torch.equal(v[t : t + 20], src["video"][b, 0]))
        torch.testing.assert_close(src["audio"][b].t(), s["audio_source"][start : start + 20])
        assert torch.equal(batch["target_list"][0][b], s["label_list"][0][start : start + 20])


def test_collater_pads_when_pad_audio(synthetic_corpus):
    ds = make_dataset(synthetic_corpus, pad_audio=True, max_sample_size=500)
    samples = [ds[i] for i in range(4)]
    batch = ds.collater(samples)
    lengths = [len(s["video_source"]) for s in samples]
    pm = batch["net_input"]["padding_mask"]
    assert pm.shape == (4, max(lengths))
    assert (~pm).sum(1).tolist() == lengths
    assert batch["net_input"]["source"]["video"][pm[:, None, :, None, None].expand(-1, 1, -1, 88, 88)].abs().sum() == 0
    assert (batch["target_list"][0][pm] == _km_dict(synthetic_corpus).pad()).all()


def test_100hz_labels_crop_at_four_times_the_rate(synthetic_corpus):
    ds = make_dataset(synthetic_corpus, labels=("mfcc",), rates=(100,), max_sample_size=20, random_crop=True)
    torch.manual_seed(1)
    batch = ds.collater([ds[i] for i in range(2)])
    assert batch["target_list"][0].shape == (2, 80)


def test_manifest_root_resolution_relative_and_absolute(synthetic_corpus, tmp_path):
    root, rows = read_manifest(synthetic_corpus / "valid.tsv")
    abs_rows = [ManifestRow(r.id, str(synthetic_corpus / r.video), str(synthetic_corpus / r.audio), r.num_video_frames, r.num_audio_samples) for r in rows]
    write_manifest(tmp_path / "valid.tsv", "/", abs_rows)  # reference style: root "/", absolute paths
    shutil.copy(synthetic_corpus / "valid.km", tmp_path / "valid.km")
    shutil.copy(synthetic_corpus / "dict.km.txt", tmp_path / "dict.km.txt")
    a, b = make_dataset(synthetic_corpus, "valid"), make_dataset(tmp_path, "valid")
    assert torch.equal(a[1]["audio_source"], b[1]["audio_source"])


def test_manifest_errors_name_file_and_line(tmp_path):
    (tmp_path / "bad.tsv").write_text("/root\nid1\tv.mp4\ta.wav\t10\n")
    with pytest.raises(ManifestError, match=r"bad\.tsv:2: expected 5 tab-separated columns"):
        read_manifest(tmp_path / "bad.tsv")
    (tmp_path / "dup.tsv").write_text("/root\nid1\tv.mp4\ta.wav\t10\t6400\nid1\tv.mp4\ta.wav\t10\t6400\n")
    with pytest.raises(ManifestError, match=r"dup\.tsv:3: duplicate id 'id1'"):
        read_manifest(tmp_path / "dup.tsv")


def test_filtering_counts_short_long_missing_and_unaligned(synthetic_corpus, tmp_path, caplog):
    corpus = tmp_path / "c"
    shutil.copytree(synthetic_corpus, corpus)
    root, rows = read_manifest(corpus / "train.tsv")
    write_manifest(corpus / "train.tsv", str(corpus), rows)  # point the copy's root at the copy
    sizes = np.array([r.num_video_frames for r in rows])
    ok = (sizes >= 35) & (sizes <= 55)
    i_missing, i_unaligned = np.flatnonzero(ok)[:2]
    (corpus / rows[i_missing].video).unlink()  # missing file
    labels = (corpus / "train.km").read_text().splitlines()
    labels[i_unaligned] += " 1" * 10  # 0.4 s too many labels -> unaligned
    (corpus / "train.km").write_text("\n".join(labels) + "\n")
    with caplog.at_level(logging.INFO):
        ds = make_dataset(corpus, min_keep_sample_size=35, max_keep_sample_size=55)
    expected = f"short={(sizes < 35).sum()}, long={(sizes > 55).sum()}, missing_file=1, unaligned=1"
    assert expected in caplog.text
    assert len(ds) == int(ok.sum()) - 2
    assert rows[i_missing].id not in [r.id for r in ds.rows]


def test_label_count_mismatch_is_an_error(synthetic_corpus, tmp_path):
    corpus = tmp_path / "c"
    shutil.copytree(synthetic_corpus, corpus)
    lines = (corpus / "train.km").read_text().splitlines()[:-1]
    (corpus / "train.km").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"train\.km: 15 label lines but 16 rows"):
        make_dataset(corpus)


def test_utf8_sequence_labels_are_read_by_byte_offsets(synthetic_corpus, tmp_path):
    corpus = tmp_path / "c"
    shutil.copytree(synthetic_corpus, corpus)
    texts = ["héllo wörld", "مرحبا بالعالم", "naïve café", "plain ascii"]
    (corpus / "valid.wrd").write_text("\n".join(texts) + "\n", encoding="utf-8")
    ds = make_dataset(corpus, "valid", labels=("wrd",), rates=(-1,), single_target=True, label_processors=None)
    assert [ds.get_labels(i)[0] for i in range(4)] == texts


def test_noise_mixing_hits_the_snr_and_is_seeded(tmp_path):
    rng = np.random.default_rng(0)
    clean = (rng.standard_normal(16000) * 3000).astype(np.int16)
    noise = (rng.standard_normal(4000) * 1000).astype(np.int16)
    sf.write(tmp_path / "n.wav", noise, 16000, subtype="PCM_16")
    from avdata.audio import read_wav

    mixed = mix_noise(clean, [str(tmp_path / "n.wav")], read_wav, 5.0, 1, np.random.default_rng(1))
    added = mixed.astype(float) - clean
    snr = 20 * np.log10(np.sqrt(np.mean(clean.astype(float) ** 2)) / np.sqrt(np.mean(added**2)))
    assert abs(snr - 5.0) < 0.1
    # tiled from offset 0
    assert np.abs(added[:4000] - added[4000:8000]).max() <= 1.0  # int16 rounding only
    again = mix_noise(clean, [str(tmp_path / "n.wav")], read_wav, (-5, 5), 1, np.random.default_rng(7))
    assert np.array_equal(again, mix_noise(clean, [str(tmp_path / "n.wav")], read_wav, (-5, 5), 1, np.random.default_rng(7)))
    assert parse_snr("(-5, 5)") == (-5, 5) and parse_snr("0") == 0.0
    with pytest.raises(ValueError):
        parse_snr("__import__('os')")


def test_dataset_noise_is_reproducible_across_instances(synthetic_corpus, tmp_path):
    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    sf.write(noise_dir / "n.wav", (np.random.default_rng(0).standard_normal(8000) * 2000).astype(np.int16), 16000, subtype="PCM_16")
    (noise_dir / "valid.tsv").write_text(f"{noise_dir / 'n.wav'}\n")
    kw = dict(noise_fn=str(noise_dir / "valid.tsv"), noise_prob=1.0, noise_snr="0")
    a = make_dataset(synthetic_corpus, "valid", **kw)[2]["audio_source"]
    b = make_dataset(synthetic_corpus, "valid", **kw)[2]["audio_source"]
    clean = make_dataset(synthetic_corpus, "valid")[2]["audio_source"]
    assert torch.equal(a, b) and not torch.allclose(a, clean)
