"""AV-HuBERT feature dumping from a tiny checkpoint, and the labels of both iteration types loaded by
the pre-training task (its 0.1 s alignment check keeps every utterance)."""

import numpy as np
import pytest
import torch

from avdata.audio import audio_features, read_wav
from avdata.manifest import read_manifest, resolve
from avdata.video import load_video, transform_video
from clustering import dump_hubert_feature
from clustering.dump_hubert_feature import AVHubertFeatureReader
from clustering.run_iteration import IterationConfig, check_label_alignment, run_iteration
from clustering.shards import load_feature_shard
from tests.clustering.tiny_checkpoint import write_tiny_checkpoint

LAYERS = 2


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), layers=LAYERS)


@pytest.fixture(scope="module")
def items(synthetic_corpus):
    root, rows = read_manifest(synthetic_corpus / "train.tsv")
    return [(root, r) for r in rows[:5]]


def _paths(item):
    root, row = item
    return resolve(root, row.video), resolve(root, row.audio)


def test_inputs_use_the_eval_transforms(ckpt, items):
    reader = AVHubertFeatureReader(str(ckpt), 1, device="cpu")
    video_path, audio_path = _paths(items[0])
    inputs = reader.load_inputs(video_path, audio_path)
    frames = load_video(video_path)
    assert inputs.video.shape == (len(frames), 88, 88) and inputs.audio.shape == (len(frames), 104)
    np.testing.assert_allclose(inputs.video.numpy(), transform_video(frames, train=False), atol=1e-6)
    expected_audio = audio_features(read_wav(audio_path), stack_order=4, num_video_frames=len(frames), normalize=True)
    np.testing.assert_allclose(inputs.audio.numpy(), expected_audio.numpy(), atol=1e-6)


@pytest.mark.parametrize("layer", [0, 1, LAYERS])
def test_batched_equals_one_by_one(ckpt, items, layer):
    reader = AVHubertFeatureReader(str(ckpt), layer, device="cpu", batch_frames=10_000)
    batched = list(reader.iter_feats(items))  # one padded batch of 5 utterances of different lengths
    assert len({b.shape[0] for b in batched}) > 1
    for item, feat in zip(items, batched):
        single = reader.get_feats(_paths(item))
        assert feat.shape == single.shape == (item[1].num_video_frames, 32)
        np.testing.assert_allclose(feat, single, atol=1e-5)


def test_layer_semantics(ckpt, items):
    """Layer 0 = fused front-end features; last layer = full-stack output before the final LayerNorm."""
    last = AVHubertFeatureReader(str(ckpt), LAYERS, device="cpu")
    front = AVHubertFeatureReader(str(ckpt), 0, device="cpu")
    inputs = [last.load_inputs(*_paths(items[0]))]
    model = last.model
    source = {"audio": inputs[0].audio.T[None], "video": inputs[0].video[None, None]}
    with torch.no_grad():
        full, _ = model.extract_features(source, padding_mask=None, mask=False, output_layer=None)
        conv, _ = model.extract_features(source, padding_mask=None, mask=False, ret_conv=True)
        ours_last = torch.from_numpy(last.extract_many(inputs)[0])
        np.testing.assert_allclose(model.encoder.layer_norm(ours_last).numpy(), full[0].numpy(), atol=1e-5)
    assert not np.allclose(ours_last.numpy(), full[0].numpy(), atol=1e-3)
    np.testing.assert_allclose(front.extract_many(inputs)[0], conv[0].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="encoder layers"):
        AVHubertFeatureReader(str(ckpt), LAYERS + 1, device="cpu").load()


def test_long_inputs_are_chunked(ckpt, items):
    reader = AVHubertFeatureReader(str(ckpt), 1, max_chunk=640 * 10, device="cpu")  # 10-frame pieces
    inputs = reader.load_inputs(*_paths(items[0]))
    feats = reader.extract_many([inputs])[0]
    assert feats.shape[0] == inputs.num_frames > 20
    np.testing.assert_allclose(feats[10:20], reader.extract_batch([inputs.slice(10, 20)])[0], atol=1e-5)


def test_audio_only_modality(ckpt, items):
    reader = AVHubertFeatureReader(str(ckpt), 1, device="cpu", modalities=["audio"])
    feats = reader.get_feats(_paths(items[0]))
    assert feats.shape == (items[0][1].num_video_frames, 32)


