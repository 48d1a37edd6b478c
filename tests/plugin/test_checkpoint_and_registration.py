"""Original-format checkpoints load strictly and safely; the plugin registers idempotently."""

import os
import pickle
import subprocess
import sys
from argparse import Namespace

import pytest
import torch
from fairseq import checkpoint_utils
from fairseq.criterions import CRITERION_REGISTRY
from fairseq.models import MODEL_REGISTRY
from fairseq.tasks import TASK_REGISTRY

import avhubert
from avhubert.checkpoint import UnsafeCheckpointError, load_checkpoint
from avhubert.model import AVHubertModel
from tests.conftest import shared_fixture
from tests.fixed_init import assert_summary, fixed_tensor


class NotAllowed:
    pass


# Fixed input for the fixture checks: closed-form values (tests/fixed_init.py), 2 utterances of 12 frames.
AUDIO = fixed_tensor((2, 104, 12), 0.0)
VIDEO = fixed_tensor((2, 1, 12, 88, 88), 1.0)

# Outputs of `avhubert_tiny_pretrain.pt` (the original's weights) on AUDIO / VIDEO, unpadded: regression values
# recorded with this implementation (the fixture README gives no outputs of the original). The transformer part
# is checked against fairseq's own wav2vec2 encoder, which the original runs, in the test below.
EXPECTED_PRETRAIN = {
    "final": {"mean": 0.012219491870909613, "std": 1.0142285959777346, "abs_sum": 4924.218728460626,
              "weighted": -10.9339041288728, "x[0]": -0.1339326649904251, "x[2047]": 1.8020464181900024,
              "x[4095]": 1.6377527713775635, "x[6143]": 1.1434537172317505},
    "ret_conv": {"mean": -0.0386309133020859, "std": 0.5393083480843901, "abs_sum": 2667.1239986629225,
                 "weighted": -0.31036422842016087, "x[0]": 0.024903707206249237, "x[2047]": 0.5430006384849548,
                 "x[4095]": 0.3624631464481354, "x[6143]": 0.22189803421497345},
    "layer1": {"mean": -0.02311982143980155, "std": 0.5918122263437066, "abs_sum": 2914.993893730454,
               "weighted": -2.540770683273174, "x[0]": -0.06156231462955475, "x[2047]": 0.9080723524093628,
               "x[4095]": 0.7903759479522705, "x[6143]": 0.4904531240463257},
    "video_only": {"mean": 0.012502209504101339, "std": 1.0143997111866159, "abs_sum": 4911.033537300915,
                   "weighted": -13.112143967906603, "x[0]": 0.11722800135612488, "x[2047]": 1.6028107404708862,
                   "x[4095]": 1.7667676210403442, "x[6143]": 1.3575105667114258},
}


@pytest.fixture(scope="module")
def pretrain_fixture():
    """`(path, model, task)` of the original-format tiny pre-training checkpoint, loaded strictly."""
    path = shared_fixture("avhubert_tiny_pretrain.pt")
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(path)], strict=True)
    return path, models[0].eval(), task


def test_pretrain_fixture_loads_strictly_without_original_paths(pretrain_fixture):
    path, model, task = pretrain_fixture
    state = load_checkpoint(str(path))
    assert state["cfg"]["task"]["data"].startswith("/checkpoint/")
    assert not os.path.exists(state["cfg"]["task"]["data"])
    assert isinstance(model, AVHubertModel)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state["model"].items()}, strict=True)
    assert not missing and not unexpected
    assert len(task.dictionaries[0]) == model.label_embs_concat.shape[0]
    for key, value in model.state_dict().items():  # every tensor is the checkpoint's (fp16 -> fp32 exactly)
        assert torch.equal(value, state["model"][key].to(value.dtype)), key


