"""`av_hubert_classifier`, the `lbl` label type and the `av_hubert_classification` criterion, in process
(tiny models, the synthetic corpus): pooling over unpadded frames only, the freeze schedule, class
labels from `{split}.lbl` or folder names with errors naming file and line, accuracy / top-k / confusion."""

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from fairseq import metrics
from fairseq.data import Dictionary

from avhubert.criterion_classification import ClassificationCriterion, confusion_matrix, per_class_accuracy
from avhubert.model_asr import HubertEncoderWrapper
from avhubert.model_classifier import AVHubertClassifier, AVHubertClassifierConfig, TimePooling
from avhubert.task import AVHubertPretrainingConfig, AVHubertPretrainingTask
from avdata.manifest import read_manifest, write_manifest
from tests.fixed_init import fixed_init_, fixed_tensor
from tests.plugin.tiny_model import random_batch, tiny_model


def classifier(pooling: str, num_classes: int = 5, freeze: int = 0) -> AVHubertClassifier:
    cfg = AVHubertClassifierConfig(w2v_path="-", pooling=pooling, freeze_finetune_updates=freeze, final_dropout=0.0)
    model = AVHubertClassifier(HubertEncoderWrapper(tiny_model(), cfg), cfg, num_classes)
    return fixed_init_(model)


@pytest.mark.parametrize("kind", ["mean", "attention"])
def test_pooling_ignores_padded_frames(kind):
    torch.manual_seed(0)
    pool = TimePooling(8, kind)
    x = fixed_tensor([2, 6, 8])
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    w = pool.weights(x, pad)
    assert torch.allclose(w.sum(1), torch.ones(2)) and (w[1, 4:] == 0).all()
    garbage = x.clone()
    garbage[1, 4:] = 1e4  # padded frames must not change the result
    assert torch.allclose(pool(garbage, pad)[1], pool(x[1:, :4], None)[0], atol=1e-5)
    if kind == "mean":
        assert torch.allclose(pool(x, pad)[1], x[1, :4].mean(0), atol=1e-6)


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_padded_batch_gives_the_unpadded_logits(pooling):
    model = classifier(pooling).eval()
    audio, video, pad = random_batch(bsz=2, tsz=12, lengths=[12, 8])
    out = model(source={"audio": audio, "video": video}, padding_mask=pad)
    assert out["logits"].shape == (2, 5)
    alone = model(source={"audio": audio[1:, :, :8], "video": video[1:, :, :8]}, padding_mask=None)
    assert torch.allclose(out["logits"][1], alone["logits"][0], atol=1e-4)
    assert torch.allclose(model.get_normalized_probs(out, log_probs=False).sum(-1), torch.ones(2))


def test_state_dict_keys_follow_the_seq2seq_encoder_naming():
    keys = set(classifier("attention").state_dict())
    assert {"classifier.weight", "classifier.bias", "pool.score.weight"} <= keys
    assert any(k.startswith("encoder.w2v_model.encoder.layers.0.") for k in keys)
    assert not any(k.startswith("pool.") for k in classifier("mean").state_dict())


def test_frozen_updates_train_only_the_head():
    model = classifier("attention", freeze=2).train()
    audio, video, pad = random_batch(bsz=2, tsz=10)
    for updates, encoder_grad in ((1, False), (2, True)):
        model.zero_grad(set_to_none=True)
        model.set_num_updates(updates)
        model(source={"audio": audio, "video": video}, padding_mask=pad)["logits"].sum().backward()
        assert model.classifier.weight.grad is not None and model.pool.score.weight.grad is not None
        enc = [p.grad is not None for p in model.encoder.w2v_model.encoder.parameters()]
        assert all(enc) if encoder_grad else not any(enc), updates


def _task(data: Path, **kw) -> AVHubertPretrainingTask:
    cfg = AVHubertPretrainingConfig(data=str(data), label_dir=str(data), labels=["lbl"], label_rate=-1, single_target=True,
                                    fine_tuning=True, sample_rate=25, stack_order_audio=4, normalize=True, pad_audio=True,
                                    max_trim_sample_size=500, **kw)
    return AVHubertPretrainingTask.setup_task(cfg)


def test_lbl_labels_are_one_class_index_per_clip(cls_data):
    task = _task(cls_data)
    task.load_dataset("valid")
    ds = task.datasets["valid"]
    names = [task.target_dictionary[i] for i in range(task.target_dictionary.nspecial, len(task.target_dictionary))]
    expected = [names.index(w) for w in (cls_data / "valid.lbl").read_text().split()]
    batch = ds.collater([ds[i] for i in range(len(ds))])
    assert batch["target"].shape == (len(ds), 1)
    assert [expected[i] for i in batch["id"].tolist()] == batch["target"][:, 0].tolist()


def test_labels_from_parent_folders(cls_data, tmp_path):
    root, rows = read_manifest(cls_data / "valid.tsv")
    words = (cls_data / "valid.lbl").read_text().split()
    moved = []
    for row, word in zip(rows, words):
        (tmp_path / "video" / word).mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(root) / row.video, tmp_path / "video" / word / Path(row.video).name)
        moved.append(row.__class__(row.id, f"video/{word}/{Path(row.video).name}", str(Path(root) / row.audio),
                                   row.num_video_frames, row.num_audio_samples))
    write_manifest(tmp_path / "valid.tsv", str(tmp_path), moved)
    shutil.copy(cls_data / "dict.lbl.txt", tmp_path / "dict.lbl.txt")
    task = _task(tmp_path, label_from_folder=True)
    task.load_dataset("valid")  # no valid.lbl in tmp_path
    ds = task.datasets["valid"]
    d = task.target_dictionary
    assert [d[int(ds[i]["label_list"][0]) + d.nspecial] for i in range(len(ds))] == words


