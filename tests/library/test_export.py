"""Export: pickle-free safetensors folders (`avhubert.safetensors_io`), ONNX and TorchScript encoders
(`avhubert.export`), each checked against the PyTorch model it came from."""

import pickle
from pathlib import Path
from typing import Any, Tuple

import pytest
import torch
from omegaconf import OmegaConf

import avhubert  # noqa: F401  (registers the task and models)
from avhubert.model import AVHubertConfig
from avhubert.safetensors_io import CONFIG_NAME, load_safetensors, load_safetensors_with_task, save_safetensors
from avhubert.task import AVHubertPretrainingConfig
from tests.conftest import DATA, shared_fixture
from tests.fixed_init import fixed_init_, fixed_tensor

TINY_MODEL = dict(
    label_rate=25, encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
    conv_pos=8, conv_pos_groups=4, resnet_width=4, final_dim=16, audio_feat_dim=104, layer_norm_first=True,
    untie_final_proj=True, dropout=0.0, attention_dropout=0.0, dropout_input=0.0, encoder_layerdrop=0.0,
)


def _pretrain_cfg() -> dict:
    model = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(AVHubertConfig), TINY_MODEL))
    task = OmegaConf.to_container(OmegaConf.structured(AVHubertPretrainingConfig(
        data=str(DATA / "fixtures"), labels=["km"], label_rate=25, sample_rate=25, normalize=True, stack_order_audio=4,
        max_trim_sample_size=None)))
    return {"model": {**model, "_name": "av_hubert"}, "task": {**task, "_name": "av_hubert_pretraining"}}


def tiny_model(kind: str, **model_overrides: Any) -> Tuple[torch.nn.Module, dict, Any]:
    """`(model, cfg, task)`: a tiny `av_hubert`, `av_hubert_ctc` or `av_hubert_seq2seq` with fixed weights,
    built through fairseq's registries as a checkpoint load does (dictionaries: tests/data/fixtures)."""
    from fairseq import tasks

    cfg = _pretrain_cfg()
    if kind == "av_hubert":
        cfg["model"].update(model_overrides)
    else:
        w2v_args = cfg
        task_cfg = dict(cfg["task"], labels=["wrd"], label_rate=-1, single_target=True, fine_tuning=True,
                        is_s2s=kind == "av_hubert_seq2seq", tokenizer_bpe_name="sentencepiece",
                        tokenizer_bpe_model=str(DATA / "fixtures" / "spm_unigram100.model"))
        model_cfg = {"_name": kind, "w2v_path": "unused", "w2v_args": w2v_args, "normalize": True,
                     "data": str(DATA / "fixtures"), "feature_grad_mult": 1.0}
        if kind == "av_hubert_seq2seq":
            model_cfg.update(decoder_embed_dim=32, decoder_ffn_embed_dim=64, decoder_layers=1, decoder_attention_heads=4)
        cfg = {"model": {**model_cfg, **model_overrides}, "task": task_cfg}
    task = tasks.setup_task(OmegaConf.create(cfg["task"]), from_checkpoint=True)
    if kind != "av_hubert":  # the pre-training task's cluster dictionaries, as a fine-tuned checkpoint holds them
        task.load_state_dict({"dictionaries": tasks.setup_task(OmegaConf.create(cfg["model"]["w2v_args"]["task"])).dictionaries})
    model = task.build_model(OmegaConf.create(cfg["model"]), from_checkpoint=True)
    return fixed_init_(model).eval(), cfg, task


