"""Dataset randomness depends only on (seed, epoch, utterance index): identical batches in two
runs and with 0 or 2 DataLoader workers, whatever the global RNGs hold; another epoch crops
(and augments) differently."""

from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.plugin.test_dataset import make_dataset

CROP = 20  # video frames; every synthetic utterance is longer, so every item is cropped
BATCHES = [[0, 1, 2], [3, 4, 5, 6], [7, 8], [9, 10, 11, 12, 13]]


@pytest.fixture(scope="module")
def noise_list(tmp_path_factory) -> Path:
    """Two noise files, so the noise choice is itself a random decision."""
    d = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        sf.write(d / f"{name}.wav", (rng.standard_normal(9000) * 2000).astype(np.int16), 16000, subtype="PCM_16")
    (d / "train.tsv").write_text(f"{d / 'a.wav'}\n{d / 'b.wav'}\n")
    return d / "train.tsv"


def _dataset(corpus: Path, noise: Path, **kw: Any):
    """Every random decision switched on: time crop, image crop + flip, noise (50 %, file, SNR)."""
    args = dict(max_sample_size=CROP, random_crop=True, image_aug=True, noise_fn=str(noise), noise_prob=0.5,
                noise_snr="(-5, 5)", seed=1337)
    args.update(kw)
    return make_dataset(corpus, "train", **args)


def _load(ds, epoch: int, num_workers: int) -> List[Dict[str, Any]]:
    ds.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=BATCHES, collate_fn=ds.collater, num_workers=num_workers)
    return list(loader)


def _flat(batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    src = batch["net_input"]["source"]
    return {"id": batch["id"], "audio": src["audio"], "video": src["video"],
            "padding_mask": batch["net_input"]["padding_mask"], "target": batch["target_list"][0]}


def _assert_same(a: List[Dict[str, Any]], b: List[Dict[str, Any]]) -> None:
    assert len(a) == len(b) == len(BATCHES)
    for x, y in zip(a, b):
        fx, fy = _flat(x), _flat(y)
        for key in fx:
            assert torch.equal(fx[key], fy[key]), key


def test_batches_are_identical_across_runs_and_worker_counts(synthetic_corpus, noise_list):
    assert min(_dataset(synthetic_corpus, noise_list).sizes) > CROP
    torch.manual_seed(0)
    np.random.seed(0)
    first = _load(_dataset(synthetic_corpus, noise_list), epoch=3, num_workers=0)
    torch.manual_seed(123)  # other global RNG states must not matter
    np.random.seed(123)
    second = _load(_dataset(synthetic_corpus, noise_list), epoch=3, num_workers=0)
    workers = _load(_dataset(synthetic_corpus, noise_list), epoch=3, num_workers=2)
    _assert_same(first, second)
    _assert_same(first, workers)
    assert first[0]["net_input"]["source"]["video"].shape[2] == CROP


def _crop_starts(ds, batches: List[Dict[str, Any]]) -> List[int]:
    """Recover each item's crop offset from its (cropped) audio features (noise-free dataset)."""
    starts = []
    for batch in batches:
        for i, audio in zip(batch["id"].tolist(), batch["net_input"]["source"]["audio"]):
            full = ds[i]["audio_source"]  # [T, F]
            cands = [t for t in range(len(full) - CROP + 1) if torch.equal(full[t : t + CROP], audio.t())]
            assert len(cands) == 1, f"item {i}: batch audio is not one window of its features"
            starts.append(cands[0])
    return starts


def test_another_epoch_or_seed_gives_other_crops(synthetic_corpus, noise_list):
    ds = _dataset(synthetic_corpus, noise_list, image_aug=False, noise_prob=0.0)
    one, two = _load(ds, epoch=1, num_workers=0), _load(ds, epoch=2, num_workers=0)
    starts_one, starts_two = _crop_starts(ds, one), _crop_starts(ds, two)
    assert starts_one == _crop_starts(ds, _load(ds, epoch=1, num_workers=0))
    assert sum(a != b for a, b in zip(starts_one, starts_two)) >= len(starts_one) // 2
    assert any(not torch.equal(a["net_input"]["source"]["audio"], b["net_input"]["source"]["audio"]) for a, b in zip(one, two))
    other_seed = _dataset(synthetic_corpus, noise_list, image_aug=False, noise_prob=0.0, seed=7)
    assert _crop_starts(ds, _load(other_seed, epoch=1, num_workers=0)) != starts_one
    no_random = _dataset(synthetic_corpus, noise_list, image_aug=False, noise_prob=0.0, random_crop=False)
    assert set(_crop_starts(ds, _load(no_random, epoch=2, num_workers=0))) == {0}


def test_vtlp_is_deterministic_per_item_and_changes_only_the_audio(synthetic_corpus, noise_list):
    plain = _load(_dataset(synthetic_corpus, noise_list), epoch=1, num_workers=0)
    warped = _load(_dataset(synthetic_corpus, noise_list, audio_vtlp=0.1), epoch=1, num_workers=0)
    again = _load(_dataset(synthetic_corpus, noise_list, audio_vtlp=0.1), epoch=1, num_workers=2)
    _assert_same(warped, again)
    for p, w in zip(plain, warped):
        fp, fw = _flat(p), _flat(w)
        assert torch.equal(fp["video"], fw["video"]) and torch.equal(fp["target"], fw["target"])
        assert fp["audio"].shape == fw["audio"].shape and not torch.allclose(fp["audio"], fw["audio"])
    with pytest.raises(ValueError, match="audio_vtlp"):
        _dataset(synthetic_corpus, noise_list, audio_vtlp=1.5)