@pytest.mark.parametrize("what", list(EXPECTED_PRETRAIN))
def test_pretrain_fixture_outputs_match_recorded_values(pretrain_fixture, what):
    _, model, _ = pretrain_fixture
    src = {"audio": AUDIO, "video": VIDEO}
    with torch.no_grad():
        if what == "video_only":
            x, _ = model.extract_finetune({"audio": None, "video": VIDEO})
        else:
            x, _ = model.extract_features(src, ret_conv=what == "ret_conv", output_layer=1 if what == "layer1" else None)
    assert x.shape == (2, 12, 256)
    assert_summary(x, EXPECTED_PRETRAIN[what])


def test_pretrain_fixture_transformer_equals_fairseq_wav2vec2_encoder(pretrain_fixture):
    """The original runs fairseq's wav2vec2 `TransformerEncoder` unchanged: with the fixture's `encoder.*`
    weights it must give our outputs (final and layer 1, padded batch) from our front-end features."""
    from fairseq.models.wav2vec.wav2vec2 import TransformerEncoder, Wav2Vec2Config

    path, model, _ = pretrain_fixture
    c = model.cfg
    ref = TransformerEncoder(Wav2Vec2Config(
        encoder_layers=c.encoder_layers, encoder_embed_dim=c.encoder_embed_dim, encoder_ffn_embed_dim=c.encoder_ffn_embed_dim,
        encoder_attention_heads=c.encoder_attention_heads, activation_fn=c.activation_fn, dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0, layer_norm_first=c.layer_norm_first,
        conv_pos=c.conv_pos, conv_pos_groups=c.conv_pos_groups, required_seq_len_multiple=1)).eval()
    weights = load_checkpoint(str(path))["model"]
    ref.load_state_dict({k[len("encoder."):]: v.float() for k, v in weights.items() if k.startswith("encoder.")}, strict=True)
    pad = torch.arange(12)[None] >= torch.tensor([12, 9])[:, None]
    src = {"audio": AUDIO.masked_fill(pad[:, None], 0.0), "video": VIDEO.masked_fill(pad[:, None, :, None, None], 0.0)}
    with torch.no_grad():
        conv, _ = model.extract_features(src, pad, ret_conv=True)
        ours, _ = model.extract_features(src, pad)
        ours_l1, _ = model.extract_features(src, pad, output_layer=1)
        theirs, _ = ref(conv.clone(), pad)
        theirs_l1, _ = ref(conv.clone(), pad, layer=0)
    valid = ~pad
    torch.testing.assert_close(ours[valid], theirs[valid], atol=1e-5, rtol=1e-5)  # measured 1e-6
    torch.testing.assert_close(ours_l1[valid], theirs_l1[valid], atol=1e-5, rtol=1e-5)


def test_unsafe_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": NotAllowed()}, path)
    with pytest.raises(UnsafeCheckpointError, match="allow-list"):
        load_checkpoint(str(path))
    with pytest.raises(pickle.UnpicklingError):
        checkpoint_utils.load_checkpoint_to_cpu(str(path))


def test_registered_names():
    assert "av_hubert_pretraining" in TASK_REGISTRY and "av_hubert" in MODEL_REGISTRY
    assert "av_hubert" in CRITERION_REGISTRY


def test_importing_twice_and_under_another_module_path(repo, tmp_path):
    link = tmp_path / "avhubert_copy"
    link.symlink_to(repo / "avhubert", target_is_directory=True)
    code = f"""
import sys, importlib, argparse
import avhubert
from fairseq import utils
utils.import_user_module(argparse.Namespace(user_dir={str(repo / 'avhubert')!r}))
utils.import_user_module(argparse.Namespace(user_dir={str(repo / 'avhubert')!r}))
sys.path.insert(0, {str(tmp_path)!r})
importlib.import_module("avhubert_copy")
from fairseq.tasks import TASK_REGISTRY
print("ok", TASK_REGISTRY["av_hubert_pretraining"].__module__)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(repo)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ok avhubert.task" in proc.stdout