def _no_unpickling(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


def _features(model: torch.nn.Module, audio, video, pad) -> torch.Tensor:
    from avhubert.safetensors_io import find_av_hubert

    with torch.no_grad():
        return find_av_hubert(model).extract_finetune({"audio": audio, "video": video}, pad)[0]


AUDIO = fixed_tensor((2, 104, 9), 0.3)
VIDEO = fixed_tensor((2, 1, 9, 88, 88), 1.1)
PAD = torch.arange(9)[None] >= torch.tensor([9, 6])[:, None]


@pytest.mark.parametrize("kind", ["av_hubert", "av_hubert_ctc", "av_hubert_seq2seq"])
def test_safetensors_round_trip_without_pickle(kind, tmp_path, monkeypatch):
    model, cfg, task = tiny_model(kind)
    path = save_safetensors(model, cfg, tmp_path / "out", task=task)
    assert path == tmp_path / "out" / "model.safetensors" and (tmp_path / "out" / CONFIG_NAME).is_file()
    _no_unpickling(monkeypatch)
    loaded, config, task2 = load_safetensors_with_task(path)  # the .safetensors file
    again, _ = load_safetensors(tmp_path / "out")  # the folder
    assert type(loaded) is type(model) is type(again) and not loaded.training
    _assert_same_state(model, loaded)
    _assert_same_state(model, again)
    assert config["model"]["_name"] == kind
    torch.testing.assert_close(_features(loaded, AUDIO, VIDEO, PAD), _features(model, AUDIO, VIDEO, PAD), rtol=0, atol=0)
    if kind == "av_hubert":
        assert task2.dictionaries[0].symbols == task.dictionaries[0].symbols
    else:
        assert task2.target_dictionary.symbols == task.target_dictionary.symbols
        assert task2.target_dictionary.pad() == task.target_dictionary.pad()
        assert task2.s2s_tokenizer.encode("hello world") == task.s2s_tokenizer.encode("hello world")


def test_safetensors_of_a_bare_pretraining_model_and_bad_folders(tmp_path):
    model, cfg, _ = tiny_model("av_hubert")
    cfg = OmegaConf.create(cfg)  # a training run's config: interpolations are stored resolved
    cfg.model.label_rate = "${task.label_rate}"
    save_safetensors(model, cfg, tmp_path / "bare")  # no task: cluster dictionaries 0..K-1 of the model's sizes
    loaded, config = load_safetensors(tmp_path / "bare")
    assert config["model"]["label_rate"] == 25
    _assert_same_state(model, loaded)
    ctc, ctc_cfg, _ = tiny_model("av_hubert_ctc")
    with pytest.raises(ValueError, match="needs task="):
        save_safetensors(ctc, ctc_cfg, tmp_path / "ctc")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_safetensors(tmp_path)
    (tmp_path / "bare" / "model.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="model.safetensors: unreadable safetensors file"):
        load_safetensors(tmp_path / "bare")


@pytest.mark.parametrize("name", ["avhubert_tiny_pretrain.pt", "avhubert_tiny_s2s.pt"])
def test_safetensors_of_released_format_checkpoints(name, tmp_path, monkeypatch):
    from fairseq import checkpoint_utils

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(shared_fixture(name))], strict=True)
    model = models[0].eval()
    save_safetensors(model, cfg, tmp_path, task=task)
    _no_unpickling(monkeypatch)
    loaded, _, task2 = load_safetensors_with_task(tmp_path)
    _assert_same_state(model, loaded)
    torch.testing.assert_close(_features(loaded, AUDIO, VIDEO, None), _features(model, AUDIO, VIDEO, None), rtol=0, atol=0)
    if name.endswith("s2s.pt"):
        assert task2.s2s_tokenizer.encode("hello world") == task.s2s_tokenizer.encode("hello world")


# ----------------------------------------------------------------- ONNX / TorchScript


