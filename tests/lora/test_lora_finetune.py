"""LoRA fine-tuning end to end with `fairseq-hydra-train` (tiny pre-training, then seq2seq / CTC fine-tuning
with `model.lora_r>0`): only adapters and heads train, checkpoints hold only those plus the base's sha256,
resume, `infer_s2s` decoding, `python -m avhubert.merge_lora` (strict load, same outputs), and clear errors
for a moved or changed base."""

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from fairseq import checkpoint_utils

from avhubert.api import load
from avhubert.export import export_checkpoint
from avhubert.lora import BASE_DIGEST_KEY, LoraBaseError
from avhubert.merge_lora import main as merge_main
from tests.conftest import run_cli
from tests.finetune.test_finetune_decode import finetune_logged, ft_data, infer, pretrained  # noqa: F401 (fixtures)

TARGETS = "model.lora_targets=[q_proj,k_proj,v_proj,out_proj,fc1,fc2]"
BUFFERS = ("running_mean", "running_var", "num_batches_tracked", "_float_tensor")


def _lora_run(bin_dir, repo, data, base, exp, config, updates, *extra):
    return finetune_logged(bin_dir, repo, data, base, exp, config, "model.lora_r=4", "model.lora_alpha=8", TARGETS,
                           f"optimization.max_update={updates}", "checkpoint.save_interval_updates=1",
                           "checkpoint.keep_interval_updates=-1", "dataset.disable_validation=true", *extra)


@pytest.fixture(scope="module")
def base(pretrained, tmp_path_factory) -> Path:  # noqa: F811
    """A private copy of the pre-trained checkpoint (the tests move and change it)."""
    path = tmp_path_factory.mktemp("base") / "pretrained.pt"
    shutil.copy(pretrained, path)
    return path


@pytest.fixture(scope="module")
def s2s_run(bin_dir, repo, ft_data, base, tmp_path_factory):  # noqa: F811
    exp = tmp_path_factory.mktemp("lora_s2s")
    _ckpt, log = _lora_run(bin_dir, repo, ft_data, base, exp, "tiny_s2s", 4)
    return exp / "ckpt", log


def _model(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _batch(task, split: str = "train", n: int = 3) -> dict:
    task.load_dataset(split)
    ds = task.dataset(split)
    return ds.collater([ds[i] for i in range(n)])["net_input"]


def test_checkpoints_hold_only_adapters_heads_and_the_base_digest(s2s_run, base):
    ckpt_dir, log = s2s_run
    assert "AVHubertSeq2Seq trainable parameters:" in log and "(adapters 4,096)" not in log  # fc1/fc2 too
    # 2 updates per epoch; fairseq writes the interval checkpoints inside epochs: checkpoint_1_1.pt, checkpoint_2_3.pt
    at1, at3 = _model(ckpt_dir / "checkpoint_1_1.pt"), _model(ckpt_dir / "checkpoint_2_3.pt")
    at4 = _model(ckpt_dir / "checkpoint_last.pt")
    assert at1.keys() == at3.keys() == at4.keys()
    assert bytes(at4[BASE_DIGEST_KEY].tolist()).hex() == hashlib.sha256(base.read_bytes()).hexdigest()
    kinds = {"adapter": [k for k in at4 if ".lora_" in k], "head": [k for k in at4 if k.startswith("decoder.")]}
    rest = sorted(set(at4) - set(kinds["adapter"]) - set(kinds["head"]) - {BASE_DIGEST_KEY})
    assert len(kinds["adapter"]) == 2 * 6 * 2  # A and B, 6 modules, 2 layers
    assert all(k.endswith(BUFFERS) for k in rest if k != "encoder.w2v_model.mask_emb"), rest
    assert not any(".base_layer." in k for k in at4)
    # everything trained moved between updates 1 and 3 (mask_emb gets no gradient without input masking)
    trained = [k for k in kinds["adapter"] + kinds["head"] if not k.endswith(BUFFERS)]
    assert [k for k in trained if torch.equal(at1[k], at3[k])] == []
    state = torch.load(ckpt_dir / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert state["cfg"]["model"]["lora_r"] == 4 and state["cfg"]["model"]["w2v_path"] == str(base)
    adam = state["last_optimizer_state"]["state"]  # the optimizer state covers the trained tensors only
    assert sum(v["exp_avg"].numel() for v in adam.values()) == sum(at4[k].numel() for k in trained)


def test_only_adapters_and_heads_get_gradients(s2s_run):
    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(s2s_run[0] / "checkpoint_last.pt")])
    model = models[0].train()
    logits, _ = model(**_batch(task))
    logits.square().mean().backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert got == trainable - {"encoder.w2v_model.mask_emb"}
    assert all(".lora_" in n or n.startswith("decoder.") for n in got) and any(".lora_A." in n for n in got)


def _merge(*args) -> str:
    """`python -m avhubert.merge_lora ARGS` in this process; returns the SystemExit message ('' on success)."""
    try:
        assert merge_main([str(a) for a in args]) == 0
    except SystemExit as e:
        return str(e)
    return ""