def test_unknown_class_names_the_file_and_line(cls_data, tmp_path):
    for f in cls_data.iterdir():
        if f.is_file():
            shutil.copy(f, tmp_path / f.name)
    lines = (tmp_path / "valid.lbl").read_text().splitlines()
    lines[2] = "elephant"
    (tmp_path / "valid.lbl").write_text("\n".join(lines) + "\n")
    task = _task(tmp_path)
    with pytest.raises(ValueError, match=r"valid\.lbl: line 3: class 'elephant' is not in dict\.lbl\.txt"):
        task.load_dataset("valid")


def test_confusion_and_per_class_accuracy():
    m = confusion_matrix(torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 1, 2, 0, 0]), 4).numpy()
    assert m.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [2, 0, 1, 0], [0, 0, 0, 0]]
    acc = per_class_accuracy(m, ["a", "b", "c", "d"])
    assert acc == {"a": {"accuracy": 50.0, "count": 2, "top_confusion": "b"},
                   "b": {"accuracy": 100.0, "count": 1, "top_confusion": None},
                   "c": {"accuracy": 33.33, "count": 3, "top_confusion": "a"}}


class _Fixed(torch.nn.Module):
    """A 'model' returning given logits."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, **kw):
        return {"logits": self.logits}


def test_criterion_accuracy_topk_smoothing_and_report(tmp_path):
    d = Dictionary()
    names = [f"w{i}" for i in range(6)]
    for n in names:
        d.add_symbol(n)
    task = SimpleNamespace(target_dictionary=d)
    crit = ClassificationCriterion(task, label_smoothing=0.1, report_top_k=2, report_dir=str(tmp_path), tensorboard_dir=str(tmp_path / "tb"))
    logits = torch.tensor([[3.0, 2.0, 0, 0, 0, 0], [0, 0, 1.0, 3.0, 0, 0], [0, 0, 0, 0, 2.0, 1.0], [1.0, 0, 0, 0, 0, 3.0]])
    target = torch.tensor([[0], [2], [5], [1]])  # top-1 right: 0; top-2 right: 0, 2, 5
    model = _Fixed(logits[:2]).eval()
    batches = [crit(model, {"net_input": {}, "target": target[:2]})]
    model.logits = logits[2:]
    batches.append(crit(model, {"net_input": {}, "target": target[2:]}))
    assert float(batches[0][0]) == pytest.approx(float(torch.nn.functional.cross_entropy(logits[:2], target[:2, 0], reduction="sum", label_smoothing=0.1)))
    with metrics.aggregate(new_root=True) as agg:
        for _, _, log in batches:
            crit.reduce_metrics([log])
        stats = agg.get_smoothed_values()
    assert stats["accuracy"] == 25.0 and stats["top2_accuracy"] == 75.0
    nll = -torch.log_softmax(logits, -1)[torch.arange(4), target[:, 0]].sum() / 4 / math.log(2)
    assert stats["nll_loss"] == pytest.approx(float(nll), abs=1e-3)
    stats["num_updates"] = 7
    report = crit.post_validate(stats, agg, 7)
    assert report["per_class"]["w0"] == {"accuracy": 100.0, "count": 1, "top_confusion": None}
    assert report["per_class"]["w2"]["top_confusion"] == "w3"
    out = tmp_path / "classification"
    assert json.loads((out / "valid_per_class.json").read_text())["num_updates"] == 7
    tsv = (out / "valid_confusion.tsv").read_text().splitlines()
    assert tsv[0].split("\t")[1:] == names and tsv[3].split("\t") == ["w2", "0", "0", "0", "1", "0", "0"]
    assert (out / "valid_confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((tmp_path / "tb").rglob("events.*"))


def test_logging_outputs_sum_like_fairseq_distributed_sync():
    """Summed key by key (fairseq's statistics sync across ranks), the logs give the same metrics."""
    d = Dictionary()
    for n in ("a", "b", "c"):
        d.add_symbol(n)
    crit = ClassificationCriterion(SimpleNamespace(target_dictionary=d), report_top_k=2)
    assert crit.logging_outputs_can_be_summed()
    logs = [crit(_Fixed(fixed_tensor([4, 3], phase=p)).eval(), {"net_input": {}, "target": torch.tensor([[0], [1], [2], [1]])})[2]
            for p in (0.0, 1.0)]
    summed = {k: sum(torch.as_tensor(log[k]).double() for log in logs) for k in logs[0]}
    results = []
    for outputs in (logs, [summed]):
        with metrics.aggregate(new_root=True) as agg:
            crit.reduce_metrics(outputs)
            results.append((agg.get_smoothed_values(), agg["_confusion"].sum))
    assert results[0][0] == results[1][0] and torch.equal(results[0][1], results[1][1])
    assert results[0][1].sum() == 8
    _, n, log = crit(_Fixed(torch.zeros(2, 3)).train(), {"net_input": {}, "target": torch.tensor([[0], [1]])})
    assert n == 2 and "_confusion" not in log  # training steps carry no matrix
    with pytest.raises(ValueError, match="label_smoothing"):
        ClassificationCriterion(SimpleNamespace(target_dictionary=d), label_smoothing=1.0)