def test_cli_dumps_a_shard(ckpt, synthetic_corpus, tmp_path):
    args = [str(synthetic_corpus), "valid", str(ckpt), "1", "1", "0", str(tmp_path), "--device", "cpu", "--max_chunk", "1600000"]
    assert dump_hubert_feature.main(args) == 0
    feats, lens = load_feature_shard(tmp_path, "valid", 0, 1)
    _, rows = read_manifest(synthetic_corpus / "valid.tsv")
    assert lens.tolist() == [r.num_video_frames for r in rows] and feats.shape == (lens.sum(), 32)


def _load_task_dataset(corpus, label_dir, label, label_rate):
    from avhubert.task import AVHubertPretrainingConfig, AVHubertPretrainingTask

    cfg = AVHubertPretrainingConfig(
        data=str(corpus), label_dir=str(label_dir), labels=[label], label_rate=label_rate, sample_rate=25,
        stack_order_audio=4, normalize=True, max_sample_size=500, min_sample_size=1,
    )
    task = AVHubertPretrainingTask.setup_task(cfg)
    task.load_dataset("train")
    return task.datasets["train"]


def test_avhubert_iteration_labels_load_in_the_task(ckpt, synthetic_corpus, tmp_path):
    out = tmp_path / "iter2"
    cfg = IterationConfig(str(synthetic_corpus), str(out), feature="avhubert", ckpt=str(ckpt), layer=LAYERS,
                          n_clusters=6, nshard=2, percent=-1, n_init=2, device="cpu")
    run_iteration(cfg)
    _, rows = read_manifest(synthetic_corpus / "train.tsv")
    lines = (out / "train.km").read_text().splitlines()
    assert [len(line.split()) for line in lines] == [r.num_video_frames for r in rows]
    assert check_label_alignment(str(synthetic_corpus / "train.tsv"), str(out / "train.km"), 25) == []
    assert (out / "dict.km.txt").read_text().splitlines() == [f"{c} 10000" for c in range(6)]
    dataset = _load_task_dataset(synthetic_corpus, out, "km", 25)
    assert len(dataset) == len(rows)  # nothing skipped as unaligned
    sample = dataset[0]
    assert int(sample["label_list"][0].max()) < 6 + 4  # cluster c -> dictionary index c + 4


def test_mfcc_iteration_labels_load_in_the_task(synthetic_corpus, tmp_path):
    out = tmp_path / "iter1"
    cfg = IterationConfig(str(synthetic_corpus), str(out), feature="mfcc", n_clusters=5, nshard=3, percent=0.5,
                          n_init=2, label_ext="mfcc")
    run_iteration(cfg)
    _, rows = read_manifest(synthetic_corpus / "train.tsv")
    assert len((out / "train.mfcc").read_text().splitlines()) == len(rows)
    dataset = _load_task_dataset(synthetic_corpus, out, "mfcc", 100)
    assert len(dataset) == len(rows)


def _pretrain(corpus, label_dir, exp, *overrides):
    """3 updates of `conf/pretrain/tiny.yaml` on `corpus` with the labels of `label_dir`."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    cmd = [
        str(Path(sys.executable).parent / "fairseq-hydra-train"), "--config-dir", str(repo / "conf" / "pretrain"),
        "--config-name", "tiny", f"task.data={corpus}", f"task.label_dir={label_dir}",
        f"common.user_dir={repo / 'avhubert'}", f"hydra.run.dir={exp}", f"checkpoint.save_dir={exp}/ckpt",
        "optimization.max_update=3", *overrides,
    ]
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert "kept 16 of 16 utterances" in log  # no label skipped as unaligned
    return Path(exp) / "ckpt" / "checkpoint_last.pt"


@pytest.mark.slow
def test_two_iterations_with_pretraining(tmp_path):
    """MFCC labels -> pre-train -> features of the trained checkpoint -> km labels -> pre-train."""
    from demo.synthetic_data import make_corpus

    corpus = make_corpus(tmp_path / "corpus", {"train": 16, "valid": 4}, seed=1)
    iter1 = tmp_path / "iter1"
    run_iteration(IterationConfig(str(corpus), str(iter1), feature="mfcc", n_clusters=6, nshard=2, percent=-1,
                                  n_init=2, label_ext="mfcc"))
    ckpt = _pretrain(corpus, iter1, tmp_path / "exp1", "task.labels=[mfcc]", "model.label_rate=100",
                     "model.masking_type=feature", "model.mask_prob_image=0.8", "model.mask_length_image=10",
                     "model.mask_prob_audio=0.8", "model.mask_length_audio=10")
    iter2 = tmp_path / "iter2"
    run_iteration(IterationConfig(str(corpus), str(iter2), feature="avhubert", ckpt=str(ckpt), layer=1,
                                  n_clusters=6, nshard=2, percent=-1, n_init=2, device="cpu"))
    _pretrain(corpus, iter2, tmp_path / "exp2")