def _run_file(fmt: str, path: Path, inputs: dict) -> list:
    """Run an exported file the way a user would (onnxruntime / torch.jit.load), inputs by name."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return [torch.from_numpy(o) for o in session.run(None, {k: v.numpy() for k, v in inputs.items()})]
    module = torch.jit.load(str(path))
    with torch.no_grad():
        out = module(*inputs.values())
    return list(out) if isinstance(out, (tuple, list)) else [out]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("kind", ["av_hubert", "av_hubert_ctc"])
def test_encoder_export_matches_pytorch_at_other_lengths(fmt, kind, tmp_path, capsys):
    from avhubert.export import main

    model, cfg, task = tiny_model(kind)
    save_safetensors(model, cfg, tmp_path / "st", task=task)
    assert main(["--checkpoint", str(tmp_path / "st"), "--format", fmt, "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert printed.count("max abs diff") == 3, printed
    suffix = ".onnx" if fmt == "onnx" else ".pt"
    batch, length, valid = 2, 17, 11  # neither the example's (2, 12) nor the checks' lengths
    pad = torch.arange(length)[None] >= torch.tensor([length, valid])[:, None]
    audio = fixed_tensor((batch, 104, length), 0.2).masked_fill(pad[:, None], 0.0)
    video = fixed_tensor((batch, 1, length, 88, 88), 0.9).masked_fill(pad[:, None, :, None, None], 0.0)
    for modality, source in (("audio", {"audio": audio}), ("video", {"video": video}),
                             ("audio_visual", {"audio": audio, "video": video})):
        for mask in (pad, torch.zeros_like(pad)):  # padded, and an unpadded batch given an all-False mask
            got = _run_file(fmt, tmp_path / "out" / f"encoder_{modality}{suffix}", {**source, "padding_mask": mask})
            with torch.no_grad():
                if kind == "av_hubert":
                    want = [model.extract_finetune({"audio": None, "video": None, **source}, mask)[0]]
                else:
                    x = model.w2v_encoder.w2v_model.extract_finetune({"audio": None, "video": None, **source}, mask)[0]
                    want = [x, model.w2v_encoder(source={"audio": None, "video": None, **source}, padding_mask=mask,
                                                 tbc=False)["encoder_out"]]
            assert len(got) == len(want)
            for g, w in zip(got, want):
                assert g.shape == w.shape
                assert (g - w).abs().max() < 1e-4, (modality, (g - w).abs().max())


def test_export_without_padding_mask_and_of_one_layer(tmp_path):
    import onnxruntime

    from avhubert.export import export_checkpoint

    model, cfg, task = tiny_model("av_hubert")
    save_safetensors(model, cfg, tmp_path / "st", task=task)
    summary = export_checkpoint(str(tmp_path / "st"), "onnx", tmp_path / "out", ["audio-visual"], padding_mask=False,
                                layer=1, log=lambda line: None)
    (entry,) = summary["files"]
    assert entry["inputs"] == ["audio", "video"] and entry["outputs"] == ["features"] and entry["max_abs_diff"] < 1e-4
    session = onnxruntime.InferenceSession(str(tmp_path / "out" / entry["file"]), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["audio", "video"]
    (got,) = session.run(None, {"audio": AUDIO.numpy(), "video": VIDEO.numpy()})
    with torch.no_grad():
        want = model.extract_features({"audio": AUDIO, "video": VIDEO}, output_layer=1)[0]
    assert abs(got - want.numpy()).max() < 1e-4


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_of_additive_fusion_and_sub_encoders(fmt, tmp_path):
    from avhubert.export import export_checkpoint

    model, cfg, task = tiny_model("av_hubert", modality_fuse="add", sub_encoder_layers=1)
    assert model.post_extract_proj is None and model.feature_extractor_audio.encoder is not None
    save_safetensors(model, cfg, tmp_path / "st", task=task)
    summary = export_checkpoint(str(tmp_path / "st"), fmt, tmp_path / "out", ["audio-visual"], log=lambda line: None)
    assert summary["files"][0]["max_abs_diff"] < 1e-4


def test_seq2seq_ctc_head_logits_are_exported(tmp_path):
    from avhubert.export import export_checkpoint

    model, cfg, task = tiny_model("av_hubert_seq2seq", ctc_weight=0.3)
    assert model.ctc_proj is not None
    save_safetensors(model, cfg, tmp_path / "st", task=task)
    summary = export_checkpoint(str(tmp_path / "st"), "torchscript", tmp_path / "out", ["video"], log=lambda line: None)
    assert summary["files"][0]["outputs"] == ["features", "logits"] and summary["files"][0]["max_abs_diff"] < 1e-4


def test_check_rejects_a_wrong_export_and_the_cli_exits_1(tmp_path, monkeypatch, capsys):
    """A graph traced on an unpadded example has the encoder's padding branch fixed to "none": the check
    after export must catch it (padded check inputs), keep no file and exit 1."""
    import avhubert.export as export

    model, cfg, task = tiny_model("av_hubert")
    save_safetensors(model, cfg, tmp_path / "st", task=task)
    monkeypatch.setattr(export, "EXAMPLE", (2, 12, 12))
    rc = export.main(["--checkpoint", str(tmp_path / "st"), "--format", "onnx", "--out", str(tmp_path / "out"),
                      "--modality", "audio"])
    printed = capsys.readouterr().out
    assert rc == 1 and "encoder_audio.onnx: outputs differ from the PyTorch model's by up to" in printed, printed
    assert not (tmp_path / "out" / "encoder_audio.onnx").exists()
    assert not list((tmp_path / "out").glob("*.tmp*"))


def test_released_format_checkpoint_exports(tmp_path, capsys):
    from avhubert.export import main

    ckpt = str(shared_fixture("avhubert_tiny_s2s.pt"))
    assert main(["--checkpoint", ckpt, "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    assert (tmp_path / "onnx" / "encoder_video.onnx").is_file()  # the task's modality (fine-tuned on video)
    assert main(["--checkpoint", ckpt, "--format", "safetensors", "--out", str(tmp_path / "st")]) == 0
    printed = capsys.readouterr().out
    assert "max abs diff" in printed and "loaded back without pickle" in printed
    assert main(["--checkpoint", str(tmp_path / "missing.pt"), "--format", "onnx"]) == 2