def test_decode_and_merge(s2s_run, repo, ft_data, base, tmp_path):  # noqa: F811
    last = s2s_run[0] / "checkpoint_last.pt"
    merged = tmp_path / "merged.pt"
    assert _merge("--checkpoint", last, "--out", merged) == ""
    # infer_s2s decodes the adapter checkpoint; the merged one gives the same hypotheses
    n_test = len((ft_data / "test.tsv").read_text().splitlines()) - 1
    hyps = {}
    for name, ckpt in (("lora", last), ("merged", merged)):
        res = infer(repo, ckpt, tmp_path / name, ["audio", "video"], ft_data, beam=2)
        assert res["num_utts"] == n_test and res["wer"] is not None
        hyps[name] = [json.loads(line)["hyp"] for line in (tmp_path / name / "decode.jsonl").read_text().splitlines()]
    assert hyps["merged"] == hyps["lora"]

    # the merged checkpoint: plain keys, loads strictly without the base, same outputs within 1e-5
    lora_model = load(last).model  # the loading API rebuilds the base from model.w2v_path
    assert lora_model.lora_base is not None and not lora_model.training
    export_checkpoint(str(last), "safetensors", tmp_path / "exported", log=lambda *_: None)  # merges on the way
    moved = base.with_name("moved.pt")
    base.rename(moved)
    try:
        models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(merged)], strict=True)
        exported = load(tmp_path / "exported").model
        with pytest.raises(LoraBaseError, match=f"{base}.*not found.*merge_lora"):
            checkpoint_utils.load_model_ensemble_and_task([str(last)])
        assert "(model.w2v_path) not found" in _merge("--checkpoint", last, "--out", tmp_path / "m.pt")
        assert _merge("--checkpoint", last, "--out", tmp_path / "m2.pt", "--w2v-path", moved) == ""
    finally:
        moved.rename(base)
    plain = models[0].eval()
    raw = torch.load(merged, map_location="cpu", weights_only=True)
    assert raw["cfg"]["model"]["lora_r"] == 0 and "last_optimizer_state" not in raw
    assert not any(".lora_" in k or "base_layer" in k or k == BASE_DIGEST_KEY for k in raw["model"])
    torch.nn.Module.load_state_dict(plain, raw["model"], strict=True)
    batch = _batch(task, "test")
    with torch.no_grad():
        want = lora_model(**batch)[0]
        torch.testing.assert_close(plain(**batch)[0], want, atol=1e-5, rtol=0)
        torch.testing.assert_close(exported.eval()(**batch)[0], want, atol=1e-5, rtol=0)
    # weights stored: adapters + decoder (110 k numbers) against the full model (384 k) of the tiny config
    nbytes = {p: sum(v.numel() * v.element_size() for v in _model(p).values()) for p in (last, merged)}
    assert nbytes[last] < 0.35 * nbytes[merged], nbytes


def test_changed_base_and_wrong_checkpoint_are_refused(s2s_run, base, tmp_path):
    last = s2s_run[0] / "checkpoint_last.pt"
    changed = tmp_path / "changed.pt"
    state = torch.load(base, map_location="cpu", weights_only=False)
    name = next(k for k in state["model"] if k.endswith("fc1.weight"))
    state["model"][name] = state["model"][name] + 1e-3
    torch.save(state, changed)
    with pytest.raises(LoraBaseError, match=f"{changed}.*has changed: its sha256 is"):
        checkpoint_utils.load_model_ensemble_and_task([str(last)], arg_overrides={"w2v_path": str(changed)})
    assert "is not a LoRA checkpoint" in _merge("--checkpoint", base, "--out", tmp_path / "m.pt")
    assert "is the input checkpoint" in _merge("--checkpoint", last, "--out", last)


@pytest.mark.slow
def test_resume_continues_from_the_adapter_checkpoint(s2s_run, bin_dir, repo, ft_data, base, tmp_path):  # noqa: F811
    """A copy of the run's directory continues from its update-4 adapter checkpoint to update 6 (~40 s)."""
    exp = tmp_path / "resumed"
    shutil.copytree(s2s_run[0], exp / "ckpt")
    before = _model(exp / "ckpt" / "checkpoint_last.pt")
    _, log = _lora_run(bin_dir, repo, ft_data, base, exp, "tiny_s2s", 6)
    assert "@ 4 updates" in log and "num_updates 6" in log, log[-3000:]
    last = exp / "ckpt" / "checkpoint_last.pt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["optimizer_history"][-1]["num_updates"] == 6 and state["model"].keys() == before.keys()
    assert not torch.equal(state["model"]["decoder.embed_tokens.weight"], before["decoder.embed_tokens.weight"])
    proc = run_cli([sys.executable, "-m", "avhubert.merge_lora", "--checkpoint", str(last), "--out", str(tmp_path / "m.pt")])
    assert "model.lora_r=0" in proc.stdout


@pytest.mark.slow
def test_ctc_lora_trains_and_decodes(bin_dir, repo, ft_data, base, tmp_path):  # noqa: F811
    """`av_hubert_ctc` with LoRA: 2 updates, adapter-only checkpoint, CTC decoding (~30 s)."""
    ckpt, log = _lora_run(bin_dir, repo, ft_data, base, tmp_path / "ctc", "tiny_ctc", 2)
    assert "AVHubertCtc trainable parameters:" in log
    state = _model(ckpt)
    assert {k.split(".")[1] for k in state if k.startswith("w2v_encoder.") and not k.endswith(BUFFERS)} >= {"proj", "w2v_model"}
    assert all(".lora_" in k or k.startswith("w2v_encoder.proj.") or k.endswith(BUFFERS + ("mask_emb",))
               for k in state if k != BASE_DIGEST_KEY)
    res = infer(repo, ckpt, tmp_path / "dec", ["audio", "video"], ft_data, beam=1)
    assert res["num_utts"] == len((ft_data / "test.tsv").read_text().splitlines()) - 1
